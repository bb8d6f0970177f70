"""LAW: the DuckDB SQL over a real log equals the Python fold over the same events, and so does the
start-up rebuild (`rebuild_usage`: SQL for the month before the last minute + a fold of the minute).

Events go through a real `FileEventLog` in `tmp_path`: some sealed into Parquet (and compacted),
the rest still in the WAL tail, with retried batches (duplicate `event_id`s) that both sides must
count once.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.events import Event, RequestAdmitted, RequestRejected, UsageRecorded
from domain.usage_projection import DAY_US, WINDOW_US, BucketKey, UsageProjection, day_of, month_of, month_start_us
from eventlog.filelog import FileEventLog
from eventlog.projections import rebuild_usage
from eventlog.sql import query

MID_MONTH_US = 1_742_040_000_000_000  # 2025-03-15T12:00:00Z
JUST_AFTER_MONTH_START_US = 1_740_787_230_000_000  # 2025-03-01T00:00:30Z: the last minute spans two months
BUCKETS: tuple[BucketKey, ...] = (("10.0.0.1", "A"), ("10.0.0.1", "B"), ("2001:db8::1", "A"), ("10.0.0.2", "0"))
AGES_US = (0, 1, 30_000_000, WINDOW_US - 1, WINDOW_US, WINDOW_US + 1, 300_000_000, 3_600_000_000, DAY_US,
           10 * DAY_US, 20 * DAY_US, 40 * DAY_US)

DAILY_SQL = ("SELECT ip, context, ts_us // 86400000000 AS day, sum(cost_micros) AS micros "
             "FROM usage GROUP BY ALL")
MONTHLY_SQL = "SELECT ip, context, month, sum(cost_micros) AS micros FROM spend_monthly GROUP BY ALL"


@dataclass(frozen=True)
class Spec:
    kind: str  # admit | settle | reject
    bucket: int
    age_us: int
    amount: int
    pick: int
    priced: bool


specs = st.builds(Spec, st.sampled_from(["admit", "admit", "settle", "settle", "reject"]),
                  st.integers(0, len(BUCKETS) - 1), st.sampled_from(AGES_US),
                  st.sampled_from([0, 1, 3, 100, 12_345]), st.integers(0, 9), st.booleans())


def events_of(items: list[Spec], now_us: int) -> list[Event]:
    """Events oldest first (ties keep their order); a settlement names an earlier admission if any."""
    out: list[Event] = []
    admitted: list[RequestAdmitted] = []
    for n, spec in enumerate(sorted(items, key=lambda s: -s.age_us)):
        ip, context = BUCKETS[spec.bucket]
        env: dict[str, Any] = {"event_id": f"ev-{n}", "ts_us": now_us - spec.age_us, "ip": ip, "context": context,
                               "request_id": f"rq-{n}", "source": "test"}
        if spec.kind == "admit":
            event: Event = RequestAdmitted(**env, reserved_tokens=spec.amount, reserved_micros=spec.amount * 2)
            admitted.append(event)  # type: ignore[arg-type]
        elif spec.kind == "reject":
            event = RequestRejected(**env, code="rate_limit_requests", status=429, limit=1, observed=1)
        else:
            if admitted and spec.pick:
                held = admitted.pop(spec.pick % len(admitted))
                env.update(ip=held.ip, context=held.context, request_id=held.request_id)
            event = UsageRecorded(**env, prompt_tokens=spec.amount, completion_tokens=spec.pick,
                                  cost_micros=spec.amount * 3 + spec.pick if spec.priced else None,
                                  usage_source="provider" if spec.priced else "missing")
        out.append(event)
    return out


async def _write_and_check(data_dir: Path, events: list[Event], sealed: int, compact: bool, now_us: int) -> None:
    """The first `sealed` events into Parquet (compacted or not), the rest into the WAL tail of a
    second run, still open while the laws are checked. Every sealed batch is sent twice, as a writer
    retrying after a lost acknowledgement would, and the tail's first events are sent again too."""
    log = await FileEventLog.open(data_dir)
    try:
        for start in range(0, sealed, 7):
            batch = events[start:min(start + 7, sealed)]
            await log.append(batch)
            await log.append(batch)
        await log.flush_sealed()
        if compact:
            await log.compact()
    finally:
        await log.close()
    log = await FileEventLog.open(data_dir)
    try:
        for start in range(sealed, len(events), 5):
            await log.append(events[start:start + 5])
        await log.append(events[sealed:sealed + 3])
        check_laws(data_dir, events, now_us)
    finally:
        await log.close()


def write_and_check(data_dir: Path, events: list[Event], sealed: int, compact: bool, now_us: int) -> None:
    asyncio.run(_write_and_check(data_dir, events, sealed, compact, now_us))


def fold(events: list[Event]) -> UsageProjection:
    p = UsageProjection()
    for event in events:
        p.apply(event)
    return p


def sql_daily(data_dir: Path) -> dict[tuple[str, str, int], int]:
    _, rows, truncated = query(data_dir, DAILY_SQL)
    assert not truncated
    return {(ip, ctx, day): int(m) for ip, ctx, day, m in rows if m}


def sql_monthly(data_dir: Path) -> dict[tuple[str, str, str], int]:
    _, rows, _ = query(data_dir, MONTHLY_SQL)
    return {(ip, ctx, month): int(m) for ip, ctx, month, m in rows if m}


def fold_daily(events: list[Event]) -> dict[tuple[str, str, int], int]:
    """Spend per (ip, context, day), folded from the events (the projection keeps only recent days)."""
    out: dict[tuple[str, str, int], int] = {}
    for e in {e.event_id: e for e in events}.values():
        if isinstance(e, UsageRecorded) and e.cost_micros:
            key = (e.ip, e.context, day_of(e.ts_us))
            out[key] = out.get(key, 0) + e.cost_micros
    return out


def fold_monthly(events: list[Event]) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = {}
    for (ip, ctx, day), micros in fold_daily(events).items():
        key = (ip, ctx, month_of(day * DAY_US))
        out[key] = out.get(key, 0) + micros
    return out


def restored(p: UsageProjection, now_us: int) -> dict[BucketKey, dict[str, Any]]:
    """What a restart must restore: this month's spend, today's and yesterday's, and the window at
    `now_us` (in-flight excluded)."""
    first_day, month = day_of(month_start_us(now_us)), month_of(now_us)
    out = {}
    for key, b in p.buckets.items():
        b.evict(now_us)
        figures = {
            "window": list(b.window),
            "window_tokens": b.window_tokens,
            "spend_day": {d: m for d, m in b.spend_day.items() if m and d >= max(first_day, day_of(now_us) - 1)},
            "spend_month": b.spend_month.get(month, 0),
        }
        if any(figures.values()):
            out[key] = figures
    return out


def check_laws(data_dir: Path, events: list[Event], now_us: int) -> None:
    folded = fold(events)
    assert sql_daily(data_dir) == fold_daily(events)
    assert sql_monthly(data_dir) == fold_monthly(events)
    rebuilt = rebuild_usage(data_dir, now_us)
    assert all(not b.in_flight and b.reserved_micros == 0 for b in rebuilt.buckets.values())
    folded.release_all_in_flight()
    assert restored(rebuilt, now_us) == restored(folded, now_us)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(specs, max_size=40), st.sampled_from([MID_MONTH_US, JUST_AFTER_MONTH_START_US]),
       st.floats(0, 1), st.booleans())
def test_law_sql_and_rebuild_equal_the_fold(tmp_path: Path, items: list[Spec], now_us: int, sealed_part: float,
                                            compact: bool) -> None:
    events = events_of(items, now_us)
    data_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    write_and_check(data_dir, events, int(len(events) * sealed_part), compact, now_us)


def test_law_holds_for_a_busy_month_across_segments(tmp_path: Path) -> None:
    rng = random.Random(20250315)
    items = [Spec(rng.choice(["admit", "admit", "settle", "settle", "reject"]), rng.randrange(len(BUCKETS)),
                  rng.choice([rng.randrange(0, 2 * WINDOW_US), rng.randrange(0, 20 * DAY_US)]),
                  rng.choice([0, 1, 17, 250, 4096]), rng.randrange(10), rng.random() < 0.9)
             for _ in range(3000)]
    for now_us in (MID_MONTH_US, JUST_AFTER_MONTH_START_US):
        events = events_of(items, now_us)
        data_dir = tmp_path / str(now_us)
        write_and_check(data_dir, events, 2000, True, now_us)
        in_window = sum(1 for e in events if isinstance(e, RequestAdmitted) and e.ts_us > now_us - WINDOW_US)
        assert in_window > 0  # the rebuild's fold part was exercised, not only its SQL part
