"""The aiohttp body iterator's `ready()`: whether the next chunk is had without waiting (the relay
watches for a client's disconnect only while it waits), over aiohttp's own `StreamReader`."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from functions.upstream import UpstreamConnectError, _Chunks


class _Protocol:
    """What a `StreamReader` asks of its connection: flow control only."""

    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def test_ready_says_whether_bytes_have_arrived_and_keeps_them_in_order() -> None:
    async def run() -> None:
        reader = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        chunks = _Chunks(reader)
        assert not chunks.ready()
        reader.feed_data(b"data: 1\n\n")
        assert chunks.ready() and chunks.ready()  # asking twice takes nothing
        reader.feed_data(b"data: 2\n\n")
        assert await chunks.__anext__() == b"data: 1\n\n"  # what `ready` held comes first, alone
        assert chunks.ready()
        assert await chunks.__anext__() == b"data: 2\n\n"
        assert not chunks.ready()
        reader.feed_eof()
        assert chunks.ready()  # the end is had without waiting too
        with pytest.raises(StopAsyncIteration):
            await chunks.__anext__()

    asyncio.run(run())


def test_a_failed_body_is_ready_and_raises_the_seams_error() -> None:
    async def run() -> None:
        reader = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        chunks = _Chunks(reader)
        reader.set_exception(aiohttp.ClientPayloadError("cut"))
        assert chunks.ready()
        with pytest.raises(UpstreamConnectError):
            await chunks.__anext__()

    asyncio.run(run())
