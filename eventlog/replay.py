"""Replay: the log's events in `seq` order, as Arrow batches (fast folds) or typed events (laws)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from typing import TYPE_CHECKING

import pyarrow as pa

from domain.events import Event
from eventlog.columnar import table_to_events
from eventlog.reader import connect

if TYPE_CHECKING:
    import duckdb


def _where(after_seq: int, since_ts_us: int | None, kinds: Iterable[str] | None) -> str:
    clauses = [f"seq > {int(after_seq)}"]
    if since_ts_us is not None:
        clauses.append(f"ts_us >= {int(since_ts_us)}")
    if kinds is not None:
        names = ", ".join("'" + k.replace("'", "''") + "'" for k in kinds)
        clauses.append(f"kind IN ({names})" if names else "false")
    return " AND ".join(clauses)


@contextmanager
def reading(data_dir: str | Path, con: duckdb.DuckDBPyConnection | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """The given connection (one snapshot shared by several reads), or a fresh one closed after."""
    if con is not None:
        yield con
        return
    own = connect(data_dir, locked_down=False)
    try:
        yield own
    finally:
        own.close()


def replay_batches(data_dir: str | Path, *, after_seq: int = 0, since_ts_us: int | None = None,
                   kinds: Iterable[str] | None = None, columns: Iterable[str] | None = None,
                   batch_rows: int = 200_000, con: duckdb.DuckDBPyConnection | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches in `seq` order; `columns` picks the few a projection needs."""
    with reading(data_dir, con) as db:
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        sql = f"SELECT {cols} FROM events WHERE {_where(after_seq, since_ts_us, kinds)} ORDER BY seq"
        yield from db.sql(sql).to_arrow_reader(batch_rows)


def replay_events(data_dir: str | Path, *, after_seq: int = 0, since_ts_us: int | None = None,
                  kinds: Iterable[str] | None = None, con: duckdb.DuckDBPyConnection | None = None) -> Iterator[Event]:
    """Typed events in `seq` order, each `event_id` once (the first time it was logged)."""
    seen: set[str] = set()
    for batch in replay_batches(data_dir, after_seq=after_seq, since_ts_us=since_ts_us, kinds=kinds, con=con):
        for event in table_to_events(pa.Table.from_batches([batch])):
            if event.event_id not in seen:
                seen.add(event.event_id)
                yield event
