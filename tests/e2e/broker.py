"""The broker served for real: `aibroker serve --fake` as a subprocess on a free 127.0.0.1 port.

`start_broker(...)` is the one way to run it (stopped by PID: SIGTERM, then SIGKILL); `Broker.sql`
reads its event log in-process, as `aibroker sql` does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest

from eventlog.sql import query

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 20.0
EVENTS_TIMEOUT_S = 5.0
# Only what a Python process needs: provider keys or settings from the developer's shell must not leak in.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "SYSTEMROOT")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def poll(read: Callable[[], T], done: Callable[[T], bool], timeout_s: float = EVENTS_TIMEOUT_S) -> T:
    """`read()` until `done(value)` or the deadline; returns the last value either way."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


@dataclass(frozen=True)
class Broker:
    root_url: str  # http://127.0.0.1:N
    base_url: str  # http://127.0.0.1:N/v1
    data_dir: Path
    stderr_path: Path
    pid: int
    admin_url: str = ""  # http://127.0.0.1:M (the admin JSON-RPC surface)

    def sql(self, sql: str) -> list[dict[str, Any]]:
        """One read-only SELECT over the log (manifest Parquet + unsealed WAL tail), as dicts."""
        columns, rows, truncated = query(self.data_dir, sql)
        assert not truncated, f"query returned too many rows: {sql}"
        return [dict(zip(columns, row)) for row in rows]

    def events(self, request_id: str) -> list[dict[str, Any]]:
        """Every event of one request, in log order (the wide `events` table: all kinds' columns)."""
        return self.sql(f"SELECT * FROM events WHERE request_id = {sql_literal(request_id)} ORDER BY seq")

    def settled_events(self, request_id: str, timeout_s: float = EVENTS_TIMEOUT_S) -> list[dict[str, Any]]:
        """The request's events once its `usage.recorded` is in (streams settle just after the end)."""
        return poll(lambda: self.events(request_id),
                    lambda evs: any(e["kind"] == "usage.recorded.v1" for e in evs), timeout_s)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _env(data_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["AIBROKER_DATA_DIR"] = str(data_dir)
    env["HERO_SOCKET_DIR"] = str(data_dir.parent / "sockets")  # each broker its own sockets
    env.update(extra)
    return env


def _wait_ready(proc: subprocess.Popen[bytes], root_url: str, stderr_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"broker exited with {proc.returncode}:\n{stderr_path.read_text()}")
            try:
                if client.get(f"{root_url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    pytest.fail(f"broker not ready after {READY_TIMEOUT_S}s:\n{stderr_path.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM to this PID only
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def start_broker(workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[Broker]:
    """`python -m deploy.cli serve --fake` with its data in `workdir/data`, stopped on exit."""
    port, admin_port = free_port(), free_port()
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
    command = [sys.executable, "-m", "deploy.cli", "serve", "--fake", "--host", "127.0.0.1", "--port", str(port),
               "--admin", f"127.0.0.1:{admin_port}"]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(data_dir, env or {}), stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
    try:
        root_url = f"http://127.0.0.1:{port}"
        _wait_ready(proc, root_url, stderr_path)
        yield Broker(root_url, f"{root_url}/v1", data_dir, stderr_path, proc.pid, f"http://127.0.0.1:{admin_port}")
    finally:
        _stop(proc)


def make_client(broker: Broker, **kwargs: Any) -> openai.OpenAI:
    """The official client pointed at the broker; no retries, so every call is one request."""
    return openai.OpenAI(base_url=broker.base_url, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT_S,
                         **kwargs)


def of_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The events of one kind, by short name: `of_kind(evs, "usage.recorded")`."""
    return [e for e in events if e["kind"] == f"{kind}.v1"]


def only(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(events, kind)
    assert len(found) == 1, f"expected exactly one {kind}, got {len(found)}: {[e['kind'] for e in events]}"
    return found[0]


def write_limits_config(path: Path, limits: Mapping[str, Any]) -> Path:
    """A modelsconfig.yml holding only a `limits:` section, for `MODELS_CONFIG_PATH`."""
    import yaml

    path.write_text(yaml.safe_dump({"limits": dict(limits)}, sort_keys=False))
    return path


def signal_and_reap(broker: Broker, sig: int, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Send `sig` to the broker's PID only and wait for it to exit; returns its wait status.

    `start_broker`'s own stop then finds the process already gone and does nothing.
    """
    os.kill(broker.pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid, status = os.waitpid(broker.pid, os.WNOHANG)
        if pid == broker.pid:
            return status
        time.sleep(0.02)
    import signal

    os.kill(broker.pid, signal.SIGKILL)  # still by PID
    return os.waitpid(broker.pid, 0)[1]


# ---- processes beside `start_broker`: sockets, refusals at start, standalone functions -------------


def socket_dir_of(broker: Broker) -> Path:
    """The broker's socket folder, when `start_broker` chose it (`HERO_SOCKET_DIR=<workdir>/sockets`)."""
    return broker.data_dir.parent / "sockets" / "hero_aibroker"


def uds_client(path: Path, **kwargs: Any) -> httpx.Client:
    """An httpx client whose every request goes over the Unix socket at `path` (the host is ignored)."""
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://x",
                        timeout=CLIENT_TIMEOUT_S, **kwargs)


def broker_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `start_broker` gives its broker (sockets beside `data_dir` unless `extra` says)."""
    return _env(data_dir, extra or {})


def serve_until_exit(workdir: Path, env: Mapping[str, str] | None = None,
                     timeout_s: float = READY_TIMEOUT_S) -> tuple[int | None, str, float]:
    """`serve --fake` on fresh TCP ports, expected to refuse to start: (exit code, stderr, seconds).

    The exit code is None when it was still running after `timeout_s` (then it is stopped by PID).
    """
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "deploy.cli", "serve", "--fake", "--host", "127.0.0.1",
               "--port", str(free_port()), "--admin", f"127.0.0.1:{free_port()}"]
    started = time.monotonic()
    with subprocess.Popen(command, cwd=REPO_ROOT, env=_env(data_dir, env or {}), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        try:
            _, err = proc.communicate(timeout=timeout_s)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            _stop(proc)
            _, err = proc.communicate()
            code = None
    return code, err.decode(errors="replace"), time.monotonic() - started


@contextmanager
def running(command: list[str], env: Mapping[str, str], log_path: Path,
            cwd: Path = REPO_ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """Any process (a fake upstream, `uvicorn functions.chat:app`, …), output in `log_path`, stopped by PID."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        _stop(proc)


def wait_until(check: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S, every_s: float = 0.05) -> bool:
    """`check()` (exceptions count as False) until it is True or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)
