"""The shipped price registry: list prices, context windows and capabilities of common models.

These are the providers' public list prices (USD per 1M tokens) as of `REGISTRY_DATE`, stored as
integer micro-USD per 1M tokens. They go stale: operators correct or extend them in
`modelsconfig.yml` (overrides win), and OpenRouter's own listing wins for its models. An entry
is not an offer by itself: the provider must list the model (or an override says `listed: true`).
Prices are written as decimal strings and converted exactly, so they read like the price pages.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from domain.catalog import Spec

REGISTRY_DATE: Final = "2026-11-01"
MICROS_PER_USD: Final = 1_000_000


def usd(amount: str) -> int:
    """'0.15' (USD per 1M tokens) → 150_000 micro-USD per 1M tokens, exactly (no float)."""
    micros = Decimal(amount) * MICROS_PER_USD
    if micros != micros.to_integral_value() or micros < 0:
        raise ValueError(f"price {amount!r} USD is not a whole, non-negative number of micro-USD")
    return int(micros)


def _chat(
    input: str,
    output: str,
    window: int,
    cached: str | None = None,
    *,
    tools: bool = True,
    vision: bool = False,
    json_mode: bool = True,
) -> Spec:
    return Spec(
        kind="chat",
        input=usd(input),
        output=usd(output),
        cached=None if cached is None else usd(cached),
        context_window=window,
        tools=tools,
        vision=vision,
        json_mode=json_mode,
        streaming=True,
    )


def _completion(input: str, output: str, window: int) -> Spec:
    return Spec(
        kind="completion", input=usd(input), output=usd(output), context_window=window,
        tools=False, vision=False, json_mode=False, streaming=True,
    )


def _embedding(input: str, window: int) -> Spec:
    return Spec(
        kind="embedding", input=usd(input), output=0, context_window=window,
        tools=False, vision=False, json_mode=False, streaming=False,
    )


_GPT41_WINDOW: Final = 1_047_576

REGISTRY: Final[dict[str, dict[str, Spec]]] = {
    "openai": {
        "gpt-4o-mini": _chat("0.15", "0.60", 128_000, "0.075", vision=True),
        "gpt-4o": _chat("2.50", "10.00", 128_000, "1.25", vision=True),
        "gpt-4.1": _chat("2.00", "8.00", _GPT41_WINDOW, "0.50", vision=True),
        "gpt-4.1-mini": _chat("0.40", "1.60", _GPT41_WINDOW, "0.10", vision=True),
        "gpt-4.1-nano": _chat("0.10", "0.40", _GPT41_WINDOW, "0.025", vision=True),
        "gpt-5": _chat("1.25", "10.00", 400_000, "0.125", vision=True),
        "gpt-5-mini": _chat("0.25", "2.00", 400_000, "0.025", vision=True),
        "gpt-5-nano": _chat("0.05", "0.40", 400_000, "0.005", vision=True),
        "o4-mini": _chat("1.10", "4.40", 200_000, "0.275", vision=True),
        "o3-mini": _chat("1.10", "4.40", 200_000, "0.55"),
        "gpt-3.5-turbo": _chat("0.50", "1.50", 16_385),
        "gpt-3.5-turbo-instruct": _completion("1.50", "2.00", 4_096),
        "text-embedding-3-small": _embedding("0.02", 8_191),
        "text-embedding-3-large": _embedding("0.13", 8_191),
        "text-embedding-ada-002": _embedding("0.10", 8_191),
    },
    "groq": {
        "llama-3.1-8b-instant": _chat("0.05", "0.08", 131_072),
        "llama-3.3-70b-versatile": _chat("0.59", "0.79", 131_072),
        "meta-llama/llama-4-scout-17b-16e-instruct": _chat("0.11", "0.34", 131_072, vision=True),
        "openai/gpt-oss-20b": _chat("0.10", "0.50", 131_072),
        "openai/gpt-oss-120b": _chat("0.15", "0.75", 131_072),
        "qwen/qwen3-32b": _chat("0.29", "0.59", 131_072),
    },
    "sambanova": {
        "Meta-Llama-3.1-8B-Instruct": _chat("0.10", "0.20", 16_384),
        "Meta-Llama-3.3-70B-Instruct": _chat("0.60", "1.20", 131_072),
        "Meta-Llama-3.1-405B-Instruct": _chat("5.00", "10.00", 16_384),
        "DeepSeek-V3-0324": _chat("3.00", "4.50", 32_768),
    },
    "alibaba": {
        "qwen-turbo": _chat("0.05", "0.20", 1_000_000),
        "qwen-plus": _chat("0.40", "1.20", 131_072),
        "qwen-max": _chat("1.60", "6.40", 32_768),
        "text-embedding-v3": _embedding("0.07", 8_192),
    },
    "openrouter": {
        "openai/gpt-4o-mini": _chat("0.15", "0.60", 128_000, "0.075", vision=True),
        "openai/gpt-4o": _chat("2.50", "10.00", 128_000, "1.25", vision=True),
        "meta-llama/llama-3.3-70b-instruct": _chat("0.13", "0.40", 131_072),
        "google/gemini-2.0-flash-001": _chat("0.10", "0.40", 1_048_576, "0.025", vision=True),
        "anthropic/claude-3.5-sonnet": _chat("3.00", "15.00", 200_000, vision=True),
    },
}
