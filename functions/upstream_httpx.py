"""The httpx client behind the upstream seam (`UPSTREAM_CLIENT=httpx`): kept for `httpx.MockTransport`
in tests and as the design card's client; imported only when chosen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import httpx

from functions.upstream import Timeouts, UpstreamConnectError, UpstreamResponse, UpstreamTimeout


class _HttpxResponse:
    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("upstream body timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamConnectError(f"upstream body failed: {exc.__class__.__name__}") from exc
        finally:
            await self._resp.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("upstream stream went idle") from exc
        except httpx.HTTPError as exc:
            raise UpstreamConnectError(f"upstream stream broke: {exc.__class__.__name__}") from exc

    def at_eof(self) -> bool:
        return False  # httpx says so only when its iterator ends: the stream then ends as before

    def close(self) -> None:
        asyncio.get_running_loop().create_task(self._resp.aclose())


class HttpxUpstream:
    def __init__(self, timeouts: Timeouts, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(connect=timeouts.connect_s, read=timeouts.idle_s, write=timeouts.idle_s, pool=timeouts.connect_s),
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        request = self._client.build_request("POST", url, content=body, headers=headers)
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("no response in time") from exc
        except httpx.HTTPError as exc:
            raise UpstreamConnectError(f"{exc.__class__.__name__}") from exc
        return _HttpxResponse(resp)

    async def get(self, url: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
        try:
            resp = await self._client.get(url, headers=headers)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("no response in time") from exc
        except httpx.HTTPError as exc:
            raise UpstreamConnectError(f"{exc.__class__.__name__}") from exc
        return resp.status_code, resp.content

    async def aclose(self) -> None:
        await self._client.aclose()
