"""Billing: what each (ip, context, provider, model) consumed in a UTC period, closed periods, unbilled usage.

Every figure is one DuckDB aggregate over the read-only snapshot (the writer may be running); money
stays integer micro-USD end to end. A `billing.marked` event closes a period for some contexts (all
of them when its list is empty): from then on that period only counts usage with
`seq <= through_seq` (the earliest mark wins), so a closed export never changes and late events show
up in `unbilled` instead. Files are rendered by `eventlog.billing_formats`.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from domain.events import INT64_MAX, BillingMarked
from eventlog.fsutil import write_atomic
from eventlog.ids import now_us, uuid7
from eventlog.reader import connect, take_snapshot

if TYPE_CHECKING:
    import duckdb

DAY_US = 86_400_000_000
_PERIOD = re.compile(r"(\d{4})-(\d{2})(?:-(\d{2}))?\Z")
_EPOCH = date(1970, 1, 1)


class BadPeriod(ValueError):
    """A period that is not `YYYY-MM` (a UTC month) or `YYYY-MM-DD` (a UTC day)."""


class LineItem(msgspec.Struct, frozen=True):
    """One (ip, context, provider, model) of a bill. Unknown-price requests add 0 to `cost_micros`."""

    ip: str
    context: str
    provider: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_micros: int
    cost_usd: str  # exact decimal, from cost_micros
    unpriced_requests: int
    usage_provider: int  # requests per usage_source
    usage_estimated: int
    usage_missing: int
    price_versions: tuple[str, ...]  # sorted, "" left out


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    """The exact sum of a bill's line items."""

    period: str
    position: int
    line_items: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_micros: int
    cost_usd: str
    unpriced_requests: int
    usage_provider: int
    usage_estimated: int
    usage_missing: int
    price_versions: tuple[str, ...]


SUMMED = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
          "cost_micros", "unpriced_requests", "usage_provider", "usage_estimated", "usage_missing")


def usd(micros: int) -> str:
    """Integer micro-USD as an exact decimal string: 123 → "0.000123" (no float anywhere)."""
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    return f"{sign}{micros // 1_000_000}.{micros % 1_000_000:06d}"


def period_bounds(period: str) -> tuple[int, int]:
    """[start, end) of a period in µs since the epoch (UTC); raises `BadPeriod` naming the value."""
    m = _PERIOD.match(period) if isinstance(period, str) else None
    if m is None:
        raise BadPeriod(f"period {period!r} must be YYYY-MM (a UTC month) or YYYY-MM-DD (a UTC day)")
    year, month, day = int(m[1]), int(m[2]), int(m[3] or 1)
    try:
        start = date(year, month, day)
    except ValueError as exc:
        raise BadPeriod(f"period {period!r} is not a calendar date ({exc})") from None
    days = 1 if m[3] else calendar.monthrange(year, month)[1]
    first = (start - _EPOCH).days
    return first * DAY_US, (first + days) * DAY_US


def rfc3339(ts_us: int) -> str:
    """`2026-11-30T23:59:59.999999Z`: fixed width, always UTC, always microseconds."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- the aggregate ---------------------------------------------------------------------------------

_ROWS = (
    "coalesce(ip, '') AS ip, coalesce(context, '') AS context, coalesce(provider, '') AS provider, "
    "coalesce(model, '') AS model, seq, ts_us, coalesce(prompt_tokens, 0) AS prompt_tokens, "
    "coalesce(completion_tokens, 0) AS completion_tokens, coalesce(cached_tokens, 0) AS cached_tokens, "
    "coalesce(reasoning_tokens, 0) AS reasoning_tokens, cost_micros, "
    "coalesce(usage_source, 'provider') AS usage_source, coalesce(price_version, '') AS price_version, "
    "input_micros_per_mtok, output_micros_per_mtok, cached_micros_per_mtok"
)


def aggregate_sql(rows_sql: str, keys: Iterable[str] = ()) -> str:
    """Line items (columns in `LineItem` order minus `cost_usd`, then the last `seq`) from a query of
    usage rows (columns as `_ROWS`), grouped and ordered by `keys` + (ip, context, provider, model).

    Sums are cast back to BIGINT: the files store int64, so an impossible overflow fails loudly here.
    """
    group = ", ".join([*keys, "ip", "context", "provider", "model"])
    return (
        f"SELECT {group}, count(*), sum(prompt_tokens)::BIGINT, sum(completion_tokens)::BIGINT, "
        "sum(cached_tokens)::BIGINT, sum(reasoning_tokens)::BIGINT, sum(coalesce(cost_micros, 0))::BIGINT, "
        "count(*) FILTER (WHERE cost_micros IS NULL), count(*) FILTER (WHERE usage_source = 'provider'), "
        "count(*) FILTER (WHERE usage_source = 'estimated'), count(*) FILTER (WHERE usage_source = 'missing'), "
        "coalesce(list(DISTINCT price_version ORDER BY price_version) FILTER (WHERE price_version <> ''), []), "
        f"max(seq) FROM ({rows_sql}) GROUP BY {group} ORDER BY {group}"
    )


def item_of(row: tuple[Any, ...]) -> LineItem:
    """A LineItem from one aggregate row (without leading `keys`)."""
    ip, context, provider, model, n, p, c, k, r, cost, unpriced, src_p, src_e, src_m, versions, _ = row
    return LineItem(ip, context, provider, model, n, p, c, k, r, cost, usd(cost), unpriced, src_p, src_e, src_m,
                    tuple(versions))


def totals_of(rows: list[tuple[Any, ...]], period: str) -> Totals:
    """Exact sums of the aggregate's rows (column-wise: fast for 1e5 items)."""
    columns = list(zip(*rows)) or [()] * 16
    sums = dict(zip(SUMMED, (sum(col) for col in columns[4:14])))
    versions = tuple(sorted({v for vs in columns[14] for v in vs}))
    return Totals(period=period, position=max(columns[15], default=0), line_items=len(rows),
                  cost_usd=usd(sums["cost_micros"]), price_versions=versions, **sums)


def cutoffs(con: duckdb.DuckDBPyConnection, period: str) -> tuple[int | None, dict[str, int]]:
    """(seq cut for every context, seq cut per context) from the marks that closed `period`."""
    everyone: int | None = None
    per_context: dict[str, int] = {}
    for contexts, through in con.execute(
            "SELECT coalesce(contexts, []), through_seq FROM billing_marks WHERE period = ?", [period]).fetchall():
        if not contexts:
            everyone = through if everyone is None else min(everyone, through)
        for c in contexts:
            per_context[c] = min(per_context.get(c, through), through)
    return everyone, per_context


def period_rows(con: duckdb.DuckDBPyConnection, period: str, contexts: Iterable[str] | None,
                ips: Iterable[str] | None, through_seq: int | None) -> tuple[str, list[Any]]:
    """(SQL, params) of the usage rows a bill of `period` counts: in the period, not cut off by a
    mark (or by `through_seq`), matching the filters."""
    start, end = period_bounds(period)
    everyone, per_context = cutoffs(con, period)
    cap = min(x for x in (everyone, through_seq, INT64_MAX) if x is not None)
    where = ["ts_us >= ?", "ts_us < ?", "seq <= least(coalesce(cut.through, ?), ?)"]
    params: list[Any] = [list(per_context), list(per_context.values()), start, end, cap, cap]
    for column, values in (("context", contexts), ("ip", ips)):
        if values is not None:
            where.append(f"list_contains(?::VARCHAR[], {column})")
            params.append(sorted(set(values)))
    sql = (f"SELECT * FROM (SELECT {_ROWS} FROM usage) AS u "
           "LEFT JOIN (SELECT unnest(?::VARCHAR[]) AS ctx, unnest(?::BIGINT[]) AS through) AS cut "
           f"ON cut.ctx = u.context WHERE {' AND '.join(where)}")
    return sql, params


def items_from(con: duckdb.DuckDBPyConnection, period: str, contexts: Iterable[str] | None = None,
               ips: Iterable[str] | None = None,
               through_seq: int | None = None) -> tuple[list[LineItem], Totals, int]:
    rows_sql, params = period_rows(con, period, contexts, ips, through_seq)
    rows = con.execute(aggregate_sql(rows_sql), params).fetchall()
    totals = totals_of(rows, period)
    return [item_of(r) for r in rows], totals, totals.position


def line_items(data_dir: str | Path, period: str, *, contexts: Iterable[str] | None = None,
               ips: Iterable[str] | None = None,
               through_seq: int | None = None) -> tuple[list[LineItem], Totals, int]:
    """(items in (ip, context, provider, model) order, their exact totals, the highest `seq` counted)."""
    period_bounds(period)
    con = connect(data_dir)
    try:
        return items_from(con, period, contexts, ips, through_seq)
    finally:
        con.close()


# ---- files, marks, what is left to bill ------------------------------------------------------------


def export(data_dir: str | Path, out_dir: str | Path, period: str, fmt: str,
           contexts: Iterable[str] | None = None, ips: Iterable[str] | None = None) -> dict[str, Any]:
    """Write `items.<ext>`, `totals.<ext>` and `manifest.json` under `out_dir`; returns the manifest.

    Byte-identical for the same log and arguments: no clock, fixed writer options, fixed order.
    """
    from eventlog.billing_formats import check_format, render  # it imports this module

    check_format(fmt)  # refuse an unknown format before reading the log
    contexts = None if contexts is None else sorted(set(contexts))
    ips = None if ips is None else sorted(set(ips))
    items, totals, position = line_items(data_dir, period, contexts=contexts, ips=ips)
    files = render(fmt, items, totals)
    start, end = period_bounds(period)
    manifest: dict[str, Any] = {
        "kind": "aibroker.billing.export.v1", "period": period,
        "period_start": rfc3339(start), "period_end": rfc3339(end),
        "format": fmt, "contexts": contexts, "ips": ips, "position": position,
        "totals": {"line_items": totals.line_items, "requests": totals.requests,
                   "cost_micros": totals.cost_micros, "cost_usd": totals.cost_usd,
                   "unpriced_requests": totals.unpriced_requests},
        "files": {name: {"rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, (data, rows) in files.items()},
    }
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in files.items():
        write_atomic(out / name, data)
    write_atomic(out / "manifest.json", msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    return manifest


def mark_event(data_dir: str | Path, period: str, contexts: Iterable[str] | None,
               actor: str) -> BillingMarked | None:
    """The `billing.marked.v1` event that closes `period` for `contexts` (all when empty/None) at the
    log's current position, or None when every one of them is closed already (marking twice is a no-op).

    `export_sha256` is the SHA-256 of the CSV items file `export(..., "csv", contexts)` writes.
    """
    from eventlog.billing_formats import render  # it imports this module

    period_bounds(period)
    wanted = sorted(set(contexts or ()))
    snap = take_snapshot(data_dir)
    con = connect(data_dir, snapshot=snap)
    try:
        everyone, per_context = cutoffs(con, period)
        if everyone is not None or (wanted and all(c in per_context for c in wanted)):
            return None
        position = int((con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone() or (0,))[0])
        items, totals, _ = items_from(con, period, wanted or None, None, position)
    finally:
        con.close()
    data, _ = render("csv", items, totals)["items.csv"]
    ts = now_us()
    return BillingMarked(event_id=uuid7(ts), ts_us=ts, period=period, contexts=wanted, through_seq=position,
                         actor=actor, export_sha256=hashlib.sha256(data).hexdigest())


_UNBILLED = """
WITH marks AS (
  SELECT period, unnest(CASE WHEN len(coalesce(contexts, [])) = 0 THEN [NULL::VARCHAR] ELSE contexts END) AS ctx,
         through_seq FROM billing_marks),
rows AS (SELECT {rows}, strftime(make_timestamp(ts_us), '%Y-%m') AS month,
                strftime(make_timestamp(ts_us), '%Y-%m-%d') AS day FROM usage),
cut AS (
  SELECT k.period, k.context, min(m.through_seq) AS through
  FROM (SELECT DISTINCT month AS period, context FROM rows
        UNION SELECT DISTINCT day, context FROM rows) AS k
  JOIN marks AS m ON m.period = k.period AND (m.ctx IS NULL OR m.ctx = k.context) GROUP BY ALL)
SELECT rows.* FROM rows
LEFT JOIN cut AS cm ON cm.period = rows.month AND cm.context = rows.context
LEFT JOIN cut AS cd ON cd.period = rows.day AND cd.context = rows.context
WHERE rows.seq > greatest(coalesce(cm.through, -1), coalesce(cd.through, -1))
"""


def unbilled(data_dir: str | Path) -> list[tuple[str, LineItem]]:
    """(UTC month "YYYY-MM", line item) for usage no mark covers: its month (or day) was never closed
    for its context, or it arrived late (`seq` above the mark's `through_seq`). Month order, then item order."""
    con = connect(data_dir)
    try:
        rows = con.execute(aggregate_sql(_UNBILLED.format(rows=_ROWS), keys=["month"])).fetchall()
    finally:
        con.close()
    return [(r[0], item_of(r[1:])) for r in rows]
