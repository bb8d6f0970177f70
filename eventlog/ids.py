"""Identifiers the log hands out: UUIDv7 event ids (time-ordered, made once, reused on retry)."""

from __future__ import annotations

import os
import random
import time


_rng = random.Random(os.urandom(32))  # ids need uniqueness, not secrecy: no syscall per id
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))  # a forked child must not repeat ids


def uuid7(now_us: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits."""
    ms = (time.time_ns() // 1_000_000) if now_us is None else now_us // 1000
    rand = _rng.getrandbits(80)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b (62 bits)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now_us() -> int:
    """Wall-clock time in microseconds: the one clock read the shell layers use for `ts_us`."""
    return time.time_ns() // 1000
