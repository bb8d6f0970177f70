"""Shared integration fixtures: the fake OpenAI-compatible upstream served for real on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class FakeUpstreamServer:
    url: str  # http://127.0.0.1:PORT
    log_path: Path

    def base_url(self, provider: str = "fakeai") -> str:
        return f"{self.url}/{provider}/v1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(proc: subprocess.Popen[bytes], server: FakeUpstreamServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=1.0, headers={"Authorization": "Bearer ready"}) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"fake upstream exited with {proc.returncode}:\n{server.log_path.read_text()}")
            try:
                if client.get(f"{server.base_url()}/models").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    pytest.fail(f"fake upstream not ready after {READY_TIMEOUT_S}s:\n{server.log_path.read_text()}")


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstreamServer]:
    """`python -m functions.fake_upstream` on a free port, stopped by PID at the end of the session."""
    port = free_port()
    server = FakeUpstreamServer(f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("fake_upstream") / "server.log")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "functions.fake_upstream", "--port", str(port), "--no-access-log"]
    with server.log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(proc, server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
