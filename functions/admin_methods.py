"""The admin JSON-RPC methods (`domain.verb`): spend, usage, events, limits, routing, models, providers.

Each handler is small: read (SQL off the event loop) or decide, append an event where the
operator changed something, answer. SQL and billing methods live in `admin_data.py`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, Literal

import msgspec

from domain.events import LimitsChanged, ProviderToggled
from domain.identity import IdentityError, context_of
from domain.limits import LIMIT_FIELDS, POLICY_FIELDS, scope_key, usd_to_micros
from domain.routing import STRATEGIES, NoRoute
from eventlog.ids import now_us, uuid7
from functions.errors import BrokerError
from functions.openai_api import run_call
from functions.jsonrpc import INVALID_PARAMS, Method, NoParams, RawParams, RpcError, method
from functions.models import model_entries
from functions.pipeline import Call, Caller
from functions.request_body import parse_chat, parse_completion, parse_embedding
from functions.state import BrokerState

METHODS: dict[str, Method] = {}
PARSERS = {"chat": parse_chat, "completion": parse_completion, "embedding": parse_embedding}
Json = Any


class AdminContext(msgspec.Struct):
    state: BrokerState
    peer_ip: str
    actor: str


# ---- limits ---------------------------------------------------------------------------------


class LimitsTarget(msgspec.Struct, forbid_unknown_fields=True):
    ip: str = ""
    context: str = ""


class LimitsSet(msgspec.Struct, forbid_unknown_fields=True):
    scope: Literal["default", "context", "ip", "bucket"]
    ip: str = ""
    context: str = ""
    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    concurrent: int | None = None
    budget_daily_usd: str | None = None
    budget_monthly_usd: str | None = None
    allowed_providers: list[str] | None = None
    denied_providers: list[str] | None = None
    allowed_models: list[str] | None = None
    denied_models: list[str] | None = None
    pinned_model: str | None = None
    strategy: str | None = None
    cleared: list[str] = []
    actor: str = ""
    reason: str = ""


class LimitsReset(msgspec.Struct, forbid_unknown_fields=True):
    scope: Literal["default", "context", "ip", "bucket"]
    ip: str = ""
    context: str = ""
    actor: str = ""
    reason: str = ""


def _check_target(scope: str, ip: str, context: str) -> None:
    if scope in ("context", "bucket") and not context:
        raise RpcError(INVALID_PARAMS, f"invalid params: scope {scope!r} needs 'context'")
    if scope in ("ip", "bucket") and not ip:
        raise RpcError(INVALID_PARAMS, f"invalid params: scope {scope!r} needs 'ip'")


def _micros(value: str | None, name: str) -> int | None:
    try:
        return None if value is None else usd_to_micros(value, name)
    except ValueError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None


async def _change(ctx: AdminContext, event: LimitsChanged) -> dict[str, Any]:
    try:
        await ctx.state.log.append([event])  # validates: a bad value is refused before anything changes
    except msgspec.ValidationError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None
    ctx.state.admission.changed(event)
    return {"event_id": event.event_id, "effective": asdict(ctx.state.admission.limits((event.ip, event.context)))}


@method(METHODS, "limits.set", LimitsSet, dict[str, Any], "Change limits or routing policy for a scope (a limits.changed event).")
async def limits_set(ctx: AdminContext, p: LimitsSet) -> dict[str, Any]:
    _check_target(p.scope, p.ip, p.context)
    if p.strategy is not None and p.strategy not in STRATEGIES:
        raise RpcError(INVALID_PARAMS, f"invalid params: strategy {p.strategy!r} must be one of {', '.join(STRATEGIES)}")
    unknown = set(p.cleared) - set(LIMIT_FIELDS + POLICY_FIELDS)
    if unknown:
        raise RpcError(INVALID_PARAMS, f"invalid params: 'cleared' names unknown settings {sorted(unknown)}")
    settings = {f: getattr(p, f) for f in LIMIT_FIELDS[:3] + POLICY_FIELDS}
    _, ip, context = scope_key(p.scope, p.ip, p.context)
    event = LimitsChanged(
        event_id=uuid7(), ts_us=now_us(), source=ctx.state.config.source, ip=ip, context=context, scope=p.scope,
        budget_daily_micros=_micros(p.budget_daily_usd, "budget_daily_usd"),
        budget_monthly_micros=_micros(p.budget_monthly_usd, "budget_monthly_usd"),
        cleared=p.cleared, actor=p.actor or ctx.actor, reason=p.reason, **settings)
    return await _change(ctx, event)


@method(METHODS, "limits.reset", LimitsReset, dict[str, Any], "Drop every override of a scope (a limits.changed event).")
async def limits_reset(ctx: AdminContext, p: LimitsReset) -> dict[str, Any]:
    _check_target(p.scope, p.ip, p.context)
    _, ip, context = scope_key(p.scope, p.ip, p.context)
    return await _change(ctx, LimitsChanged(
        event_id=uuid7(), ts_us=now_us(), source=ctx.state.config.source, ip=ip, context=context,
        scope=p.scope, reset=True, actor=p.actor or ctx.actor, reason=p.reason))


@method(METHODS, "limits.get", LimitsTarget, dict[str, Any], "Effective limits of an (ip, context) bucket and all overrides.")
async def limits_get(ctx: AdminContext, p: LimitsTarget) -> dict[str, Any]:
    book = ctx.state.admission.book
    overrides = [{"scope": s, "ip": ip, "context": c, "settings": v} for (s, ip, c), v in sorted(book.overrides.items())]
    effective = asdict(ctx.state.admission.limits((p.ip, p.context)))
    return {"ip": p.ip, "context": p.context, "effective": effective, "overrides": overrides}


# ---- routing, models, providers ---------------------------------------------------------------


class Explain(msgspec.Struct, forbid_unknown_fields=True):
    request: dict[str, Any]
    endpoint: Literal["chat", "completion", "embedding"] = "chat"
    context: str = "0"
    ip: str = "127.0.0.1"


@method(METHODS, "routing.explain", Explain, dict[str, Any], "Dry-run routing for a request body: candidates, costs, the choice, why.")
async def routing_explain(ctx: AdminContext, p: Explain) -> dict[str, Any]:
    try:
        parsed = PARSERS[p.endpoint](msgspec.json.encode(p.request))
    except BrokerError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: request: {exc.message}") from None
    decision, strategy = ctx.state.route(parsed.route, (p.ip, p.context), complete=True)
    candidates = [{"provider": c.offer.provider, "model": c.offer.model, "est_cost_micros": c.est_cost_micros,
                   "eligible": c.eligible, "reason": c.reason} for c in decision.candidates]
    base = {"strategy": strategy, "prompt_tokens_est": parsed.route.prompt_tokens_est, "candidates": candidates,
            "price_version": ctx.state.catalog.catalog.price_version}
    if isinstance(decision, NoRoute):
        return {**base, "chosen": None, "reason": decision.message}
    return {**base, "chosen": decision.chosen.key, "reason": decision.reason,
            "est_cost_micros": decision.est_cost_micros, "fallbacks": [o.key for o in decision.ordered[1:]]}


@method(METHODS, "models.list", NoParams, dict[str, Any], "Every offer, each model once, and auto, with prices.")
async def models_list(ctx: AdminContext, _: NoParams) -> dict[str, Any]:
    catalog = ctx.state.catalog.catalog
    return {"price_version": catalog.price_version, "data": model_entries(catalog)}


@method(METHODS, "models.refresh", NoParams, dict[str, Any], "Rediscover every provider's models now (a catalog.refreshed event).")
async def models_refresh(ctx: AdminContext, _: NoParams) -> dict[str, Any]:
    catalog = await ctx.state.catalog.refresh(ctx.state.log)
    return {"price_version": catalog.price_version, "offers": len(catalog)}


@method(METHODS, "providers.list", NoParams, list[dict[str, Any]], "Providers with health, key ids and cooldowns (never keys).")
async def providers_list(ctx: AdminContext, _: NoParams) -> list[dict[str, Any]]:
    now_s = time.monotonic()
    resting = ctx.state.backoff.snapshot(now_s)
    return [{"name": p.name, "base_url": p.base_url, "enabled": p.enabled, "usable": p.usable(now_s),
             "keys": p.keys.snapshot(now_s),
             "resting_offers": {k: v for k, v in resting.items() if k.startswith(p.name + "/")}}
            for p in ctx.state.providers.values()]


class SetEnabled(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    enabled: bool
    actor: str = ""
    reason: str = ""


@method(METHODS, "providers.set_enabled", SetEnabled, dict[str, Any], "Switch a provider on or off for routing.")
async def providers_set_enabled(ctx: AdminContext, p: SetEnabled) -> dict[str, Any]:
    provider = ctx.state.providers.get(p.name)
    if provider is None:
        raise RpcError(INVALID_PARAMS, f"invalid params: no provider {p.name!r} (providers.list names them)")
    await ctx.state.log.append([ProviderToggled(event_id=uuid7(), ts_us=now_us(), source=ctx.state.config.source,
                                                provider=p.name, enabled=p.enabled, actor=p.actor or ctx.actor,
                                                reason=p.reason)])
    provider.enabled = p.enabled
    ctx.state.health_changed()
    return {"name": p.name, "enabled": p.enabled}


# ---- the broker itself, over RPC -------------------------------------------------------------


async def _ai(ctx: AdminContext, raw: dict[str, Any], endpoint: str, path: str, kind: str) -> Any:
    body = raw.get("request", raw) if isinstance(raw.get("request"), dict) else raw
    given = raw.get("context", body.get("context"))
    if given is not None and not isinstance(given, str):
        raise RpcError(INVALID_PARAMS, "invalid params: 'context' must be a string")
    context = context_of(given, ctx.state.config.default_context, ctx.state.config.allowed_contexts)
    if isinstance(context, IdentityError):
        raise RpcError(INVALID_PARAMS, f"invalid params: 'context': {context.message}")
    body = {k: v for k, v in body.items() if k != "context"}
    if body.get("stream"):
        raise RpcError(INVALID_PARAMS, "invalid params: stream is not available over JSON-RPC; use the REST API")
    caller = Caller(ip=ctx.peer_ip, context=context, user=None, request_id=uuid7())
    call = Call(ctx.state, caller, endpoint, path, parsed=None)  # type: ignore[arg-type]
    status, answer = await run_call(call, msgspec.json.encode(body), PARSERS[kind])
    if status >= 400:
        err = msgspec.json.decode(answer).get("error", {}) if answer else {}
        raise RpcError(-32000 - (status % 100), err.get("message", f"HTTP {status}"), {"status": status, "error": err})
    return msgspec.json.decode(answer)


@method(METHODS, "ai.chat", RawParams, dict[str, Any], "A chat completion through the broker (same path as REST).")
async def ai_chat(ctx: AdminContext, raw: dict[str, Any]) -> Any:
    return await _ai(ctx, raw, "/v1/chat/completions", "chat/completions", "chat")


@method(METHODS, "ai.embed", RawParams, dict[str, Any], "Embeddings through the broker (same path as REST).")
async def ai_embed(ctx: AdminContext, raw: dict[str, Any]) -> Any:
    return await _ai(ctx, raw, "/v1/embeddings", "embeddings", "embedding")


def off_loop(fn: Any, *args: Any) -> Any:
    """SQL and file work runs in a thread so the broker's event loop keeps serving."""
    return asyncio.to_thread(fn, *args)
