"""`send_stream`: the ASGI messages of an SSE answer. A body that says it `ended` with a chunk ends the
response with that chunk (one write fewer per stream); any other body gets a closing empty message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from functions.asgi_io import send_stream


class Body:
    def __init__(self, chunks: list[bytes], ends_at: int | None) -> None:
        self.chunks, self.ends_at, self.ended = chunks, ends_at, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            self.ended = self.ends_at is not None and i >= self.ends_at
            yield chunk


def _stream(body: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # the client stays
        return {"type": "http.disconnect"}

    async def run() -> None:
        assert await send_stream(send, receive, [(b"content-type", b"text/event-stream")], body)

    asyncio.run(run())
    return sent


def _bodies(sent: list[dict[str, Any]]) -> list[tuple[bytes, bool]]:
    assert sent[0]["type"] == "http.response.start"
    return [(m["body"], m["more_body"]) for m in sent[1:]]


def test_a_body_that_ended_closes_the_response_with_its_last_chunk() -> None:
    sent = _stream(Body([b"data: 1\n\n", b"data: [DONE]\n\n"], ends_at=1))
    assert _bodies(sent) == [(b"data: 1\n\n", True), (b"data: [DONE]\n\n", False)]


def test_a_body_that_never_says_it_ended_gets_a_closing_empty_message() -> None:
    sent = _stream(Body([b"data: 1\n\n", b"data: [DONE]\n\n"], ends_at=None))
    assert _bodies(sent) == [(b"data: 1\n\n", True), (b"data: [DONE]\n\n", True), (b"", False)]


def test_nothing_is_sent_after_the_last_chunk() -> None:
    sent = _stream(Body([b"a", b"b", b"c"], ends_at=1))
    assert _bodies(sent) == [(b"a", True), (b"b", False)]


def test_a_plain_async_iterable_still_streams() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    assert _bodies(_stream(chunks())) == [(b"x", True), (b"", False)]


def test_the_headers_go_out_with_the_first_chunk_ready() -> None:
    seen: list[int] = []
    sent: list[dict[str, Any]] = []

    class Watching:
        ended = False

        def __aiter__(self) -> Watching:
            self.left = [b"a", b"b"]
            return self

        async def __anext__(self) -> bytes:
            seen.append(len(sent))  # what the client had when this chunk was asked for
            if not self.left:
                raise StopAsyncIteration
            return self.left.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    asyncio.run(send_stream(send, receive, [], Watching()))
    assert seen[0] == 0  # nothing, not even the headers, before the first chunk was ready
    assert [m["type"] for m in sent[:2]] == ["http.response.start", "http.response.body"]


def test_a_body_that_fails_before_its_first_chunk_sends_nothing() -> None:
    async def failing() -> AsyncIterator[bytes]:
        raise RuntimeError("upstream gone")
        yield b""  # pragma: no cover

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await send_stream(send, receive, [], failing())
        except RuntimeError:
            pass

    asyncio.run(run())
    assert sent == []  # the caller can still answer with an error status


class Ready:
    """A body that can say whether its next chunk is here: `waits_from` chunks on, it waits forever."""

    ended = False

    def __init__(self, chunks: list[bytes], waits_from: int | None) -> None:
        self.chunks, self.waits_from, self.at = chunks, waits_from, 0
        self.cancelled = False

    def ready(self) -> bool:
        return self.waits_from is None or self.at < self.waits_from

    def __aiter__(self) -> Ready:
        return self

    async def __anext__(self) -> bytes:
        if not self.ready():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.at == len(self.chunks):
            raise StopAsyncIteration
        self.at += 1
        return self.chunks[self.at - 1]


def _run_with(body: Any, client_leaves: bool) -> tuple[bool, list[dict[str, Any]], int]:
    """(send_stream's answer, the messages sent, how often `receive` was called)."""
    sent: list[dict[str, Any]] = []
    receives = 0

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        nonlocal receives
        receives += 1
        if not client_leaves:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def run() -> bool:
        return await asyncio.wait_for(send_stream(send, receive, [], body), 5)

    return asyncio.run(run()), sent, receives


def test_a_body_that_never_waits_is_relayed_without_watching_the_client() -> None:
    ok, sent, receives = _run_with(Ready([b"a", b"b"], waits_from=None), client_leaves=True)
    assert ok and _bodies(sent) == [(b"a", True), (b"b", True), (b"", False)]
    assert receives == 0  # no watcher task was started


def test_a_body_that_must_wait_is_watched_from_its_first_wait() -> None:
    body = Ready([b"a", b"b", b"c"], waits_from=1)
    ok, sent, receives = _run_with(body, client_leaves=True)
    assert not ok  # the client left while the body waited: the pump was cancelled
    assert body.cancelled and receives == 1
    assert _bodies(sent) == [(b"a", True)]


def test_a_waiting_body_whose_client_stays_streams_to_its_end() -> None:
    class Slow(Ready):
        async def __anext__(self) -> bytes:
            if not self.ready():
                await asyncio.sleep(0.01)
                self.waits_from = None
            return await super().__anext__()

    ok, sent, receives = _run_with(Slow([b"a", b"b"], waits_from=1), client_leaves=False)
    assert ok and receives == 1
    assert _bodies(sent) == [(b"a", True), (b"b", True), (b"", False)]
