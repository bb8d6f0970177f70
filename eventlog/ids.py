"""Identifiers the log hands out: UUIDv7 event ids (time-ordered, made once, reused on retry)."""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Iterator

_rng = random.Random(os.urandom(32))  # ids need uniqueness, not secrecy: no syscall per id
_MASK48 = (1 << 48) - 1
# The millisecond being numbered: (its value, the id's first 20 hex digits, a counter from a random start).
# Replaced as a whole and read into locals once per call; `next()` on the counter is one C call, so
# threads (billing, tools) never hand out the same number.
_current: tuple[int, str, Iterator[int]] = (-1, "", iter(()))


def _reseed() -> None:
    global _current
    _rng.seed(os.urandom(32))
    _current = (-1, "", iter(()))  # a forked child must not continue the parent's sequence


os.register_at_fork(after_in_child=_reseed)


def uuid7(now_us: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, 12 random bits (rand_a), variant
    0b10, then 62 bits: 14 random ones and a 48-bit counter that starts at a random value each
    millisecond (§6.2). The first 20 hex digits are formatted once per millisecond, so an id costs one
    %-format (this runs several times a request); ids increase as long as the clock does."""
    global _current
    ms = (time.time_ns() // 1_000_000) if now_us is None else now_us // 1000
    at, prefix, counter = _current
    if at != ms:
        rand = _rng.getrandbits(74)
        prefix = "%08x-%04x-7%03x-%04x-" % (
            (ms >> 16) & 0xFFFFFFFF, ms & 0xFFFF, rand >> 62, 0x8000 | ((rand >> 48) & 0x3FFF))
        counter = itertools.count(rand & _MASK48)
        _current = (ms, prefix, counter)
    return prefix + (next(counter) & _MASK48).to_bytes(6, "big").hex()  # (faster than %x formatting)


def now_us() -> int:
    """Wall-clock time in microseconds: the one clock read the shell layers use for `ts_us`."""
    return time.time_ns() // 1000
