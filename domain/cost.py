"""Money arithmetic: what tokens cost, in exact integer micro-USD (never float).

Unit prices are integer micro-USD per 1M tokens (USD per 1M tokens × 1e6: $0.15/1M → 150_000), so
`tokens × price` is an exact integer in pico-USD (1e-12 USD). Rounding happens once, at the end.
"""

from __future__ import annotations

from msgspec import Struct

TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are quoted per 1M tokens
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text
MESSAGE_OVERHEAD_TOKENS = 4  # role, separators and framing the chat template adds per message


class Prices(Struct, frozen=True):
    """One offer's unit prices in micro-USD per 1M tokens; `None` means unknown.

    `cached` is the price of prompt tokens served from the provider's prompt cache; when it is
    `None` those tokens are billed at `input` (the provider gives no discount we know of).
    """

    input: int | None = None
    output: int | None = None
    cached: int | None = None

    @property
    def known(self) -> bool:
        """Whether a request's cost can be computed (input and output prices both known)."""
        return self.input is not None and self.output is not None


def cost_picos(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int, prices: Prices
) -> int | None:
    """Exact cost in pico-USD (`sum(tokens × micro-USD per MTok)`); `None` if prices are unknown.

    Routing ranks offers by this unrounded value so that small requests still tell a cheaper
    price from a dearer one even when both round to the same number of micro-USD.
    `cached_tokens` is the part of `prompt_tokens` read from the cache; a provider that reports
    more cached than prompt tokens is taken to mean the whole prompt was cached.
    """
    input_price, output_price = prices.input, prices.output
    if input_price is None or output_price is None:
        return None
    if prompt_tokens < 0 or completion_tokens < 0 or cached_tokens < 0:
        _refuse_negative(prompt_tokens, completion_tokens, cached_tokens)
    if cached_tokens == 0:  # routing's per-offer estimate: keep it to two multiplications
        return prompt_tokens * input_price + completion_tokens * output_price
    cached = min(cached_tokens, prompt_tokens)
    cached_price = input_price if prices.cached is None else prices.cached
    return (
        (prompt_tokens - cached) * input_price
        + cached * cached_price
        + completion_tokens * output_price
    )


def micros_of_picos(picos: int) -> int:
    """Pico-USD to micro-USD, rounding half up (0.5 µUSD → 1): the one rounding step of a bill.

    Half up (not banker's rounding) because it is what an operator reproduces by hand or in SQL
    (`(picos + 500000) // 1000000`); costs are never negative, so "half up" is unambiguous.
    """
    half = TOKENS_PER_PRICE_UNIT // 2
    return (picos + half) // TOKENS_PER_PRICE_UNIT


def cost_micros(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int, prices: Prices
) -> int | None:
    """What a request costs in integer micro-USD, or `None` when the offer's price is unknown.

    `sum(tokens × price)` is computed exactly, then divided by 1_000_000 rounding HALF UP:
    10 tokens at 150_000 µUSD/MTok = 1.5 µUSD → 2; 3 tokens = 0.45 µUSD → 0.
    Cached tokens are billed at the cached price (at the input price when that is unknown).
    """
    picos = cost_picos(prompt_tokens, completion_tokens, cached_tokens, prices)
    return None if picos is None else micros_of_picos(picos)


def estimate_tokens_from_chars(n_chars: int) -> int:
    """A token estimate from text length: `ceil(n_chars / 4)`.

    Four characters per token is OpenAI's rule of thumb for English; we round up so an estimate
    used for admission and context-window checks errs towards "too big", never "fits".
    """
    if n_chars < 0:
        raise ValueError(f"n_chars must be >= 0, got {n_chars}")
    return -(-n_chars // CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages_char_count: int, n_messages: int) -> int:
    """A chat prompt's token estimate: its text plus ~4 tokens of framing per message."""
    if n_messages < 0:
        raise ValueError(f"n_messages must be >= 0, got {n_messages}")
    return estimate_tokens_from_chars(messages_char_count) + MESSAGE_OVERHEAD_TOKENS * n_messages


def _refuse_negative(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> None:
    """Negative counts are a bug upstream of us, never a discount."""
    for name, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
        ("cached_tokens", cached_tokens),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
