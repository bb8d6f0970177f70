"""The model catalog: every offer (provider × model × prices × window × caps) we can route to.

An offer exists only where a provider serves the model: its `GET /models` listed it, or the
operator's override says `listed: true`. The facts about an offer are merged from three layers,
weakest first: what the provider's listing says, the shipped dated registry, the operator's
overrides — except for providers in `LIVE_PRICED_PROVIDERS` (OpenRouter), whose own listing
carries current prices and windows and therefore wins over the registry. Overrides always win.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal, TypedDict, cast, get_args

import msgspec
from msgspec import Struct

from domain.cost import Prices as Prices  # re-exported: an offer's prices are catalog vocabulary

Kind = Literal["chat", "completion", "embedding"]
KINDS: frozenset[str] = frozenset(get_args(Kind))
CAPABILITY_NAMES: frozenset[str] = frozenset({"tools", "vision", "json_mode", "streaming"})
DEFAULT_CONTEXT_WINDOW = 8_192  # a model nobody describes: assume a small, common window
LIVE_PRICED_PROVIDERS: frozenset[str] = frozenset({"openrouter"})


class Capabilities(Struct, frozen=True):
    """What an offer can do beyond plain text in, text out. Unknown means no."""

    tools: bool = False
    vision: bool = False
    json_mode: bool = False
    streaming: bool = False


class Offer(Struct, frozen=True):
    """One provider serving one model, at a price, with a context window and capabilities."""

    provider: str
    model: str
    kind: Kind
    prices: Prices
    context_window: int
    caps: Capabilities

    @property
    def priced(self) -> bool:
        """Auto routing only ever picks priced offers: an unknown cost cannot be budgeted."""
        return self.prices.known

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"


class ModelInfo(Struct, frozen=True):
    """One entry of a provider's `GET /models`, with whatever facts that provider volunteers."""

    id: str
    prices: Prices | None = None
    context_window: int | None = None
    kind: Kind | None = None
    caps: Capabilities | None = None


class Spec(TypedDict, total=False):
    """The facts a registry entry or an override may set; every field optional."""

    input: int | None
    output: int | None
    cached: int | None
    context_window: int
    kind: Kind
    tools: bool
    vision: bool
    json_mode: bool
    streaming: bool
    listed: bool


_PRICE_FIELDS = ("input", "output", "cached")
_FLAG_FIELDS = ("tools", "vision", "json_mode", "streaming", "listed")
SPEC_FIELDS = frozenset((*_PRICE_FIELDS, *_FLAG_FIELDS, "context_window", "kind"))
_PRICE_RULE = "integer micro-USD per 1M tokens >= 0 or null ($0.15/1M -> 150000)"


class Catalog:
    """The offers in force plus indexes built once, so each request's lookups are O(1).

    Compared by value (price version and offers, in order); not hashable.
    """

    __slots__ = ("price_version", "offers", "_by_key", "_by_model", "_by_kind")

    def __init__(self, price_version: str, offers: Iterable[Offer]) -> None:
        self.price_version = price_version
        self.offers: tuple[Offer, ...] = tuple(offers)
        self._by_key = _index_by_key(self.offers)
        self._by_model = _group(self.offers, "model")
        self._by_kind = _group(self.offers, "kind")

    def offer(self, provider: str, model: str) -> Offer | None:
        """The offer of `model` at `provider`, if that provider serves it."""
        return self._by_key.get((provider, model))

    def offers_for_model(self, model: str) -> tuple[Offer, ...]:
        """Every provider's offer of `model` (empty if nobody serves it)."""
        return self._by_model.get(model, ())

    def offers_of_kind(self, kind: str) -> tuple[Offer, ...]:
        return self._by_kind.get(kind, ())

    def __iter__(self) -> Iterator[Offer]:
        return iter(self.offers)

    def __len__(self) -> int:
        return len(self.offers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Catalog):
            return NotImplemented
        return (self.price_version, self.offers) == (other.price_version, other.offers)

    def __repr__(self) -> str:
        return f"Catalog(price_version={self.price_version!r}, offers=<{len(self.offers)}>)"


def _index_by_key(offers: Sequence[Offer]) -> dict[tuple[str, str], Offer]:
    """Refuses what would make "provider/model" ambiguous: a '/' in a provider, a duplicate."""
    index: dict[tuple[str, str], Offer] = {}
    for offer in offers:
        if not offer.provider or "/" in offer.provider:
            raise ValueError(f"provider name {offer.provider!r} must be non-empty without '/'")
        if (offer.provider, offer.model) in index:
            raise ValueError(f"duplicate offer {offer.key!r} in catalog")
        index[(offer.provider, offer.model)] = offer
    return index


def _group(offers: Sequence[Offer], field: str) -> dict[str, tuple[Offer, ...]]:
    groups: dict[str, list[Offer]] = {}
    for offer in offers:
        groups.setdefault(getattr(offer, field), []).append(offer)
    return {name: tuple(members) for name, members in groups.items()}


# ---- checking registry entries and overrides ------------------------------------------------


def check_spec(where: str, raw: object) -> Spec:
    """Validate one registry entry or override; a `ValueError` names `where`, the field and rule."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    for field, value in raw.items():
        problem = _problem(field, value)
        if problem is not None:
            raise ValueError(f"{where}: {problem}")
    return cast(Spec, dict(raw))


def _problem(field: object, value: object) -> str | None:
    if field in _PRICE_FIELDS:
        ok = value is None or _is_count(value)
        return None if ok else f"{field!r} must be {_PRICE_RULE}, got {value!r}"
    if field == "context_window":
        ok = _is_count(value) and cast(int, value) > 0
        return None if ok else f"'context_window' must be an integer > 0, got {value!r}"
    if field == "kind":
        ok = value in KINDS
        return None if ok else f"'kind' must be one of {sorted(KINDS)}, got {value!r}"
    if field in _FLAG_FIELDS:
        ok = isinstance(value, bool)
        return None if ok else f"{field!r} must be true or false, got {value!r}"
    return f"unknown field {field!r} (known: {', '.join(sorted(SPEC_FIELDS))})"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---- building the catalog -------------------------------------------------------------------


def build_catalog(
    discovered: Mapping[str, Sequence[ModelInfo]],
    registry: Mapping[str, Mapping[str, Mapping[str, object]]],
    overrides: Mapping[str, Mapping[str, object]],
    price_version: str,
) -> Catalog:
    """Merge listings, registry and overrides into offers (see the module docstring for the rules).

    `discovered` has one key per enabled provider (an empty listing if discovery failed);
    overrides are keyed "provider/model" (one offer) or "model" (that model at every provider),
    the more specific key winning. `listed: true` on a "provider/model" key makes an offer the
    provider did not list; `listed: false` hides an offer. Overrides naming providers that are
    not enabled are ignored (see `unmatched_overrides` to report them).
    """
    reg = {
        (provider, model): check_spec(f"registry entry '{provider}/{model}'", spec)
        for provider, models in registry.items()
        for model, spec in models.items()
    }
    ovr = {key: check_spec(f"override {key!r}", spec) for key, spec in overrides.items()}
    served = _served(discovered, ovr)
    offers = (
        _offer(provider, model, info, reg.get((provider, model), {}), ovr)
        for (provider, model), info in sorted(served.items(), key=lambda item: item[0])
    )
    return Catalog(price_version, offers)


def _served(
    discovered: Mapping[str, Sequence[ModelInfo]], ovr: Mapping[str, Spec]
) -> dict[tuple[str, str], ModelInfo | None]:
    """Every (provider, model) that becomes an offer, with the provider's listing if it had one."""
    served: dict[tuple[str, str], ModelInfo | None] = {}
    for provider, infos in discovered.items():
        for info in infos:
            served.setdefault((provider, info.id), info)
    for key, spec in ovr.items():
        if spec.get("listed"):
            provider, slash, model = key.partition("/")
            if not (slash and provider and model):
                raise ValueError(f"override {key!r}: 'listed: true' needs a 'provider/model' key")
            if provider in discovered:
                served.setdefault((provider, model), None)
    return {pm: info for pm, info in served.items() if _override(ovr, *pm).get("listed", True)}


def _override(ovr: Mapping[str, Spec], provider: str, model: str) -> Spec:
    """The operator's say on one offer: the "model" override, then the "provider/model" one."""
    return {**ovr.get(model, {}), **ovr.get(f"{provider}/{model}", {})}


def _offer(
    provider: str, model: str, info: ModelInfo | None, reg: Spec, ovr: Mapping[str, Spec]
) -> Offer:
    listing = _spec_of_info(info)
    layers = (reg, listing) if provider in LIVE_PRICED_PROVIDERS else (listing, reg)
    spec: Spec = {}
    for layer in (*layers, _override(ovr, provider, model)):
        spec.update(layer)
    return _offer_of_spec(provider, model, spec)


def _spec_of_info(info: ModelInfo | None) -> Spec:
    """A listing as a Spec layer; facts the provider did not give are absent, not None."""
    if info is None:
        return {}
    facts: dict[str, object] = {"context_window": info.context_window, "kind": info.kind}
    if info.prices is not None:
        facts.update(msgspec.structs.asdict(info.prices))
    if info.caps is not None:
        facts.update(msgspec.structs.asdict(info.caps))
    return cast(Spec, {field: value for field, value in facts.items() if value is not None})


def _offer_of_spec(provider: str, model: str, spec: Spec) -> Offer:
    """Defaults for what nobody said: kind from the name, a small window, no extra capabilities."""
    kind: Kind = spec.get("kind") or ("embedding" if "embed" in model.lower() else "chat")
    output = spec.get("output")
    if kind == "embedding" and output is None and spec.get("input") is not None:
        output = 0  # embeddings produce no billed output tokens
    prices = Prices(input=spec.get("input"), output=output, cached=spec.get("cached"))
    caps = Capabilities(
        tools=spec.get("tools", False),
        vision=spec.get("vision", False),
        json_mode=spec.get("json_mode", False),
        streaming=spec.get("streaming", kind != "embedding"),
    )
    window = spec.get("context_window", DEFAULT_CONTEXT_WINDOW)
    return Offer(provider, model, kind, prices, window, caps)


def unmatched_overrides(catalog: Catalog, overrides: Mapping[str, object]) -> list[str]:
    """Override keys that touch no offer: typos, or providers that are not enabled. Log them."""
    keys = {offer.model for offer in catalog} | {offer.key for offer in catalog}
    return sorted(key for key, spec in overrides.items() if key not in keys and not _hides(spec))


def _hides(spec: object) -> bool:
    return isinstance(spec, Mapping) and spec.get("listed") is False


def price_version_of(registry_date: str, overrides: Mapping[str, object]) -> str:
    """A deterministic name for the prices in force: the registry date plus a hash of overrides.

    Equal inputs give equal names on every host, so `usage.recorded` rows can be grouped by it.
    Live OpenRouter prices are not part of it; each usage event records its unit prices anyway.
    """
    if not overrides:
        return registry_date
    canonical = msgspec.json.encode(dict(overrides), order="sorted")
    return f"{registry_date}+{hashlib.sha256(canonical).hexdigest()[:12]}"
