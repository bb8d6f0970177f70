"""Admin access over TCP with `ADMIN_TOKEN`: Bearer or 401 (a JSON-RPC error), and the token never leaks.

A broker with a token serves the module; a second `aibroker serve` on 0.0.0.0 without a token must
refuse to start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.broker import CLIENT_TIMEOUT_S, PASSED_ENV, REPO_ROOT, Broker, free_port, make_client
from tests.e2e.conftest import BrokerFactory

TOKEN = "s3cret-token-value"
UNAUTHORIZED = -32001
CLI_TIMEOUT_S = 30.0
DISCOVER = {"jsonrpc": "2.0", "method": "rpc.discover", "id": 1}
WRONG = [
    {"authorization": "Bearer wrong"},
    {"authorization": f"Bearer {TOKEN}-and-more"},  # the real token as a prefix: must not leak either
    {"authorization": f"Bearer {TOKEN[:-1]}"},
    {"authorization": f"Basic {TOKEN}"},
    {"authorization": TOKEN},
    {"authorization": "Bearer"},
    {"x-admin-token": TOKEN},
]


@pytest.fixture(scope="module")
def guarded(broker_factory: BrokerFactory) -> Broker:
    return broker_factory(ADMIN_TOKEN=TOKEN)


@pytest.fixture(scope="module")
def http(guarded: Broker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.admin_url, timeout=CLIENT_TIMEOUT_S) as client:
        yield client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_refused(resp: httpx.Response) -> str:
    assert resp.status_code == 401, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("www-authenticate", "").startswith("Bearer")
    body = resp.json()
    assert set(body) == {"jsonrpc", "error", "id"} and body["jsonrpc"] == "2.0" and body["id"] is None, body
    assert body["error"]["code"] == UNAUTHORIZED
    message: str = body["error"]["message"]
    assert message.startswith("unauthorized") and TOKEN not in resp.text and TOKEN[:8] not in resp.text
    return message


def limits_changed(broker: Broker, context: str) -> list[dict[str, Any]]:
    return broker.sql(f"SELECT * FROM events WHERE kind = 'limits.changed.v1' AND context = '{context}'")


def test_rpc_without_a_token_is_401_with_a_jsonrpc_error(http: httpx.Client) -> None:
    message = assert_refused(http.post("/rpc", json=DISCOVER))
    assert "Authorization: Bearer" in message


def test_openrpc_json_without_a_token_is_401(http: httpx.Client) -> None:
    assert_refused(http.get("/openrpc.json"))


@pytest.mark.parametrize("headers", WRONG, ids=lambda h: next(iter(h)) + ":" + next(iter(h.values()))[:12])
def test_a_wrong_token_is_401(http: httpx.Client, headers: dict[str, str]) -> None:
    assert_refused(http.post("/rpc", json=DISCOVER, headers=headers))
    assert_refused(http.get("/openrpc.json", headers=headers))


def test_the_right_token_is_served(http: httpx.Client) -> None:
    resp = http.post("/rpc", json=DISCOVER, headers=bearer())
    assert resp.status_code == 200
    doc = resp.json()["result"]
    assert doc["openrpc"].startswith("1.2")
    openrpc = http.get("/openrpc.json", headers=bearer())
    assert (openrpc.status_code, openrpc.json()) == (200, doc)
    batch = http.post("/rpc", headers=bearer(), json=[
        {"jsonrpc": "2.0", "method": "providers.list", "id": "p"},
        {"jsonrpc": "2.0", "method": "events.tail", "params": {"n": 1}, "id": "t"}])
    assert [a["id"] for a in batch.json()] == ["p", "t"] and all("result" in a for a in batch.json())


def test_the_bearer_scheme_is_case_insensitive(http: httpx.Client) -> None:
    assert http.post("/rpc", json=DISCOVER, headers={"authorization": f"bearer {TOKEN}"}).status_code == 200


def test_a_refused_call_does_nothing(guarded: Broker, http: httpx.Client) -> None:
    params = {"scope": "context", "context": "auth-refused", "requests_per_min": 1, "reason": "should not happen"}
    assert_refused(http.post("/rpc", json={"jsonrpc": "2.0", "method": "limits.set", "params": params, "id": 1}))
    notification = http.post("/rpc", json={"jsonrpc": "2.0", "method": "limits.set", "params": params},
                             headers=bearer("wrong"))
    assert_refused(notification)  # 401, not 204: a notification is refused too
    assert limits_changed(guarded, "auth-refused") == []
    accepted = http.post("/rpc", json={"jsonrpc": "2.0", "method": "limits.set",
                                       "params": {**params, "context": "auth-allowed"}}, headers=bearer())
    assert (accepted.status_code, accepted.content) == (204, b"")
    assert len(limits_changed(guarded, "auth-allowed")) == 1


def test_the_token_never_reaches_the_logs_or_the_event_log(guarded: Broker, http: httpx.Client) -> None:
    for headers in WRONG:  # failed attempts carrying (parts of) the token, then real work
        http.post("/rpc", json=DISCOVER, headers=headers)
    answer = http.post("/rpc", headers=bearer(), json={
        "jsonrpc": "2.0", "method": "ai.chat", "id": 1,
        "params": {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "context": "auth-ai"}})
    assert answer.json()["result"]["object"] == "chat.completion"
    with make_client(guarded, default_headers={"X-Hero-Context": "auth-rest"}) as client:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    events = guarded.sql("SELECT * FROM events ORDER BY seq")
    assert {"auth-ai", "auth-rest"} <= {e["context"] for e in events}
    dumped = json.dumps(events, default=str)
    raw_files = b"".join(p.read_bytes() for p in guarded.data_dir.rglob("*") if p.is_file())
    stdout = (guarded.stderr_path.parent / "stdout.log").read_text(errors="replace")
    for where, text in (("event log", dumped), ("stderr", guarded.stderr()), ("stdout", stdout)):
        assert TOKEN not in text, f"the admin token leaked into the {where}"
    assert TOKEN.encode() not in raw_files


def test_admin_on_a_public_address_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(PYTHONPATH=str(REPO_ROOT), AIBROKER_DATA_DIR=str(tmp_path / "data"),
               HERO_SOCKET_DIR=str(tmp_path / "sockets"))
    admin = f"0.0.0.0:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "serve", "--fake", "--port", str(free_port()), "--admin", admin],
        cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "ADMIN_TOKEN" in done.stderr and admin in done.stderr and "refusing" in done.stderr, done.stderr
    assert "serving" not in done.stdout
