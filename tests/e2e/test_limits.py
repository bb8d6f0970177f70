"""Limits served for real: rate, budget and concurrency per (ip, context), exact under a burst.

One broker serves the module with per-context limits from a `limits:` section in the file named by
`MODELS_CONFIG_PATH`; every context here comes from 127.0.0.1, so contexts are the buckets.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.broker import CLIENT_TIMEOUT_S, Broker, make_client, only, sql_literal, write_limits_config
from tests.e2e.conftest import BrokerFactory

HI = [{"role": "user", "content": "hi"}]
RATELIMIT_HEADERS = tuple(f"x-ratelimit-{what}-{unit}" for what in ("limit", "remaining", "reset")
                          for unit in ("requests", "tokens"))
RESET = re.compile(r"^(?:\d+h)?(?:\d+m)?\d+(?:ms|s)$")
BURST_LIMIT, BURST_SIZE = 5, 40
STREAM_BUDGET_MICROS = 100

LIMITS = {
    "contexts": {
        "rpm-a": {"requests_per_min": 3},
        "rpm-b": {"requests_per_min": 3},
        "budget-a": {"budget_daily_usd": "0.00001"},  # 10 micro-USD: one 7 µUSD request fits, two do not
        "budget-b": {"budget_daily_usd": "0.00001"},
        "conc": {"concurrent": 1},
        "burst": {"requests_per_min": BURST_LIMIT},
    },
}


@pytest.fixture(scope="module")
def limited(broker_factory: BrokerFactory, tmp_path_factory: pytest.TempPathFactory) -> Broker:
    config = write_limits_config(tmp_path_factory.mktemp("limits") / "modelsconfig.yml", LIMITS)
    return broker_factory(MODELS_CONFIG_PATH=str(config))


@pytest.fixture(scope="module")
def cheap_reservations(broker_factory: BrokerFactory, tmp_path_factory: pytest.TempPathFactory) -> Broker:
    """A stream without max_tokens reserves for EXPECTED_OUTPUT_TOKENS; at 1 a small budget lets it start
    (the fake answers 16 tokens, so with the default 256 the reservation always covers the whole stream)."""
    config = write_limits_config(tmp_path_factory.mktemp("limits") / "modelsconfig.yml",
                                 {"contexts": {"stream": {"budget_daily_micros": STREAM_BUDGET_MICROS}}})
    return broker_factory(MODELS_CONFIG_PATH=str(config), EXPECTED_OUTPUT_TOKENS="1")


def client_for(broker: Broker, context: str) -> openai.OpenAI:
    return make_client(broker, default_headers={"X-Hero-Context": context})


def chat_ok(client: openai.OpenAI, **kw: Any) -> httpx.Headers:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=HI, **kw)  # type: ignore[arg-type]
    raw.parse()
    assert raw.http_response.status_code == 200
    return raw.headers


def refused(client: openai.OpenAI, model: str = "auto", **kw: Any) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=model, messages=HI, **kw)  # type: ignore[arg-type]
    return info.value


def assert_429(error: openai.RateLimitError, code: str, error_type: str, says: str) -> httpx.Headers:
    resp = error.response
    assert resp.status_code == 429
    body = resp.json()["error"]
    assert (body["code"], body["type"]) == (code, error_type)
    assert says in body["message"], body["message"]
    retry_after = resp.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    return resp.headers


def rejections(broker: Broker, context: str) -> list[dict[str, Any]]:
    return broker.sql("SELECT code, status, \"limit\", observed, retry_after_s, message FROM rejections "
                      f"WHERE context = {sql_literal(context)} ORDER BY seq")


# ---- per-context limits ---------------------------------------------------------------------


def test_a_context_over_its_request_limit_gets_429_while_another_context_is_served(limited: Broker) -> None:
    with client_for(limited, "rpm-a") as a, client_for(limited, "rpm-b") as b:
        remaining = [chat_ok(a)["x-ratelimit-remaining-requests"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        headers = assert_429(refused(a), "rate_limit_requests", "rate_limit_error",
                             "rate limit of 3 requests per minute")
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert RESET.match(headers["x-ratelimit-reset-requests"]), headers["x-ratelimit-reset-requests"]
        assert headers["x-ratelimit-reset-requests"] in ("1m0s", *(f"{s}s" for s in range(50, 60)))
        other = chat_ok(b)
        assert (other["x-ratelimit-limit-requests"], other["x-ratelimit-remaining-requests"]) == ("3", "2")
    rejected = only_one(rejections(limited, "rpm-a"))
    assert (rejected["code"], rejected["status"], rejected["limit"], rejected["observed"]) == (
        "rate_limit_requests", 429, 3, 3)
    assert rejected["retry_after_s"] == int(headers["retry-after"])
    assert rejections(limited, "rpm-b") == []


def test_a_context_over_its_daily_budget_gets_429_while_another_context_is_served(limited: Broker) -> None:
    with client_for(limited, "budget-a") as a, client_for(limited, "budget-b") as b:
        chat_ok(a, max_tokens=16)  # 4 prompt + 16 completion tokens at $0.10/$0.40 per 1M: 7 µUSD
        headers = assert_429(refused(a, max_tokens=16), "budget_daily", "insufficient_quota",
                             "daily budget of 10 micro-USD reached")
        assert int(headers["retry-after"]) <= 86_400
        chat_ok(b, max_tokens=16)
    rejected = only_one(rejections(limited, "budget-a"))
    assert (rejected["code"], rejected["status"], rejected["limit"], rejected["observed"]) == (
        "budget_daily", 429, 10, 14)
    assert "7 spent or reserved, this request may cost up to 7" in rejected["message"]
    spend = limited.sql("SELECT context, sum(cost_micros) AS micros FROM usage "
                        "WHERE context IN ('budget-a', 'budget-b') GROUP BY ALL ORDER BY context")
    assert spend == [{"context": "budget-a", "micros": 7}, {"context": "budget-b", "micros": 7}]


def test_two_simultaneous_slow_requests_over_a_concurrency_limit_of_one(limited: Broker) -> None:
    start = threading.Barrier(2)

    def call(_: int) -> tuple[int, dict[str, Any]]:
        with httpx.Client(base_url=limited.base_url, timeout=CLIENT_TIMEOUT_S,
                          headers={"X-Hero-Context": "conc"}) as c:
            start.wait()
            resp = c.post("/chat/completions", json={"model": "fake-slow", "messages": HI, "max_tokens": 4})
            return resp.status_code, resp.json()

    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(call, range(2)), key=lambda a: a[0])
    assert [status for status, _ in answers] == [200, 429]
    error = answers[1][1]["error"]
    assert (error["code"], error["type"]) == ("concurrency_limit", "rate_limit_error")
    assert "1 requests of this (ip, context) are in flight; the limit is 1" == error["message"]
    rejected = only_one(rejections(limited, "conc"))
    assert (rejected["code"], rejected["limit"], rejected["observed"], rejected["retry_after_s"]) == (
        "concurrency_limit", 1, 1, 1)
    with client_for(limited, "conc") as c:  # the slot is free again once the first one settled
        chat_ok(c, max_tokens=4)


def test_a_burst_admits_exactly_the_limit(limited: Broker) -> None:
    start = threading.Barrier(BURST_SIZE)

    def call(i: int) -> httpx.Response:
        with httpx.Client(base_url=limited.base_url, timeout=CLIENT_TIMEOUT_S,
                          headers={"X-Hero-Context": "burst", "X-Request-Id": f"burst-{i}"}) as c:
            start.wait()
            return c.post("/chat/completions", json={"model": "auto", "messages": HI, "max_tokens": 8})

    with ThreadPoolExecutor(BURST_SIZE) as pool:
        answers = list(pool.map(call, range(BURST_SIZE)))
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {200: BURST_LIMIT, 429: BURST_SIZE - BURST_LIMIT}
    for resp in answers:
        assert all(h in resp.headers for h in RATELIMIT_HEADERS), dict(resp.headers)
        assert resp.headers["x-ratelimit-limit-requests"] == str(BURST_LIMIT)
        if resp.status_code == 429:
            assert resp.json()["error"]["code"] == "rate_limit_requests"
            assert resp.headers["x-ratelimit-remaining-requests"] == "0"
            assert resp.headers["retry-after"].isdigit()
    kinds = limited.sql("SELECT kind, count(*) AS n FROM events WHERE context = 'burst' "
                        "AND kind IN ('request.admitted.v1', 'request.rejected.v1') GROUP BY ALL ORDER BY kind")
    assert kinds == [{"kind": "request.admitted.v1", "n": BURST_LIMIT},
                     {"kind": "request.rejected.v1", "n": BURST_SIZE - BURST_LIMIT}]
    for rejected in rejections(limited, "burst"):
        assert (rejected["code"], rejected["status"], rejected["limit"], rejected["observed"]) == (
            "rate_limit_requests", 429, BURST_LIMIT, BURST_LIMIT)
        assert 1 <= rejected["retry_after_s"] <= 60
    served = {r.headers["x-request-id"] for r in answers if r.status_code == 200}
    assert {row["request_id"] for row in limited.sql(
        "SELECT request_id FROM admissions WHERE context = 'burst'")} == served


# ---- a stream cut at the budget ---------------------------------------------------------------


def stream_over_budget(broker: Broker) -> tuple[list[bytes], str]:
    with httpx.Client(base_url=broker.base_url, timeout=CLIENT_TIMEOUT_S, headers={"X-Hero-Context": "stream"}) as c:
        # fake-slow streams in 50 ms steps, so the cut lands mid-stream; no max_tokens
        with c.stream("POST", "/chat/completions", json={"model": "fake-slow", "stream": True, "messages": HI}) as r:
            assert r.status_code == 200
            events = [e for e in r.read().split(b"\n\n") if e]
            return events, r.headers["x-request-id"]


@pytest.fixture(scope="module")
def cut_stream(cheap_reservations: Broker) -> tuple[list[bytes], list[dict[str, Any]]]:
    events, rid = stream_over_budget(cheap_reservations)
    return events, cheap_reservations.settled_events(rid)


def test_a_stream_without_max_tokens_is_cut_at_the_budget(cut_stream: tuple[list[bytes], list[dict[str, Any]]]) -> None:
    events, trail = cut_stream
    assert b"data: [DONE]" not in events
    content = [json.loads(e[6:]) for e in events[:-1]]
    assert any(chunk["choices"][0]["delta"].get("content") for chunk in content)  # it did start
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "budget_daily"
    assert "cut" in last["error"]["message"]
    admitted, usage = only(trail, "request.admitted"), only(trail, "usage.recorded")
    assert admitted["reserved_micros"] <= STREAM_BUDGET_MICROS
    assert usage["outcome"] == "budget_cut"
    assert admitted["reserved_micros"] <= usage["cost_micros"] <= STREAM_BUDGET_MICROS  # billed what was delivered


def test_a_cut_stream_never_spends_more_than_the_budget(
        cut_stream: tuple[list[bytes], list[dict[str, Any]]]) -> None:
    _, trail = cut_stream
    assert only(trail, "usage.recorded")["cost_micros"] <= STREAM_BUDGET_MICROS


def test_after_a_cut_the_budget_refuses_the_next_request(cheap_reservations: Broker,
                                                          cut_stream: tuple[list[bytes], list[dict[str, Any]]]) -> None:
    # the cut left less budget than another fake-slow call's worst case (72 µUSD): refused
    with client_for(cheap_reservations, "stream") as c:
        assert_429(refused(c, model="fake-slow", max_tokens=1), "budget_daily", "insufficient_quota",
                   "daily budget of 100 micro-USD")


def only_one(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


def test_no_limit_test_left_a_traceback(limited: Broker, cheap_reservations: Broker) -> None:
    for b in (limited, cheap_reservations):
        assert "Traceback" not in b.stderr() and "unhandled error" not in b.stderr(), b.stderr()
