"""Shared Hypothesis strategies for routing: few names, few prices, so ties and collisions happen.

Ties are where routing bugs live: prices come from a small set (with a duplicate), providers and
models from short lists (including model ids that look like "provider/model"), and windows and
token counts straddle each other. Requests mostly name what the catalog offers, or nothing could
ever be routed and the interesting properties would hold vacuously.
"""

from __future__ import annotations

from hypothesis import strategies as st

from domain.catalog import Capabilities, Catalog, Kind, Offer, Prices
from domain.routing import Policy, RouteRequest

World = tuple[Catalog, RouteRequest, Policy, frozenset[str]]

PROVIDERS = ("alpha", "beta", "gamma", "openrouter")
MODELS = ("m1", "m2", "org/m1", "alpha/m2")  # "alpha/m2" collides with a provider pin
KINDS: tuple[Kind, ...] = ("chat", "chat", "completion", "embedding")
CAPABILITIES = ("tools", "vision", "json_mode", "streaming")
MODEL_NAMES = (*MODELS, "alpha/m1", "beta/m2")

price_values = st.sampled_from([0, 1, 50_000, 150_000, 150_000, 600_000])
maybe_prices = st.one_of(price_values, price_values, price_values, st.none())
windows = st.sampled_from([0, 1_000, 4_096, 8_192, 128_000, 128_000])
token_counts = st.sampled_from([0, 1, 3, 10, 500, 4_000, 100_000])
small_token_counts = st.sampled_from([0, 1, 3, 10, 500, 500, 4_000])

capabilities = st.builds(
    Capabilities,
    tools=st.booleans(),
    vision=st.booleans(),
    json_mode=st.booleans(),
    streaming=st.booleans(),
)
known_prices = st.builds(Prices, input=price_values, output=price_values, cached=maybe_prices)
any_prices = st.builds(Prices, input=maybe_prices, output=maybe_prices, cached=maybe_prices)
prices = st.one_of(known_prices, known_prices, known_prices, any_prices)


@st.composite
def offers(draw: st.DrawFn) -> Offer:
    return Offer(
        provider=draw(st.sampled_from(PROVIDERS)),
        model=draw(st.sampled_from(("m1", "m1", *MODELS))),  # m1 at many providers
        kind=draw(st.sampled_from(KINDS)),
        prices=draw(prices),
        context_window=draw(windows),
        caps=draw(capabilities),
    )


def catalogs(min_size: int = 0) -> st.SearchStrategy[Catalog]:
    unique = st.lists(offers(), min_size=min_size, max_size=16, unique_by=lambda o: o.key)
    return unique.map(lambda offers: Catalog("test", offers))


needs_sets: st.SearchStrategy[frozenset[str]] = st.one_of(
    st.just(frozenset()),
    st.just(frozenset()),
    st.frozensets(st.sampled_from(CAPABILITIES), max_size=2),
)
nonsense = st.sampled_from(["nosuch", "gamma/nosuch", "openrouter/org/m1", "beta/m2"])


@st.composite
def requests(draw: st.DrawFn, catalog: Catalog | None = None) -> RouteRequest:
    """A request, half the time naming (by "model" or "provider/model") an offer of `catalog`."""
    offered = catalog.offers if catalog is not None else ()
    model: str | None
    if len(offered) > 0 and draw(st.booleans()):
        named = draw(st.sampled_from(offered))
        model = draw(st.sampled_from([named.model, named.key]))
        kind = named.kind if draw(st.integers(0, 4)) else draw(st.sampled_from(KINDS))
    else:
        model = draw(st.one_of(st.none(), st.just("auto"), st.sampled_from(MODELS), nonsense))
        mostly_offered = len(offered) > 0 and draw(st.integers(0, 3)) > 0
        kind = draw(st.sampled_from([o.kind for o in offered] if mostly_offered else KINDS))
    return RouteRequest(
        model=model,
        kind=kind,
        prompt_tokens_est=draw(st.one_of(small_token_counts, token_counts)),
        max_tokens=draw(st.one_of(st.none(), small_token_counts)),
        needs=draw(needs_sets),
    )


def _maybe_names(names: tuple[str, ...]) -> st.SearchStrategy[frozenset[str] | None]:
    return st.one_of(st.none(), st.none(), st.frozensets(st.sampled_from(names), max_size=3))


some_policies = st.builds(
    Policy,
    allowed_providers=_maybe_names(PROVIDERS),
    denied_providers=_maybe_names(PROVIDERS),
    allowed_models=_maybe_names(MODEL_NAMES),
    denied_models=_maybe_names(MODEL_NAMES),
    pinned_model=st.one_of(st.none(), st.none(), st.sampled_from(MODEL_NAMES)),
)
policies = st.one_of(st.just(Policy()), some_policies)
unhealthy_sets: st.SearchStrategy[frozenset[str]] = st.one_of(
    st.just(frozenset()), st.frozensets(st.sampled_from(PROVIDERS), max_size=2)
)
ttfts = st.dictionaries(
    st.tuples(st.sampled_from(PROVIDERS), st.sampled_from(MODELS)),
    st.sampled_from([1_000, 5_000, 5_000, 90_000]),
    max_size=6,
)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """A catalog (rarely tiny), a request mostly about it, a policy and the unhealthy providers."""
    catalog = draw(st.one_of(catalogs(), *[catalogs(min_size=3)] * 4))
    return catalog, draw(requests(catalog)), draw(policies), draw(unhealthy_sets)
