"""Compaction: sealed segments merge into `date=YYYY-MM-DD/` part files sorted by (context, ts).

Each run writes one new part per touched date from the waiting segments; once a date has more than
`MAX_PARTS` parts they are merged into one, dropping rows whose `event_id` repeats (a crash-retried
append). The manifest swap is the commit point, so readers never double-count or miss a row.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pyarrow.parquet as pq

from eventlog import manifest as mf
from eventlog.fsutil import publish
from eventlog.reader import DUCKDB_CONFIG
from eventlog.segments import Sealer, columns_id

if TYPE_CHECKING:
    import duckdb

MAX_PARTS = 8
CHILD_TIMEOUT_S = 1800
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


def write_parts(data_dir: Path, m: mf.Manifest) -> tuple[list[mf.FileEntry], set[str]]:
    """Write the part files for `m`'s waiting segments: (new entries, paths they replace). No manifest change."""
    segments = [f for f in m.files if not f.compacted]
    written: list[mf.FileEntry] = []
    replaced: set[str] = set()
    if not segments:
        return written, replaced
    import duckdb  # loaded here: only the compaction child (or a CLI/test) pays for it

    con = duckdb.connect(config={**DUCKDB_CONFIG, **COMPACTION_LIMITS, "temp_directory": str(data_dir / "spill")})
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
    return written, replaced


def _write_parts_in_child(data_dir: Path) -> tuple[list[mf.FileEntry], set[str]]:
    """The same work in a child process: DuckDB's memory and CPU stay out of the broker's process."""
    done = subprocess.run([sys.executable, "-m", "eventlog.compaction", str(data_dir), str(os.getpid())], capture_output=True,
                          timeout=CHILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"compaction child failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    result = msgspec.json.decode(done.stdout, type=_ChildResult)
    return list(result.written), set(result.replaced)


class _ChildResult(msgspec.Struct):
    written: list[mf.FileEntry]
    replaced: list[str]


def compact(sealer: Sealer, now_s: float | None = None, in_child: bool = False) -> int:
    """One compaction pass; returns the number of part files written.

    Only the writer's process changes the manifest; a child (`in_child`) only writes part files, from
    the manifest on disk, which equals the writer's (every change is published before it is used).
    """
    data_dir = sealer.data_dir
    with sealer.lock:
        m = sealer.manifest
    written, replaced = _write_parts_in_child(data_dir) if in_child else write_parts(data_dir, m)
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


def _die_with(parent: int) -> None:
    """A compaction child must not outlive its writer (it would write files after a restart's recovery)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the writer died before we could ask
        sys.exit(3)


def main() -> None:
    """`python -m eventlog.compaction DATA_DIR PARENT_PID`: write parts, print what to swap (the parent swaps)."""
    data_dir = Path(sys.argv[1])
    _die_with(int(sys.argv[2]))
    written, replaced = write_parts(data_dir, mf.load(data_dir))
    sys.stdout.buffer.write(msgspec.json.encode(_ChildResult(written, sorted(replaced))))


if __name__ == "__main__":
    main()
