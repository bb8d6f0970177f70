"""Settings: the environment and `modelsconfig.yml`, read once at start, checked, failing fast.

Every error names the variable (or file key) and the rule it broke. Keys are never printed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from domain.catalog import check_spec
from domain.identity import IdentityError, context_of, parse_networks
from domain.limits import settings_from_config
from domain.routing import STRATEGIES
from functions.config import PRESET_BASE_URLS, BrokerConfig, ProviderConfig


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and the rule."""


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise SettingsError(f"{name}={raw!r} must be >= {minimum:g}")
    return value


def _int(env: Mapping[str, str], name: str, default: int | None, minimum: int = 0,
         maximum: int | None = None) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdecimal()) or int(text) < minimum or (maximum is not None and int(text) > maximum):
        rule = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise SettingsError(f"{name}={raw!r} must be an integer {rule}")
    return int(text)


def _keys(env: Mapping[str, str], prefix: str) -> tuple[str, ...]:
    pool = env.get(f"{prefix}_API_KEYS", "")
    keys = [k.strip() for k in pool.split(",") if k.strip()]
    single = env.get(f"{prefix}_API_KEY", "").strip()
    if single and single not in keys:
        keys.insert(0, single)
    return tuple(keys)


def usd_per_mtok(value: Any, where: str) -> int | None:
    """'0.15' or 0.15 (USD per 1M tokens) → 150_000 micro-USD per 1M tokens, exactly."""
    if value is None:
        return None
    try:
        micros = Decimal(str(value)) * 1_000_000
    except InvalidOperation:
        raise SettingsError(f"{where}: {value!r} is not a price in USD per 1M tokens") from None
    if not micros.is_finite() or micros < 0 or micros != micros.to_integral_value():
        raise SettingsError(f"{where}: {value!r} must be >= 0 with at most 6 decimals")
    return int(micros)


def load_models_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        doc = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    except FileNotFoundError:
        raise SettingsError(f"MODELS_CONFIG_PATH={path!r}: no such file") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"MODELS_CONFIG_PATH={path!r}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise SettingsError(f"MODELS_CONFIG_PATH={path!r}: the top level must be a mapping")
    return doc


def _overrides(models: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(models, dict):
        raise SettingsError("modelsconfig.yml 'models' must be a mapping of 'provider/model' or 'model' to settings")
    out: dict[str, dict[str, Any]] = {}
    for key, spec in models.items():
        if not isinstance(spec, dict):
            raise SettingsError(f"modelsconfig.yml models[{key!r}] must be a mapping")
        converted = dict(spec)
        for field in ("input", "output", "cached"):
            if field in converted:
                converted[field] = usd_per_mtok(converted[field], f"modelsconfig.yml models[{key!r}].{field}")
        try:
            check_spec(f"modelsconfig.yml models[{key!r}]", converted)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        out[str(key)] = converted
    return out


def _providers(env: Mapping[str, str], custom: Any) -> tuple[ProviderConfig, ...]:
    found = []
    for name, base in PRESET_BASE_URLS.items():
        keys = _keys(env, name.upper())
        if keys:
            found.append(ProviderConfig(name, base, keys, f"{name.upper()}_API_KEY"))
    if not isinstance(custom, dict):
        raise SettingsError("modelsconfig.yml 'providers' must be a mapping of name to {base_url, key_env}")
    for name, spec in custom.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("base_url"), str):
            raise SettingsError(f"modelsconfig.yml providers[{name!r}] needs a 'base_url' string")
        if not str(name).replace("-", "").replace("_", "").isalnum():
            raise SettingsError(f"modelsconfig.yml providers[{name!r}]: names are letters, digits, '-' and '_'")
        prefix = str(spec.get("key_env", f"{name}_API_KEY")).upper().removesuffix("_API_KEY").removesuffix("_API_KEYS")
        keys = _keys(env, prefix) or (("none",) if spec.get("keyless") else ())
        if keys:
            found.append(ProviderConfig(str(name), spec["base_url"], keys, f"{prefix}_API_KEY"))
    return tuple(found)


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default).lower()
    if value not in allowed:
        raise SettingsError(f"{name}={env.get(name)!r} must be one of {', '.join(allowed)}")
    return value


def _mode(env: Mapping[str, str]) -> int:
    raw = env.get("SOCKET_MODE", "0660")
    try:
        mode = int(raw, 8)
    except ValueError:
        raise SettingsError(f"SOCKET_MODE={raw!r} must be an octal file mode like 0660") from None
    if not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        raise SettingsError(f"SOCKET_MODE={raw!r} must be an octal mode from 0600 to 0777 (the owner needs rw)")
    return mode


def _context(env: Mapping[str, str]) -> str:
    value = env.get("DEFAULT_CONTEXT", "0")
    if isinstance(context_of(value, "0"), IdentityError):
        raise SettingsError(f"DEFAULT_CONTEXT={value!r} must match [A-Za-z0-9_-]{{1,64}}")
    return value


def _networks(raw: str) -> tuple[str, ...]:
    cidrs = tuple(p.strip() for p in raw.split(",") if p.strip())
    try:
        parse_networks(cidrs)
    except ValueError as exc:
        raise SettingsError(f"TRUSTED_PROXIES={raw!r} must be comma-separated CIDRs ({exc})") from None
    return cidrs


def load_config(env: Mapping[str, str] | None = None) -> BrokerConfig:
    env = os.environ if env is None else env
    doc = load_models_config(env.get("MODELS_CONFIG_PATH"))
    strategy = env.get("ROUTING_STRATEGY", "cheapest")
    if strategy not in STRATEGIES:
        raise SettingsError(f"ROUTING_STRATEGY={strategy!r} must be one of {', '.join(STRATEGIES)}")
    client = env.get("UPSTREAM_CLIENT", "aiohttp")
    if client not in ("aiohttp", "httpx"):
        raise SettingsError(f"UPSTREAM_CLIENT={client!r} must be aiohttp or httpx")
    limits = doc.get("limits") or {}
    try:
        settings_from_config(limits)
    except ValueError as exc:
        raise SettingsError(f"MODELS_CONFIG_PATH: {exc}") from None
    contexts = env.get("ALLOWED_CONTEXTS")
    proxies = env.get("TRUSTED_PROXIES")
    return BrokerConfig(
        data_dir=Path(env.get("AIBROKER_DATA_DIR", "~/hero/var/hero_aibroker/")).expanduser(),
        providers=_providers(env, doc.get("providers") or {}),
        routing_strategy=strategy,
        max_attempts=_int(env, "MAX_ATTEMPTS", 3, minimum=1) or 3,
        catalog_refresh_s=_float(env, "CATALOG_REFRESH_S", 3600.0, minimum=1.0),
        connect_timeout_s=_float(env, "UPSTREAM_CONNECT_TIMEOUT_S", 5.0, minimum=0.1),
        first_byte_timeout_s=_float(env, "UPSTREAM_FIRST_BYTE_TIMEOUT_S", 60.0, minimum=0.1),
        idle_timeout_s=_float(env, "UPSTREAM_IDLE_TIMEOUT_S", 60.0, minimum=0.1),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024) or 0,
        default_context=_context(env),
        allowed_contexts=frozenset(c.strip() for c in contexts.split(",") if c.strip()) if contexts else None,
        trusted_proxies=_networks(proxies) if proxies else ("127.0.0.1/32", "::1/128"),
        ipv6_bucket_prefix=_int(env, "IPV6_BUCKET_PREFIX", None, minimum=1, maximum=128),
        expected_output_tokens=_int(env, "EXPECTED_OUTPUT_TOKENS", 256, minimum=1) or 256,
        model_overrides=_overrides(doc.get("models") or {}),
        upstream_client=client,
        source=env.get("AIBROKER_SOURCE", "aibroker"),
        limits=limits,
        admin_token=env.get("ADMIN_TOKEN", ""),
        models_config_path=env.get("MODELS_CONFIG_PATH") or None,
        log_level=_choice(env, "LOG_LEVEL", "warning", ("debug", "info", "warning", "error")),
        log_format=_choice(env, "LOG_FORMAT", "json", ("json", "text")),
        socket_mode=_mode(env),
        shutdown_grace_s=_float(env, "SHUTDOWN_GRACE_S", 30.0, minimum=0.0),
        socket_dir=Path(env.get("HERO_SOCKET_DIR") or "~/hero/var/sockets").expanduser() / "hero_aibroker",
    )


def with_fake_providers(config: BrokerConfig, base_url: str) -> BrokerConfig:
    """Point the broker at the built-in fake upstream: its providers, prices and capabilities."""
    from functions.fake_upstream import FAKE_PROVIDERS

    providers = tuple(ProviderConfig(p.name, f"{base_url}/{p.name}/v1", ("fake-key-1", "fake-key-2"), "") for p in FAKE_PROVIDERS)
    overrides = dict(config.model_overrides)
    for p in FAKE_PROVIDERS:
        for m in p.models:
            overrides.setdefault(f"{p.name}/{m.id}", {
                "kind": m.kind, "context_window": m.context_window,
                "input": usd_per_mtok(m.input_usd_per_mtok, m.id), "output": usd_per_mtok(m.output_usd_per_mtok, m.id),
                "tools": m.tools, "vision": m.vision, "json_mode": m.json_mode, "streaming": m.kind != "embedding",
            })
    return replace(config, providers=config.providers + providers, model_overrides=overrides)


def effective_config(config: BrokerConfig) -> dict[str, Any]:
    """The configuration in force, as JSON-able data with every secret masked."""
    out: dict[str, Any] = {}
    for name, value in vars(config).items():
        if name == "providers":
            value = [{"name": p.name, "base_url": p.base_url, "keys": f"<{len(p.keys)} set, masked>",
                      "key_env": p.key_env} for p in value]
        elif name == "admin_token":
            value = "<set, masked>" if value else "<not set>"
        elif name == "socket_mode":
            value = oct(value)
        elif isinstance(value, (Path, frozenset, tuple)):
            value = sorted(value) if isinstance(value, frozenset) else (str(value) if isinstance(value, Path) else list(value))
        out[name] = value
    return out
