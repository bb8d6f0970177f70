"""The broker's own work per request, without HTTP: the proxy function called in-process.

Run: `python bench/hotpath.py [--mode json|sse] [--requests 30000] [--rounds 3] [--without PIECES]`. Builds the broker's
state on a temporary data directory (a real `FileEventLog`: WAL, group commit, sealing), swaps the
upstream client for a stub that answers the fast upstream's fixed completion or stream at once, and
drives `openai_api.proxy` from 64 concurrent tasks. Prints CPU per request for the event-loop thread
(routing, admission, events, usage capture, answer) and for the whole process (plus the WAL writer and
sealing threads). uvicorn and aiohttp's client are left out on purpose: `bench/broker.py` measures them
(the stub's body still goes through the broker's aiohttp body iterator). `--without` switches pieces
the design requires off in this process only, to show what each one costs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.base_protocol import BaseProtocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.ablation import PIECES, switch_off  # noqa: E402
from bench.broker import CONFIG  # noqa: E402  (the same priced model, every limit lifted)
from bench.fast_upstream import COMPLETION, MODELS, STREAM  # noqa: E402
from functions.upstream import _Chunks  # noqa: E402

CONCURRENCY = 64


class _Reply:
    """An upstream answer whose body has arrived whole, read through the broker's own aiohttp body
    iterator (`upstream._Chunks` over aiohttp's `StreamReader`), as from a fast local upstream."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.status, self.headers = 200, {"content-type": content_type}
        loop = asyncio.get_running_loop()  # (bodies far below the limit: aiohttp never asks to pause reading)
        self._content = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
        self._content.feed_data(body)
        self._content.feed_eof()

    async def read(self) -> bytes:
        return await self._content.read()

    def chunks(self) -> Any:
        return _Chunks(self._content)

    def at_eof(self) -> bool:
        return self._content.at_eof()

    def close(self) -> None:
        pass


class _Stub:
    """The upstream client seam, answered at once (one loop turn, like a ready socket)."""

    async def post(self, url: str, body: bytes, headers: Any) -> _Reply:
        await asyncio.sleep(0)
        return _Reply(STREAM, "text/event-stream") if b'"stream":true' in body else _Reply(COMPLETION, "application/json")

    async def get(self, url: str, headers: Any) -> tuple[int, bytes]:
        return 200, MODELS

    async def aclose(self) -> None:
        pass


async def run(mode: str, requests: int, rounds: int) -> None:
    from deploy.settings import load_config
    from eventlog.filelog import FileEventLog
    from functions.openai_api import proxy
    from functions.request_body import parse_chat
    from functions.runtime import _restore
    from functions.state import BrokerState

    config = load_config()
    log = await FileEventLog.open(config.data_dir)
    state = BrokerState(config, log, clients={"bench": _Stub()})
    _restore(state, config, config.data_dir)
    await state.catalog.refresh(state.log)
    app = type("App", (), {})()
    app.state = type("State", (), {"broker": state})()
    body = (b'{"model":"auto","max_tokens":16,%s"messages":[{"role":"user","content":"Say hello to the benchmark"}]}'
            % (b'"stream":true,' if mode == "sse" else b""))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())], "app": app}

    async def one() -> None:
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await asyncio.sleep(3600)  # the client stays; the stream's watcher is cancelled at the end
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await proxy(dict(scope), receive, send, "/v1/chat/completions", "chat/completions", parse_chat)
        if sent[0]["status"] != 200:
            raise SystemExit(f"unexpected answer: {sent[:2]}")

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    await asyncio.gather(*(worker(50) for _ in range(CONCURRENCY)))  # warm-up
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000)  # as `deploy/serve.py: tune_gc`
    per_task = requests // CONCURRENCY
    for r in range(rounds):
        t0, p0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
        await asyncio.gather(*(worker(per_task) for _ in range(CONCURRENCY)))
        t1, p1, m1 = time.perf_counter(), time.process_time(), time.thread_time()
        n = per_task * CONCURRENCY
        print(f"{mode} round {r + 1}: {n} requests  {n / (t1 - t0):7.0f} req/s  CPU per request: "
              f"event loop {1000 * (m1 - m0) / n:.3f} ms, process {1000 * (p1 - p0) / n:.3f} ms")
    await log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=("json", "sse"), default="json")
    ap.add_argument("--requests", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--without", default="", help=f"comma-separated pieces to switch off (an ablation): {', '.join(PIECES)}")
    args = ap.parse_args()
    without = [p for p in args.without.split(",") if p]
    try:
        switch_off(without)
    except ValueError as exc:
        ap.error(str(exc))
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "models.yml").write_text(CONFIG % "http://127.0.0.1:1")  # never dialled: the stub answers
        os.environ.update(AIBROKER_DATA_DIR=f"{tmp}/data", MODELS_CONFIG_PATH=f"{tmp}/models.yml")
        print(f"# bench/hotpath.py  {time.strftime('%Y-%m-%d %H:%M')}  nproc={os.cpu_count()}  "
              f"{CONCURRENCY} concurrent callers, stub upstream, real event log"
              + (f"; switched off: {', '.join(without)}" if without else ""))
        try:
            import uvloop

            uvloop.run(run(args.mode, args.requests, args.rounds))
        except ImportError:
            asyncio.run(run(args.mode, args.requests, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
