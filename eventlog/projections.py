"""Rebuilding projections from the log at start: limits policy, spend, rate windows, TTFT, switches.

Spend for the current month (and per day for today and yesterday, all a budget reads) is summed
from Arrow batches of the log's `usage.recorded` rows (compacted Parquet is the checkpoint: row-group statistics skip older data);
the last minute of admissions and settlements is folded event by event to restore the rate windows
exactly. Requests the previous run left in flight are released: they died with it. Everything here
reads one snapshot with pyarrow, so DuckDB never loads in the serving process (see `eventlog.scan`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from domain.events import Event, LimitsChanged, ProviderToggled
from domain.limits import PolicyBook
from domain.usage_projection import DAY_US, WINDOW_US, UsageProjection, day_of, month_of, month_start_us
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
    expr = scan.where(since_ts_us=now_us - horizon_us, kinds=[USAGE], extra=lambda b: pc.and_(
        pc.equal(b.column("outcome"), "ok"), pc.is_valid(b.column("ttft_us"))))
    values: dict[tuple[str, str], list[pa.Array]] = {}
    for batch in scan.batches(_snap(data_dir, snap), ["provider", "model", "ttft_us", "outcome"], expr):
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


OPERATOR_KINDS = ("limits.changed.v1", "provider.toggled.v1")


def operator_facts(data_dir: Path, snap: Snapshot | None = None) -> list[Event]:
    """Every `limits.changed` and `provider.toggled`, in `seq` order: one pass for both rebuilds below."""
    return list(scan.events(_snap(data_dir, snap), scan.where(kinds=OPERATOR_KINDS, rare=True), OPERATOR_KINDS))


def rebuild_switches(data_dir: Path, snap: Snapshot | None = None, facts: list[Event] | None = None) -> dict[str, bool]:
    """Each provider's last on/off switch by an operator (absent: never switched)."""
    facts = operator_facts(data_dir, snap) if facts is None else facts
    return {e.provider: e.enabled for e in facts if isinstance(e, ProviderToggled)}


def rebuild_policy(data_dir: Path, book: PolicyBook, snap: Snapshot | None = None,
                   facts: list[Event] | None = None) -> PolicyBook:
    facts = operator_facts(data_dir, snap) if facts is None else facts
    for event in facts:
        if isinstance(event, LimitsChanged):
            book.apply(event)
    return book


def _sum_by(table: pa.Table, keys: list[str]) -> pa.Table:
    """Sum `cost` by `keys`; dictionary-encoded keys come back as plain strings (partials concatenate)."""
    out = table.group_by(keys, use_threads=False).aggregate([("cost", "sum")]).rename_columns([*keys, "cost"])
    if any(pa.types.is_dictionary(t) for t in out.schema.types):
        out = pa.table({name: column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
                        for name, column in zip(out.column_names, out.columns)})
    return out


class _Sums:
    """Partial sums (per batch, from the scan threads), reduced in Arrow (a Python dict update per
    row was most of the time); bounded by reducing whenever they pass a million rows."""

    def __init__(self, keys: list[str]) -> None:
        self.keys, self.parts, self.rows = keys, [], 0

    def add(self, part: pa.Table) -> None:
        self.parts.append(part)
        self.rows += part.num_rows
        if self.rows > 1_000_000:
            self.parts = [_sum_by(pa.concat_tables(self.parts), self.keys)]
            self.rows = self.parts[0].num_rows

    def result(self) -> dict[tuple, int]:  # type: ignore[type-arg]
        if not self.parts:
            return {}
        table = _sum_by(pa.concat_tables(self.parts), self.keys)
        columns = [table.column(c).to_pylist() for c in [*self.keys, "cost"]]
        return {tuple(row[:-1]): row[-1] for row in zip(*columns)}


def month_spend(snap: Snapshot, start_us: int, until_us: int,
                recent_from_us: int) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str, int], int]]:
    """micro-USD settled in [start, until): per (ip, context), and per (ip, context, day) for the days
    from `recent_from_us` on (the only days a budget reads)."""
    expr = scan.where(since_ts_us=start_us, until_ts_us=until_us, kinds=[USAGE],
                      extra=lambda b: pc.is_valid(b.column("cost_micros")))
    months, days = _Sums(["ip", "context"]), _Sums(["ip", "context", "day"])

    def partial(batch: pa.RecordBatch) -> tuple[pa.Table, pa.Table | None]:
        month = _sum_by(pa.table({"ip": batch.column("ip"), "context": batch.column("context"),
                                  "cost": batch.column("cost_micros")}), ["ip", "context"])
        recent = pa.Table.from_batches([batch]).filter(pc.greater_equal(batch.column("ts_us"), recent_from_us))
        if not recent.num_rows:
            return month, None
        day = pc.divide(recent.column("ts_us"), pa.scalar(DAY_US, pa.int64()))  # integer division (ts ≥ 0)
        return month, _sum_by(pa.table({"ip": recent.column("ip"), "context": recent.column("context"), "day": day,
                                        "cost": recent.column("cost_micros")}), ["ip", "context", "day"])

    for month_part, day_part in scan.map_batches(snap, ["ip", "context", "ts_us", "cost_micros"], expr, partial,
                                                 keep_dictionary=["ip", "context"]):
        months.add(month_part)
        if day_part is not None:
            days.add(day_part)
    return months.result(), days.result()  # type: ignore[return-value]


def rebuild_usage(data_dir: Path, now_us: int, projection: UsageProjection | None = None,
                  snap: Snapshot | None = None) -> UsageProjection:
    """This month's spend (and today's and yesterday's, as the fold keeps them), then the last
    minute folded event by event; in-flight holds are released."""
    p = projection or UsageProjection()
    snap = _snap(data_dir, snap)
    cutoff = now_us - WINDOW_US
    month = month_of(now_us)
    months, days = month_spend(snap, month_start_us(now_us), cutoff, (day_of(now_us) - 1) * DAY_US)
    for (ip, context), micros in months.items():
        b = p.bucket((ip, context))
        b.spend_month[month] = b.spend_month.get(month, 0) + micros
    for (ip, context, day), micros in days.items():
        b = p.bucket((ip, context))
        b.spend_day[day] = b.spend_day.get(day, 0) + micros
    kinds = ["request.admitted.v1", USAGE]
    for event in scan.events(snap, scan.where(since_ts_us=max(cutoff, 0), kinds=kinds), kinds):
        p.apply(event)
    p.release_all_in_flight()
    return p
