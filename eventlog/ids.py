"""Identifiers the log hands out: UUIDv7 event ids (time-ordered, made once, reused on retry)."""

from __future__ import annotations

import os
import random
import time

_rng = random.Random(os.urandom(32))  # ids need uniqueness, not secrecy: no syscall per id
_MASK48 = (1 << 48) - 1


class _Millisecond:
    """Per millisecond: the id's first 20 hex digits (time, version, rand_a, variant, 14 random bits)
    once, and a 48-bit counter starting at a random value for the rest (RFC 9562 §6.2, method 1 with
    a random start). Ids from one process are unique and increasing; another process's start differs
    in 74 random bits. One %-format per id: this runs several times a request."""

    ms = -1
    prefix = ""
    counter = 0


_now = _Millisecond()


def _reseed() -> None:
    _rng.seed(os.urandom(32))
    _now.ms = -1  # a forked child must not continue the parent's sequence


os.register_at_fork(after_in_child=_reseed)


def uuid7(now_us: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, 12 random bits (rand_a), variant
    0b10, then 62 bits: 14 random, and a 48-bit counter that starts at a random value each millisecond."""
    ms = (time.time_ns() // 1_000_000) if now_us is None else now_us // 1000
    state = _now
    if ms != state.ms:
        rand = _rng.getrandbits(74)
        state.ms, state.counter = ms, rand & _MASK48
        state.prefix = "%08x-%04x-7%03x-%04x-" % (
            (ms >> 16) & 0xFFFFFFFF, ms & 0xFFFF, rand >> 62, 0x8000 | ((rand >> 48) & 0x3FFF))
    else:
        state.counter = (state.counter + 1) & _MASK48
    return "%s%012x" % (state.prefix, state.counter)


def now_us() -> int:
    """Wall-clock time in microseconds: the one clock read the shell layers use for `ts_us`."""
    return time.time_ns() // 1000
