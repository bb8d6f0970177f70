"""The write-ahead log files: JSONL, one event per line, named by the first `seq` they hold.

Recovery keeps every complete, decodable line; from the first bad line on, nothing was ever
acknowledged (acks follow the batch's fdatasync), so the rest is cut off — and kept aside, not lost,
in case a disk error hit a line in the middle.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from domain.events import decode

WAL_DIR = "wal"
log = logging.getLogger("aibroker.eventlog")


def wal_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.jsonl"


def wal_files(data_dir: Path) -> list[Path]:
    """Live WAL files in `seq` order (the zero-padded name sorts)."""
    d = data_dir / WAL_DIR
    return sorted(d.glob("wal-*.jsonl")) if d.exists() else []


def complete_prefix(data: bytes) -> tuple[bytes, int]:
    """(the valid prefix, its event count): whole lines that decode, up to the first that does not."""
    good_end = 0
    count = 0
    start = 0
    while True:
        nl = data.find(b"\n", start)
        if nl < 0:
            break
        try:
            decode(data[start:nl])
        except (msgspec.DecodeError, msgspec.ValidationError):
            break
        good_end = nl + 1
        count += 1
        start = nl + 1
    return data[:good_end], count


def read_complete(path: Path) -> bytes:
    """A WAL file's complete lines, for readers beside a live writer (the last line may be partial)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    end = data.rfind(b"\n")
    return data[: end + 1] if end >= 0 else b""


def repair(path: Path) -> bytes:
    """Cut a WAL file back to its valid prefix (crash recovery); keeps any cut bytes aside."""
    data = path.read_bytes()
    good, _ = complete_prefix(data)
    if len(good) < len(data):
        tail = data[len(good):]
        if b"\n" in tail.rstrip(b"\n\x00"):  # more than one torn line: keep it for an operator
            aside = path.parent / (path.name + ".corrupt")
            aside.write_bytes(tail)
            log.error("WAL %s: a corrupt line at byte %d; %d bytes (%d lines) after it were set aside in %s",
                      path, len(good), len(tail), tail.count(b"\n"), aside)
        with open(path, "r+b") as f:
            f.truncate(len(good))
            os.fsync(f.fileno())
    return good
