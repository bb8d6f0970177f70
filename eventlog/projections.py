"""Rebuilding projections from the log at start: limits policy, spend, rate windows, TTFT, switches.

Spend for the current month is summed per (ip, context, day) from Arrow batches of the log's
`usage.recorded` rows (compacted Parquet is the checkpoint: row-group statistics skip older data);
the last minute of admissions and settlements is folded event by event to restore the rate windows
exactly. Requests the previous run left in flight are released: they died with it. Everything here
reads one snapshot with pyarrow, so DuckDB never loads in the serving process (see `eventlog.scan`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from domain.limits import PolicyBook
from domain.usage_projection import DAY_US, WINDOW_US, UsageProjection, month_of, month_start_us
from eventlog import scan
from eventlog.reader import Snapshot, take_snapshot

USAGE = "usage.recorded.v1"


def _snap(data_dir: Path, snap: Snapshot | None) -> Snapshot:
    return snap if snap is not None else take_snapshot(data_dir)


def rebuild_ttft(data_dir: Path, now_us: int, horizon_us: int = 3_600_000_000,
                 snap: Snapshot | None = None) -> dict[tuple[str, str], int]:
    """Median time to first token per (provider, model) over the last hour: the `fastest` strategy's
    starting point (then kept current in memory). The median of an even count is the mean of the
    middle two, rounded half to even (as `CAST(median(ttft_us) AS BIGINT)` does in SQL). Only the integer
    values are kept per group while scanning."""
    expr = scan.where(since_ts_us=now_us - horizon_us, kinds=[USAGE])
    expr &= (pc.field("outcome") == "ok") & ~pc.field("ttft_us").is_null()
    values: dict[tuple[str, str], list[pa.Array]] = {}
    for batch in scan.batches(_snap(data_dir, snap), ["provider", "model", "ttft_us"], expr):
        if not batch.num_rows:
            continue
        table = pa.Table.from_batches([batch])
        keys = table.group_by(["provider", "model"], use_threads=False).aggregate([])
        for provider, model in zip(keys.column("provider").to_pylist(), keys.column("model").to_pylist()):
            mask = pc.and_(pc.equal(table.column("provider"), provider), pc.equal(table.column("model"), model))
            values.setdefault((provider, model), []).extend(table.column("ttft_us").filter(mask).chunks)
    out: dict[tuple[str, str], int] = {}
    for key, chunks in values.items():
        column = pa.chunked_array(chunks, pa.int64())
        lo = pc.quantile(column, q=0.5, interpolation="lower")[0].as_py()
        hi = pc.quantile(column, q=0.5, interpolation="higher")[0].as_py()
        half, odd = divmod(lo + hi, 2)
        out[key] = half + 1 if odd and half % 2 else half
    return out


def rebuild_switches(data_dir: Path, snap: Snapshot | None = None) -> dict[str, bool]:
    """Each provider's last on/off switch by an operator (absent: never switched)."""
    kinds = ["provider.toggled.v1"]
    return {e.provider: e.enabled for e in scan.events(_snap(data_dir, snap), scan.where(kinds=kinds), kinds)}  # type: ignore[attr-defined]


def rebuild_policy(data_dir: Path, book: PolicyBook, snap: Snapshot | None = None) -> PolicyBook:
    kinds = ["limits.changed.v1"]
    for event in scan.events(_snap(data_dir, snap), scan.where(kinds=kinds), kinds):
        book.apply(event)  # type: ignore[arg-type]
    return book


def month_spend(snap: Snapshot, start_us: int, until_us: int) -> dict[tuple[str, str, int], int]:
    """micro-USD per (ip, context, day) from usage settled in [start, until)."""
    expr = scan.where(since_ts_us=start_us, until_ts_us=until_us, kinds=[USAGE]) & ~pc.field("cost_micros").is_null()
    spend: dict[tuple[str, str, int], int] = {}
    for batch in scan.batches(snap, ["ip", "context", "ts_us", "cost_micros"], expr):
        if not batch.num_rows:
            continue
        day = pc.divide(batch.column("ts_us"), pa.scalar(DAY_US, pa.int64()))  # integer division (ts ≥ 0)
        table = pa.table({"ip": batch.column("ip"), "context": batch.column("context"), "day": day,
                          "cost": batch.column("cost_micros")})
        sums = table.group_by(["ip", "context", "day"], use_threads=False).aggregate([("cost", "sum")])
        for ip, context, d, micros in zip(*(sums.column(c).to_pylist() for c in ("ip", "context", "day", "cost_sum"))):
            key = (ip, context, d)
            spend[key] = spend.get(key, 0) + micros
    return spend


def rebuild_usage(data_dir: Path, now_us: int, projection: UsageProjection | None = None,
                  snap: Snapshot | None = None) -> UsageProjection:
    p = projection or UsageProjection()
    snap = _snap(data_dir, snap)
    cutoff = now_us - WINDOW_US
    month = month_of(now_us)
    for (ip, context, day), micros in month_spend(snap, month_start_us(now_us), cutoff).items():
        b = p.bucket((ip, context))
        b.spend_day[day] = b.spend_day.get(day, 0) + micros
        b.spend_month[month] = b.spend_month.get(month, 0) + micros
    kinds = ["request.admitted.v1", USAGE]
    for event in scan.events(snap, scan.where(since_ts_us=max(cutoff, 0), kinds=kinds), kinds):
        p.apply(event)
    p.release_all_in_flight()
    return p
