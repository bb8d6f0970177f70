"""Opening a data directory: one writer at a time, stray temp files gone, every WAL file sealed."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from domain.events import decode
from eventlog.base import WriterLocked
from eventlog.segments import Sealer
from eventlog.wal import WAL_DIR, repair, wal_files

LOCK_FILE = "writer.lock"


def lock_writer(data_dir: Path) -> int:
    """Take the directory's writer lock (released when the process dies, even by SIGKILL)."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise WriterLocked(
            f"another aibroker process (pid {holder}) already writes the event log in {data_dir}; "
            "one ledger writer per data directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def unlock_writer(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def remove_temp_files(data_dir: Path) -> None:
    for tmp in data_dir.rglob("*.tmp"):
        tmp.unlink(missing_ok=True)


def last_seq_in(lines: bytes) -> int:
    end = lines.rstrip(b"\n").rfind(b"\n")
    return decode(lines[end + 1:]).seq if lines else 0


def recover(data_dir: Path, sealer: Sealer) -> int:
    """Seal every WAL file's valid prefix; returns the next `seq` to hand out."""
    (data_dir / WAL_DIR).mkdir(parents=True, exist_ok=True)
    remove_temp_files(data_dir)
    last = sealer.manifest.sealed_through
    for path in wal_files(data_dir):
        good = repair(path)
        last = max(last, last_seq_in(good))
        sealer.seal(path, good)
    return last + 1
