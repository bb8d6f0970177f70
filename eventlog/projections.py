"""Rebuilding projections from the log at start: limits policy, spend, rate windows.

Spend for the current month comes from one DuckDB aggregate over the log (compacted Parquet is the
checkpoint: a month of 1e7 events sums in well under a second); the last minute of admissions and
settlements is folded event by event to restore the rate windows exactly. Requests the previous
run left in flight are released: they died with it.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from domain.limits import PolicyBook
from domain.usage_projection import DAY_US, WINDOW_US, UsageProjection, month_of, month_start_us
from eventlog.replay import reading, replay_events


def rebuild_ttft(data_dir: Path, now_us: int, horizon_us: int = 3_600_000_000,
                 con: duckdb.DuckDBPyConnection | None = None) -> dict[tuple[str, str], int]:
    """Median time to first token per (provider, model) over the last hour: the `fastest` strategy's
    starting point (then kept current in memory)."""
    with reading(data_dir, con) as db:
        rows = db.execute(
            "SELECT provider, model, CAST(median(ttft_us) AS BIGINT) FROM usage "
            "WHERE ttft_us IS NOT NULL AND outcome = 'ok' AND ts_us >= ? GROUP BY ALL",
            [now_us - horizon_us],
        ).fetchall()
    return {(p, m): int(t) for p, m, t in rows}


def rebuild_switches(data_dir: Path, con: duckdb.DuckDBPyConnection | None = None) -> dict[str, bool]:
    """Each provider's last on/off switch by an operator (absent: never switched)."""
    return {e.provider: e.enabled for e in replay_events(data_dir, kinds=["provider.toggled.v1"], con=con)}  # type: ignore[attr-defined]


def rebuild_policy(data_dir: Path, book: PolicyBook, con: duckdb.DuckDBPyConnection | None = None) -> PolicyBook:
    for event in replay_events(data_dir, kinds=["limits.changed.v1"], con=con):
        book.apply(event)  # type: ignore[arg-type]
    return book


def rebuild_usage(data_dir: Path, now_us: int, projection: UsageProjection | None = None,
                  con: duckdb.DuckDBPyConnection | None = None) -> UsageProjection:
    p = projection or UsageProjection()
    cutoff = now_us - WINDOW_US
    start = month_start_us(now_us)
    with reading(data_dir, con) as db:
        rows = db.execute(
            "SELECT ip, context, ts_us // ? AS day, sum(cost_micros) FROM usage "
            "WHERE ts_us >= ? AND ts_us < ? AND cost_micros IS NOT NULL GROUP BY ALL",
            [DAY_US, start, cutoff],
        ).fetchall()
    month = month_of(now_us)
    for ip, context, day, micros in rows:
        b = p.bucket((ip, context))
        b.spend_day[day] = b.spend_day.get(day, 0) + int(micros)
        b.spend_month[month] = b.spend_month.get(month, 0) + int(micros)
    for event in replay_events(data_dir, since_ts_us=max(cutoff, 0), kinds=["request.admitted.v1", "usage.recorded.v1"],
                               con=con):
        p.apply(event)
    p.release_all_in_flight()
    return p
