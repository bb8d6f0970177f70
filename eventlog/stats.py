"""`aibroker log stats`: what the log holds — events per kind, files, bytes, time span."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eventlog.reader import connect, take_snapshot
from eventlog.wal import wal_files


def log_stats(data_dir: str | Path) -> dict[str, Any]:
    snap = take_snapshot(data_dir)
    con = connect(data_dir, snapshot=snap)
    try:
        per_kind = dict(con.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind").fetchall())
        span = con.execute("SELECT min(ts_us), max(ts_us), max(seq) FROM events").fetchone() or (None,) * 3
    finally:
        con.close()
    files = snap.manifest.files
    wal = wal_files(snap.data_dir)
    return {
        "data_dir": str(snap.data_dir),
        "events": sum(per_kind.values()),
        "events_by_kind": per_kind,
        "last_seq": span[2] or 0,
        "oldest_ts_us": span[0],
        "newest_ts_us": span[1],
        "segments": sum(1 for f in files if not f.compacted),
        "compacted_files": sum(1 for f in files if f.compacted),
        "parquet_bytes": sum(f.bytes for f in files),
        "wal_files": len(wal),
        "wal_bytes": sum(p.stat().st_size for p in wal if p.exists()),
        "unsealed_events": snap.tail.num_rows,
    }
