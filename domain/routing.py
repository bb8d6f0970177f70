"""Routing: which offer serves a request, and in which order to fall back. Pure and per-request cheap.

`route()` looks up the offers a request may use (O(1) through the catalog's indexes), checks each
one's eligibility, estimates its cost, and ranks the eligible ones by the strategy with a fixed
total order as the last tie-breaker, so the same world always gives the same answer. Offers are
ranked by their exact cost (pico-USD), reported in micro-USD rounded half up; an unknown price
ranks after every known one. "No route" is a value, `NoRoute`, with a message naming why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

from msgspec import Struct

from domain.catalog import CAPABILITY_NAMES, Catalog, Kind, Offer
from domain.cost import cost_picos, micros_of_picos
from domain.events import Candidate

AUTO = "auto"
STRATEGIES = ("cheapest", "fastest")
DEFAULT_EXPECTED_OUTPUT_TOKENS = 256

# Eligibility checks in order; an offer's stage is the first it fails (ELIGIBLE: none).
KIND, PROVIDER_POLICY, MODEL_POLICY, PRICE, HEALTH, CAPS, CONTEXT, ELIGIBLE = range(8)


class RouteRequest(Struct, frozen=True, kw_only=True):
    """What routing needs to know of a call. `model` None or "auto" means: pick for me."""

    model: str | None = None
    kind: Kind = "chat"
    prompt_tokens_est: int = 0
    max_tokens: int | None = None
    needs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = self.needs - CAPABILITY_NAMES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITY_NAMES)}")
        if self.prompt_tokens_est < 0 or (self.max_tokens is not None and self.max_tokens < 0):
            raise ValueError(f"token counts must be >= 0, got {self.prompt_tokens_est}, {self.max_tokens}")

    @property
    def auto(self) -> bool:
        return self.model is None or self.model == AUTO


class Policy(Struct, frozen=True, kw_only=True):
    """A context's routing rules. None means "no rule"; model lists match "model" or "provider/model"."""

    allowed_providers: frozenset[str] | None = None
    denied_providers: frozenset[str] | None = None
    allowed_models: frozenset[str] | None = None
    denied_models: frozenset[str] | None = None
    pinned_model: str | None = None  # what "auto" means for this context
    strategy: str | None = None  # overrides the broker-wide strategy

    def allows_provider(self, provider: str) -> bool:
        if self.denied_providers is not None and provider in self.denied_providers:
            return False
        return self.allowed_providers is None or provider in self.allowed_providers

    def allows_model(self, offer: Offer) -> bool:
        if self.denied_models is not None and _names(offer) & self.denied_models:
            return False
        return self.allowed_models is None or bool(_names(offer) & self.allowed_models)


def _names(offer: Offer) -> set[str]:
    return {offer.model, offer.key}


class Considered(NamedTuple):
    """One offer the router looked at: its estimated cost, whether it was eligible, and why (not)."""

    offer: Offer
    est_cost_micros: int | None
    eligible: bool
    reason: str


class RouteDecision(Struct, frozen=True, kw_only=True):
    """The pick, the fallback order (`ordered[0] is chosen`), and everything considered."""

    chosen: Offer
    ordered: tuple[Offer, ...]
    candidates: tuple[Considered, ...]
    reason: str
    strategy: str
    est_cost_micros: int | None


class NoRoute(Struct, frozen=True, kw_only=True):
    """No offer may serve the request. `cause` lets the HTTP seam pick a status (404 vs 400)."""

    message: str
    cause: Literal["unknown_model", "ineligible", "unknown_strategy"]
    code: str = "no_route"
    candidates: tuple[Considered, ...] = ()


class _Ask(NamedTuple):
    """One request's routing inputs, gathered once so the per-offer check stays tiny."""

    request: RouteRequest
    policy: Policy
    unhealthy: frozenset[str]
    auto: bool
    needs: tuple[str, ...]
    window_tokens: int
    output_tokens: int


class _Row(NamedTuple):
    picos: int | None
    stage: int
    considered: Considered


_Rank = Callable[[_Row], tuple[object, ...]]


def check_strategy(name: str) -> str:
    """For config time: fail fast on a strategy `route()` would refuse on every request."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown routing strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return name


def route(
    catalog: Catalog,
    request: RouteRequest,
    *,
    unhealthy: frozenset[str],
    policy: Policy,
    strategy: str = "cheapest",
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
    observed_ttft_us: Mapping[tuple[str, str], int] | None = None,
) -> RouteDecision | NoRoute:
    """Pick the offer for `request`. The policy's strategy, if set, beats `strategy`.

    An unknown strategy is a `NoRoute` here (a bad per-context policy must not crash requests);
    use `check_strategy` to refuse it at config time.
    """
    name = policy.strategy or strategy
    if name not in STRATEGIES:
        message = f"unknown routing strategy {name!r}; known: {', '.join(STRATEGIES)}"
        return NoRoute(message=message, cause="unknown_strategy")
    label, auto, offers = _lookup(catalog, request, policy)
    if not offers:
        return NoRoute(message=f"no offer for model {label!r}", cause="unknown_model")
    ask = _ask(request, policy, unhealthy, auto, expected_output_tokens)
    rows = [_row(offer, ask) for offer in offers]
    eligible = sorted((r for r in rows if r.stage == ELIGIBLE), key=_ranker(name, observed_ttft_us))
    candidates = _candidates(eligible, rows)
    if not eligible:
        return NoRoute(message=_why_none(label, rows, ask), cause="ineligible", candidates=candidates)
    best = eligible[0].considered
    return RouteDecision(
        chosen=best.offer,
        ordered=tuple(r.considered.offer for r in eligible),
        candidates=candidates,
        reason=_reason(name, label, best, len(eligible), len(rows)),
        strategy=name,
        est_cost_micros=best.est_cost_micros,
    )


def _lookup(
    catalog: Catalog, request: RouteRequest, policy: Policy
) -> tuple[str, bool, tuple[Offer, ...]]:
    """(label for messages, auto?, offers to consider). A pinned model routes like a named one."""
    name = request.model if not request.auto else policy.pinned_model
    if name is None:
        return AUTO, True, catalog.offers_of_kind(request.kind)
    provider, slash, model = name.partition("/")
    if slash:
        pinned = catalog.offer(provider, model)
        if pinned is not None:
            return name, False, (pinned,)
    return name, False, catalog.offers_for_model(name)  # OpenRouter ids contain '/' too


def _ask(
    request: RouteRequest, policy: Policy, unhealthy: frozenset[str], auto: bool, expected: int
) -> _Ask:
    output = request.max_tokens if request.max_tokens is not None else expected
    window = request.prompt_tokens_est + (request.max_tokens or 0)
    output = 0 if request.kind == "embedding" else output
    return _Ask(request, policy, unhealthy, auto, tuple(sorted(request.needs)), window, output)


def _row(offer: Offer, ask: _Ask) -> _Row:
    picos = cost_picos(ask.request.prompt_tokens_est, ask.output_tokens, 0, offer.prices)
    stage, reason = _check(offer, ask)
    micros = None if picos is None else micros_of_picos(picos)
    return _Row(picos, stage, Considered(offer, micros, stage == ELIGIBLE, reason))


def _check(offer: Offer, ask: _Ask) -> tuple[int, str]:
    """The first rule `offer` breaks for this request, in stage order, or ELIGIBLE."""
    if offer.kind != ask.request.kind:
        return KIND, f"serves {offer.kind}, not {ask.request.kind}"
    if not ask.policy.allows_provider(offer.provider):
        return PROVIDER_POLICY, "provider not allowed by policy"
    if not ask.policy.allows_model(offer):
        return MODEL_POLICY, "model not allowed by policy"
    if ask.auto and not offer.prices.known:
        return PRICE, "price unknown (auto never picks it)"
    if offer.provider in ask.unhealthy:
        return HEALTH, "provider unhealthy"
    missing = [need for need in ask.needs if not getattr(offer.caps, need)]
    if missing:
        return CAPS, f"lacks {', '.join(missing)}"
    if offer.context_window < ask.window_tokens:
        return CONTEXT, f"context window {offer.context_window} < {ask.window_tokens} tokens"
    return ELIGIBLE, "eligible"


def _ranker(name: str, observed_ttft_us: Mapping[tuple[str, str], int] | None) -> _Rank:
    """Sort keys: the strategy's measure, then cost, then (provider, model) — a total order."""
    if name == "fastest":
        ttft = observed_ttft_us or {}

        def fastest(row: _Row) -> tuple[object, ...]:
            seen = ttft.get((row.considered.offer.provider, row.considered.offer.model))
            return (seen is None, seen or 0, *_by_cost(row))

        return fastest
    return _by_cost


def _by_cost(row: _Row) -> tuple[object, ...]:
    offer = row.considered.offer
    return (row.picos is None, row.picos or 0, offer.model, offer.provider)


def _candidates(eligible: Sequence[_Row], rows: Sequence[_Row]) -> tuple[Considered, ...]:
    """Eligible in rank order, then the rest by (provider, model): independent of input order."""
    rest = sorted(
        (r.considered for r in rows if r.stage != ELIGIBLE),
        key=lambda c: (c.offer.provider, c.offer.model),
    )
    return (*(r.considered for r in eligible), *rest)


def _reason(name: str, label: str, best: Considered, n_eligible: int, n_rows: int) -> str:
    cost = best.est_cost_micros
    price = "price unknown" if cost is None else f"est {cost} micro-USD"
    return f"{name} for {label!r}: {best.offer.key}, {price}; {n_eligible} of {n_rows} offers eligible"


def _why_none(label: str, rows: Sequence[_Row], ask: _Ask) -> str:
    """Name the rule that emptied the field: the last stage any offer reached."""
    stage = max(r.stage for r in rows)
    last = [r.considered.offer for r in rows if r.stage == stage]
    if stage == KIND:
        kinds = ", ".join(sorted({o.kind for o in last}))
        return f"model {label!r} serves {kinds}, not {ask.request.kind}"
    if stage == PROVIDER_POLICY:
        return f"policy allows no provider serving model {label!r}"
    if stage == MODEL_POLICY:
        return f"policy does not allow model {label!r}"
    if stage == PRICE:
        return f"no {ask.request.kind} offer has a known price; auto never picks an unknown price"
    if stage == HEALTH:
        providers = ", ".join(sorted({o.provider for o in last}))
        return f"every provider serving model {label!r} is unhealthy ({providers})"
    if stage == CAPS:
        return f"model {label!r} needs {', '.join(ask.needs)}; no eligible offer has them"
    return _too_long(ask.request, max(o.context_window for o in last))


def _too_long(request: RouteRequest, largest: int) -> str:
    asked = f"prompt of {request.prompt_tokens_est} tokens"
    if request.max_tokens is not None:
        asked += f" + max_tokens {request.max_tokens}"
    return f"{asked} exceeds every context window (largest {largest})"


def event_candidates(considered: Sequence[Considered]) -> list[Candidate]:
    """The candidates as `route.decided` records them."""
    return [
        Candidate(
            provider=c.offer.provider,
            model=c.offer.model,
            est_cost_micros=c.est_cost_micros,
            eligible=c.eligible,
            reason=c.reason,
        )
        for c in considered
    ]
