"""The OpenAI-compatible proxy endpoints: chat completions, completions, embeddings.

Each handler: identify the caller, parse the few fields routing needs, run the pipeline, answer,
and append the settled usage before the exchange ends (so shutdown waits for it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from domain.events import UsageRecorded
from domain.identity import IdentityError, client_ip, context_of, user_of
from eventlog.base import EventLogError
from eventlog.ids import now_us, uuid7
from functions.asgi_io import header, read_body, send_bytes, send_error, send_stream
from functions.errors import BrokerError
from functions.pipeline import Call, Caller, serve
from functions.request_body import ParsedRequest, parse_chat, parse_completion, parse_embedding
from functions.state import BrokerState

log = logging.getLogger("aibroker.api")


def caller_of(scope: Scope, state: BrokerState) -> Caller:
    """(ip, context, user, request id) of this exchange; raises BrokerError on a bad context."""
    cfg = state.config
    context = context_of(header(scope, b"x-hero-context"), cfg.default_context, cfg.allowed_contexts)
    if isinstance(context, IdentityError):
        raise BrokerError(context.code, context.message, param="X-Hero-Context")
    client = scope.get("client")
    peer = client[0] if client else None
    ip = client_ip(peer, header(scope, b"x-forwarded-for"), header(scope, b"x-real-ip"),
                   trusted=state.trusted, via_unix_socket=not peer, v6_prefix=cfg.ipv6_bucket_prefix)
    rid = header(scope, b"x-request-id")
    if rid is None or not (0 < len(rid) <= 64 and rid.isprintable()):
        rid = uuid7()
    return Caller(ip=ip, context=context, user=user_of(header(scope, b"x-hero-user")), request_id=rid)


async def proxy(scope: Scope, receive: Receive, send: Send, endpoint: str, path: str,
                parse: Callable[[bytes], ParsedRequest]) -> None:
    state: BrokerState = scope["app"].state.broker
    settled: list[UsageRecorded] = []
    headers = {"x-request-id": ""}
    answer = None
    try:
        if scope["method"] != "POST":
            raise BrokerError("method_not_allowed", f"{endpoint} accepts POST only, got {scope['method']}")
        if not state.accepting:
            raise BrokerError("shutting_down", "the broker is shutting down; retry on another instance")
        caller = caller_of(scope, state)
        headers["x-request-id"] = caller.request_id
        raw = await read_body(receive, state.config.max_body_bytes, header(scope, b"content-length"))
        call = Call(state, caller, endpoint, path, parsed=None, body_bytes=len(raw))  # type: ignore[arg-type]
        try:
            call.parsed = parse(raw)
        except BrokerError as exc:
            await state.log.append([call.event_rejected(exc)])
            raise
        def settle(usage: UsageRecorded) -> None:
            state.admission.settle(usage)  # release the reservation now; durable at the flush below
            settled.append(usage)

        answer = await serve(call, settle)
        headers.update(answer.headers)
        headers.update(state.admission.headers((caller.ip, caller.context), now_us()))
        if answer.stream is None:
            await state.log.append(settled)
            settled.clear()
            await send_bytes(send, answer.status, headers, answer.body)
        else:
            await send_stream(send, receive, headers, answer.stream)
    except BrokerError as exc:
        await _flush(state, settled)
        await send_error(send, exc, headers)
    except EventLogError as exc:
        log.error("event log unavailable: %s", exc)
        await send_error(send, BrokerError("log_unavailable", "the usage log is unavailable; request not served"), headers)
    except ConnectionResetError:
        pass
    finally:
        if answer is not None and answer.stream is not None:
            answer.stream.close()
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


def proxy_handlers(prefix: str = "/v1") -> list[ASGIRouteHandler]:
    return [
        _endpoint(f"{prefix}/chat/completions", "chat/completions", parse_chat),
        _endpoint(f"{prefix}/completions", "completions", parse_completion),
        _endpoint(f"{prefix}/embeddings", "embeddings", parse_embedding),
    ]
