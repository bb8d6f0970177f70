"""Admin methods that read the log: spend rollups, one request's events, the tail, SQL, billing.

All of them query a fresh read-only DuckDB snapshot in a worker thread, so the event loop that
serves requests never waits on analytics.
"""

from __future__ import annotations

import threading
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

import msgspec

from eventlog import billing
from eventlog.reader import connect
from eventlog.sql import SqlRefused, query
from functions.admin_methods import METHODS, AdminContext, off_loop
from functions.jsonrpc import INVALID_PARAMS, NoParams, RpcError, method

MAX_SQL_ROWS = 10_000
MAX_SQL_SECONDS = 60.0


def _us(value: str, name: str) -> int:
    """An ISO date or datetime (UTC if no zone) as µs since the epoch."""
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            moment = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"invalid params: '{name}' must be an ISO date or datetime, got {value!r}") from None
    return int(moment.timestamp() * 1_000_000)


class SpendParams(msgspec.Struct, forbid_unknown_fields=True):
    start: str | None = msgspec.field(default=None, name="from")
    end: str | None = msgspec.field(default=None, name="to")
    context: str | None = None
    ip: str | None = None
    model: str | None = None
    provider: str | None = None
    group_by: Literal["day", "month"] | None = None


def spend_rows(data_dir: Path, keys: list[str], p: SpendParams) -> list[dict[str, Any]]:
    where, args = ["true"], []
    if p.start:
        where.append("ts_us >= ?")
        args.append(_us(p.start, "from"))
    if p.end:
        where.append("ts_us < ?")
        args.append(_us(p.end, "to"))
    for name in ("context", "ip", "model", "provider"):
        if getattr(p, name) is not None:
            where.append(f"{name} = ?")
            args.append(getattr(p, name))
    cols = list(keys)
    if p.group_by:
        cols.append(f"strftime(ts, '{'%Y-%m-%d' if p.group_by == 'day' else '%Y-%m'}') AS period")
    sql = (f"SELECT {', '.join(cols)}, count(*) AS requests, sum(prompt_tokens) AS prompt_tokens, "
           "sum(completion_tokens) AS completion_tokens, sum(cached_tokens) AS cached_tokens, "
           "sum(coalesce(cost_micros, 0)) AS cost_micros, count(*) FILTER (WHERE cost_micros IS NULL) AS unpriced "
           f"FROM usage WHERE {' AND '.join(where)} GROUP BY ALL ORDER BY cost_micros DESC, {', '.join(keys)}")
    con = connect(data_dir)
    try:
        cursor = con.execute(sql, args)
        names = [d[0] for d in cursor.description or []]
        rows = [dict(zip(names, r)) for r in cursor.fetchall()]
    finally:
        con.close()
    for row in rows:
        row["cost_micros"] = int(row["cost_micros"] or 0)
        row["cost_usd"] = billing.usd(row["cost_micros"])
        for k in ("prompt_tokens", "completion_tokens", "cached_tokens"):
            row[k] = int(row[k] or 0)
    return rows


def _spend(keys: list[str]) -> Any:
    async def handler(ctx: AdminContext, p: SpendParams) -> list[dict[str, Any]]:
        return await off_loop(spend_rows, ctx.state.config.data_dir, keys, p)  # type: ignore[no-any-return]

    return handler


for _name, _keys, _what in (("spend.by_context", ["context"], "context"), ("spend.by_ip", ["ip"], "source ip"),
                            ("spend.by_bucket", ["ip", "context"], "(ip, context) bucket")):
    method(METHODS, _name, SpendParams, list[dict[str, Any]],
           f"Spend per {_what} (filters: from, to, context, ip, model, provider; group_by day|month).")(_spend(_keys))


# ---- events ---------------------------------------------------------------------------------


def recent_events(data_dir: Path, where: str, args: list[Any], limit: int, newest_first: bool) -> list[dict[str, Any]]:
    con = connect(data_dir)
    try:
        order = "DESC" if newest_first else "ASC"
        cursor = con.execute(f"SELECT * FROM events WHERE {where} ORDER BY seq {order} LIMIT {int(limit)}", args)
        names = [d[0] for d in cursor.description or []]
        rows = [{k: v for k, v in zip(names, r) if v is not None and v != []} for r in cursor.fetchall()]
    finally:
        con.close()
    return rows[::-1] if newest_first else rows


class RequestId(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str


@method(METHODS, "usage.request", RequestId, list[dict[str, Any]], "Every event of one request, in log order.")
async def usage_request(ctx: AdminContext, p: RequestId) -> list[dict[str, Any]]:
    return await off_loop(recent_events, ctx.state.config.data_dir, "request_id = ?", [p.request_id], 1000, False)  # type: ignore[no-any-return]


class Tail(msgspec.Struct, forbid_unknown_fields=True):
    n: int = 20
    kind: str | None = None
    context: str | None = None
    ip: str | None = None


@method(METHODS, "events.tail", Tail, list[dict[str, Any]], "The newest N events (at most 1000), optionally filtered.")
async def events_tail(ctx: AdminContext, p: Tail) -> list[dict[str, Any]]:
    if not 1 <= p.n <= 1000:
        raise RpcError(INVALID_PARAMS, f"invalid params: 'n' must be from 1 to 1000, got {p.n}")
    where, args = ["true"], []
    for name in ("kind", "context", "ip"):
        if getattr(p, name) is not None:
            where.append(f"{name} = ?")
            args.append(getattr(p, name))
    return await off_loop(recent_events, ctx.state.config.data_dir, " AND ".join(where), args, p.n, True)  # type: ignore[no-any-return]


# ---- SQL ------------------------------------------------------------------------------------


class SqlParams(msgspec.Struct, forbid_unknown_fields=True):
    sql: str
    max_rows: int = 1000
    timeout_s: float = 10.0


def _run_sql(data_dir: Path, p: SqlParams) -> dict[str, Any]:
    con = connect(data_dir)
    timer = threading.Timer(p.timeout_s, con.interrupt)
    timer.start()
    try:
        columns, rows, truncated = query(data_dir, p.sql, max_rows=p.max_rows, con=con)
    except SqlRefused as exc:
        interrupted = "INTERRUPT" in str(exc).upper()
        message = f"the query ran past {p.timeout_s:g}s and was stopped" if interrupted else str(exc)
        raise RpcError(-32010, f"sql refused: {message}") from None
    finally:
        timer.cancel()
        con.close()
    return {"columns": columns, "rows": msgspec.to_builtins([list(r) for r in rows]), "truncated": truncated}


@method(METHODS, "sql.query", SqlParams, dict[str, Any],
        "One read-only SELECT over the log's views (row limit ≤ 10000, time limit ≤ 60 s).")
async def sql_query(ctx: AdminContext, p: SqlParams) -> dict[str, Any]:
    if not 1 <= p.max_rows <= MAX_SQL_ROWS:
        raise RpcError(INVALID_PARAMS, f"invalid params: 'max_rows' must be from 1 to {MAX_SQL_ROWS}")
    if not 0 < p.timeout_s <= MAX_SQL_SECONDS:
        raise RpcError(INVALID_PARAMS, f"invalid params: 'timeout_s' must be > 0 and ≤ {MAX_SQL_SECONDS:g}")
    return await off_loop(_run_sql, ctx.state.config.data_dir, p)  # type: ignore[no-any-return]


# ---- billing --------------------------------------------------------------------------------


class ExportParams(msgspec.Struct, forbid_unknown_fields=True):
    period: str
    format: Literal["csv", "jsonl", "parquet", "cloudevents"] = "csv"
    contexts: list[str] | None = None
    ips: list[str] | None = None
    name: str | None = None  # a folder name under <data dir>/exports/ (default: period-format)


def _export_dir(data_dir: Path, p: ExportParams) -> Path:
    name = p.name or f"{p.period}-{p.format}" + (f"-{'-'.join(sorted(p.contexts))}" if p.contexts else "")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
        raise RpcError(INVALID_PARAMS, f"invalid params: 'name' {name!r} must be a plain folder name")
    return data_dir / "exports" / name


def _export(data_dir: Path, p: ExportParams) -> dict[str, Any]:
    out = _export_dir(data_dir, p)
    try:
        manifest = billing.export(data_dir, out, p.period, p.format, p.contexts, p.ips)
    except (billing.BadPeriod, ValueError) as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None
    return {"dir": str(out), **manifest}


@method(METHODS, "billing.export", ExportParams, dict[str, Any],
        "Write a period's bill (one line per ip, context, provider, model) under <data dir>/exports/.")
async def billing_export(ctx: AdminContext, p: ExportParams) -> dict[str, Any]:
    return await off_loop(_export, ctx.state.config.data_dir, p)  # type: ignore[no-any-return]


@method(METHODS, "billing.unbilled", NoParams, list[dict[str, Any]],
        "Usage no billing mark covers yet (never-marked periods and late events), by month.")
async def billing_unbilled(ctx: AdminContext, _: NoParams) -> list[dict[str, Any]]:
    rows = await off_loop(billing.unbilled, ctx.state.config.data_dir)
    return [{"period": period, **msgspec.to_builtins(item)} for period, item in rows]


class MarkParams(msgspec.Struct, forbid_unknown_fields=True):
    period: str
    contexts: list[str] = []
    actor: str = ""


@method(METHODS, "billing.mark_billed", MarkParams, dict[str, Any],
        "Close a period for contexts (all when empty): a billing.marked event; marking twice is a no-op.")
async def billing_mark_billed(ctx: AdminContext, p: MarkParams) -> dict[str, Any]:
    async with ctx.state.billing_lock:  # two marks at once must not both close the same period
        try:
            event = await off_loop(billing.mark_event, ctx.state.config.data_dir, p.period, p.contexts,
                                   p.actor or ctx.actor)
        except billing.BadPeriod as exc:
            raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None
        if event is None:
            return {"marked": False, "reason": "already billed: every requested context is closed for this period"}
        await ctx.state.log.append([event])
    return {"marked": True, "event": msgspec.to_builtins(event)}
