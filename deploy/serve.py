"""`aibroker serve`: run the broker (and, with --fake, the built-in fake upstream) under uvicorn."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

import uvicorn

from deploy.settings import SettingsError, load_config, with_fake_providers
from functions.app import create_app
from functions.config import BrokerConfig

NO_KEYS = """aibroker: no provider is configured, so there is nothing to route to.
  Add a key, e.g.   export OPENAI_API_KEY=sk-...   (or GROQ_API_KEY, OPENROUTER_API_KEY,
  SAMBANOVA_API_KEY, ALIBABA_API_KEY; a pool: OPENAI_API_KEYS=k1,k2), or a custom provider
  (e.g. a local Ollama) in the file named by MODELS_CONFIG_PATH.
  Or try it with no keys at all:   aibroker serve --fake
"""


def _bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _server(app: object, log_level: str) -> uvicorn.Server:
    cfg = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                         http="httptools", loop="none", timeout_graceful_shutdown=30)
    return uvicorn.Server(cfg)


async def run(config: BrokerConfig, host: str, port: int, fake: bool, log_level: str,
              fake_url: str | None = None) -> None:
    servers = []
    if fake_url:
        config = with_fake_providers(config, fake_url.rstrip("/"))
    elif fake:
        from functions.fake_upstream import create_app as fake_app, quiet_deliberate_cuts

        quiet_deliberate_cuts()
        fake_sock = _bound_socket("127.0.0.1", 0)
        fake_port = fake_sock.getsockname()[1]
        config = with_fake_providers(config, f"http://127.0.0.1:{fake_port}")
        fake_server = _server(fake_app(), "warning")
        servers.append(asyncio.ensure_future(fake_server.serve(sockets=[fake_sock])))
    sock = _bound_socket(host, port)
    broker = _server(create_app(config), log_level)
    print(f"aibroker: serving the OpenAI API on http://{host}:{sock.getsockname()[1]}/v1"
          f"{' (fake upstream)' if fake else ''}; data in {config.data_dir}", flush=True)
    try:
        await broker.serve(sockets=[sock])
    finally:
        for task in servers:
            task.cancel()
        await asyncio.gather(*servers, return_exceptions=True)


def main(host: str, port: int, fake: bool, log_level: str = "warning", fake_url: str | None = None) -> int:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_config()
    except SettingsError as exc:
        print(f"aibroker: bad setting: {exc}", file=sys.stderr)
        return 2
    fake = fake or bool(fake_url)
    if not config.providers and not fake:
        print(NO_KEYS, file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.run(run(config, host, port, fake, log_level, fake_url))
    except ImportError:
        asyncio.run(run(config, host, port, fake, log_level, fake_url))
    return 0
