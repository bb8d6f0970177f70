"""Event ids: valid UUIDv7s, unique and increasing within a process, fresh after a fork."""

from __future__ import annotations

import os
import re
import sys
import uuid

from eventlog.ids import uuid7

UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_an_id_is_a_uuid_version_7_with_the_rfc_variant_and_its_millisecond() -> None:
    ts_us = 1_795_758_447_521_456
    made = uuid7(ts_us)
    assert UUID7.fullmatch(made)
    parsed = uuid.UUID(made)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == ts_us // 1000


def test_ids_in_one_millisecond_are_unique_and_increasing() -> None:
    made = [uuid7(1_795_758_447_521_000) for _ in range(10_000)]
    assert made == sorted(made) and len(set(made)) == len(made)


def test_ids_across_milliseconds_sort_by_time() -> None:
    made = [uuid7(1_795_758_447_000_000 + 1000 * i + 999) for i in range(500)]
    assert made == sorted(made) and len(set(made)) == len(made)


def test_a_new_millisecond_draws_new_random_bits() -> None:
    first = uuid7(1_795_758_447_521_000)
    second = uuid7(1_795_758_447_522_000)
    assert first[14:23] != second[14:23] or first[24:] != second[24:]  # rand_a/variant bits or counter start


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    ts_us = 1_795_758_447_600_000
    uuid7(ts_us)  # the parent is mid-millisecond
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the next id of the same millisecond, then leave at once
        os.write(write, uuid7(ts_us).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = uuid7(ts_us)
    assert UUID7.fullmatch(child) and child != parent
    assert child[:24] != parent[:24]  # the child drew its own random prefix for this millisecond


def test_threads_making_ids_at_once_never_share_one() -> None:
    import threading

    made: list[list[str]] = [[] for _ in range(4)]
    ts_us = 1_795_758_447_700_000  # one millisecond for all: the shared counter is what is tested

    def make(out: list[str]) -> None:
        for _ in range(20_000):
            out.append(uuid7(ts_us))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows: races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every) == 80_000
