"""`create_app(config)`: the OpenAI-compatible surface (`/v1/...`) as one Litestar app."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from eventlog.base import EventLog
from functions.config import BrokerConfig
from functions.errors import BrokerError, error_body
from functions.models import get_model, get_model_unprefixed, list_models, list_models_unprefixed
from functions.openai_api import FastPath, proxy_handlers
from functions.runtime import runtime_lifespan
from functions.state import BrokerState
from functions.lean_app import LeanLitestar

log = logging.getLogger("aibroker")

_STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "body_too_large", 415: "unsupported_media_type"}


def _openai_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, BrokerError):
        code, message, status, headers = exc.code, exc.message, exc.status, exc.headers
    elif isinstance(exc, HTTPException) and exc.status_code in _STATUS_CODES:
        code, message, status, headers = _STATUS_CODES[exc.status_code], str(exc.detail), exc.status_code, {}
    else:
        log.exception("unhandled error", exc_info=exc)
        code, message, status, headers = "internal_error", "internal error", HTTP_500_INTERNAL_SERVER_ERROR, {}
    return Response(error_body(code, message), status_code=status, media_type="application/json", headers=headers)


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", sync_to_thread=False)
def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    state: BrokerState | None = getattr(request.app.state, "broker", None)
    ok = state is not None and state.catalog.loaded and state.accepting
    return Response({"ready": ok}, status_code=200 if ok else 503)


_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)*")


def public_base(request: Request[Any, Any, Any]) -> str:
    """Where callers reach us: `X-Forwarded-Proto/Host/Prefix` (set by the Hero router) honoured."""
    prefix = request.headers.get("x-forwarded-prefix", "").rstrip("/")
    prefix = prefix if _PREFIX.fullmatch(prefix) else ""
    host = request.headers.get("x-forwarded-host") or request.headers.get("host")
    proto = request.headers.get("x-forwarded-proto", "http")
    origin = f"{proto if proto in ('http', 'https') else 'http'}://{host}" if host and host.isprintable() else ""
    return origin + prefix


@get(["/", "/v1"], sync_to_thread=False)
def index(request: Request[Any, Any, Any]) -> dict[str, Any]:
    api = f"{public_base(request)}/v1"
    paths = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings", "models": "models"}
    return {"object": "aibroker", "openai_base_url": api, "endpoints": {k: f"{api}/{p}" for k, p in paths.items()}}


def create_app(config: BrokerConfig, *, event_log: EventLog | None = None,
               runtime: BrokerState | None = None, unprefixed: bool = False) -> Litestar:
    """The OpenAI surface. Given a `runtime` it shares it; else it opens its own (tests, standalone).

    `unprefixed` (the web_v1 surface behind the Hero router) also serves the API without `/v1`,
    for a router that strips `/hero_aibroker/v1` before forwarding.
    """
    extra = [*proxy_handlers(prefix=""), list_models_unprefixed, get_model_unprefixed] if unprefixed else []
    app = LeanLitestar(
        route_handlers=[*proxy_handlers(), list_models, get_model, health, ready, index, *extra],
        lifespan=[runtime_lifespan(config, runtime, event_log)],
        exception_handlers={Exception: _openai_error},
        openapi_config=None, logging_config=None,
        debug=False,
    )
    return FastPath(app, ("/v1", "") if unprefixed else ("/v1",))  # type: ignore[return-value]
