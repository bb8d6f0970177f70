"""Identifiers the log hands out: UUIDv7 event ids (time-ordered, made once, reused on retry)."""

from __future__ import annotations

import os
import random
import time


_rng = random.Random(os.urandom(32))  # ids need uniqueness, not secrecy: no syscall per id
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))  # a forked child must not repeat ids


def uuid7(now_us: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, 12 random bits (rand_a), variant
    0b10, 62 random bits (rand_b). Formatted in one %-operation: this runs several times a request."""
    ms = (time.time_ns() // 1_000_000) if now_us is None else now_us // 1000
    rand = _rng.getrandbits(74)
    return "%08x-%04x-7%03x-%04x-%012x" % (
        (ms >> 16) & 0xFFFFFFFF, ms & 0xFFFF, rand >> 62, 0x8000 | ((rand >> 48) & 0x3FFF), rand & 0xFFFFFFFFFFFF)


def now_us() -> int:
    """Wall-clock time in microseconds: the one clock read the shell layers use for `ts_us`."""
    return time.time_ns() // 1000
