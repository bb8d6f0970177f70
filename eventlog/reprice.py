"""Repricing: what a period's usage would cost at corrected unit prices, per context, to the micro-USD.

Same rule as `domain.cost`, in DuckDB integer math per event: pico-USD =
`(prompt - cached) × input + cached × cached_price + completion × output` (HUGEINT; cached tokens are
capped at the prompt and billed at `input` when the cached price is unknown), rounded half up to
micro-USD per event (`(picos + 500000) // 1000000`), then summed. The events are exactly those the
period's bill counts (`billing.period_rows`: closed periods stay cut at their mark).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from domain.cost import Prices
from domain.events import INT64_MAX
from eventlog.billing import period_bounds, period_rows
from eventlog.reader import connect


class ContextReprice(msgspec.Struct, frozen=True, kw_only=True):
    """One context's bill as recorded (`old_micros`) and at the corrected prices (`new_micros`)."""

    context: str
    requests: int
    repriced_requests: int  # requests whose provider/model had a corrected price
    old_micros: int
    new_micros: int
    diff_micros: int  # new - old
    old_unpriced: int  # requests without a cost (they add 0)
    new_unpriced: int


_REPRICE = """
WITH rows AS ({rows}),
prices AS (SELECT unnest(?::VARCHAR[]) AS key, unnest(?::BIGINT[]) AS i, unnest(?::BIGINT[]) AS o,
                  unnest(?::BIGINT[]) AS c),
priced AS (
  SELECT rows.context, rows.cost_micros AS old, prompt_tokens AS pt, completion_tokens AS ct,
         least(cached_tokens, prompt_tokens) AS kt, coalesce(pf.key, pm.key) IS NOT NULL AS repriced,
         CASE WHEN pf.key IS NOT NULL THEN pf.i WHEN pm.key IS NOT NULL THEN pm.i ELSE input_micros_per_mtok END AS ni,
         CASE WHEN pf.key IS NOT NULL THEN pf.o WHEN pm.key IS NOT NULL THEN pm.o ELSE output_micros_per_mtok END AS no,
         CASE WHEN pf.key IS NOT NULL THEN pf.c WHEN pm.key IS NOT NULL THEN pm.c ELSE cached_micros_per_mtok END AS nc
  FROM rows
  LEFT JOIN prices AS pf ON pf.key = rows.provider || '/' || rows.model
  LEFT JOIN prices AS pm ON pm.key = rows.model),
costed AS (
  SELECT context, old, repriced,
         CASE WHEN ni IS NULL OR no IS NULL THEN NULL
              ELSE ((pt - kt)::HUGEINT * ni + kt::HUGEINT * coalesce(nc, ni) + ct::HUGEINT * no + 500000) // 1000000
         END AS new
  FROM priced)
SELECT context, count(*), count(*) FILTER (WHERE repriced), sum(coalesce(old, 0)), sum(coalesce(new, 0)),
       count(*) FILTER (WHERE old IS NULL), count(*) FILTER (WHERE new IS NULL)
FROM costed GROUP BY context ORDER BY context
"""


def checked_prices(prices: Mapping[str, Prices | Mapping[str, Any]]) -> dict[str, Prices]:
    """`{"provider/model" or "model": Prices}`; input and output are required integers >= 0."""
    out: dict[str, Prices] = {}
    for key, value in prices.items():
        p = value if isinstance(value, Prices) else Prices(**{k: value.get(k) for k in ("input", "output", "cached")})
        extra = set() if isinstance(value, Prices) else set(value) - {"input", "output", "cached"}
        if extra:
            raise ValueError(f"prices[{key!r}]: unknown fields {sorted(extra)} (input, output, cached)")
        for name in ("input", "output", "cached"):
            v = getattr(p, name)
            if v is None and name == "cached":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= INT64_MAX:
                raise ValueError(f"prices[{key!r}].{name} must be an integer >= 0 (micro-USD per 1M tokens), got {v!r}")
        out[str(key)] = p
    return out


def reprice(data_dir: str | Path, period: str, prices: Mapping[str, Prices | Mapping[str, Any]],
            contexts: Iterable[str] | None = None) -> list[ContextReprice]:
    """Per context (sorted): recorded cost vs the cost at `prices` (micro-USD per 1M tokens).

    `prices` keys are "provider/model" (wins) or "model"; usage of other models is recomputed from its
    recorded unit prices, so it differs from the record only if the record was not `domain.cost`'s.
    """
    period_bounds(period)
    table = checked_prices(prices)
    con = connect(data_dir)
    try:
        rows_sql, params = period_rows(con, period, contexts, None, None)
        columns = [list(table), [p.input for p in table.values()], [p.output for p in table.values()],
                   [p.cached for p in table.values()]]
        result = con.execute(_REPRICE.format(rows=rows_sql), params + columns).fetchall()
    finally:
        con.close()
    return [ContextReprice(context=ctx, requests=int(n), repriced_requests=int(rp), old_micros=int(old),
                           new_micros=int(new), diff_micros=int(new) - int(old), old_unpriced=int(ou),
                           new_unpriced=int(nu))
            for ctx, n, rp, old, new, ou, nu in result]
