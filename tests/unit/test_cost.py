"""Money arithmetic: exact integers, one half-up rounding, unknown prices stay unknown."""

from __future__ import annotations

import pytest

from domain.cost import (
    Prices,
    cost_micros,
    cost_picos,
    estimate_prompt_tokens,
    estimate_tokens_from_chars,
    micros_of_picos,
)

MINI = Prices(input=150_000, output=600_000, cached=75_000)


def test_a_half_micro_rounds_up() -> None:
    assert cost_micros(10, 0, 0, MINI) == 2  # 1.5 µUSD


def test_less_than_half_a_micro_rounds_down() -> None:
    assert cost_micros(3, 0, 0, MINI) == 0  # 0.45 µUSD


def test_rounding_happens_once_on_the_sum() -> None:
    # 3 uncached (0.45 µUSD) + 6 cached (0.45 µUSD) = 0.9 → 1, where rounding each part gives 0
    assert cost_micros(9, 0, 6, MINI) == 1
    assert cost_micros(3, 0, 0, Prices(500_000, 0)) == 2  # exactly 1.5 → 2


def test_micros_of_picos_rounds_half_up() -> None:
    picos = (0, 499_999, 500_000, 1_499_999, 1_500_000)
    assert [micros_of_picos(p) for p in picos] == [0, 0, 1, 1, 2]


def test_a_typical_request_costs_what_the_price_page_says() -> None:
    # 1M prompt + 1M completion tokens of gpt-4o-mini = $0.15 + $0.60
    assert cost_micros(1_000_000, 1_000_000, 0, MINI) == 750_000


def test_cached_tokens_are_billed_at_the_cached_price() -> None:
    assert cost_picos(1_000, 0, 400, MINI) == 600 * 150_000 + 400 * 75_000
    assert cost_micros(1_000, 0, 400, MINI) == 120


def test_cached_tokens_without_a_cached_price_are_billed_as_input() -> None:
    no_discount = Prices(input=150_000, output=600_000)
    assert cost_micros(1_000, 0, 400, no_discount) == cost_micros(1_000, 0, 0, no_discount) == 150


def test_more_cached_than_prompt_tokens_means_the_whole_prompt_was_cached() -> None:
    assert cost_micros(100, 0, 500, MINI) == cost_micros(100, 0, 100, MINI)


@pytest.mark.parametrize("prices", [Prices(), Prices(input=1), Prices(output=1), Prices(cached=1)])
def test_unknown_prices_give_an_unknown_cost(prices: Prices) -> None:
    assert not prices.known
    assert cost_micros(10, 10, 0, prices) is None
    assert cost_picos(10, 10, 0, prices) is None


def test_a_free_model_costs_zero_not_unknown() -> None:
    assert cost_micros(1_000, 1_000, 0, Prices(0, 0)) == 0


def test_costs_are_integers_even_for_huge_counts() -> None:
    cost = cost_micros(10**12, 10**12, 0, MINI)
    assert isinstance(cost, int) and cost == 750_000 * 10**6


def test_negative_token_counts_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="completion_tokens must be >= 0, got -1"):
        cost_micros(1, -1, 0, MINI)


def test_token_estimates_round_characters_up() -> None:
    assert [estimate_tokens_from_chars(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_prompt_estimates_add_four_tokens_per_message() -> None:
    assert estimate_prompt_tokens(0, 0) == 0
    assert estimate_prompt_tokens(10, 2) == 3 + 8


def test_estimates_refuse_negative_sizes() -> None:
    with pytest.raises(ValueError, match="n_chars must be >= 0, got -4"):
        estimate_tokens_from_chars(-4)
    with pytest.raises(ValueError, match="n_messages must be >= 0, got -1"):
        estimate_prompt_tokens(4, -1)
