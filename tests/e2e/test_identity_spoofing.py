"""Nobody can bill, or free, another bucket: forwarding headers count only from trusted proxies,
a malformed context is refused without touching any bucket, request ids are only labels.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.broker import CLIENT_TIMEOUT_S, Broker, poll, sql_literal, write_limits_config
from tests.e2e.conftest import BrokerFactory

HI = [{"role": "user", "content": "hi"}]
BILLING_KINDS = "('request.admitted.v1', 'usage.recorded.v1')"


@pytest.fixture(scope="module")
def untrusting(broker_factory: BrokerFactory) -> Broker:
    """127.0.0.1 is not a trusted proxy here: its forwarding headers must be ignored."""
    return broker_factory(TRUSTED_PROXIES="10.99.0.0/16")


@pytest.fixture(scope="module")
def trusting(broker_factory: BrokerFactory, tmp_path_factory: pytest.TempPathFactory) -> Broker:
    """The default: 127.0.0.1 is the local proxy. Tight concurrency for the request-id tests."""
    config = write_limits_config(tmp_path_factory.mktemp("identity") / "modelsconfig.yml",
                                 {"contexts": {"reuse": {"concurrent": 2}, "victim": {"concurrent": 1}}})
    return broker_factory(MODELS_CONFIG_PATH=str(config))


def post(broker: Broker, headers: Any, **body: Any) -> httpx.Response:
    with httpx.Client(base_url=broker.base_url, timeout=CLIENT_TIMEOUT_S) as c:
        return c.post("/chat/completions", json={"model": "auto", "messages": HI, "max_tokens": 4, **body},
                      headers=headers)


def ips_of(broker: Broker, request_id: str) -> set[str]:
    rows = poll(lambda: broker.sql(f"SELECT kind, ip FROM events WHERE request_id = {sql_literal(request_id)}"),
                lambda rows: any(r["kind"] == "usage.recorded.v1" for r in rows))
    assert {r["kind"] for r in rows} >= {"request.admitted.v1", "usage.recorded.v1"}
    return {r["ip"] for r in rows}


# ---- forwarding headers ----------------------------------------------------------------------


UVICORN_REWRITES_CLIENT = ("BUG: deploy/serve.py `_server` leaves uvicorn's proxy_headers on (its default), so "
                           "uvicorn's ProxyHeadersMiddleware (trusting FORWARDED_ALLOW_IPS, default 127.0.0.1,::1) "
                           "rewrites scope['client'] from X-Forwarded-For before domain.identity.client_ip sees the "
                           "real peer; fix: uvicorn.Config(..., proxy_headers=False)")


def test_real_ip_from_an_untrusted_peer_is_ignored(untrusting: Broker) -> None:
    resp = post(untrusting, {"X-Real-IP": "7.7.7.7", "X-Request-Id": "spoof-real-ip-1"})
    assert resp.status_code == 200, resp.text
    assert ips_of(untrusting, "spoof-real-ip-1") == {"127.0.0.1"}


def test_forwarding_headers_from_an_untrusted_peer_are_ignored(untrusting: Broker) -> None:
    resp = post(untrusting, {"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "7.7.7.7", "X-Request-Id": "spoof-xff-1"})
    assert resp.status_code == 200, resp.text
    assert ips_of(untrusting, "spoof-xff-1") == {"127.0.0.1"}


def test_forwarding_headers_from_the_trusted_local_proxy_name_the_client(trusting: Broker) -> None:
    resp = post(trusting, {"X-Forwarded-For": "6.6.6.6", "X-Request-Id": "xff-trusted-1"})
    assert resp.status_code == 200, resp.text
    assert ips_of(trusting, "xff-trusted-1") == {"6.6.6.6"}
    resp = post(trusting, {"X-Forwarded-For": "1.1.1.1, 6.6.6.6", "X-Request-Id": "xff-trusted-2"})
    assert ips_of(trusting, "xff-trusted-2") == {"6.6.6.6"}  # the right-most untrusted hop, not the client's claim


def test_a_garbage_forwarded_for_falls_back_to_the_peer(trusting: Broker) -> None:
    resp = post(trusting, {"X-Forwarded-For": "6.6.6.6, not-an-ip", "X-Request-Id": "xff-garbage-1"})
    assert resp.status_code == 200, resp.text
    assert ips_of(trusting, "xff-garbage-1") == {"127.0.0.1"}


# ---- malformed contexts -------------------------------------------------------------------------

BAD_CONTEXTS = [
    pytest.param(b"a b", id="space"),
    pytest.param("caf\u00e9".encode(), id="utf8-bytes"),
    pytest.param("caf\u00e9".encode("latin-1"), id="latin1-byte"),
    pytest.param("\u4e0a\u4e0b".encode(), id="cjk"),
    pytest.param(b"x" * 10_240, id="10kB"),
    pytest.param(b"", id="empty"),
    pytest.param(b"x" * 65, id="65-chars"),
    pytest.param(b"team/../0", id="path"),
    pytest.param(b"0,victim", id="comma-list"),
]


def billing_events(broker: Broker) -> int:
    return int(broker.sql(f"SELECT count(*) AS n FROM events WHERE kind IN {BILLING_KINDS}")[0]["n"])


@pytest.mark.parametrize("context", BAD_CONTEXTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_malformed_context_is_refused_and_bills_nobody(untrusting: Broker, context: bytes, stream: bool) -> None:
    rid = f"badctx-{hashlib.sha256(context).hexdigest()[:16]}-{int(stream)}"
    before = billing_events(untrusting)
    resp = post(untrusting, [(b"X-Hero-Context", context), (b"X-Request-Id", rid.encode())], stream=stream)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["type"], error["param"]) == ("invalid_context", "invalid_request_error",
                                                              "X-Hero-Context")
    assert "[A-Za-z0-9_-]{1,64}" in error["message"]
    assert len(error["message"]) < 200  # a 10 kB header is not echoed back whole
    events = untrusting.sql(f"SELECT kind, ip, context, code, status FROM events WHERE request_id = {sql_literal(rid)}")
    assert events == [{"kind": "request.rejected.v1", "ip": "127.0.0.1", "context": "", "code": "invalid_context",
                       "status": 400}]
    assert billing_events(untrusting) == before


def test_no_bad_context_ever_reached_a_bucket(untrusting: Broker) -> None:
    rows = untrusting.sql(f"SELECT count(*) AS n FROM events WHERE kind IN {BILLING_KINDS} AND context = ''")
    assert rows == [{"n": 0}]
    assert "Traceback" not in untrusting.stderr(), untrusting.stderr()


# ---- request ids are labels -------------------------------------------------------------------


def slow_together(broker: Broker, headers: list[dict[str, str]]) -> list[int]:
    start = threading.Barrier(len(headers))

    def call(h: dict[str, str]) -> int:
        with httpx.Client(base_url=broker.base_url, timeout=CLIENT_TIMEOUT_S, headers=h) as c:
            start.wait()
            return c.post("/chat/completions", json={"model": "fake-slow", "messages": HI, "max_tokens": 2}).status_code

    with ThreadPoolExecutor(len(headers)) as pool:
        return sorted(pool.map(call, headers))


def in_background(call: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_another_bucket_reusing_my_request_id_cannot_free_my_slot(trusting: Broker) -> None:
    victim = {"X-Hero-Context": "victim", "X-Request-Id": "shared-id-1"}
    holder = in_background(lambda: post(trusting, victim, model="fake-slow"))
    poll(lambda: trusting.sql("SELECT count(*) AS n FROM admissions WHERE request_id = 'shared-id-1'"),
         lambda rows: rows[0]["n"] == 1)
    attacker = post(trusting, {"X-Hero-Context": "attacker", "X-Request-Id": "shared-id-1"})
    assert attacker.status_code == 200  # settled in the attacker's own bucket
    second = post(trusting, {"X-Hero-Context": "victim"})
    assert second.status_code == 429 and second.json()["error"]["code"] == "concurrency_limit"
    holder.join(CLIENT_TIMEOUT_S)


def test_reusing_one_request_id_does_not_bypass_the_concurrency_limit(trusting: Broker) -> None:
    same = {"X-Hero-Context": "reuse", "X-Request-Id": "reused-id"}
    assert slow_together(trusting, [same] * 4) == [200, 200, 429, 429]
