"""The admin web UI (`ui.sock`): one server-rendered page — spend, limits, providers, recent events.

Plain HTML, no scripts: it reads the same projections and SQL views as the admin RPC, so what an
operator sees here and what `spend.by_context` answers are the same numbers.
"""

from __future__ import annotations

import asyncio
import html
import time
from typing import Any

from litestar import Litestar, Request, Response, get

from eventlog.base import EventLog
from functions.admin import refusal
from functions.admin_data import SpendParams, recent_events, spend_rows
from functions.app import health, ready
from functions.config import BrokerConfig
from functions.runtime import DeferredApp, runtime_lifespan
from functions.state import BrokerState
from functions.lean_app import LeanLitestar

STYLE = """body{font:14px system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border-bottom:1px solid #ddd;padding:.25rem .75rem;text-align:left}th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.5rem}"""


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "<p><em>nothing yet</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"n" if isinstance(r.get(c), int) else ""}">{html.escape(str(r.get(c, "")))}</td>'
                         for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(state: BrokerState, spend: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    now_s = time.monotonic()
    providers = [{"provider": p.name, "enabled": p.enabled, "usable": p.usable(now_s),
                  "keys": ", ".join(k["key_id"] for k in p.keys.snapshot(now_s))} for p in state.providers.values()]
    overrides = [{"scope": s, "ip": ip, "context": c, "settings": v}
                 for (s, ip, c), v in sorted(state.admission.book.overrides.items())]
    catalog = state.catalog.catalog
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>aibroker</title><style>{STYLE}</style></head>
<body><h1>aibroker</h1><p>{len(catalog)} offers, prices {html.escape(catalog.price_version)}; data in
{html.escape(str(state.config.data_dir))}</p>
<h2>Spend this month by context</h2>{_table(spend, ["context", "requests", "prompt_tokens", "completion_tokens", "cost_usd"])}
<h2>Limit overrides</h2>{_table(overrides, ["scope", "ip", "context", "settings"])}
<h2>Providers</h2>{_table(providers, ["provider", "enabled", "usable", "keys"])}
<h2>Recent events</h2>{_table(events, ["seq", "kind", "ip", "context", "request_id", "model", "cost_micros"])}
</body></html>"""


@get("/")
async def page(request: Request[Any, Any, Any]) -> Response[str]:
    state: BrokerState = request.app.state.broker
    why = refusal(state.config, request)
    if why is not None:
        return Response(html.escape(why), status_code=401, media_type="text/plain")
    month = time.strftime("%Y-%m-01", time.gmtime())
    spend = await asyncio.to_thread(spend_rows, state.config.data_dir, ["context"], SpendParams(start=month))
    events = await asyncio.to_thread(recent_events, state.config.data_dir, "true", [], 20, True)
    return Response(render(state, spend, events[::-1]), media_type="text/html")


def create_ui_app(config: BrokerConfig, *, event_log: EventLog | None = None,
                  runtime: BrokerState | None = None) -> Litestar:
    return LeanLitestar(route_handlers=[page, health, ready], lifespan=[runtime_lifespan(config, runtime, event_log)],
                    openapi_config=None, logging_config=None, debug=False)


app = DeferredApp(create_ui_app)
