"""Routing: which offer serves a request, and in what order to fall back. Pure; cheap per request.

`route()` finds the offers a request may use (O(1) catalog lookups), checks and costs each once,
and ranks the eligible ones by the strategy, then exact cost (pico-USD, so rounding never hides
a cheaper price; unknown prices last), then (provider, model): the same world always gives the
same answer. "No route" is a value, `NoRoute`, whose message names the rule that emptied the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from heapq import heapify, heappop, merge
from itertools import compress, repeat
from operator import add, ge, mul
from typing import Literal, NamedTuple

from msgspec import Struct

from domain.catalog import CAPABILITY_NAMES, Catalog, Kind, Offer
from domain.cost import cost_picos, micros_of_picos
from domain.events import Candidate

AUTO = "auto"
STRATEGIES = ("cheapest", "fastest")
_UNKNOWN_STRATEGY = "unknown routing strategy {!r}; known: " + ", ".join(STRATEGIES)
DEFAULT_EXPECTED_OUTPUT_TOKENS = 256

# Eligibility checks in order; an offer's stage is the first it fails (ELIGIBLE: none).
KIND, PROVIDER_POLICY, MODEL_POLICY, PRICE, HEALTH, CAPS, CONTEXT, ELIGIBLE = range(8)
_OK = (ELIGIBLE, "eligible")


class RouteRequest(Struct, frozen=True, kw_only=True):
    """What routing needs to know of a call. `model` None or "auto" means: pick for me."""

    model: str | None = None
    kind: Kind = "chat"
    prompt_tokens_est: int = 0
    max_tokens: int | None = None
    needs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.needs and (unknown := self.needs - CAPABILITY_NAMES):
            known = sorted(CAPABILITY_NAMES)
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {known}")
        if self.prompt_tokens_est < 0 or (self.max_tokens is not None and self.max_tokens < 0):
            counts = f"prompt_tokens_est={self.prompt_tokens_est}, max_tokens={self.max_tokens}"
            raise ValueError(f"token counts must be >= 0, got {counts}")

    @property
    def auto(self) -> bool:
        return self.model is None or self.model == AUTO


class Policy(Struct, frozen=True, kw_only=True):
    """A context's routing rules. None: no rule. Model lists match "model" or "provider/model"."""

    allowed_providers: frozenset[str] | None = None
    denied_providers: frozenset[str] | None = None
    allowed_models: frozenset[str] | None = None
    denied_models: frozenset[str] | None = None
    pinned_model: str | None = None  # what "auto" means for this context
    strategy: str | None = None  # overrides the broker-wide strategy

    @property
    def restricts(self) -> bool:
        """Whether any allow/deny list is set; routing skips those checks when none is (asked once
        per request: plain comparisons, no generator)."""
        return (self.allowed_providers is not None or self.denied_providers is not None
                or self.allowed_models is not None or self.denied_models is not None)

    def allows_provider(self, provider: str) -> bool:
        if self.denied_providers is not None and provider in self.denied_providers:
            return False
        return self.allowed_providers is None or provider in self.allowed_providers

    def allows_model(self, offer: Offer) -> bool:
        if self.denied_models is not None and _named_in(offer, self.denied_models):
            return False
        return self.allowed_models is None or _named_in(offer, self.allowed_models)


def _named_in(offer: Offer, names: frozenset[str]) -> bool:
    return offer.model in names or offer.key in names


class Considered(Struct, frozen=True, gc=False):
    """One offer the router looked at: its estimated cost, whether eligible, and why (not).

    A Struct: 4× cheaper to make than a NamedTuple; gc=False is safe (immutable values only)."""

    offer: Offer
    est_cost_micros: int | None
    eligible: bool
    reason: str


class RouteDecision(Struct, frozen=True, kw_only=True):
    """The pick, the fallback order (`ordered[0] is chosen`), and everything considered.

    From `route` both are complete; from `route_auto` they are the first `keep` of each (what a
    request can try and record), and `total` says how many offers were considered in all."""

    chosen: Offer
    ordered: tuple[Offer, ...]
    candidates: tuple[Considered, ...]
    reason: str
    strategy: str
    est_cost_micros: int | None
    total: int = -1  # offers considered; -1: len(candidates)

    @property
    def considered(self) -> int:
        return len(self.candidates) if self.total < 0 else self.total


class NoRoute(Struct, frozen=True, kw_only=True):
    """No offer may serve the request. `cause` lets the HTTP seam pick a status (404 vs 400)."""

    message: str
    cause: Literal["unknown_model", "ineligible", "unknown_strategy"]
    code: str = "no_route"
    candidates: tuple[Considered, ...] = ()


class _Ask(NamedTuple):
    """One request's routing inputs, gathered once so the per-offer check stays tiny."""

    request: RouteRequest
    policy: Policy | None  # None: no allow/deny lists to check
    unhealthy: frozenset[str]
    auto: bool
    needs: tuple[str, ...]
    prompt_tokens: int
    window_tokens: int
    output_tokens: int


# Plain tuples that sort without a key function; (provider, model) is unique, so comparisons
# never reach the Considered. Eligible: (price unknown?, exact cost in pico-USD, provider, model).
_Eligible = tuple[bool, int, str, str, Considered]
_Rejected = tuple[str, str, int, Considered]


def check_strategy(name: str) -> str:
    """For config time: fail fast on a strategy `route()` would refuse on every request."""
    if name not in STRATEGIES:
        raise ValueError(_UNKNOWN_STRATEGY.format(name))
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
        return NoRoute(message=_UNKNOWN_STRATEGY.format(name), cause="unknown_strategy")
    label, auto, offers = _lookup(catalog, request, policy)
    if not offers:
        return NoRoute(message=f"no offer for model {label!r}", cause="unknown_model")
    ask = _ask(request, policy, unhealthy, auto, expected_output_tokens)
    eligible, rejected = _consider(offers, ask)
    _rank(eligible, name, observed_ttft_us)
    candidates = (*(row[-1] for row in eligible), *(row[-1] for row in sorted(rejected)))
    if not eligible:
        why = _why_none(label, rejected, ask)
        return NoRoute(message=why, cause="ineligible", candidates=candidates)
    best = eligible[0][-1]
    return RouteDecision(
        chosen=best.offer,
        ordered=tuple(row[-1].offer for row in eligible),
        candidates=candidates,
        reason=_reason(name, label, best, len(eligible), len(offers)),
        strategy=name,
        est_cost_micros=best.est_cost_micros,
        total=len(candidates),
    )


class AutoTable:
    """What routing `auto` by cost needs that does not depend on a request's token counts, for one
    (catalog, kind, policy, health, needs): the offers that pass every rule but the context window,
    sorted by (provider, model), with their prices and windows as tuples; the others with the rule
    they break, sorted the same way. Built once (the shell keeps it per catalog version and rules);
    `route_auto` then finishes each request in C-level passes over these tuples, where `route` runs
    a Python check per offer (`bench/routing.py` prints both as the catalog grows)."""

    __slots__ = ("offers", "ins", "outs", "windows", "min_window", "refused", "total", "exact")

    def __init__(self, offers: Sequence[Offer], refused: Sequence[tuple[str, str, int, Offer, str]],
                 total: int) -> None:
        self.offers = tuple(offers)
        self.ins = tuple(o.prices.input or 0 for o in offers)  # (auto: every price here is known)
        self.outs = tuple(o.prices.output or 0 for o in offers)
        self.windows = tuple(o.context_window for o in offers)
        self.min_window = min(self.windows, default=0)
        self.refused = tuple(refused)  # (provider, model, stage, offer, reason)
        self.total = total
        self.exact = min(self.ins, default=0) >= 0 and min(self.outs, default=0) >= 0  # (the keys need costs >= 0)


def auto_table(catalog: Catalog, kind: Kind, policy: Policy, unhealthy: frozenset[str],
               needs: frozenset[str]) -> AutoTable:
    """The `AutoTable` of `auto` requests of `kind` needing `needs` under `policy` (its pin aside)."""
    ask = _ask(RouteRequest(kind=kind, needs=needs), policy, unhealthy, True, 0)  # window 0: always fits
    passing: list[Offer] = []
    refused: list[tuple[str, str, int, Offer, str]] = []
    offers = catalog.offers_of_kind(kind)
    for offer in offers:
        stage, reason = _check(offer, ask)
        if stage == ELIGIBLE:
            passing.append(offer)
        else:
            refused.append((offer.provider, offer.model, stage, offer, reason))
    passing.sort(key=lambda o: (o.provider, o.model))
    refused.sort(key=lambda row: row[:2])  # (provider, model) is unique
    return AutoTable(passing, refused, len(offers))


def route_auto(table: AutoTable, request: RouteRequest, *, keep: int,
               expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS) -> RouteDecision | None:
    """`route` for an `auto` request by cost, from its table: the same choice, order and reason, with
    the first `keep` eligible offers in `ordered` and the first `keep` candidates. None when no
    offer is eligible (route in full for the refusal that names why)."""
    if not table.exact:
        return None
    prompt = request.prompt_tokens_est
    output = request.max_tokens if request.max_tokens is not None else expected_output_tokens
    output = 0 if request.kind == "embedding" else output
    window = prompt + (request.max_tokens or 0)
    n = len(table.offers)
    # cost × n + position: one int per offer orders by exact cost, then (provider, model)
    keys = list(map(add, map(mul, map(add, map(mul, table.ins, repeat(prompt)), map(mul, table.outs, repeat(output))),
                             repeat(n)), range(n)))
    fits = None
    if table.min_window < window:
        fits = list(map(ge, table.windows, repeat(window)))
        keys = list(compress(keys, fits))
    if not keys:
        return None
    if len(keys) > keep:
        heapify(keys)
        keys = [heappop(keys) for _ in range(keep)]
    else:
        keys.sort()
    offers = table.offers
    ranked = [Considered(offers[key % n], micros_of_picos(key // n), True, "eligible") for key in keys]
    ordered = tuple([c.offer for c in ranked])
    eligible_count = n if fits is None else sum(fits)
    if len(ranked) < keep and (table.refused or fits is not None):
        ranked += _refused_first(table, fits, window, prompt, output, keep - len(ranked))
    best = ranked[0]
    return RouteDecision(
        chosen=best.offer, ordered=ordered, candidates=tuple(ranked),
        reason=_reason("cheapest", AUTO, best, eligible_count, table.total),
        strategy="cheapest", est_cost_micros=best.est_cost_micros, total=table.total,
    )


def _refused_first(table: AutoTable, fits: list[bool] | None, window: int, prompt: int, output: int,
                   count: int) -> list[Considered]:
    """The first `count` refused offers in (provider, model) order: the table's own refusals merged
    with the offers whose window is too small for this request, each costed for it."""
    too_small = () if fits is None else (
        (o.provider, o.model, CONTEXT, o, f"context window {o.context_window} < {window} tokens")
        for o, ok in zip(table.offers, fits) if not ok)
    out: list[Considered] = []
    for _, _, _, offer, reason in merge(table.refused, too_small, key=lambda row: row[:2]):
        picos = cost_picos(prompt, output, 0, offer.prices)
        out.append(Considered(offer, None if picos is None else micros_of_picos(picos), False, reason))
        if len(out) == count:
            break
    return out


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
    """Everything per-request that the per-offer loop would otherwise recompute."""
    output = request.max_tokens if request.max_tokens is not None else expected
    output = 0 if request.kind == "embedding" else output  # embeddings bill input only
    prompt = request.prompt_tokens_est
    window = prompt + (request.max_tokens or 0)
    needs = tuple(sorted(request.needs)) if request.needs else ()
    rules = policy if policy.restricts else None
    return _Ask(request, rules, unhealthy, auto, needs, prompt, window, output)


def _consider(offers: Sequence[Offer], ask: _Ask) -> tuple[list[_Eligible], list[_Rejected]]:
    """Cost and check every offer once. The per-request hot loop: keep it flat."""
    eligible: list[_Eligible] = []
    rejected: list[_Rejected] = []
    for offer in offers:
        picos = cost_picos(ask.prompt_tokens, ask.output_tokens, 0, offer.prices)
        micros = None if picos is None else micros_of_picos(picos)
        stage, reason = _check(offer, ask)
        if stage == ELIGIBLE:
            considered = Considered(offer, micros, True, reason)
            eligible.append((picos is None, picos or 0, offer.provider, offer.model, considered))
        else:
            considered = Considered(offer, micros, False, reason)
            rejected.append((offer.provider, offer.model, stage, considered))
    return eligible, rejected


def _check(offer: Offer, ask: _Ask) -> tuple[int, str]:
    """The first rule `offer` breaks for this request, in stage order, or ELIGIBLE."""
    if offer.kind != ask.request.kind:
        return KIND, f"serves {offer.kind}, not {ask.request.kind}"
    if ask.policy is not None:
        if not ask.policy.allows_provider(offer.provider):
            return PROVIDER_POLICY, "provider not allowed by policy"
        if not ask.policy.allows_model(offer):
            return MODEL_POLICY, "model not allowed by policy"
    if ask.auto and not offer.prices.known:
        return PRICE, "price unknown (auto never picks it)"
    if ask.unhealthy:
        if offer.provider in ask.unhealthy:
            return HEALTH, "provider unhealthy"
        if offer.key in ask.unhealthy:
            return HEALTH, "offer backing off after errors"
    if ask.needs and (missing := [n for n in ask.needs if not getattr(offer.caps, n)]):
        return CAPS, f"lacks {', '.join(missing)}"
    if offer.context_window < ask.window_tokens:
        return CONTEXT, f"context window {offer.context_window} < {ask.window_tokens} tokens"
    return _OK


def _rank(
    eligible: list[_Eligible], name: str, observed_ttft_us: Mapping[tuple[str, str], int] | None
) -> None:
    """Sort in place: the strategy's measure, then cost, then (provider, model): a total order."""
    if name == "fastest":
        ttft = observed_ttft_us or {}

        def fastest(row: _Eligible) -> tuple[object, ...]:
            seen = ttft.get((row[2], row[3]))
            return (seen is None, seen or 0, *row[:4])

        eligible.sort(key=fastest)
    else:
        eligible.sort()  # cheapest: the rows are their own sort keys


def _reason(name: str, label: str, best: Considered, n_eligible: int, n_rows: int) -> str:
    cost = best.est_cost_micros
    price = "price unknown" if cost is None else f"est {cost} micro-USD"
    return f"{name} for {label!r}: {best.offer.key}, {price}; {n_eligible} of {n_rows} eligible"


def _why_none(label: str, rejected: Sequence[_Rejected], ask: _Ask) -> str:
    """Name the rule that emptied the field: the last stage any offer reached."""
    stage = max(row[2] for row in rejected)
    last = [row[-1].offer for row in rejected if row[2] == stage]
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
    asked = f"prompt of {ask.prompt_tokens} tokens"
    if ask.request.max_tokens is not None:
        asked += f" + max_tokens {ask.request.max_tokens}"
    largest = max(o.context_window for o in last)
    return f"{asked} exceeds every context window (largest {largest})"


def event_candidates(considered: Sequence[Considered]) -> list[Candidate]:
    """The candidates as `route.decided` records them."""
    return [
        Candidate(provider=c.offer.provider, model=c.offer.model,
                  est_cost_micros=c.est_cost_micros, eligible=c.eligible, reason=c.reason)
        for c in considered
    ]
