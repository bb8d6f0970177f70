"""Start-up reads without DuckDB: Arrow scans over one snapshot (manifest files + unsealed tail).

The serving process reads its own log only when it starts (projections, recent event ids). Doing
that with pyarrow, which sealing loads anyway, keeps DuckDB (~25 MiB mapped, plus its buffers) out
of the broker's resident memory; admin SQL, billing and compaction load DuckDB on first use.
Files are chosen by the manifest's seq and time ranges, then read one by one with `ParquetFile`
(no dataset scanner: its thread pools kept ~90 MiB resident after a start-up read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from domain.events import TYPE_OF, Event
from eventlog.columnar import event_schema, table_to_events
from eventlog.manifest import FileEntry
from eventlog.reader import Snapshot

Extra = Callable[[pa.RecordBatch], pa.Array]  # a further row condition (a boolean mask) over the asked columns
T = TypeVar("T")


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
        """What `mask` reads (only what a condition needs: fewer columns decoded)."""
        bounded = self.since_ts_us is not None or self.until_ts_us is not None
        return [c for c, used in (("seq", self.after_seq > 0), ("ts_us", bounded), ("kind", self.kinds is not None)) if used]

    def may_match(self, f: FileEntry) -> bool:
        return (f.max_seq > self.after_seq
                and (self.since_ts_us is None or f.max_ts_us >= self.since_ts_us)
                and (self.until_ts_us is None or f.min_ts_us < self.until_ts_us))

    def mask(self, batch: pa.RecordBatch) -> pa.Array:
        keep = pc.greater(batch.column("seq"), self.after_seq) if self.after_seq > 0 else pa.repeat(True, batch.num_rows)
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
    """Read as a dictionary, a row group's kinds are its dictionary pages: a dozen values to test."""
    column = parquet.read_row_group(group, columns=["kind"]).column(0)
    wanted = pa.array(kinds, pa.string())
    for chunk in column.chunks:
        values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
        if pc.any(pc.is_in(values, wanted)).as_py():
            return True
    return False


def _conform(batch: pa.RecordBatch, columns: Sequence[str], keep: Sequence[str] = ()) -> pa.RecordBatch:
    """`columns` in order, typed as the event schema says (dictionary-read columns decoded unless in
    `keep`); a column an older file lacks reads as nulls."""
    schema = event_schema()
    arrays = []
    for c in columns:
        typ = schema.field(c).type
        if c not in batch.schema.names:
            arrays.append(pa.nulls(batch.num_rows, typ))
            continue
        array = batch.column(c)
        arrays.append(array if array.type == typ or c in keep else array.cast(typ))
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _file_batches(snap: Snapshot, entry: FileEntry, wanted: list[str], columns: Sequence[str], cond: Where,
                  batch_rows: int, keep: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
    """Strings that repeat (kinds, and the `keep` columns) are read as dictionaries: decoding them as
    plain strings was most of a scan's time."""
    parquet = pq.ParquetFile(snap.data_dir / entry.path, read_dictionary=["kind", *keep])
    names = set(parquet.schema_arrow.names)
    present = [c for c in wanted if c in names]
    for group in range(parquet.num_row_groups):
        if cond.rare and cond.kinds is not None and not _has_kind(parquet, group, cond.kinds):
            continue
        for batch in parquet.read_row_group(group, columns=present).to_batches(batch_rows):
            batch = _conform(batch, wanted, keep=[*keep, "kind"])
            yield _conform(batch.filter(cond.mask(batch)), columns, keep)


def _tail_batches(snap: Snapshot, wanted: list[str], columns: Sequence[str], cond: Where,
                  batch_rows: int) -> Iterator[pa.RecordBatch]:
    if snap.tail.num_rows:
        for batch in snap.tail.select(wanted).to_batches(batch_rows):
            yield _conform(batch.filter(cond.mask(batch)), columns)


def batches(snap: Snapshot, columns: Sequence[str], cond: Where, batch_rows: int = 131_072) -> Iterator[pa.RecordBatch]:
    """Matching rows, `columns` only, in no particular order."""
    wanted = list(dict.fromkeys([*columns, *cond.columns()]))
    for entry in snap.manifest.files:
        if cond.may_match(entry):
            yield from _file_batches(snap, entry, wanted, columns, cond, batch_rows)
    yield from _tail_batches(snap, wanted, columns, cond, batch_rows)


def map_batches(snap: Snapshot, columns: Sequence[str], cond: Where, fn: Callable[[pa.RecordBatch], T], *,
                keep_dictionary: Sequence[str] = (), threads: int = 2, batch_rows: int = 131_072) -> Iterator[T]:
    """`fn` of every matching batch, files read in `threads` threads (Arrow decodes and computes
    without the GIL), results in no particular order. For big scans reduced to small results;
    `keep_dictionary` columns reach `fn` dictionary-encoded (group by them, then decode the result)."""
    wanted = list(dict.fromkeys([*columns, *cond.columns()]))
    entries = [e for e in snap.manifest.files if cond.may_match(e)]

    def one_file(entry: FileEntry) -> list[T]:
        return [fn(b) for b in _file_batches(snap, entry, wanted, columns, cond, batch_rows, keep_dictionary)
                if b.num_rows]

    with ThreadPoolExecutor(threads, thread_name_prefix="scan") as pool:
        for results in pool.map(one_file, entries):
            yield from results
    yield from (fn(b) for b in _tail_batches(snap, wanted, columns, cond, batch_rows) if b.num_rows)


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
