"""`create_app(config)`: the OpenAI-compatible surface (`/v1/...`) as one Litestar app."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from eventlog.base import EventLog
from functions.config import BrokerConfig
from functions.errors import BrokerError, error_body
from functions.models import get_model, list_models
from functions.openai_api import proxy_handlers
from functions.runtime import runtime_lifespan
from functions.state import BrokerState

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


def create_app(config: BrokerConfig, *, event_log: EventLog | None = None,
               runtime: BrokerState | None = None) -> Litestar:
    """The OpenAI surface. Given a `runtime` it shares it; else it opens its own (tests, standalone)."""
    return Litestar(
        route_handlers=[*proxy_handlers(), list_models, get_model, health, ready],
        lifespan=[runtime_lifespan(config, runtime, event_log)],
        exception_handlers={Exception: _openai_error},
        openapi_config=None,
        debug=False,
    )
