"""Start-up reads without DuckDB: Arrow scans over one snapshot (manifest files + unsealed tail).

The serving process reads its own log only when it starts (projections, recent event ids). Doing
that with pyarrow, which sealing loads anyway, keeps DuckDB (~25 MiB mapped, plus its buffers) out
of the broker's resident memory; admin SQL, billing and compaction load DuckDB on first use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from domain.events import TYPE_OF, Event
from eventlog.columnar import event_schema, table_to_events
from eventlog.reader import Snapshot


def where(*, after_seq: int = 0, since_ts_us: int | None = None, until_ts_us: int | None = None,
          kinds: Iterable[str] | None = None) -> pc.Expression:
    expr = pc.field("seq") > after_seq
    if since_ts_us is not None:
        expr &= pc.field("ts_us") >= since_ts_us
    if until_ts_us is not None:
        expr &= pc.field("ts_us") < until_ts_us
    if kinds is not None:
        expr &= pc.field("kind").isin(list(kinds))
    return expr


def batches(snap: Snapshot, columns: Sequence[str], expr: pc.Expression) -> Iterator[pa.RecordBatch]:
    """Matching rows, `columns` only, in no particular order (files older than a column read it as null)."""
    if snap.files:
        dataset = ds.dataset([str(p) for p in snap.files], schema=event_schema(), format="parquet")
        yield from dataset.to_batches(columns=list(columns), filter=expr, batch_size=131_072)
    if snap.tail.num_rows:
        yield from snap.tail.filter(expr).select(list(columns)).to_batches()


def table(snap: Snapshot, columns: Sequence[str], expr: pc.Expression) -> pa.Table:
    """Matching rows in `seq` order: for the small reads (recent ids, one kind's few events)."""
    schema = event_schema()
    fields = pa.schema([schema.field(c) for c in columns])
    out = pa.Table.from_batches(list(batches(snap, columns, expr)), schema=fields)
    return out.sort_by("seq") if "seq" in columns and out.num_rows else out


def events(snap: Snapshot, expr: pc.Expression, kinds: Iterable[str]) -> Iterator[Event]:
    """Typed events of `kinds` in `seq` order, each `event_id` once (as replay gives them)."""
    wanted = list(kinds)
    names = ["kind", *dict.fromkeys(f for k in wanted for f in TYPE_OF[k].__struct_fields__)]
    seen: set[str] = set()
    for event in table_to_events(table(snap, names, expr & pc.field("kind").isin(wanted))):
        if event.event_id not in seen:
            seen.add(event.event_id)
            yield event
