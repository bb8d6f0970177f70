"""Start-up reads without DuckDB: Arrow scans over one snapshot (manifest files + unsealed tail).

The serving process reads its own log only when it starts (projections, recent event ids). Doing
that with pyarrow, which sealing loads anyway, keeps DuckDB (~25 MiB mapped, plus its buffers) out
of the broker's resident memory; admin SQL, billing and compaction load DuckDB on first use.
Files are chosen by the manifest's seq and time ranges, then read one by one with `ParquetFile`
(no dataset scanner: its thread pools kept ~90 MiB resident after a start-up read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from domain.events import TYPE_OF, Event
from eventlog.columnar import event_schema, table_to_events
from eventlog.manifest import FileEntry
from eventlog.reader import Snapshot

Extra = Callable[[pa.RecordBatch], pa.Array]  # a further row condition (a boolean mask)


@dataclass(frozen=True)
class Where:
    """Rows with seq > after_seq, since ≤ ts < until, of these kinds, and passing `extra`."""

    after_seq: int = 0
    since_ts_us: int | None = None
    until_ts_us: int | None = None
    kinds: tuple[str, ...] | None = None
    extra: Extra | None = None
    rare: bool = False  # `kinds` are rare (operator facts): read a row group's kinds before its rows

    def columns(self) -> list[str]:
        return ["seq", "ts_us", "kind"]

    def may_match(self, f: FileEntry) -> bool:
        return (f.max_seq > self.after_seq
                and (self.since_ts_us is None or f.max_ts_us >= self.since_ts_us)
                and (self.until_ts_us is None or f.min_ts_us < self.until_ts_us))

    def mask(self, batch: pa.RecordBatch) -> pa.Array:
        keep = pc.greater(batch.column("seq"), self.after_seq)
        if self.since_ts_us is not None:
            keep = pc.and_(keep, pc.greater_equal(batch.column("ts_us"), self.since_ts_us))
        if self.until_ts_us is not None:
            keep = pc.and_(keep, pc.less(batch.column("ts_us"), self.until_ts_us))
        if self.kinds is not None:
            keep = pc.and_(keep, pc.is_in(batch.column("kind"), pa.array(self.kinds, pa.string())))
        if self.extra is not None:
            keep = pc.and_(keep, self.extra(batch))
        return pc.fill_null(keep, False)


def where(*, after_seq: int = 0, since_ts_us: int | None = None, until_ts_us: int | None = None,
          kinds: Iterable[str] | None = None, extra: Extra | None = None, rare: bool = False) -> Where:
    return Where(after_seq, since_ts_us, until_ts_us, tuple(kinds) if kinds is not None else None, extra, rare)


def _has_kind(parquet: pq.ParquetFile, group: int, kinds: tuple[str, ...]) -> bool:
    column = parquet.read_row_group(group, columns=["kind"]).column(0)
    return bool(pc.any(pc.is_in(column, pa.array(kinds, pa.string()))).as_py())


def _conform(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
    """`columns` in order; a column an older file lacks reads as nulls."""
    schema = event_schema()
    arrays = [batch.column(c) if c in batch.schema.names else pa.nulls(batch.num_rows, schema.field(c).type)
              for c in columns]
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema([schema.field(c) for c in columns]))


def batches(snap: Snapshot, columns: Sequence[str], cond: Where, batch_rows: int = 131_072) -> Iterator[pa.RecordBatch]:
    """Matching rows, `columns` only, in no particular order."""
    wanted = list(dict.fromkeys([*columns, *cond.columns()]))
    for entry in snap.manifest.files:
        if not cond.may_match(entry):
            continue
        parquet = pq.ParquetFile(snap.data_dir / entry.path)
        names = set(parquet.schema_arrow.names)
        present = [c for c in wanted if c in names]
        for group in range(parquet.num_row_groups):
            if cond.rare and cond.kinds is not None and not _has_kind(parquet, group, cond.kinds):
                continue
            for batch in parquet.read_row_group(group, columns=present).to_batches(batch_rows):
                batch = _conform(batch, wanted)
                yield _conform(batch.filter(cond.mask(batch)), columns)
    if snap.tail.num_rows:
        for batch in snap.tail.select(wanted).to_batches(batch_rows):
            yield _conform(batch.filter(cond.mask(batch)), columns)


def table(snap: Snapshot, columns: Sequence[str], cond: Where) -> pa.Table:
    """Matching rows in `seq` order: for the small reads (recent ids, one kind's few events)."""
    schema = event_schema()
    fields = pa.schema([schema.field(c) for c in columns])
    out = pa.Table.from_batches(list(batches(snap, columns, cond)), schema=fields)
    return out.sort_by("seq") if "seq" in columns and out.num_rows else out


def events(snap: Snapshot, cond: Where, kinds: Iterable[str]) -> Iterator[Event]:
    """Typed events of `kinds` in `seq` order, each `event_id` once (as replay gives them)."""
    wanted = list(kinds)
    names = ["kind", *dict.fromkeys(f for k in wanted for f in TYPE_OF[k].__struct_fields__)]
    narrowed = Where(cond.after_seq, cond.since_ts_us, cond.until_ts_us, tuple(wanted), cond.extra, cond.rare)
    seen: set[str] = set()
    for event in table_to_events(table(snap, names, narrowed)):
        if event.event_id not in seen:
            seen.add(event.event_id)
            yield event
