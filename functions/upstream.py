"""The one seam to upstream providers: POST bytes, get a status, headers and a body stream.

Two clients stand behind it (httpx's lives in `functions.upstream_httpx`). aiohttp is the proxy hot path: measured on this machine it costs
~0.3 ms CPU per forwarded call against ~2 ms for httpx's default transport (see README). httpx stays
for `httpx.MockTransport` in unit tests and for the catalog's occasional GETs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
from aiohttp.streams import EofStream


class UpstreamConnectError(Exception):
    """No connection (refused, DNS, reset before the status line)."""


class UpstreamTimeout(Exception):
    """No first byte, or the stream went idle, within the configured time."""


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    def at_eof(self) -> bool: ...  # the whole body has been read (False when unknown)
    def close(self) -> None: ...


class UpstreamClient(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse: ...
    async def get(self, url: str, headers: Mapping[str, str]) -> tuple[int, bytes]: ...
    async def aclose(self) -> None: ...


class Timeouts:
    def __init__(self, connect_s: float = 5.0, first_byte_s: float = 60.0, idle_s: float = 60.0) -> None:
        self.connect_s, self.first_byte_s, self.idle_s = connect_s, first_byte_s, idle_s


# ---- aiohttp ----------------------------------------------------------------------------------


class _AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout("upstream body timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(f"upstream body failed: {exc.__class__.__name__}") from exc
        finally:
            self._resp.release()

    def chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self._resp.content)

    def at_eof(self) -> bool:
        return self._resp.content.at_eof()

    def close(self) -> None:
        """Abort if unfinished (a client went away); release the connection if done."""
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


class _Chunks:
    """The body as it arrives, aiohttp's errors turned into the seam's. A class, not an async
    generator: each generator registers with the loop's async-generator hooks, once per stream."""

    __slots__ = ("_content", "_held")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._held = b""  # bytes `ready` took from the buffer, handed out next

    def __aiter__(self) -> _Chunks:
        return self

    def ready(self) -> bool:
        """Whether `__anext__` will return without waiting: bytes have arrived, or the body has
        ended or failed."""
        if self._held:
            return True
        content = self._content
        if content.is_eof() or content.exception() is not None:
            return True
        self._held = content.read_nowait()  # what has arrived (never waits)
        return bool(self._held)

    async def __anext__(self) -> bytes:
        held = self._held
        if held:
            self._held = b""
            return held
        try:
            chunk = await self._content.readany()
        except EofStream:  # (as aiohttp's own `iter_any` treats it)
            raise StopAsyncIteration from None
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout("upstream stream went idle") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(f"upstream stream broke: {exc.__class__.__name__}") from exc
        if not chunk:  # (`readany` returns b"" only at the end, as `iter_any` does)
            raise StopAsyncIteration
        return chunk


class AiohttpUpstream:
    def __init__(self, timeouts: Timeouts, max_connections: int = 512) -> None:
        self._timeouts = timeouts
        connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s,
                                          sock_read=max(timeouts.idle_s, timeouts.first_byte_s)),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """`sock_read` already bounds the wait for the first byte; a separate, shorter first-byte
        limit costs a timer per call, so it is armed only when configured below the idle limit."""
        try:
            if self._timeouts.first_byte_s < self._timeouts.idle_s:
                async with asyncio.timeout(self._timeouts.first_byte_s):
                    resp = await self._session.post(url, data=body, headers=headers)
            else:
                resp = await self._session.post(url, data=body, headers=headers)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no response within {self._timeouts.first_byte_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(f"{exc.__class__.__name__}") from exc
        return _AiohttpResponse(resp)

    async def get(self, url: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self._timeouts.first_byte_s):
                async with self._session.get(url, headers=headers) as resp:
                    return resp.status, await resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no response within {self._timeouts.first_byte_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(f"{exc.__class__.__name__}") from exc

    async def aclose(self) -> None:
        await self._session.close()


def make_client(kind: str, timeouts: Timeouts) -> UpstreamClient:
    if kind == "aiohttp":
        return AiohttpUpstream(timeouts)
    if kind == "httpx":
        from functions.upstream_httpx import HttpxUpstream  # loaded only when chosen: ~18 MiB resident

        return HttpxUpstream(timeouts)
    raise ValueError(f"UPSTREAM_CLIENT must be aiohttp or httpx, got {kind!r}")
