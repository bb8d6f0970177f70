"""Raw ASGI helpers for the proxy endpoints: bounded body reads, JSON and SSE answers.

The proxy path skips framework request/response objects (they cost more than the rest of the
broker's work per call) and owns the stream's life: a client that goes away is noticed at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Sequence
from typing import Any

from litestar.types import Receive, Scope, Send

from functions.errors import BrokerError, error_body


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def headers_named(scope: Scope, names: frozenset[bytes]) -> dict[bytes, str]:
    """The first value of each header in `names`, in one pass over the request's headers."""
    out: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        if key in names and key not in out:
            out[key] = value.decode("latin-1")
    return out


async def read_body(receive: Receive, limit: int, declared: str | None) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BrokerError("body_too_large", f"the request body of {declared} bytes exceeds the limit of {limit} bytes")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):  # the usual: one message
        body = message.get("body", b"")
        if len(body) > limit:
            raise BrokerError("body_too_large", f"the request body exceeds the limit of {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BrokerError("body_too_large", f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


RawHeaders = Sequence[tuple[bytes, bytes]]


def _raw_headers(headers: dict[str, str], extra: RawHeaders = ()) -> list[tuple[bytes, bytes]]:
    """`headers` as ASGI pairs, then `extra` (already bytes: the rate-limit headers)."""
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw += extra
    return raw


async def send_bytes(send: Send, status: int, headers: dict[str, str], body: bytes, extra: RawHeaders = ()) -> None:
    await send_raw(send, status, _raw_headers(headers, extra), body)


async def send_raw(send: Send, status: int, raw: list[tuple[bytes, bytes]], body: bytes) -> None:
    """A whole answer; `raw` (ASGI header pairs, extended here by content-length) is the caller's."""
    raw.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, error: BrokerError, headers: dict[str, str], extra: RawHeaders = ()) -> None:
    out = {**headers, **error.headers, "content-type": "application/json"}
    await send_bytes(send, error.status, out, error_body(error.code, error.message, error.param), extra)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_stream(send: Send, receive: Receive, headers: RawHeaders, body: AsyncIterable[bytes]) -> bool:
    """Stream `body` as SSE; returns False if the client went away first.

    The stream is pumped in the caller's task. While the pump would wait on the body, one watcher
    task waits for the client's disconnect and cancels the pump when it comes (no per-stream pump
    task, no `asyncio.wait`). A body with `ready()` (the next chunk is here: pulling it will not wait)
    is watched only from its first wait on: a stream that arrives whole is relayed without a task, and
    a client that leaves meanwhile is noticed at the first wait, as before. The headers go out when
    the first chunk is ready, so the two writes leave back to back (the client can read both at once,
    and a body that fails before its first chunk can still be answered with an error); the caller has
    already waited for the upstream's first bytes. A body whose `ended` is true after a chunk has
    ended with that chunk: it goes out as the response's last.
    """
    gone = False
    watching: asyncio.Task[None] | None = None
    pumping: asyncio.Task[Any] | None = None  # this task, once a watcher may cancel it
    ready = getattr(body, "ready", None)

    def client_gone(task: asyncio.Future[None]) -> None:
        nonlocal gone
        gone = True
        if not task.cancelled():
            task.exception()  # retrieved: a failing receive also ends the stream
        if pumping is not None:
            pumping.cancel()

    def watch() -> asyncio.Task[None]:
        nonlocal pumping
        pumping = asyncio.current_task()
        task = asyncio.get_running_loop().create_task(_until_disconnect(receive))
        task.add_done_callback(client_gone)
        return task

    start: dict[str, Any] | None = {"type": "http.response.start", "status": 200, "headers": headers}
    try:
        if ready is None or not ready():
            watching = watch()
        last = False
        async for chunk in body:  # (not `break` at the last: a body that is a generator ends on its own)
            if last:
                continue
            last = getattr(body, "ended", False)
            if start is not None:
                await send(start)
                start = None
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if watching is None and ready is not None and not ready():
                watching = watch()
        if start is not None:
            await send(start)
        if not last:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone or pumping is None or pumping.uncancel():  # a cancel from elsewhere (shutdown) goes on up
            raise
        return False
    finally:
        if watching is not None:
            watching.remove_done_callback(client_gone)
            watching.cancel()
    return True
