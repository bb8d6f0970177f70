"""The manifest: the atomically replaced list of live Parquet files. Readers trust only it.

A file is live once its manifest entry is published; compaction swaps many entries for one in a
single replace, so no reader ever sees a row twice or misses one. Replaced files are retired and
deleted only after a grace period, so a reader holding an older manifest can still open them.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from eventlog.fsutil import write_atomic

MANIFEST = "manifest.json"
RETIRE_GRACE_S = 60.0


class FileEntry(msgspec.Struct, frozen=True):
    path: str  # relative to the data directory
    rows: int
    min_seq: int
    max_seq: int
    min_ts_us: int
    max_ts_us: int
    bytes: int
    compacted: bool = False
    columns_id: str = ""  # fingerprint of the column names, in order; "" = unknown


class Retired(msgspec.Struct, frozen=True):
    path: str
    at_s: float


class Manifest(msgspec.Struct, frozen=True):
    version: int = 0
    sealed_through: int = 0  # every event with seq <= this is in `files`
    files: tuple[FileEntry, ...] = ()
    retired: tuple[Retired, ...] = ()


def load(data_dir: Path) -> Manifest:
    path = data_dir / MANIFEST
    try:
        return msgspec.json.decode(path.read_bytes(), type=Manifest)
    except FileNotFoundError:
        return Manifest()


def save(data_dir: Path, manifest: Manifest) -> None:
    write_atomic(data_dir / MANIFEST, msgspec.json.encode(manifest))


def with_segment(m: Manifest, entry: FileEntry) -> Manifest:
    return msgspec.structs.replace(
        m,
        version=m.version + 1,
        sealed_through=max(m.sealed_through, entry.max_seq),
        files=m.files + (entry,),
    )


def swapped(m: Manifest, old: set[str], new: list[FileEntry], now_s: float | None = None) -> Manifest:
    """Replace the `old` paths by `new` entries in one step; the old files become retired."""
    at = time.time() if now_s is None else now_s
    keep = tuple(f for f in m.files if f.path not in old)
    retired = m.retired + tuple(Retired(p, at) for p in sorted(old))
    return msgspec.structs.replace(m, version=m.version + 1, files=keep + tuple(new), retired=retired)


def expired(m: Manifest, now_s: float) -> tuple[list[str], Manifest]:
    """Retired paths past the grace period, and the manifest without them."""
    gone = [r.path for r in m.retired if now_s - r.at_s >= RETIRE_GRACE_S]
    if not gone:
        return [], m
    left = tuple(r for r in m.retired if r.path not in gone)
    return gone, msgspec.structs.replace(m, version=m.version + 1, retired=left)
