"""The SQL vocabulary over the log: one view per event kind, and spend rollups.

Every view is defined over `events`, so the same names work in `aibroker sql`, the admin RPC and tests.
"""

from __future__ import annotations

import msgspec.inspect as mi

from domain.events import EVENT_TYPES, Event
from eventlog.columnar import ENVELOPE



def _columns(cls: type[Event]) -> list[str]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    own = [f.name for f in info.fields if f.name not in ENVELOPE]
    return ["kind", "event_id", "seq", "ts_us", "make_timestamp(ts_us) AS ts", "source",
            "request_id", "ip", "context", '"user"'] + [f'"{c}"' for c in own]


_NAMES = {
    "request.received.v1": "requests",
    "route.decided.v1": "routes",
    "request.admitted.v1": "admissions",
    "request.rejected.v1": "rejections",
    "upstream.attempted.v1": "attempts",
    "upstream.failed.v1": "failures",
    "usage.recorded.v1": "usage",
    "limits.changed.v1": "limit_changes",
    "catalog.refreshed.v1": "catalog_refreshes",
    "billing.marked.v1": "billing_marks",
    "config.reloaded.v1": "config_reloads",
    "provider.toggled.v1": "provider_toggles",
}

KIND_VIEWS: dict[str, str] = {}
for _cls in EVENT_TYPES:
    _tag = _cls.__struct_config__.tag
    assert isinstance(_tag, str)
    KIND_VIEWS[_NAMES[_tag]] = f"SELECT {', '.join(_columns(_cls))} FROM events WHERE kind = '{_tag}'"


def derived_views() -> dict[str, str]:
    """Rollups analysts ask for first; all money in integer micro-USD."""
    return {
        "spend_daily": (
            "SELECT CAST(ts AS DATE) AS day, ip, context, provider, model, count(*) AS requests, "
            "sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, "
            "sum(cached_tokens) AS cached_tokens, sum(coalesce(cost_micros, 0)) AS cost_micros, "
            "count(*) FILTER (WHERE cost_micros IS NULL) AS unpriced_requests "
            "FROM usage GROUP BY ALL"
        ),
        "spend_monthly": (
            "SELECT strftime(ts, '%Y-%m') AS month, ip, context, provider, model, "
            "count(*) AS requests, sum(prompt_tokens) AS prompt_tokens, "
            "sum(completion_tokens) AS completion_tokens, sum(cached_tokens) AS cached_tokens, "
            "sum(coalesce(cost_micros, 0)) AS cost_micros, "
            "count(*) FILTER (WHERE cost_micros IS NULL) AS unpriced_requests FROM usage GROUP BY ALL"
        ),
        "buckets": (
            "SELECT ip, context, count(*) AS requests, sum(coalesce(cost_micros, 0)) AS cost_micros, "
            "min(ts) AS first_seen, max(ts) AS last_seen FROM usage GROUP BY ALL"
        ),
    }
