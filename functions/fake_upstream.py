"""The fake OpenAI-compatible upstream: priced fake providers, scripted faults, one raw ASGI app.

Used by `aibroker serve --fake` and by the tests, so the broker runs with no keys and no network.
Provider P is served at `http://HOST:PORT/P/v1` (`GET models`, `GET models/{id}`,
`POST chat/completions`, `POST completions`, `POST embeddings`). Any non-empty Bearer key works.
The model name picks the behaviour: `FakeModel.fault` scripts a failure on the providers where that
model is faulty; `X-Fake-Delay-Ms: N` delays any answer's first byte by N ms. Replies are
deterministic (see `functions.fake_replies`). Run: `python -m functions.fake_upstream --port 9100`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import msgspec
import uvicorn
from msgspec import Struct

from functions import fake_replies as replies
from functions.fake_replies import (
    ChatRequest, CompletionRequest, EmbeddingRequest, Json, Refusal, check_window, decode, usd_per_token,
)

Kind = Literal["chat", "completion", "embedding"]
Fault = Literal["error-500", "429", "slow", "cut-stream", "no-usage", "malformed-sse"]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SLOW_FIRST_BYTE_S = 1.0
SLOW_CHUNK_GAP_S = 0.05
CUT_AFTER_EVENTS = 3
MAX_DELAY_MS = 60_000
MODELS_CREATED_S = 1_700_000_000
MALFORMED_EVENT = b"data: {not json\n\n"
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class FakeModel(Struct, frozen=True, kw_only=True):
    """One model as one fake provider offers it. Prices are decimal USD per 1M tokens, as strings."""

    id: str
    kind: Kind
    input_usd_per_mtok: str
    output_usd_per_mtok: str
    context_window: int
    tools: bool = False
    vision: bool = False
    json_mode: bool = False
    fault: Fault | None = None


class FakeProvider(Struct, frozen=True):
    name: str
    models: tuple[FakeModel, ...]


def _chat(id: str, usd_in: str, usd_out: str, window: int = 8192, **extra: Any) -> FakeModel:
    return FakeModel(id=id, kind="chat", input_usd_per_mtok=usd_in, output_usd_per_mtok=usd_out,
                     context_window=window, json_mode=True, **extra)


# Fault models are priced far above the rest so that `auto` never lands on one by accident.
FAKE_PROVIDERS: tuple[FakeProvider, ...] = (
    FakeProvider("fakeai", (  # the cheaper one; faulty where a model is scripted to fail
        _chat("fake-small", "0.10", "0.40", 8192),
        _chat("fake-medium", "0.50", "1.50", 32768, tools=True),
        _chat("fake-large", "2.00", "6.00", 131072),
        FakeModel(id="fake-instruct", kind="completion", input_usd_per_mtok="0.20",
                  output_usd_per_mtok="0.60", context_window=4096),
        FakeModel(id="fake-embed", kind="embedding", input_usd_per_mtok="0.02",
                  output_usd_per_mtok="0", context_window=8192),
        _chat("fake-error-500", "9.00", "27.00", fault="error-500"),
        _chat("fake-429", "9.00", "27.00", fault="429"),
        _chat("fake-slow", "9.00", "27.00", fault="slow"),
        _chat("fake-cut-stream", "9.00", "27.00", fault="cut-stream"),
        _chat("fake-no-usage", "9.00", "27.00", fault="no-usage"),
        _chat("fake-malformed-sse", "9.00", "27.00", fault="malformed-sse"),
    )),
    FakeProvider("fakecloud", (  # pricier, healthy; the only one with tools+vision on fake-large
        _chat("fake-small", "0.15", "0.60", 8192),
        _chat("fake-medium", "0.80", "2.40", 32768, tools=True),
        _chat("fake-large", "3.00", "9.00", 131072, tools=True, vision=True),
        FakeModel(id="fake-instruct", kind="completion", input_usd_per_mtok="0.30",
                  output_usd_per_mtok="0.90", context_window=4096),
        FakeModel(id="fake-embed", kind="embedding", input_usd_per_mtok="0.03",
                  output_usd_per_mtok="0", context_window=8192),
        _chat("fake-error-500", "10.00", "30.00"),
        _chat("fake-429", "10.00", "30.00"),
    )),
)


class FakeStreamCut(Exception):
    """Raised on purpose (fault `cut-stream`): the server drops the connection mid-body."""


def _listing_entry(provider: str, model: FakeModel) -> Json:
    inputs = ["text", "image"] if model.vision else ["text"]
    params = ["max_tokens", "stream", "stream_options"] if model.kind != "embedding" else []
    params += ["tools"] * model.tools + ["response_format"] * model.json_mode
    return {
        "id": model.id, "object": "model", "created": MODELS_CREATED_S, "owned_by": provider,
        "pricing": {"prompt": usd_per_token(model.input_usd_per_mtok),
                    "completion": usd_per_token(model.output_usd_per_mtok)},
        "context_length": model.context_window,
        "architecture": {"input_modalities": inputs,
                         "output_modalities": ["embeddings" if model.kind == "embedding" else "text"]},
        "supported_parameters": params,
    }  # fmt: skip


class _Out:
    """The response side of one exchange."""

    def __init__(self, send: Send) -> None:
        self._send = send

    async def _start(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": list(headers)})

    async def json(self, status: int, payload: Json, headers: Sequence[tuple[bytes, bytes]] = (),
                   cut: bool = False) -> None:
        body = msgspec.json.encode(payload)
        length = str(len(body)).encode()
        await self._start(status, [(b"content-type", b"application/json"), (b"content-length", length), *headers])
        if cut:
            await self._send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            raise FakeStreamCut(f"cut-stream: dropped a {len(body)}-byte JSON body halfway")
        await self._send({"type": "http.response.body", "body": body})

    async def sse(self, events: list[bytes], gap_s: float, cut_after: int | None) -> None:
        await self._start(200, SSE_HEADERS)
        for index, event in enumerate(events):
            if index == cut_after:
                raise FakeStreamCut(f"cut-stream: dropped the stream after {index} of {len(events)} events")
            if index and gap_s:
                await asyncio.sleep(gap_s)
            await self._send({"type": "http.response.body", "body": event, "more_body": True})
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


def _no_such_model(provider: str, model_id: str) -> Refusal:
    return Refusal(404, f"The model `{model_id}` does not exist on fake provider `{provider}`.",
                   "invalid_request_error", "model_not_found", "model")


@dataclass(frozen=True)
class _Call:
    provider: str
    models: dict[str, FakeModel]
    route: str  # the path after `/v1/`
    body: bytes
    out: _Out

    def model(self, model_id: str, kind: Kind) -> FakeModel:
        model = self.models.get(model_id)
        if model is None:
            raise _no_such_model(self.provider, model_id)
        if model.kind != kind:
            raise Refusal(404, f"`{model_id}` is a {model.kind} model; this endpoint serves {kind} models.",
                          "invalid_request_error", "model_not_supported", "model")
        return model


def _check_chat(provider: str, model: FakeModel, request: ChatRequest) -> None:
    json_asked = request.response_format is not None and request.response_format.type != "text"
    lacks = [
        (param, feature)
        for param, feature, asked, offered in (
            ("tools", "tools", bool(request.tools), model.tools),
            ("messages", "image input", replies.has_image(request), model.vision),
            ("response_format", "JSON mode", json_asked, model.json_mode),
        )
        if asked and not offered
    ]
    if lacks:
        param, feature = lacks[0]
        raise Refusal(400, f"`{model.id}` on fake provider `{provider}` does not support {feature}.",
                      "invalid_request_error", "unsupported_parameter", param)
    check_window(model.context_window, replies.chat_prompt_tokens(request), replies.chat_max_tokens(request))


async def _answer(call: _Call, model: FakeModel, stream: bool, wants_usage: bool,
                  whole: Callable[[bool], Json], chunks: Callable[[bool], list[Json]]) -> None:
    """Send a JSON body or an SSE stream, playing the model's scripted fault on the way."""
    if model.fault == "error-500":
        raise Refusal(500, "The fake server had an error while processing your request (fault error-500).",
                      "server_error", "internal_error")
    if model.fault == "429":
        raise Refusal(429, "Rate limit reached for requests (fault 429). Please try again in 1s.",
                      "rate_limit_error", "rate_limit_exceeded", headers=[(b"retry-after", b"1")])
    if model.fault == "slow":
        await asyncio.sleep(SLOW_FIRST_BYTE_S)
    with_usage = model.fault != "no-usage"
    cut = model.fault == "cut-stream"
    if not stream:
        return await call.out.json(200, whole(with_usage), cut=cut)
    events = [b"data: " + msgspec.json.encode(chunk) + b"\n\n" for chunk in chunks(with_usage and wants_usage)]
    if model.fault == "malformed-sse":
        events.insert(2, MALFORMED_EVENT)
    events.append(b"data: [DONE]\n\n")
    gap_s = SLOW_CHUNK_GAP_S if model.fault == "slow" else 0.0
    await call.out.sse(events, gap_s, CUT_AFTER_EVENTS if cut else None)


def _wants_usage(stream_options: replies.StreamOptions | None) -> bool:
    return stream_options is not None and stream_options.include_usage


async def _chat_completions(call: _Call) -> None:
    request = decode(call.body, ChatRequest)
    model = call.model(request.model, "chat")
    _check_chat(call.provider, model, request)
    rid, now_s = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    await _answer(call, model, request.stream, _wants_usage(request.stream_options),
                  lambda u: replies.chat_completion(call.provider, request, rid, now_s, u),
                  lambda u: replies.chat_chunks(call.provider, request, rid, now_s, u))


async def _completions(call: _Call) -> None:
    request = decode(call.body, CompletionRequest)
    model = call.model(request.model, "completion")
    check_window(model.context_window, replies.count_prompt_tokens(replies.prompts(request), 0), request.max_tokens)
    rid, now_s = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    await _answer(call, model, request.stream, _wants_usage(request.stream_options),
                  lambda u: replies.text_completion(call.provider, request, rid, now_s, u),
                  lambda u: replies.completion_chunks(call.provider, request, rid, now_s, u))


async def _embeddings(call: _Call) -> None:
    request = decode(call.body, EmbeddingRequest)
    model = call.model(request.model, "embedding")
    await _answer(call, model, False, False, lambda u: replies.embeddings(request, u), lambda u: [])


async def _list_models(call: _Call) -> None:
    data = [_listing_entry(call.provider, model) for model in call.models.values()]
    await call.out.json(200, {"object": "list", "data": data})


_ROUTES: dict[str, tuple[str, Callable[[_Call], Awaitable[None]]]] = {
    "models": ("GET", _list_models),
    "chat/completions": ("POST", _chat_completions),
    "completions": ("POST", _completions),
    "embeddings": ("POST", _embeddings),
}


def _header(scope: Scope, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key.lower() == name), None)


def _authorize(scope: Scope) -> None:
    scheme, _, key = (_header(scope, b"authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Refusal(401, "Missing or malformed `Authorization: Bearer <key>` header (any non-empty key works).",
                      "invalid_request_error", "invalid_api_key")


def _delay_s(scope: Scope) -> float:
    raw = _header(scope, b"x-fake-delay-ms")
    if raw is None:
        return 0.0
    if not raw.strip().isdigit() or int(raw) > MAX_DELAY_MS:
        raise Refusal(400, f"X-Fake-Delay-Ms must be an integer from 0 to {MAX_DELAY_MS}, got {raw!r}.",
                      "invalid_request_error", "invalid_value", "X-Fake-Delay-Ms")
    return int(raw) / 1000


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return b"".join(parts)


async def _serve_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            return await send({"type": "lifespan.shutdown.complete"})


class _FakeUpstream:
    def __init__(self, providers: Sequence[FakeProvider]) -> None:
        self._catalog = {provider.name: {m.id: m for m in provider.models} for provider in providers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await _serve_lifespan(receive, send)
        if scope["type"] == "http":
            out = _Out(send)
            try:
                await self._dispatch(scope, receive, out)
            except Refusal as refusal:
                await out.json(refusal.status, refusal.body, refusal.headers)

    async def _dispatch(self, scope: Scope, receive: Receive, out: _Out) -> None:
        provider, _, rest = scope["path"].strip("/").partition("/v1/")
        models = self._catalog.get(provider)
        route = _ROUTES.get(rest) or (("GET", _get_model) if rest.startswith("models/") else None)
        if models is None or route is None:
            message = f"Invalid URL ({scope['method']} {scope['path']})"
            raise Refusal(404, message, "invalid_request_error", "unknown_url")
        _authorize(scope)
        if scope["method"] != route[0]:
            raise Refusal(405, f"Method {scope['method']} not allowed on {scope['path']}; use {route[0]}.",
                          "invalid_request_error", "method_not_allowed")
        delay_s = _delay_s(scope)
        body = await _read_body(receive) if route[0] == "POST" else b""
        if delay_s:
            await asyncio.sleep(delay_s)
        await route[1](_Call(provider, models, rest, body, out))


async def _get_model(call: _Call) -> None:
    model_id = call.route.removeprefix("models/")
    model = call.models.get(model_id)
    if model is None:
        raise _no_such_model(call.provider, model_id)
    await call.out.json(200, _listing_entry(call.provider, model))


def _validate(providers: Sequence[FakeProvider]) -> None:
    names = [provider.name for provider in providers]
    for provider in providers:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", provider.name) or names.count(provider.name) > 1:
            raise ValueError(f"fake provider name {provider.name!r} must be a unique, non-empty path segment")
        ids = [model.id for model in provider.models]
        for model in provider.models:
            if ids.count(model.id) > 1:
                raise ValueError(f"fake provider {provider.name!r} lists model {model.id!r} twice")
            for price in (model.input_usd_per_mtok, model.output_usd_per_mtok):
                try:
                    ok = Decimal(price).is_finite() and Decimal(price) >= 0
                except InvalidOperation:
                    ok = False
                if not ok:
                    raise ValueError(f"price {price!r} of {provider.name}/{model.id} must be a decimal string >= 0")


def create_app(providers: Sequence[FakeProvider] = FAKE_PROVIDERS) -> ASGIApp:
    """The fake upstream as an ASGI app; provider P answers under `/P/v1/`."""
    _validate(providers)
    return _FakeUpstream(providers)


class _ShortCutLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], FakeStreamCut):
            record.msg, record.args = "fake upstream fault on purpose: %s", (record.exc_info[1],)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def quiet_deliberate_cuts(logger_name: str = "uvicorn.error") -> None:
    """Log the deliberate `cut-stream` drops as one line instead of a traceback."""
    logging.getLogger(logger_name).addFilter(_ShortCutLog())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m functions.fake_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args(argv)
    config = uvicorn.Config(create_app(), host=args.host, port=args.port, log_level=args.log_level,
                            access_log=not args.no_access_log, lifespan="on")
    quiet_deliberate_cuts()
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
