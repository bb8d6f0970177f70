"""The floor: the thinnest forwarder on the broker's own HTTP stack (uvicorn + httptools + aiohttp client).

Raw ASGI, one pooled aiohttp session, no parsing beyond the body bytes: POST in, POST upstream, bytes
back (streamed as they come). What the broker adds is measured against this.
Run: `python bench/floor.py --port N --upstream http://127.0.0.1:M`.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn


def make_app(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    assert session is not None
                    await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert session is not None
        async with session.post(upstream + scope["path"], data=body,
                                headers={"content-type": "application/json", "authorization": "Bearer x"}) as resp:
            ctype = resp.headers.get("content-type", "application/json").encode()
            if ctype.startswith(b"text/event-stream"):
                await send({"type": "http.response.start", "status": resp.status, "headers": [(b"content-type", ctype)]})
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                data = await resp.read()
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]})
                await send({"type": "http.response.body", "body": data})

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=9400)
    ap.add_argument("--upstream", required=True)
    args = ap.parse_args()
    # proxy_headers off, as the broker runs uvicorn: its middleware reads every request's headers for
    # the client address, work a thinnest forwarder does not do
    uvicorn.run(make_app(args.upstream.rstrip("/")), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False, lifespan="on", proxy_headers=False)


if __name__ == "__main__":
    main()
