"""`aibroker serve`: run the broker (and, with --fake, the built-in fake upstream) under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from deploy.settings import SettingsError, load_config, with_fake_providers
from functions.admin import create_admin_app
from functions.app import create_app
from functions.runtime import open_runtime
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


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: `run` stops all servers of the process together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: object, log_level: str) -> uvicorn.Server:
    cfg = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                         http="httptools", loop="none", timeout_graceful_shutdown=30)
    return _Server(cfg)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def run(config: BrokerConfig, host: str, port: int, fake: bool, log_level: str,
              fake_url: str | None = None, admin: str | None = "127.0.0.1:8081") -> None:
    background = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if fake_url:
        config = with_fake_providers(config, fake_url.rstrip("/"))
    elif fake:
        from functions.fake_upstream import create_app as fake_app, quiet_deliberate_cuts

        quiet_deliberate_cuts()
        fake_sock = _bound_socket("127.0.0.1", 0)
        config = with_fake_providers(config, f"http://127.0.0.1:{fake_sock.getsockname()[1]}")
        fake_server = _server(fake_app(), "warning")
        background.append((fake_server, asyncio.ensure_future(fake_server.serve(sockets=[fake_sock]))))
    async with open_runtime(config) as runtime:
        servers = [(_server(create_app(config, runtime=runtime), log_level), _bound_socket(host, port), "OpenAI API", "/v1")]
        if admin:
            admin_host, _, admin_port = admin.rpartition(":")
            servers.append((_server(create_admin_app(config, runtime=runtime), log_level),
                            _bound_socket(admin_host, int(admin_port)), "admin JSON-RPC", "/rpc"))
        tasks = [asyncio.ensure_future(srv.serve(sockets=[sock])) for srv, sock, _, _ in servers]
        for _, sock, what, path in servers:
            h, p = sock.getsockname()[:2]
            print(f"aibroker: serving the {what} on http://{h}:{p}{path}", flush=True)
        print(f"aibroker: data in {config.data_dir}{'; fake upstream' if fake else ''}", flush=True)
        await asyncio.wait([asyncio.ensure_future(stop.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED)
        for srv, *_ in servers:
            srv.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
    for srv, task in background:
        srv.should_exit = True
        await asyncio.gather(task, return_exceptions=True)


def main(host: str, port: int, fake: bool, log_level: str = "warning", fake_url: str | None = None,
         admin: str | None = "127.0.0.1:8081") -> int:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_config()
    except SettingsError as exc:
        print(f"aibroker: bad setting: {exc}", file=sys.stderr)
        return 2
    fake = fake or bool(fake_url)
    if admin and not config.admin_token and not _is_loopback(admin.rpartition(":")[0]):
        print(f"aibroker: refusing to serve the admin API on {admin} without ADMIN_TOKEN "
              "(set ADMIN_TOKEN, or keep it on loopback)", file=sys.stderr)
        return 2
    if admin and not config.admin_token:
        print("aibroker: ADMIN_TOKEN is not set: the admin API answers loopback callers only", file=sys.stderr)
    if not config.providers and not fake:
        print(NO_KEYS, file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.run(run(config, host, port, fake, log_level, fake_url, admin))
    except ImportError:
        asyncio.run(run(config, host, port, fake, log_level, fake_url, admin))
    return 0
