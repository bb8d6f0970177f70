"""Read-only SQL for operators: exactly one SELECT, inside the log's directory, bounded in rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventlog.reader import connect

if TYPE_CHECKING:
    import duckdb


class SqlRefused(ValueError):
    """The statement is not a single read-only SELECT, or touches what it may not."""


def check_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    import duckdb  # on first use: the serving process loads DuckDB only for operator SQL

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlRefused(f"SQL does not parse: {exc}") from None
    if len(statements) != 1:
        raise SqlRefused(f"exactly one SELECT statement is allowed; got {len(statements)} statements")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlRefused(f"only SELECT is allowed; got {kind.name} (COPY, ATTACH, SET, INSERT… are refused)")


def query(data_dir: str | Path, sql: str, *, max_rows: int = 10_000,
          con: duckdb.DuckDBPyConnection | None = None) -> tuple[list[str], list[tuple[Any, ...]], bool]:
    """(column names, rows, truncated). Raises `SqlRefused` with a message that says why."""
    import duckdb

    own = con is None
    con = con or connect(data_dir)
    try:
        check_select(con, sql)
        try:
            cursor = con.execute(sql)
            rows = cursor.fetchmany(max_rows + 1)
        except duckdb.PermissionException as exc:
            raise SqlRefused(f"the query may only read the event log ({exc})") from None
        except duckdb.Error as exc:
            raise SqlRefused(f"query failed: {exc}") from None
        columns = [d[0] for d in cursor.description or []]
        return columns, rows[:max_rows], len(rows) > max_rows
    finally:
        if own:
            con.close()
