"""A deliberately minimal, fast OpenAI-shaped upstream for benchmarks: raw asyncio + uvloop, no framework.

It answers every POST with a fixed chat completion (JSON), or — when the body asks for `"stream":true` —
24 SSE chunks plus a usage chunk and `[DONE]`; `GET .../models` lists one model. Keep-alive, HTTP/1.1,
Content-Length bodies only (what wrk and the broker send). Run: `python bench/fast_upstream.py --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import json

MODEL = "bench-model"
COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from the fast upstream"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}).encode()


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    doc = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


STREAM = b"".join(
    [_chunk({"role": "assistant", "content": ""})]
    + [_chunk({"content": f" w{i}"}) for i in range(22)]
    + [_chunk({}, "stop")]
    + [b"data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": MODEL,
                                "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 22,
                                                         "total_tokens": 34}}).encode() + b"\n\n",
       b"data: [DONE]\n\n"]
)


def _response(body: bytes, content_type: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


JSON_RESPONSE = _response(COMPLETION, b"application/json")
SSE_RESPONSE = _response(STREAM, b"text/event-stream")
MODELS_RESPONSE = _response(MODELS, b"application/json")


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15: head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
            total = head_end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[head_end + 4: total]
            self.buf = self.buf[total:]
            if head.startswith(b"get"):
                self.transport.write(MODELS_RESPONSE)
            elif b'"stream":true' in body or b'"stream": true' in body:
                self.transport.write(SSE_RESPONSE)
            else:
                self.transport.write(JSON_RESPONSE)


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9300)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
