"""The admin surface: JSON-RPC 2.0 at `POST /rpc`, `GET /openrpc.json`, health, Hero discovery.

Access: over a Unix socket the file permissions guard it. Over TCP, with `ADMIN_TOKEN` set every call
needs `Authorization: Bearer <token>`; without a token only loopback peers are served.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post

from eventlog.base import EventLog
from functions import admin_data  # noqa: F401  (registers the data methods)
from functions.admin_methods import METHODS, AdminContext
from functions.config import BrokerConfig
from functions.jsonrpc import NoParams, dispatch, method, openrpc
from functions.app import ready
from functions.runtime import DeferredApp, runtime_lifespan
from functions.state import BrokerState
from functions.lean_app import LeanLitestar

VERSION = "0.1.0"
UNAUTHORIZED = -32001


def _peer(request: Request[Any, Any, Any]) -> str | None:
    client = request.scope.get("client")
    return client[0] if client else None


def refusal(config: BrokerConfig, request: Request[Any, Any, Any]) -> str | None:
    """Why this caller may not use the admin API (None: it may). Never echoes the token."""
    peer = _peer(request)
    if not peer:
        return None  # a Unix socket: protected by its file mode
    if config.admin_token:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), config.admin_token.encode()):
            return None
        return "unauthorized: the admin API needs 'Authorization: Bearer <ADMIN_TOKEN>'" if not given else \
            "unauthorized: wrong admin token"
    try:
        if ipaddress.ip_address(peer).is_loopback:
            return None
    except ValueError:
        pass
    return "unauthorized: without ADMIN_TOKEN the admin API only serves loopback and its Unix socket"


def _rpc_error_response(message: str) -> Response[bytes]:
    body = msgspec.json.encode({"jsonrpc": "2.0", "error": {"code": UNAUTHORIZED, "message": message}, "id": None})
    return Response(body, status_code=401, media_type="application/json", headers={"www-authenticate": "Bearer"})


@post("/rpc", status_code=200)
async def rpc(request: Request[Any, Any, Any]) -> Response[bytes]:
    state: BrokerState = request.app.state.broker
    why = refusal(state.config, request)
    if why is not None:
        return _rpc_error_response(why)
    ctx = AdminContext(state=state, peer_ip=_peer(request) or "unix", actor=f"rpc@{_peer(request) or 'unix'}")
    answer = await dispatch(METHODS, ctx, await request.body())
    if answer is None:
        return Response(b"", status_code=204)
    return Response(msgspec.json.encode(answer), media_type="application/json")


def discovery() -> dict[str, Any]:
    return openrpc(METHODS, "aibroker admin", VERSION)


@method(METHODS, "rpc.discover", NoParams, dict[str, Any], "This API's OpenRPC document.")
async def rpc_discover(_: AdminContext, __: NoParams) -> dict[str, Any]:
    return discovery()


@get("/openrpc.json", sync_to_thread=False)
def openrpc_json(request: Request[Any, Any, Any]) -> Response[Any]:
    why = refusal(request.app.state.broker.config, request)
    return _rpc_error_response(why) if why else Response(discovery())


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", sync_to_thread=False)
def metrics(request: Request[Any, Any, Any]) -> Response[Any]:
    state: BrokerState = request.app.state.broker
    why = refusal(state.config, request)
    if why is not None:
        return _rpc_error_response(why)
    text = state.metrics.render(lambda: state.log.backlog)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@get("/.well-known/heroservice.json", sync_to_thread=False)
def heroservice() -> dict[str, Any]:
    return {
        "name": "hero_aibroker", "version": VERSION, "description": "OpenAI-compatible LLM broker: admin API",
        "protocol": "jsonrpc-2.0", "rpc": "/rpc", "openrpc": "/openrpc.json", "health": "/health",
        "methods": sorted(METHODS),
    }


def create_admin_app(config: BrokerConfig, *, event_log: EventLog | None = None,
                     runtime: BrokerState | None = None) -> Litestar:
    return LeanLitestar(
        route_handlers=[rpc, openrpc_json, health, ready, metrics, heroservice],
        lifespan=[runtime_lifespan(config, runtime, event_log)],
        openapi_config=None, logging_config=None,
        debug=False,
    )


app = DeferredApp(create_admin_app)
