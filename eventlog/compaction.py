"""Compaction: sealed segments merge into `date=YYYY-MM-DD/` part files sorted by (context, ts).

Each run writes one new part per touched date from the waiting segments; once a date has more than
`MAX_PARTS` parts they are merged into one, dropping rows whose `event_id` repeats (a crash-retried
append). The manifest swap is the commit point, so readers never double-count or miss a row.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from eventlog import manifest as mf
from eventlog.fsutil import publish
from eventlog.reader import DUCKDB_CONFIG
from eventlog.segments import Sealer, columns_id

MAX_PARTS = 8
# Compaction runs inside the broker: bounded memory and one thread (it spills to disk past the limit),
# so merging a few million rows never costs the request path a gigabyte or a core.
COMPACTION_LIMITS = {"memory_limit": "256MB", "threads": 1}


def segments_waiting(sealer: Sealer) -> int:
    return sum(1 for f in sealer.manifest.files if not f.compacted)


def _date_of(entry: mf.FileEntry) -> str:
    return entry.path.split("/")[0].removeprefix("date=")


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _write_part(con: duckdb.DuckDBPyConnection, data_dir: Path, sources: list[Path],
                day: str) -> mf.FileEntry | None:
    scan = (f"SELECT * FROM read_parquet({_sql_list(sources)}, union_by_name=true) "
            f"WHERE CAST(make_timestamp(ts_us) AS DATE) = DATE '{day}' "
            "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY seq) = 1")
    stats = con.execute(f"SELECT count(*), min(seq), max(seq), min(ts_us), max(ts_us) FROM ({scan})").fetchone()
    assert stats is not None
    rows, min_seq, max_seq, min_ts, max_ts = stats
    if not rows:
        return None
    rel = f"date={day}/part-{min_seq:020d}-{max_seq:020d}.parquet"
    final = data_dir / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    con.execute(f"COPY ({scan} ORDER BY context, ts_us, seq) TO '{tmp}' "
                "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)")
    publish(tmp, final)
    names = pq.read_schema(final).names
    return mf.FileEntry(rel, rows, min_seq, max_seq, min_ts, max_ts, final.stat().st_size, True, columns_id(names))


def compact(sealer: Sealer, now_s: float | None = None) -> int:
    """One compaction pass; returns the number of part files written."""
    data_dir = sealer.data_dir
    with sealer.lock:
        m = sealer.manifest
    segments = [f for f in m.files if not f.compacted]
    written: list[mf.FileEntry] = []
    replaced: set[str] = set()
    if segments:
        con = duckdb.connect(config={**DUCKDB_CONFIG, **COMPACTION_LIMITS,
                                     "temp_directory": str(data_dir / "spill")})
        try:
            seg_paths = [data_dir / f.path for f in segments]
            days = [r[0].isoformat() for r in con.execute(
                f"SELECT DISTINCT CAST(make_timestamp(ts_us) AS DATE) AS d "
                f"FROM read_parquet({_sql_list(seg_paths)}) ORDER BY d").fetchall()]
            for day in days:
                parts = [f for f in m.files if f.compacted and _date_of(f) == day]
                merge = parts if len(parts) >= MAX_PARTS else []
                entry = _write_part(con, data_dir, seg_paths + [data_dir / p.path for p in merge], day)
                if entry is not None:
                    written.append(entry)
                replaced.update(p.path for p in merge)
        finally:
            con.close()
        replaced.update(f.path for f in segments)
    with sealer.lock:
        current = sealer.manifest
        if written or replaced:
            current = mf.swapped(current, replaced, written, now_s)
        gone, current = mf.expired(current, time.time() if now_s is None else now_s)
        if current is not sealer.manifest:
            sealer.publish(current)
    for rel in gone:
        try:
            os.unlink(data_dir / rel)
        except FileNotFoundError:
            pass
    return len(written)
