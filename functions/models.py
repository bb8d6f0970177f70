"""`GET /v1/models` and `GET /v1/models/{id}`: every offer, each model name once, and `auto`.

Extra fields beyond OpenAI's (`provider`, `kind`, `pricing`, `context_window`, `capabilities`) tell
callers what the broker knows; clients that do not know them ignore them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from litestar import Request, get

from domain.catalog import Catalog, Offer
from functions.errors import BrokerError
from functions.state import BrokerState


def _usd(micros_per_mtok: int | None) -> str | None:
    return None if micros_per_mtok is None else str(Decimal(micros_per_mtok) / 1_000_000)


def _entry(model_id: str, owned_by: str, offer: Offer, **extra: Any) -> dict[str, Any]:
    p = offer.prices
    return {
        "id": model_id, "object": "model", "created": 0, "owned_by": owned_by,
        "kind": offer.kind, "context_window": offer.context_window,
        "pricing": {"input_usd_per_mtok": _usd(p.input), "output_usd_per_mtok": _usd(p.output),
                    "cached_input_usd_per_mtok": _usd(p.cached)},
        "capabilities": {"tools": offer.caps.tools, "vision": offer.caps.vision,
                         "json_mode": offer.caps.json_mode, "streaming": offer.caps.streaming},
        **extra,
    }


def model_entries(catalog: Catalog) -> list[dict[str, Any]]:
    """`auto`, then each model name (at its cheapest offer), then every provider/model offer."""
    entries: list[dict[str, Any]] = [{
        "id": "auto", "object": "model", "created": 0, "owned_by": "aibroker",
        "description": "the cheapest eligible model for each request", "price_version": catalog.price_version,
    }]
    names = sorted({o.model for o in catalog})
    for name in names:
        offers = catalog.offers_for_model(name)
        cheapest = min(offers, key=lambda o: (not o.priced, (o.prices.input or 0) + (o.prices.output or 0), o.provider))
        entries.append(_entry(name, "aibroker", cheapest, providers=sorted(o.provider for o in offers)))
    entries.extend(_entry(o.key, o.provider, o, provider=o.provider, model=o.model) for o in catalog)
    return entries


def _state(request: Request[Any, Any, Any]) -> BrokerState:
    return request.app.state.broker  # type: ignore[no-any-return]


def _list(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"object": "list", "data": model_entries(_state(request).catalog.catalog)}


def _one(request: Request[Any, Any, Any], model_id: str) -> dict[str, Any]:
    wanted = model_id.lstrip("/")
    for entry in model_entries(_state(request).catalog.catalog):
        if entry["id"] == wanted:
            return entry
    raise BrokerError("model_not_found", f"the model {wanted!r} does not exist (GET /v1/models lists them)", param="model")


list_models = get("/v1/models", sync_to_thread=False, name="list_models")(_list)
get_model = get("/v1/models/{model_id:path}", sync_to_thread=False, name="get_model")(_one)
list_models_unprefixed = get("/models", sync_to_thread=False, name="list_models_unprefixed")(_list)
get_model_unprefixed = get("/models/{model_id:path}", sync_to_thread=False, name="get_model_unprefixed")(_one)
