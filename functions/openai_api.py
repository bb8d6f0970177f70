"""The OpenAI-compatible proxy endpoints: chat completions, completions, embeddings.

Each handler: identify the caller, parse the few fields routing needs, run the pipeline, answer,
and append the settled usage before the exchange ends (so shutdown waits for it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from domain.events import UsageRecorded
from domain.identity import IdentityError, context_of, user_of
from eventlog.base import EventLogError
from eventlog.ids import now_us, uuid7
from functions.asgi_io import headers_named, read_body, send_error, send_raw, send_stream
from functions.errors import BrokerError, error_body
from functions.pipeline import Call, Caller, serve
from functions.request_body import ParsedRequest, parse_chat, parse_completion, parse_embedding
from functions.state import BrokerState

log = logging.getLogger("aibroker.api")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HEADERS = frozenset({b"x-forwarded-for", b"x-real-ip", b"x-hero-context", b"x-hero-user", b"x-request-id",
                      b"content-length"})


def caller_of(scope: Scope, headers: dict[bytes, str], state: BrokerState) -> tuple[Caller, BrokerError | None]:
    """(ip, context, user, request id) of this exchange, and the error if the context is bad.

    A bad context is still logged (as context "") so an operator sees who sent it; it is never
    billed to another bucket. A client's `X-Request-Id` is kept when it is a plain token (for
    tracing across systems); otherwise the broker makes one. Ids are labels, not a security boundary:
    every event also carries its (ip, context).
    """
    cfg = state.config
    client = scope.get("client")
    ip = state.client_ip(client[0] if client else None, headers.get(b"x-forwarded-for"), headers.get(b"x-real-ip"))
    context = context_of(headers.get(b"x-hero-context"), cfg.default_context, cfg.allowed_contexts)
    error = None
    if isinstance(context, IdentityError):
        error = BrokerError(context.code, context.message, param="X-Hero-Context")
        context = ""
    user = user_of(headers.get(b"x-hero-user"))
    rid = headers.get(b"x-request-id")
    if rid is None or not _REQUEST_ID.fullmatch(rid):
        rid = uuid7()
    return Caller(ip=ip, context=context, user=user, request_id=rid), error


async def _admit_input(scope: Scope, receive: Receive, call: Call, bad_context: BrokerError | None,
                       parse: Callable[[bytes], ParsedRequest], declared_length: str | None) -> None:
    """Method, shutdown, context, size and body checks; a refusal is logged, then raised."""
    state = call.state
    try:
        if scope["method"] != "POST":
            raise BrokerError("method_not_allowed", f"{call.endpoint} accepts POST only, got {scope['method']}")
        if not state.accepting:
            raise BrokerError("shutting_down", "the broker is shutting down; retry on another instance")
        if bad_context is not None:
            raise bad_context
        raw = await read_body(receive, state.config.max_body_bytes, declared_length)
        call.body_bytes = len(raw)
        call.parsed = parse(raw)
    except BrokerError as exc:
        await state.log.append([call.event_rejected(exc)])
        raise


async def proxy(scope: Scope, receive: Receive, send: Send, endpoint: str, path: str,
                parse: Callable[[bytes], ParsedRequest]) -> None:
    state: BrokerState = scope["app"].state.broker
    settled: list[UsageRecorded] = []
    named = headers_named(scope, _HEADERS)
    caller, bad_context = caller_of(scope, named, state)
    headers = {"x-request-id": caller.request_id}
    call = Call(state, caller, endpoint, path, parsed=None)  # type: ignore[arg-type]
    answer = None
    limits: list[tuple[bytes, bytes]] = []  # x-ratelimit-* once the answer is known

    def settle(usage: UsageRecorded) -> None:
        state.observe(usage)  # release the reservation now; durable at the flush
        settled.append(usage)

    try:
        await _admit_input(scope, receive, call, bad_context, parse, named.get(b"content-length"))
        answer = await serve(call, settle)
        limits = state.admission.raw_headers((caller.ip, caller.context), now_us())
        raw = [(b"x-request-id", caller.request_id.encode()), *answer.headers, *limits]
        if answer.stream is None:
            await _flush(state, settled)
            await send_raw(send, answer.status, raw, answer.body)
        else:
            await send_stream(send, receive, raw, answer.stream)
    except BrokerError as exc:
        await _flush(state, settled)
        await send_error(send, exc, headers, limits)
    except EventLogError as exc:
        log.error("event log unavailable: %s", exc)
        await send_error(send, BrokerError("log_unavailable", "the usage log is unavailable; request not served"),
                         headers, limits)
    except ConnectionResetError:
        pass
    except Exception:
        log.exception("request %s failed", caller.request_id)
        await send_error(send, BrokerError("internal_error", f"internal error (request {caller.request_id})"),
                         headers, limits)
    finally:
        if answer is not None and answer.stream is not None:
            answer.stream.close()
        await _flush(state, settled)


async def run_call(call: Call, raw: bytes, parse: Callable[[bytes], ParsedRequest]) -> tuple[int, bytes]:
    """A non-streaming call from bytes to (status, body): the REST path, for other surfaces (RPC)."""
    state = call.state
    settled: list[UsageRecorded] = []

    def settle(usage: UsageRecorded) -> None:
        state.observe(usage)
        settled.append(usage)

    try:
        call.body_bytes = len(raw)
        try:
            call.parsed = parse(raw)
        except BrokerError as exc:
            await state.log.append([call.event_rejected(exc)])
            raise
        answer = await serve(call, settle)
        return answer.status, answer.body
    except BrokerError as exc:
        return exc.status, error_body(exc.code, exc.message, exc.param)
    finally:
        await _flush(state, settled)


async def _flush(state: BrokerState, settled: list[UsageRecorded]) -> None:
    if settled:
        events, settled[:] = list(settled), []
        await state.log.append(events)


def _endpoint(endpoint: str, path: str, parse: Callable[[bytes], ParsedRequest]) -> ASGIRouteHandler:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await proxy(scope, receive, send, endpoint, path, parse)

    handler.__name__ = path.replace("/", "_")
    return asgi(endpoint, copy_scope=False)(handler)


PROXIED = {"chat/completions": parse_chat, "completions": parse_completion, "embeddings": parse_embedding}


class FastPath:
    """The proxy endpoints straight off the ASGI scope; everything else goes to the Litestar app.

    Litestar's router and request objects cost more per call than the rest of the broker's own
    work on the hot path; the proxy handlers never needed them. The Litestar app stays the
    application (state, lifespan, every other route) and is what `scope["app"]` points at.
    """

    def __init__(self, app: Any, prefixes: tuple[str, ...] = ("/v1",)) -> None:
        self.app = app
        self.routes = {f"{prefix}/{path}": (f"{prefix}/{path}", path, parse)
                       for prefix in prefixes for path, parse in PROXIED.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hit = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if hit is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        await proxy(scope, receive, send, *hit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


def proxy_handlers(prefix: str = "/v1") -> list[ASGIRouteHandler]:
    return [
        _endpoint(f"{prefix}/chat/completions", "chat/completions", parse_chat),
        _endpoint(f"{prefix}/completions", "completions", parse_completion),
        _endpoint(f"{prefix}/embeddings", "embeddings", parse_embedding),
    ]
