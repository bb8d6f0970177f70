"""Limits policy: what applies to one (ip, context) bucket, merged from defaults and overrides.

Layers, weakest first: built-in defaults, `modelsconfig.yml`, then `limits.changed` events in log
order. Within each, the most specific scope wins field by field: (ip, context) > ip > context >
default. `None` means "no limit" for that field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from domain.events import LimitsChanged
from domain.routing import STRATEGIES

LIMIT_FIELDS = ("requests_per_min", "tokens_per_min", "concurrent", "budget_daily_micros", "budget_monthly_micros")
POLICY_FIELDS = ("allowed_providers", "denied_providers", "allowed_models", "denied_models", "pinned_model", "strategy")
SETTINGS = LIMIT_FIELDS + POLICY_FIELDS
LIST_FIELDS = ("allowed_providers", "denied_providers", "allowed_models", "denied_models")



@dataclass(frozen=True)
class Limits:
    """Effective settings for one bucket (limits, then per-context routing policy)."""

    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    concurrent: int | None = None
    budget_daily_micros: int | None = None
    budget_monthly_micros: int | None = None
    allowed_providers: tuple[str, ...] | None = None
    denied_providers: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    denied_models: tuple[str, ...] | None = None
    pinned_model: str | None = None
    strategy: str | None = None


DEFAULT_LIMITS = Limits(requests_per_min=1000, tokens_per_min=2_000_000, concurrent=100)

Scope = tuple[str, str, str]  # (scope, ip, context) — ip/context "" where the scope has none


def scope_key(scope: str, ip: str, context: str) -> Scope:
    return (scope, ip if scope in ("ip", "bucket") else "", context if scope in ("context", "bucket") else "")


@dataclass
class PolicyBook:
    """Overrides per scope: a dict of set fields each. Folded from config, then events."""

    base: Limits = DEFAULT_LIMITS
    overrides: dict[Scope, dict[str, Any]] = field(default_factory=dict)
    version: int = 0  # bumps on every change; caches key on it

    def set(self, key: Scope, settings: Mapping[str, Any], cleared: tuple[str, ...] = (), reset: bool = False,
            none_means_unlimited: bool = False) -> None:
        """Events use None for "unchanged"; config files use null for "no limit" (`none_means_unlimited`)."""
        current = {} if reset else dict(self.overrides.get(key, {}))
        for name in cleared:
            current.pop(name, None)
        current.update({k: v for k, v in settings.items() if v is not None or none_means_unlimited})
        if current:
            self.overrides[key] = current
        else:
            self.overrides.pop(key, None)
        self.version += 1

    def effective(self, ip: str, context: str) -> Limits:
        merged: dict[str, Any] = {}
        for key in (("default", "", ""), ("context", "", context), ("ip", ip, ""), ("bucket", ip, context)):
            merged.update(self.overrides.get(key, {}))
        if not merged:
            return self.base
        return replace(self.base, **{k: _frozen(v) for k, v in merged.items()})

    def apply(self, event: LimitsChanged) -> None:
        """Fold one `limits.changed` event into the book."""
        settings = {name: getattr(event, name) for name in SETTINGS}
        self.set(scope_key(event.scope, event.ip, event.context), settings, tuple(event.cleared), event.reset)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def settings_from_config(doc: Mapping[str, Any]) -> list[tuple[Scope, dict[str, Any]]]:
    """`limits:` of modelsconfig.yml → (scope, settings) pairs. Raises ValueError naming the bad key.

    Shape: {default: {...}, contexts: {C: {...}}, ips: {IP: {...}}, buckets: {"IP|C": {...}}};
    budgets in USD as `budget_daily_usd` / `budget_monthly_usd` strings or micro-USD integers.
    """
    if not isinstance(doc, Mapping):
        raise ValueError("limits: must be a mapping with default, contexts, ips, buckets")
    out: list[tuple[Scope, dict[str, Any]]] = []
    if "default" in doc:
        out.append((("default", "", ""), _settings("limits.default", doc["default"])))
    for name, scope in (("contexts", "context"), ("ips", "ip"), ("buckets", "bucket")):
        section = doc.get(name) or {}
        if not isinstance(section, Mapping):
            raise ValueError(f"limits.{name} must be a mapping of names to settings")
        for target, spec in section.items():
            if scope == "bucket" and (str(target).count("|") != 1 or str(target).startswith("|") or str(target).endswith("|")):
                raise ValueError(f"limits.buckets[{target!r}]: a bucket key is 'IP|CONTEXT'")
            ip, _, ctx = str(target).partition("|") if scope == "bucket" else (str(target), "", str(target))
            out.append((scope_key(scope, ip, ctx), _settings(f"limits.{name}[{target!r}]", spec)))
    unknown = set(doc) - {"default", "contexts", "ips", "buckets"}
    if unknown:
        raise ValueError(f"limits: unknown keys {sorted(unknown)}; use default, contexts, ips, buckets")
    return out


def _settings(where: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a mapping of limit names to values")
    out: dict[str, Any] = {}
    for key, value in spec.items():
        name = {"budget_daily_usd": "budget_daily_micros", "budget_monthly_usd": "budget_monthly_micros"}.get(key, key)
        if name not in SETTINGS:
            raise ValueError(f"{where}: unknown setting {key!r}; known: {', '.join(SETTINGS)}")
        if key.endswith("_usd") and value is not None:  # null: no budget
            value = usd_to_micros(value, f"{where}.{key}")
        if name in LIMIT_FIELDS and value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{where}.{key} must be an integer >= 0 or null, got {value!r}")
        if name in LIST_FIELDS and value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        ):
            raise ValueError(f"{where}.{key} must be a list of names, got {value!r}")
        if name in ("pinned_model", "strategy") and value is not None and not isinstance(value, str):
            raise ValueError(f"{where}.{key} must be a string, got {value!r}")
        if name == "strategy" and value is not None and value not in STRATEGIES:
            raise ValueError(f"{where}.strategy {value!r} must be one of {', '.join(STRATEGIES)}")
        out[name] = value
    return out


def usd_to_micros(value: Any, where: str) -> int:
    try:
        micros = Decimal(str(value)) * 1_000_000
    except InvalidOperation:
        raise ValueError(f"{where}: {value!r} is not an amount in USD") from None
    if not micros.is_finite():
        raise ValueError(f"{where}: {value!r} is not a finite amount in USD")
    if micros < 0 or micros != micros.to_integral_value():
        raise ValueError(f"{where}: {value!r} must be >= 0 with at most 6 decimals")
    return int(micros)

