"""The catalog: what becomes an offer, which layer's facts win, and clear errors for bad config."""

from __future__ import annotations

import pytest

from domain.catalog import (
    DEFAULT_CONTEXT_WINDOW,
    Capabilities,
    Catalog,
    ModelInfo,
    Offer,
    Prices,
    build_catalog,
    check_spec,
    price_version_of,
    unmatched_overrides,
)
from domain.price_registry import REGISTRY, REGISTRY_DATE, usd

MINI = {"input": 150_000, "output": 600_000, "context_window": 128_000}
REG = {
    "openai": {"gpt-4o-mini": {**MINI, "tools": True}},
    "openrouter": {"openai/gpt-4o-mini": MINI},
}
OPENAI_MINI = {"openai": [ModelInfo("gpt-4o-mini")]}


def only(catalog: Catalog) -> Offer:
    assert len(catalog) == 1, catalog.offers
    return catalog.offers[0]


def at(catalog: Catalog, provider: str, model: str) -> Offer:
    offer = catalog.offer(provider, model)
    assert offer is not None, f"{provider}/{model} is not an offer"
    return offer


def test_a_listed_model_takes_its_facts_from_the_registry() -> None:
    offer = only(build_catalog(OPENAI_MINI, REG, {}, "v"))
    caps = Capabilities(tools=True, streaming=True)
    assert offer == Offer("openai", "gpt-4o-mini", "chat", Prices(150_000, 600_000), 128_000, caps)
    assert offer.priced and offer.key == "openai/gpt-4o-mini"


def test_registry_entries_the_provider_did_not_list_are_not_offers() -> None:
    assert len(build_catalog({"openai": []}, REG, {}, "v")) == 0
    assert len(build_catalog({}, REG, {}, "v")) == 0  # provider not enabled at all


def test_an_override_with_listed_true_makes_an_unlisted_offer() -> None:
    catalog = build_catalog({"openai": []}, REG, {"openai/gpt-4o-mini": {"listed": True}}, "v")
    assert only(catalog).prices == Prices(150_000, 600_000)


def test_listed_true_for_a_disabled_provider_makes_no_offer_and_is_reported() -> None:
    overrides = {"groq/llama": {"listed": True}}
    catalog = build_catalog({"openai": []}, REG, overrides, "v")
    assert len(catalog) == 0
    assert unmatched_overrides(catalog, overrides) == ["groq/llama"]


def test_listed_false_hides_a_listed_offer() -> None:
    overrides = {"gpt-4o-mini": {"listed": False}}
    catalog = build_catalog(OPENAI_MINI, REG, overrides, "v")
    assert len(catalog) == 0
    assert unmatched_overrides(catalog, overrides) == []


def test_the_registry_wins_over_a_plain_providers_own_prices() -> None:
    listing = ModelInfo("gpt-4o-mini", prices=Prices(1, 2), context_window=999)
    offer = only(build_catalog({"openai": [listing]}, REG, {}, "v"))
    assert (offer.prices, offer.context_window) == (Prices(150_000, 600_000), 128_000)


def test_openrouters_own_prices_win_over_the_registry() -> None:
    listing = ModelInfo("openai/gpt-4o-mini", Prices(160_000, 640_000), context_window=64_000)
    offer = only(build_catalog({"openrouter": [listing]}, REG, {}, "v"))
    assert (offer.prices, offer.context_window) == (Prices(160_000, 640_000), 64_000)


def test_facts_openrouter_does_not_give_come_from_the_registry() -> None:
    listing = ModelInfo("openai/gpt-4o-mini", prices=Prices(input=160_000))
    offer = only(build_catalog({"openrouter": [listing]}, REG, {}, "v"))
    assert offer.prices == Prices(160_000, 600_000)


def test_overrides_win_over_provider_prices_and_registry() -> None:
    listing = ModelInfo("openai/gpt-4o-mini", prices=Prices(160_000, 640_000))
    overrides = {"openrouter/openai/gpt-4o-mini": {"input": 100, "cached": 50}}
    offer = only(build_catalog({"openrouter": [listing]}, REG, overrides, "v"))
    assert offer.prices == Prices(100, 640_000, 50)


def test_a_provider_model_override_beats_a_model_override() -> None:
    overrides = {"gpt-4o-mini": {"input": 1, "output": 1}, "openai/gpt-4o-mini": {"input": 2}}
    discovered = {**OPENAI_MINI, "azure": [ModelInfo("gpt-4o-mini")]}
    catalog = build_catalog(discovered, REG, overrides, "v")
    assert at(catalog, "openai", "gpt-4o-mini").prices == Prices(2, 1)
    assert at(catalog, "azure", "gpt-4o-mini").prices == Prices(1, 1)


def test_an_override_can_make_a_price_unknown() -> None:
    offer = only(build_catalog(OPENAI_MINI, REG, {"gpt-4o-mini": {"input": None}}, "v"))
    assert not offer.priced


def test_a_model_nobody_describes_gets_conservative_defaults() -> None:
    offer = only(build_catalog({"local": [ModelInfo("llama3")]}, {}, {}, "v"))
    defaults = Offer(
        "local", "llama3", "chat", Prices(), DEFAULT_CONTEXT_WINDOW, Capabilities(streaming=True)
    )
    assert offer == defaults and not offer.priced


def test_an_embedding_with_an_input_price_is_priced() -> None:
    discovered = {"local": [ModelInfo("nomic-embed-text")]}
    offer = only(build_catalog(discovered, {}, {"nomic-embed-text": {"input": 0}}, "v"))
    assert (offer.kind, offer.prices, offer.priced) == ("embedding", Prices(0, 0), True)
    assert not offer.caps.streaming


PRICE_RULE = "must be integer micro-USD per 1M tokens >= 0 or null"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"input": 0.15}, f"override 'gpt-4o': 'input' {PRICE_RULE}"),
        ({"output": -1}, f"override 'gpt-4o': 'output' {PRICE_RULE}"),
        ({"input": True}, f"override 'gpt-4o': 'input' {PRICE_RULE}"),
        ({"context_window": 0}, "override 'gpt-4o': 'context_window' must be an integer > 0"),
        ({"kind": "image"}, r"override 'gpt-4o': 'kind' must be one of \['chat', 'completion', "),
        ({"tools": "yes"}, "override 'gpt-4o': 'tools' must be true or false, got 'yes'"),
        ({"price": 1}, r"override 'gpt-4o': unknown field 'price' \(known: cached, context_window"),
        ("cheap", "override 'gpt-4o': expected a mapping of fields, got str"),
    ],
)
def test_a_bad_override_names_its_key_and_the_rule(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_catalog({}, {}, {"gpt-4o": spec}, "v")  # type: ignore[dict-item]


def test_listed_true_needs_a_provider() -> None:
    message = "override 'gpt-4o': 'listed: true' needs a 'provider/model' key"
    with pytest.raises(ValueError, match=message):
        build_catalog({}, {}, {"gpt-4o": {"listed": True}}, "v")


def test_a_bad_registry_entry_is_named() -> None:
    with pytest.raises(ValueError, match=f"registry entry 'openai/x': 'input' {PRICE_RULE}"):
        build_catalog({}, {"openai": {"x": {"input": "0.15"}}}, {}, "v")


def test_the_catalog_indexes_by_model_provider_and_kind() -> None:
    discovered = {
        "openai": [ModelInfo("gpt-4o-mini"), ModelInfo("text-embedding-3-small")],
        "openrouter": [ModelInfo("openai/gpt-4o-mini")],
        "azure": [ModelInfo("gpt-4o-mini")],
    }
    catalog = build_catalog(discovered, REG, {}, "v")
    minis = catalog.offers_for_model("gpt-4o-mini")
    assert [o.key for o in minis] == ["azure/gpt-4o-mini", "openai/gpt-4o-mini"]
    assert catalog.offer("openrouter", "openai/gpt-4o-mini") is not None
    assert catalog.offer("openai", "openai/gpt-4o-mini") is None
    assert [o.model for o in catalog.offers_of_kind("embedding")] == ["text-embedding-3-small"]
    assert catalog.offers_for_model("nope") == () and catalog.offers_of_kind("completion") == ()


def test_a_catalog_refuses_duplicates_and_slashed_providers() -> None:
    offer = Offer("a", "m", "chat", Prices(), 1, Capabilities())
    with pytest.raises(ValueError, match="duplicate offer 'a/m' in catalog"):
        Catalog("v", [offer, offer])
    with pytest.raises(ValueError, match="provider name 'a/b' must be non-empty without '/'"):
        Catalog("v", [Offer("a/b", "m", "chat", Prices(), 1, Capabilities())])


def test_price_version_is_deterministic_and_changes_with_overrides() -> None:
    assert price_version_of("2026-11-01", {}) == "2026-11-01"
    a = price_version_of("2026-11-01", {"x": {"input": 1, "output": 2}})
    assert a == price_version_of("2026-11-01", {"x": {"output": 2, "input": 1}})
    assert a.startswith("2026-11-01+") and a != price_version_of("2026-11-01", {"x": {"input": 2}})


def test_check_spec_accepts_every_field() -> None:
    spec = {
        "input": 1, "output": 2, "cached": None, "context_window": 10, "kind": "completion",
        "tools": False, "vision": True, "json_mode": True, "streaming": False, "listed": True,
    }
    assert check_spec("x", spec) == spec


def test_the_shipped_registry_is_valid_dated_and_priced() -> None:
    assert REGISTRY_DATE == "2026-11-01"
    assert {"openai", "groq", "sambanova", "alibaba", "openrouter"} <= REGISTRY.keys()
    discovered = {p: [ModelInfo(m) for m in models] for p, models in REGISTRY.items()}
    catalog = build_catalog(discovered, REGISTRY, {}, REGISTRY_DATE)
    assert len(catalog) == sum(map(len, REGISTRY.values())) and all(o.priced for o in catalog)
    assert at(catalog, "openai", "gpt-4o-mini").prices == Prices(150_000, 600_000, 75_000)
    assert at(catalog, "openai", "gpt-4o").prices == Prices(2_500_000, 10_000_000, 1_250_000)
    assert at(catalog, "groq", "llama-3.1-8b-instant").prices == Prices(50_000, 80_000)
    assert at(catalog, "groq", "llama-3.3-70b-versatile").prices == Prices(590_000, 790_000)
    embedding = at(catalog, "openai", "text-embedding-3-small")
    assert (embedding.kind, embedding.prices) == ("embedding", Prices(20_000, 0))


def test_usd_converts_decimal_strings_exactly() -> None:
    assert [usd("0.15"), usd("2.50"), usd("0.075"), usd("0")] == [150_000, 2_500_000, 75_000, 0]
    with pytest.raises(ValueError, match="price '0.0000001' USD is not a whole"):
        usd("0.0000001")
