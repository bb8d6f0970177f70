"""Sealing: a closed WAL file becomes a durable Parquet segment listed in the manifest.

Order of steps (each survives a crash): write temp → fsync → rename → fsync dir → publish the
manifest → delete the WAL file. A crash before the manifest publish leaves the WAL file, which
recovery seals again; after it, recovery skips the rows the manifest already covers.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eventlog import manifest as mf
from eventlog.columnar import wal_to_table
from eventlog.fsutil import fsync_dir, write_atomic

SEGMENT_DIR = "segments"
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3}


def write_parquet(table: pa.Table, final: Path) -> int:
    """Durably write `table` at `final` (temp, fsync, rename, dir fsync); returns its size."""
    final.parent.mkdir(parents=True, exist_ok=True)
    sink = pa.BufferOutputStream()  # in memory, then one write: Arrow's file sink makes a write
    pq.write_table(table, sink, **PARQUET_OPTIONS)  # and a seek per page
    data = sink.getvalue()
    write_atomic(final, memoryview(data))
    return data.size


def columns_id(names: list[str]) -> str:
    """Same id ⇔ same column names in the same order: such files can be read without
    `union_by_name` (which re-reads every footer each time a view is bound)."""
    return hashlib.sha256("\x1f".join(names).encode()).hexdigest()[:16]


def entry_for(table: pa.Table, rel: str, size: int, compacted: bool = False) -> mf.FileEntry:
    seq = pc.min_max(table.column("seq")).as_py()
    ts = pc.min_max(table.column("ts_us")).as_py()
    return mf.FileEntry(
        path=rel, rows=table.num_rows, min_seq=seq["min"], max_seq=seq["max"],
        min_ts_us=ts["min"], max_ts_us=ts["max"], bytes=size, compacted=compacted,
        columns_id=columns_id(table.column_names),
    )


class Sealer:
    """Owns the manifest in this process (the writer's); compaction shares its lock."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lock = threading.Lock()
        self.manifest = mf.load(data_dir)

    def publish(self, new: mf.Manifest) -> None:
        """Save a manifest; caller holds `lock`."""
        mf.save(self.data_dir, new)
        self.manifest = new

    def seal(self, wal_path: Path, data: bytes | None = None) -> mf.FileEntry | None:
        """Seal one WAL file (its complete content `data`, or read it), then delete it."""
        raw = wal_path.read_bytes() if data is None else data
        table = wal_to_table(raw)
        entry = None
        with self.lock:
            through = self.manifest.sealed_through
        if table.num_rows and table.column("seq")[0].as_py() <= through:  # a re-seal after a crash
            table = table.filter(pc.greater(table.column("seq"), through))
        if table.num_rows:
            first = table.column("seq")[0].as_py()
            last = table.column("seq")[-1].as_py()
            rel = f"{SEGMENT_DIR}/seg-{first:020d}-{last:020d}.parquet"
            size = write_parquet(table, self.data_dir / rel)
            entry = entry_for(table, rel, size)
            with self.lock:
                self.publish(mf.with_segment(self.manifest, entry))
        os.unlink(wal_path)
        fsync_dir(wal_path.parent)
        return entry
