"""`route_auto` (auto by cost, from a table built once per catalog and rules) decides exactly as
`route` does: the same choice, reason and cost, the same first `keep` of the fallback order and of
the candidates, and the same count of offers considered; None exactly when `route` finds no route."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from domain.catalog import Capabilities, Catalog, Offer, Prices
from domain.routing import NoRoute, Policy, RouteDecision, RouteRequest, auto_table, route, route_auto
from tests.property.strategies import World, worlds

EXPECTED_OUTPUT = 256


def both(w: World, keep: int) -> tuple[RouteDecision | NoRoute, RouteDecision | None]:
    catalog, request, policy, unhealthy = w
    auto = RouteRequest(kind=request.kind, prompt_tokens_est=request.prompt_tokens_est,
                        max_tokens=request.max_tokens, needs=request.needs)  # the same request, asking for auto
    policy = Policy(**{f: getattr(policy, f) for f in policy.__struct_fields__ if f not in ("pinned_model", "strategy")})
    full = route(catalog, auto, unhealthy=unhealthy, policy=policy, strategy="cheapest",
                 expected_output_tokens=EXPECTED_OUTPUT)
    table = auto_table(catalog, auto.kind, policy, unhealthy, auto.needs)
    return full, route_auto(table, auto, keep=keep, expected_output_tokens=EXPECTED_OUTPUT)


def assert_same(full: RouteDecision | NoRoute, fast: RouteDecision | None, keep: int) -> None:
    if isinstance(full, NoRoute):
        assert fast is None
        return
    assert fast is not None
    assert fast.chosen == full.chosen and fast.reason == full.reason and fast.strategy == full.strategy
    assert fast.est_cost_micros == full.est_cost_micros
    assert fast.ordered == full.ordered[:keep]
    assert fast.candidates == full.candidates[:keep]
    assert fast.considered == full.considered == len(full.candidates)


@given(worlds(), st.integers(1, 6))
def test_auto_from_a_table_decides_as_route_does(w: World, keep: int) -> None:
    full, fast = both(w, keep)
    assert_same(full, fast, keep)


def test_a_large_catalog_keeps_the_first_candidates_in_order() -> None:
    rng = random.Random(7)
    offers = [Offer(provider=rng.choice(["p1", "p2", "p3"]), model=f"m{i}", kind="chat",
                    prices=Prices(input=rng.randint(0, 9) * 50_000, output=rng.choice([None, 100_000, 200_000])),
                    context_window=rng.choice([100, 8_192, 131_072]),
                    caps=Capabilities(tools=rng.random() < 0.8, streaming=True)) for i in range(300)]
    catalog = Catalog("v", offers)
    for prompt, max_tokens, needs in ((20, 16, frozenset()), (5_000, 4_000, frozenset({"tools"})),
                                      (200_000, None, frozenset())):
        request = RouteRequest(prompt_tokens_est=prompt, max_tokens=max_tokens, needs=needs)
        w: World = (catalog, request, Policy(), frozenset({"p3"}))
        full, fast = both(w, 32)
        assert_same(full, fast, 32)
