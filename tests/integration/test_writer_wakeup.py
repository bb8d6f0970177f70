"""The WAL writer sleeps when idle and appenders wake it without a lock per append: no wake-up may
be lost, whatever the timing. With rotation an hour away, a lost wake-up would hang an append."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from domain.events import RequestReceived
from eventlog.filelog import FileEventLog
from eventlog.ids import now_us, uuid7


def _event() -> RequestReceived:
    return RequestReceived(event_id=uuid7(), ts_us=now_us(), endpoint="chat/completions")


def test_appends_at_every_pace_are_acknowledged_promptly(tmp_path: Path) -> None:
    async def run() -> list[float]:
        log = await FileEventLog.open(tmp_path, rotate_s=3600.0, rotate_events=10**9)
        rng = random.Random(7)
        waits: list[float] = []

        async def appender(n: int) -> None:
            for _ in range(n):
                if rng.random() < 0.5:  # sometimes the writer is idle, sometimes mid-batch
                    await asyncio.sleep(rng.choice((0, 0.0005, 0.002)))
                started = time.monotonic()
                await asyncio.wait_for(log.append([_event()]), timeout=10)
                waits.append(time.monotonic() - started)

        try:
            await asyncio.gather(*(appender(150) for _ in range(8)))
            assert log.last_seq == 8 * 150
        finally:
            await log.close()
        return waits

    waits = asyncio.run(run())
    assert len(waits) == 1200
    assert max(waits) < 5.0  # a lost wake-up would wait for the next rotation: an hour
