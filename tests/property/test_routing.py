"""Routing invariants (DESIGN.md §7) as properties against a brute-force oracle; the messages."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import msgspec
from hypothesis import given
from hypothesis import strategies as st

from domain.catalog import Capabilities, Catalog, Kind, Offer, Prices
from domain.cost import cost_micros, cost_picos
from domain.events import Candidate
from domain.routing import (
    NoRoute,
    Policy,
    RouteDecision,
    RouteRequest,
    check_strategy,
    event_candidates,
    route,
)
from tests.property.strategies import World, ttfts, worlds

EXPECTED_OUTPUT = 256
Result = RouteDecision | NoRoute

# ---- the oracle: DESIGN.md §7 written the slow, obvious way ----------------------------------


def considered(w: World) -> tuple[list[Offer], bool, bool]:
    """(offers looked at, auto?, pinned to one provider by "provider/model"?)"""
    catalog, request, policy, _ = w
    name = policy.pinned_model if request.model in (None, "auto") else request.model
    if name is None:
        return [o for o in catalog.offers if o.kind == request.kind], True, False
    pinned = [o for o in catalog.offers if f"{o.provider}/{o.model}" == name]
    if pinned:
        return pinned, False, True
    return [o for o in catalog.offers if o.model == name], False, False


def is_eligible(o: Offer, w: World, auto: bool) -> bool:
    _, request, policy, unhealthy = w
    names = {o.model, f"{o.provider}/{o.model}"}
    return (
        o.kind == request.kind
        and o.provider not in unhealthy
        and (policy.allowed_providers is None or o.provider in policy.allowed_providers)
        and not (policy.denied_providers and o.provider in policy.denied_providers)
        and (policy.allowed_models is None or bool(names & policy.allowed_models))
        and not (policy.denied_models and names & policy.denied_models)
        and (not auto or (o.prices.input is not None and o.prices.output is not None))
        and o.context_window >= request.prompt_tokens_est + (request.max_tokens or 0)
        and all(getattr(o.caps, need) for need in request.needs)
    )


def output_tokens(request: RouteRequest) -> int:
    if request.kind == "embedding":
        return 0
    return EXPECTED_OUTPUT if request.max_tokens is None else request.max_tokens


def est_micros(o: Offer, request: RouteRequest) -> int | None:
    return cost_micros(request.prompt_tokens_est, output_tokens(request), 0, o.prices)


def by_cost(request: RouteRequest) -> Callable[[Offer], tuple[object, ...]]:
    def key(o: Offer) -> tuple[object, ...]:
        exact = cost_picos(request.prompt_tokens_est, output_tokens(request), 0, o.prices)
        return (exact is None, exact or 0, o.provider, o.model)

    return key


def oracle(w: World) -> list[Offer]:
    """Every eligible offer, cheapest first; ties by (provider, model)."""
    offers, auto, _ = considered(w)
    return sorted((o for o in offers if is_eligible(o, w, auto)), key=by_cost(w[1]))


def decide(
    w: World,
    strategy: str = "cheapest",
    observed_ttft_us: dict[tuple[str, str], int] | None = None,
) -> Result:
    catalog, request, policy, unhealthy = w
    return route(
        catalog, request, unhealthy=unhealthy, policy=policy, strategy=strategy,
        expected_output_tokens=EXPECTED_OUTPUT, observed_ttft_us=observed_ttft_us,
    )


def swapped(w: World, offers: object) -> World:
    return (Catalog("test", offers), *w[1:])  # type: ignore[arg-type]


def unchosen(w: World, decision: Result) -> list[Offer]:
    if not isinstance(decision, RouteDecision):
        return []
    return [o for o in w[0].offers if o != decision.chosen]


# ---- properties ------------------------------------------------------------------------------


@given(worlds())
def test_route_equals_the_brute_force_oracle(w: World) -> None:
    expected, decision = oracle(w), decide(w)
    if not expected:
        assert isinstance(decision, NoRoute)
    else:
        assert isinstance(decision, RouteDecision)
        assert decision.chosen == expected[0]
        assert decision.ordered == tuple(expected)


@given(worlds())
def test_the_choice_is_eligible(w: World) -> None:
    decision = decide(w)
    if isinstance(decision, RouteDecision):
        offers, auto, _ = considered(w)
        assert decision.chosen in offers and is_eligible(decision.chosen, w, auto)


@given(worlds())
def test_no_eligible_offer_is_strictly_cheaper(w: World) -> None:
    decision = decide(w)
    if isinstance(decision, RouteDecision):
        chosen = est_micros(decision.chosen, w[1])
        for cost in (est_micros(o, w[1]) for o in oracle(w)):
            assert cost is None or (chosen is not None and chosen <= cost)


@given(worlds(), st.data())
def test_choice_ignores_offer_order(w: World, data: st.DataObject) -> None:
    shuffled = swapped(w, data.draw(st.permutations(w[0].offers)))
    assert decide(shuffled) == decide(w)


@given(worlds(), st.data())
def test_removing_an_unchosen_offer_never_changes_the_choice(
    w: World, data: st.DataObject
) -> None:
    decision = decide(w)
    if others := unchosen(w, decision):
        gone = data.draw(st.sampled_from(others))
        after = decide(swapped(w, (o for o in w[0].offers if o != gone)))
        assert isinstance(after, RouteDecision) and isinstance(decision, RouteDecision)
        assert after.chosen == decision.chosen


@given(worlds(), st.data(), st.integers(1, 10**6))
def test_raising_an_unchosen_offers_price_never_changes_the_choice(
    w: World, data: st.DataObject, delta: int
) -> None:
    decision = decide(w)
    if others := unchosen(w, decision):
        old = data.draw(st.sampled_from(others))
        up = Prices(*(None if p is None else p + delta for p in price_fields(old.prices)))
        new = msgspec.structs.replace(old, prices=up)
        after = decide(swapped(w, (new if o == old else o for o in w[0].offers)))
        assert isinstance(after, RouteDecision) and isinstance(decision, RouteDecision)
        assert after.chosen == decision.chosen


def price_fields(prices: Prices) -> tuple[int | None, ...]:
    return (prices.input, prices.output, prices.cached)


@given(worlds())
def test_removing_the_chosen_offer_picks_the_next_in_order(w: World) -> None:
    decision = decide(w)
    if not isinstance(decision, RouteDecision):
        return
    after = decide(swapped(w, (o for o in w[0].offers if o != decision.chosen)))
    if len(decision.ordered) > 1:
        assert isinstance(after, RouteDecision) and after.ordered == decision.ordered[1:]
    elif not considered(w)[2]:  # a lost "provider/model" pin falls back to a model id
        assert isinstance(after, NoRoute)


@given(worlds())
def test_no_eligible_offer_gives_no_route_naming_why(w: World) -> None:
    decision = decide(w)
    if oracle(w):
        return
    assert isinstance(decision, NoRoute) and decision.code == "no_route"
    offers, _, _ = considered(w)
    if not offers:
        assert decision.cause == "unknown_model"
        assert decision.message.startswith("no offer for model '")
    else:
        assert decision.cause == "ineligible" and len(decision.candidates) == len(offers)
        assert not any(c.eligible for c in decision.candidates)
        whys = ("serves", "policy", "known price", "unhealthy", "needs", "every context window")
        assert any(why in decision.message for why in whys), decision.message


@given(worlds())
def test_ordered_is_non_decreasing_in_estimated_cost(w: World) -> None:
    decision = decide(w)
    if isinstance(decision, RouteDecision):
        assert decision.ordered[0] == decision.chosen
        costs = [est_micros(o, w[1]) for o in decision.ordered]
        known = [c for c in costs if c is not None]
        assert costs == sorted(known) + [None] * (len(costs) - len(known))  # unknown ranks last
        assert decision.est_cost_micros == costs[0]


@given(worlds(), st.sampled_from([0, 1, 150_000]))
def test_ties_are_broken_by_provider_then_model(w: World, price: int) -> None:
    everything = Capabilities(tools=True, vision=True, json_mode=True, streaming=True)
    same = {"prices": Prices(price, price), "context_window": 10**6, "caps": everything}
    flat = [msgspec.structs.replace(o, kind="chat", **same) for o in w[0].offers]
    decision = decide((Catalog("flat", flat), RouteRequest(), Policy(), frozenset()))
    if flat:
        assert isinstance(decision, RouteDecision)
        pairs = [(o.provider, o.model) for o in decision.ordered]
        assert pairs == sorted((o.provider, o.model) for o in flat)


@given(worlds())
def test_auto_never_picks_an_unknown_price(w: World) -> None:
    auto = RouteRequest(model="auto", kind=w[1].kind, needs=w[1].needs)
    decision = decide((w[0], auto, Policy(), w[3]))
    if isinstance(decision, RouteDecision):
        assert all(o.priced for o in decision.ordered)


@given(worlds())
def test_candidates_list_every_considered_offer_once(w: World) -> None:
    decision = decide(w)
    if isinstance(decision, RouteDecision):
        assert sorted(c.offer.key for c in decision.candidates) == sorted(
            o.key for o in considered(w)[0]
        )
        assert tuple(c.offer for c in decision.candidates if c.eligible) == decision.ordered
        assert all(c.est_cost_micros == est_micros(c.offer, w[1]) for c in decision.candidates)


@given(worlds(), ttfts)
def test_fastest_ranks_by_observed_ttft_then_cost(
    w: World, ttft: dict[tuple[str, str], int]
) -> None:
    def key(o: Offer) -> tuple[object, ...]:
        seen = ttft.get((o.provider, o.model))
        return (seen is None, seen or 0, *by_cost(w[1])(o))

    expected = sorted(oracle(w), key=key)
    decision = decide(w, strategy="fastest", observed_ttft_us=ttft)
    if expected:
        assert isinstance(decision, RouteDecision) and decision.ordered == tuple(expected)
        assert decision.strategy == "fastest"
    else:
        assert isinstance(decision, NoRoute)


# ---- examples: the decisions and messages an operator reads -----------------------------------

CHAT = Capabilities(json_mode=True, streaming=True)


def offer(
    provider: str, model: str, price: int | None, window: int = 8_192, kind: Kind = "chat"
) -> Offer:
    return Offer(provider, model, kind, Prices(price, price), window, CHAT)


CATALOG = Catalog(
    "v1",
    [
        offer("groq", "m", 50_000, window=4_096),
        offer("openai", "m", 150_000, window=16_000),
        offer("openrouter", "openai/m", 10_000),
        offer("local", "free-model", None),
        offer("openai", "emb", 20_000, kind="embedding"),
    ],
)


def go(
    request: RouteRequest, policy: Policy = Policy(), unhealthy: frozenset[str] = frozenset()
) -> Result:
    return route(CATALOG, request, unhealthy=unhealthy, policy=policy)


def message(request: RouteRequest, policy: Policy = Policy(), **kw: frozenset[str]) -> str:
    result = go(request, policy, **kw)
    assert isinstance(result, NoRoute), result
    return result.message


def test_no_route_names_the_rule_that_emptied_the_field() -> None:
    m = RouteRequest(model="m")
    assert go(RouteRequest(model="x")) == NoRoute(
        message="no offer for model 'x'", cause="unknown_model"
    )
    assert message(RouteRequest(model="m", needs=frozenset({"tools"}))) == (
        "model 'm' needs tools; no eligible offer has them"
    )
    assert message(RouteRequest(model="m", prompt_tokens_est=10, max_tokens=20_000)) == (
        "prompt of 10 tokens + max_tokens 20000 exceeds every context window (largest 16000)"
    )
    assert message(m, unhealthy=frozenset({"groq", "openai"})) == (
        "every provider serving model 'm' is unhealthy (groq, openai)"
    )
    assert message(RouteRequest(model="emb")) == "model 'emb' serves embedding, not chat"
    assert message(m, Policy(denied_models=frozenset({"m"}))) == "policy does not allow model 'm'"
    assert message(m, Policy(allowed_providers=frozenset({"local"}))) == (
        "policy allows no provider serving model 'm'"
    )
    assert message(RouteRequest(), Policy(allowed_providers=frozenset({"local"}))) == (
        "no chat offer has a known price; auto never picks an unknown price"
    )


def test_a_named_model_goes_to_its_cheapest_provider_and_falls_back_by_cost() -> None:
    result = go(RouteRequest(model="m", prompt_tokens_est=100, max_tokens=100))
    assert isinstance(result, RouteDecision)
    assert [o.key for o in result.ordered] == ["groq/m", "openai/m"]
    assert result.est_cost_micros == 10  # 200 tokens × $0.05/MTok
    assert result.reason == "cheapest for 'm': groq/m, est 10 micro-USD; 2 of 2 eligible"


def test_provider_slash_model_pins_a_provider_else_is_a_model_id() -> None:
    pinned = go(RouteRequest(model="openai/m"))
    assert isinstance(pinned, RouteDecision) and pinned.ordered == (CATALOG.offer("openai", "m"),)
    unpinned = go(RouteRequest(model="openrouter/openai/m"))
    assert isinstance(unpinned, RouteDecision) and unpinned.chosen.key == "openrouter/openai/m"


def test_an_unknown_price_is_eligible_by_name() -> None:
    named = go(RouteRequest(model="free-model"))
    assert isinstance(named, RouteDecision) and named.est_cost_micros is None


def test_auto_picks_the_cheapest_priced_offer_or_the_policys_pinned_model() -> None:
    auto = go(RouteRequest(model="auto"))
    assert isinstance(auto, RouteDecision) and auto.chosen.key == "openrouter/openai/m"
    pinned = go(RouteRequest(), Policy(pinned_model="m"))
    assert isinstance(pinned, RouteDecision) and pinned.chosen.key == "groq/m"


def test_an_unknown_strategy_is_no_route_per_request_and_an_error_at_config_time() -> None:
    assert go(RouteRequest(), Policy(strategy="random")) == NoRoute(
        message="unknown routing strategy 'random'; known: cheapest, fastest",
        cause="unknown_strategy",
    )
    with pytest.raises(ValueError, match="unknown routing strategy 'random'"):
        check_strategy("random")
    assert check_strategy("fastest") == "fastest"


def test_a_request_with_an_unknown_capability_is_a_bug() -> None:
    with pytest.raises(ValueError, match=r"unknown capabilities \['telepathy'\]"):
        RouteRequest(needs=frozenset({"telepathy"}))


def test_embeddings_cost_only_their_input() -> None:
    result = go(RouteRequest(model="emb", kind="embedding", prompt_tokens_est=1_000))
    assert isinstance(result, RouteDecision) and result.est_cost_micros == 20


def test_candidates_convert_to_event_records() -> None:
    result = go(RouteRequest(model="m"), unhealthy=frozenset({"groq"}))
    assert isinstance(result, RouteDecision)
    assert event_candidates(result.candidates) == [
        Candidate(
            provider="openai", model="m", est_cost_micros=38, eligible=True, reason="eligible"
        ),
        Candidate(
            provider="groq", model="m", est_cost_micros=13, eligible=False,
            reason="provider unhealthy",
        ),
    ]
