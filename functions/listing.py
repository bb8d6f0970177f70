"""Parse a provider's `GET /models` answer into `ModelInfo`s (OpenAI shape, OpenRouter's extras)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from domain.catalog import Capabilities, ModelInfo
from domain.cost import Prices

PICO_PER_USD = 10**12  # USD per token → micro-USD per 1M tokens


def _price(value: Any) -> int | None:
    """OpenRouter quotes USD per token as a decimal string ("0.00000015"); exact conversion."""
    if value is None:
        return None
    try:
        micros = Decimal(str(value)) * PICO_PER_USD
    except InvalidOperation:
        return None
    if micros < 0:  # OpenRouter uses -1 for "variable" (router models): unknown
        return None
    return int(micros.to_integral_value())


def _info(entry: dict[str, Any]) -> ModelInfo | None:
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    pricing = entry.get("pricing") if isinstance(entry.get("pricing"), dict) else {}
    prices = Prices(_price(pricing.get("prompt")), _price(pricing.get("completion")),
                    _price(pricing.get("input_cache_read")))
    window = entry.get("context_length") or entry.get("context_window")
    arch = entry.get("architecture") if isinstance(entry.get("architecture"), dict) else {}
    params = entry.get("supported_parameters")
    caps = None
    if isinstance(params, list) or arch:
        params = params or []
        caps = Capabilities(
            tools="tools" in params,
            vision="image" in (arch.get("input_modalities") or []),
            json_mode="response_format" in params,
            streaming="stream" in params or not params,
        )
    kind = "embedding" if "embeddings" in (arch.get("output_modalities") or []) else None
    return ModelInfo(
        id=model_id,
        prices=prices if (prices.input is not None or prices.output is not None) else None,
        context_window=window if isinstance(window, int) and window > 0 else None,
        kind=kind,
        caps=caps,
    )


def parse_listing(body: bytes) -> list[ModelInfo]:
    """Raises ValueError when the body is not an OpenAI-style model list."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"models listing is not JSON: {exc}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError("models listing has no 'data' list")
    return [info for entry in data if isinstance(entry, dict) and (info := _info(entry))]
