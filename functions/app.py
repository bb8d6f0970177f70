"""`create_app(config)`: the OpenAI-compatible surface as one Litestar app with its lifespan.

The lifespan opens the event log (the one writer for the data directory), loads the catalog and
starts its refresh; shutdown stops taking requests, waits for appends, closes clients and the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from pathlib import Path

from domain.limits import settings_from_config
from eventlog.base import EventLog
from eventlog.ids import now_us
from eventlog.projections import rebuild_policy, rebuild_ttft, rebuild_usage
from eventlog.filelog import FileEventLog
from functions.config import BrokerConfig
from functions.errors import BrokerError, error_body
from functions.models import get_model, list_models
from functions.openai_api import proxy_handlers
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


def _restore(state: BrokerState, config: BrokerConfig, data_dir: Path | None) -> None:
    """Limits policy (config, then `limits.changed` events) and usage projections, from the log."""
    book = state.admission.book
    for scope, settings in settings_from_config(config.limits):
        book.set(scope, settings)
    if data_dir is not None:
        rebuild_policy(data_dir, book)
        rebuild_usage(data_dir, now_us(), state.admission.usage)
        state.ttft_us.update(rebuild_ttft(data_dir, now_us()))


def create_app(config: BrokerConfig, *, event_log: EventLog | None = None,
               state_hook: Any = None) -> Litestar:
    """The OpenAI surface. `event_log` lets tests pass an in-memory log; else the data dir's."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        owned = event_log is None
        the_log = event_log or await FileEventLog.open(config.data_dir)
        state = BrokerState(config, the_log)
        app.state.broker = state
        await asyncio.to_thread(_restore, state, config, None if event_log is not None else config.data_dir)
        refresher = None
        try:
            await state.catalog.refresh(the_log)
            if state_hook is not None:
                state_hook(state)
            refresher = asyncio.get_running_loop().create_task(
                state.catalog.run_periodic(the_log, config.catalog_refresh_s))
            yield
        finally:
            state.accepting = False
            if refresher is not None:
                refresher.cancel()
            await state.aclose()
            if owned:
                await the_log.close()

    return Litestar(
        route_handlers=[*proxy_handlers(), list_models, get_model, health, ready],
        lifespan=[lifespan],
        exception_handlers={Exception: _openai_error},
        openapi_config=None,
        debug=False,
    )
