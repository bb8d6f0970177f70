"""`aibroker serve`: every surface of one broker in one process, on Unix sockets and TCP.

One runtime (one event-log writer, one set of projections) behind all surfaces, so limits are exact.
SIGTERM/SIGINT: stop accepting, let in-flight requests finish (up to the grace period), settle their
usage, seal the WAL, exit 0. SIGHUP: reload modelsconfig.yml (a `config.reloaded` event).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import hashlib
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import uvicorn

from deploy.logs import setup_logging
from deploy.settings import SettingsError, load_config, with_fake_providers
from deploy.sockets import SURFACES, SocketInUse, bind_tcp, bind_unix
from domain.events import ConfigReloaded
from domain.limits import PolicyBook, settings_from_config
from eventlog.base import EventLogError
from eventlog.ids import now_us, uuid7
from eventlog.projections import rebuild_policy
from functions.admin import create_admin_app
from functions.app import create_app
from functions.config import BrokerConfig
from functions.runtime import open_runtime
from functions.state import BrokerState
from functions.ui import create_ui_app
from functions.web import create_web_app

log = logging.getLogger("aibroker")
NO_KEYS = """aibroker: no provider is configured, so there is nothing to route to.
  Add a key, e.g.   export OPENAI_API_KEY=sk-...   (or GROQ_API_KEY, OPENROUTER_API_KEY,
  SAMBANOVA_API_KEY, ALIBABA_API_KEY; a pool: OPENAI_API_KEYS=k1,k2), or a custom provider
  (e.g. a local Ollama) in the file named by MODELS_CONFIG_PATH.
  Or try it with no keys at all:   aibroker serve --fake
"""
BUILDERS: dict[str, Callable[..., Any]] = {"rest": create_app, "web_v1": create_web_app, "rpc": create_admin_app,
                                           "ui": create_ui_app}
PATHS = {"rest": "/v1", "web_v1": "/v1", "rpc": "/rpc", "ui": "/"}


@dataclass(frozen=True)
class Listener:
    surface: str
    address: str  # a socket path, or HOST:PORT

    @property
    def is_tcp(self) -> bool:
        return not self.address.startswith("/")


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: `run` stops all servers of the process together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: object, log_level: str, grace_s: float) -> uvicorn.Server:
    cfg = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", http="httptools",
                         loop="none", timeout_graceful_shutdown=grace_s, log_config=None,  # type: ignore[arg-type]
                         proxy_headers=False)  # the broker alone decides the ip, from TRUSTED_PROXIES
    return _Server(cfg)


def tune_gc() -> None:
    """Start-up objects (catalog, projections, modules) move out of the collector's way, and young
    collections run less often: each request allocates many short-lived objects, and the default
    thresholds made the collector a visible share of the hot path."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000)
    trim_heap()


def tune_malloc() -> None:
    """Blocks of 1 MiB and more (sealing's WAL reads, Arrow and Parquet buffers) come from mmap and go
    back to the OS when freed. glibc otherwise raises its mmap threshold after the first such free and
    keeps later big blocks in the heap until a trim. Set before any thread starts."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def trim_heap() -> None:
    """Give memory freed after start-up (the rebuild's DuckDB and Arrow buffers) back to the OS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _bind(listener: Listener, socket_mode: int) -> socket.socket:
    if not listener.is_tcp:
        return bind_unix(Path(listener.address), socket_mode)
    host, _, port = listener.address.rpartition(":")
    return bind_tcp(host, int(port))


def listeners(tcp: list[str], sockets: bool, env_socket_dir: Path) -> list[Listener]:
    """`--tcp SURFACE=HOST:PORT` (or HOST:PORT for rest) plus the four sockets."""
    out = [Listener(s, str(env_socket_dir / f"{s}.sock")) for s in SURFACES] if sockets else []
    for item in tcp:
        surface, _, address = item.rpartition("=")
        surface = surface or "rest"
        if surface not in SURFACES or ":" not in address or not address.rpartition(":")[2].isdigit():
            raise SettingsError(f"--tcp {item!r}: use SURFACE=HOST:PORT with SURFACE one of {', '.join(SURFACES)}")
        out.append(Listener(surface, address))
    return out


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def reload_config(state: BrokerState, path: str | None) -> None:
    """SIGHUP: re-read modelsconfig.yml; new overrides and limits apply now, as a logged event."""
    digest, error = "", ""
    try:
        fresh = load_config()
        raw = Path(path).expanduser().read_bytes() if path else b""
        digest = hashlib.sha256(raw).hexdigest()
        book = PolicyBook()
        for scope, settings in settings_from_config(fresh.limits):
            book.set(scope, settings, none_means_unlimited=True)
        rebuild_policy(state.config.data_dir, book)
        state.catalog.check_overrides(fresh.model_overrides)  # validate everything before applying any
        state.catalog.overrides = dict(fresh.model_overrides)
        state.admission.replace_book(book)
        await state.catalog.refresh(state.log)
    except Exception as exc:  # a bad file must never take the running broker down
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.error("reloading %s failed, keeping the running configuration: %s", path, error)
    await state.log.append([ConfigReloaded(event_id=uuid7(), ts_us=now_us(), source=state.config.source,
                                           path=path or "", sha256=digest, ok=not error, error=error)])


async def run(config: BrokerConfig, plan: list[Listener], *, fake: bool, fake_url: str | None, log_level: str,
              socket_mode: int = 0o660, grace_s: float = 30.0) -> int:
    bound = [(lst, _bind(lst, socket_mode)) for lst in plan]  # fail fast, before the log is opened
    stop, reload = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    extra: list[tuple[uvicorn.Server, asyncio.Future[Any]]] = []
    if fake and not fake_url:
        from functions.fake_upstream import create_app as fake_app, quiet_deliberate_cuts

        quiet_deliberate_cuts()
        fake_sock = bind_tcp("127.0.0.1", 0)
        fake_url = f"http://127.0.0.1:{fake_sock.getsockname()[1]}"
        fake_server = _server(fake_app(), "warning", 1)
        extra.append((fake_server, asyncio.ensure_future(fake_server.serve(sockets=[fake_sock]))))
    if fake_url:
        config = with_fake_providers(config, fake_url.rstrip("/"))
    try:
        async with open_runtime(config) as runtime:
            servers = [_server(BUILDERS[lst.surface](config, runtime=runtime), log_level, grace_s) for lst, _ in bound]
            tasks = [asyncio.ensure_future(srv.serve(sockets=[sock])) for srv, (_, sock) in zip(servers, bound)]
            for lst, sock in bound:
                where = "http://{}:{}".format(*sock.getsockname()[:2]) if lst.is_tcp else f"unix:{lst.address}"
                print(f"aibroker: {lst.surface:6} on {where}  ({PATHS[lst.surface]})", flush=True)
            print(f"aibroker: data in {config.data_dir}{' (fake upstream)' if fake else ''}", flush=True)
            tune_gc()
            while not stop.is_set() and not any(t.done() for t in tasks):
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())]
                await asyncio.wait([*waiters, *tasks], return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if reload.is_set():
                    reload.clear()
                    await reload_config(runtime, config.models_config_path)
            runtime.accepting = False
            for srv in servers:
                srv.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
    except EventLogError as exc:
        print(f"aibroker: {exc}", file=sys.stderr)
        return 2
    finally:
        for srv, task in extra:
            srv.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
        for lst, sock in bound:
            sock.close()
            if not lst.is_tcp:
                Path(lst.address).unlink(missing_ok=True)
    return 0


def main(args: Any) -> int:
    """`args`: tcp (list), sockets (bool), socket_dir, fake, fake_url, log_level (from the CLI)."""
    try:
        config = load_config()
        setup_logging(args.log_level or config.log_level, config.log_format)
        plan = listeners(args.tcp, args.sockets, Path(args.socket_dir) if args.socket_dir else config.socket_dir)
    except SettingsError as exc:
        print(f"aibroker: bad setting: {exc}", file=sys.stderr)
        return 2
    fake = args.fake or bool(args.fake_url)
    for lst in plan:
        host = lst.address.rpartition(":")[0]
        if lst.surface in ("rpc", "ui") and lst.is_tcp and not config.admin_token and not is_loopback(host):
            print(f"aibroker: refusing to serve {lst.surface} on {lst.address} without ADMIN_TOKEN "
                  "(set ADMIN_TOKEN, or keep it on loopback)", file=sys.stderr)
            return 2
    if any(lst.surface in ("rpc", "ui") and lst.is_tcp for lst in plan) and not config.admin_token:
        log.warning("ADMIN_TOKEN is not set: admin over TCP answers loopback callers only")
    if not config.providers and not fake:
        print(NO_KEYS, file=sys.stderr)
        return 2
    if not plan:
        print("aibroker: nothing to listen on (sockets off and no --tcp)", file=sys.stderr)
        return 2
    tune_malloc()
    try:
        import uvloop

        runner: Callable[..., int] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return runner(run(replace(config), plan, fake=fake, fake_url=args.fake_url, log_level=args.log_level or config.log_level,
                          socket_mode=config.socket_mode, grace_s=config.shutdown_grace_s))
    except SocketInUse as exc:
        print(f"aibroker: {exc}", file=sys.stderr)
        return 2
