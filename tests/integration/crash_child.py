"""Crash-test child: many tasks append to a FileEventLog; each event_id is printed once durable.

Run by `test_eventlog_crash.py`, which SIGKILLs it at a random moment. Prints `READY <last_seq>`
once the log is open (recovery done), then one `event_id` per line, flushed, only after the
`append` that carried it returned. Small rotation and compaction settings make sealing and
compaction happen all the time, so kills land inside them too.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

from domain.events import Event, RequestReceived, RouteDecided, UsageRecorded
from eventlog.filelog import FileEventLog
from eventlog.ids import uuid7

T0 = 1_767_225_600_000_000  # 2026-01-01: events spread over 3 days, so compaction splits by date
SPREAD_US = 3 * 86_400_000_000


def make_event(rng: random.Random) -> Event:
    env = dict(event_id=uuid7(), ts_us=T0 + rng.randrange(SPREAD_US), source="crash-child",
               request_id=uuid7(), ip=f"192.0.2.{rng.randrange(8)}", context=f"ctx{rng.randrange(12)}")
    match rng.randrange(3):
        case 0:
            return RequestReceived(**env, endpoint="/v1/chat/completions", model_requested="auto")
        case 1:
            return RouteDecided(**env, strategy="cheapest", provider="groq", model="m1")
        case _:
            return UsageRecorded(**env, provider="groq", model="m1", prompt_tokens=rng.randrange(5000),
                                 completion_tokens=rng.randrange(500), cost_micros=rng.randrange(10_000))


async def worker(log: FileEventLog, rng: random.Random) -> None:
    out = sys.stdout
    while True:
        batch = [make_event(rng) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        await log.append(batch)
        out.write("".join(e.event_id + "\n" for e in batch))  # only now: the events are durable
        out.flush()


async def main(data_dir: str, tasks: int, seed: int) -> None:
    log = await FileEventLog.open(data_dir, rotate_events=200, rotate_s=0.1, compact_after=4)
    sys.stdout.write(f"READY {log.last_seq}\n")
    sys.stdout.flush()
    await asyncio.gather(*(worker(log, random.Random(seed * 1000 + w)) for w in range(tasks)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(args.data_dir, args.tasks, args.seed))
