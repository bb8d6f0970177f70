"""Readers beside a sealing, compacting writer never double-count or miss a row (DESIGN.md §4).

A thread loops `SELECT count(*), sum(cost_micros) FROM events` through `eventlog.sql.query` while the
writer appends a known number of events and seals and compacts all the time (explicitly, and by
small rotation and `compact_after` settings), then keeps compacting. While appends run, the counts
seen only grow and never pass the total; once every append has returned, every count is exact.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from domain.events import Event, UsageRecorded
from eventlog import manifest as mf
from eventlog.filelog import FileEventLog
from eventlog.sql import query

T0 = 1_767_225_600_000_000
HOUR_US = 3_600_000_000
TOTAL = 3_000
BATCH = 10
TASKS = 5
MAX_QUERIES = 2_000
AFTER_DONE_QUERIES = 8
TIMEOUT_S = 60.0


def event(i: int) -> Event:
    # ts spread over two days, so compaction writes (and merges) two date partitions
    return UsageRecorded(event_id=f"ev-{i:06d}", ts_us=T0 + (i * 37 % 48) * HOUR_US + i, ip="192.0.2.1",
                         context=f"ctx{i % 7}", cost_micros=i)


EXPECTED_COST = sum(range(TOTAL))


class Reader(threading.Thread):
    """Queries in a loop; records (were all appends done before the query started?, count, cost)."""

    def __init__(self, data_dir: Path, done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.data_dir, self.done = data_dir, done
        self.stop = threading.Event()
        self.seen: list[tuple[bool, int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(MAX_QUERIES):
                if self.stop.is_set():
                    return
                done_before = self.done.is_set()
                _, rows, _ = query(self.data_dir, "SELECT count(*), coalesce(sum(cost_micros), 0) FROM events")
                self.seen.append((done_before, int(rows[0][0]), int(rows[0][1])))
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def after_done(self) -> int:
        return sum(1 for done, _, _ in self.seen if done)


async def write_and_compact(data_dir: Path, reader: Reader) -> None:
    log = await FileEventLog.open(data_dir, rotate_events=100, rotate_s=0.05, compact_after=3)
    reader.start()
    try:
        for n, start in enumerate(range(0, TOTAL, BATCH * TASKS)):
            await asyncio.gather(*(log.append([event(i) for i in range(s, s + BATCH)])
                                   for s in range(start, start + BATCH * TASKS, BATCH)))
            if n % 6 == 5:
                await log.flush_sealed()
                await log.compact()
            await asyncio.sleep(0.005)
        reader.done.set()  # every append has returned: from now on the count is exact
        deadline = time.monotonic() + TIMEOUT_S / 2
        while reader.after_done() < AFTER_DONE_QUERIES and reader.is_alive() and time.monotonic() < deadline:
            await log.flush_sealed()
            await log.compact()
            await asyncio.sleep(0.01)
    finally:
        reader.stop.set()
        await asyncio.to_thread(reader.join, TIMEOUT_S / 2)
        await log.close()


def test_counts_seen_beside_sealing_and_compaction_only_grow_and_end_exact(tmp_path: Path) -> None:
    reader = Reader(tmp_path, threading.Event())
    asyncio.run(asyncio.wait_for(write_and_compact(tmp_path, reader), TIMEOUT_S))
    assert reader.error is None, f"reader failed: {reader.error!r}"
    assert not reader.is_alive()

    counts = [n for _, n, _ in reader.seen]
    assert counts == sorted(counts), "a later snapshot saw fewer events"
    assert max(counts) <= TOTAL
    during = [(n, cost) for done, n, cost in reader.seen if not done]
    after = [(n, cost) for done, n, cost in reader.seen if done]
    assert len(after) >= AFTER_DONE_QUERIES, f"only {len(after)} reads after the appends were done"
    assert set(after) == {(TOTAL, EXPECTED_COST)}
    # rows are read whole: each count's cost is the cost of exactly the first n events
    assert all(cost == n * (n - 1) // 2 for n, cost in during), during
    assert len({n for n, _ in during}) >= 2, f"the reader never overlapped the appends: {during}"

    m = mf.load(tmp_path)
    assert m.files and all(f.compacted for f in m.files) and len({f.path.split("/")[0] for f in m.files}) == 2
    assert sum(f.rows for f in m.files) == TOTAL
