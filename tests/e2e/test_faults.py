"""Upstream faults and client disconnects, on a broker of their own (faults bench offers and keys).

Every path must still answer sensibly and settle exactly one `usage.recorded`: fallback on 5xx and
429 before the first byte, a cut stream, malformed SSE, missing usage, a client that goes away.
Tests run in file order; the stderr check at the end covers everything before it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.broker import CLIENT_TIMEOUT_S, Broker, make_client, of_kind, only
from tests.e2e.conftest import BrokerFactory

HI = [{"role": "user", "content": "hi there, fault"}]
KEY_COOLDOWN_S = 1.0  # the fake's 429 says Retry-After: 1


@pytest.fixture(scope="module")
def faulty(broker_factory: BrokerFactory) -> Broker:
    return broker_factory()


@pytest.fixture
def client(faulty: Broker) -> Iterator[openai.OpenAI]:
    with make_client(faulty) as c:
        yield c


@pytest.fixture
def raw(faulty: Broker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=faulty.base_url, timeout=CLIENT_TIMEOUT_S) as c:
        yield c


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"].removesuffix(".v1") for e in events]


def estimated_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def assert_fell_back(events: list[dict[str, Any]], status: int) -> dict[str, Any]:
    assert kinds(events) == ["request.received", "route.decided", "request.admitted", "upstream.attempted",
                             "upstream.failed", "upstream.attempted", "usage.recorded"]
    first, failed, second = of_kind(events, "upstream.attempted")[0], only(events, "upstream.failed"), \
        of_kind(events, "upstream.attempted")[1]
    assert (first["provider"], first["attempt"]) == ("fakeai", 1)
    assert (failed["provider"], failed["status"], failed["attempt"]) == ("fakeai", status, 1)
    assert failed["error_class"] == f"http_{status}"
    assert (second["provider"], second["attempt"]) == ("fakecloud", 2)
    usage = only(events, "usage.recorded")
    assert (usage["provider"], usage["usage_source"], usage["outcome"], usage["attempts"]) == (
        "fakecloud", "provider", "ok", 2)
    return usage


def test_a_500_falls_back_to_the_next_provider(client: openai.OpenAI, faulty: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fake-error-500", messages=HI)  # type: ignore[arg-type]
    reply = raw.parse()
    assert raw.http_response.status_code == 200
    assert raw.headers["x-aibroker-provider"] == "fakecloud"
    assert (reply.choices[0].message.content or "").startswith("fake reply from fakecloud/fake-error-500: ")
    assert_fell_back(faulty.settled_events(raw.headers["x-request-id"]), 500)


def test_an_offer_that_just_failed_with_5xx_rests_and_the_next_request_skips_it(
        client: openai.OpenAI, faulty: Broker) -> None:
    for _ in range(2):  # the first call fails over (and benches the offer for 5 s) unless it already rests
        raw = client.chat.completions.with_raw_response.create(model="fake-error-500", messages=HI)  # type: ignore[arg-type]
        raw.parse()
    events = faulty.settled_events(raw.headers["x-request-id"])
    decided = only(events, "route.decided")
    assert (decided["provider"], decided["model"]) == ("fakecloud", "fake-error-500")
    assert [a["provider"] for a in of_kind(events, "upstream.attempted")] == ["fakecloud"]


def test_a_failing_offer_rests_so_later_requests_skip_it(broker_factory: BrokerFactory) -> None:
    outage = broker_factory()  # its own broker: the back-off must start from a clean slate
    body = {"model": "fake-error-500", "messages": HI}
    with httpx.Client(base_url=outage.base_url, timeout=CLIENT_TIMEOUT_S) as raw:
        answers = [raw.post("/chat/completions", json=body) for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.headers["x-aibroker-provider"] for a in answers} == {"fakecloud"}
    failures = outage.sql("SELECT count(*) AS n FROM failures")
    assert failures == [{"n": 1}]  # only the first request met the 500; the offer then rested


def test_a_429_falls_back_and_cools_only_the_key(client: openai.OpenAI, faulty: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fake-429", messages=HI)  # type: ignore[arg-type]
    raw.parse()
    assert raw.headers["x-aibroker-provider"] == "fakecloud"
    events = faulty.settled_events(raw.headers["x-request-id"])
    assert_fell_back(events, 429)
    failed = only(events, "upstream.failed")
    assert failed["key_id"] in ("fakeai#0", "fakeai#1")
    everything = str(faulty.sql("SELECT * FROM events"))
    assert "fake-key-" not in everything  # key ids only, never the key
    time.sleep(KEY_COOLDOWN_S + 0.2)  # let the key recover: later tests need fakeai healthy


def test_a_cut_stream_errors_for_the_client_and_settles_estimated_usage(client: openai.OpenAI,
                                                                        faulty: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fake-cut-stream", messages=HI, stream=True)  # type: ignore[arg-type]
    text = ""
    with pytest.raises(openai.APIError) as info, raw.parse() as stream:
        for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert "broke off" in str(info.value)
    assert text == "fake reply from"  # the three events before the cut were forwarded
    events = faulty.settled_events(raw.headers["x-request-id"])
    usage, received = only(events, "usage.recorded"), only(events, "request.received")
    assert (usage["outcome"], usage["usage_source"], usage["provider"]) == ("upstream_cut", "estimated", "fakeai")
    assert usage["prompt_tokens"] == received["prompt_tokens_est"]
    assert usage["completion_tokens"] == estimated_tokens(len(text))
    assert usage["cost_micros"] is not None and usage["cost_micros"] > 0
    assert not of_kind(events, "upstream.failed")  # bytes had reached the client: no fallback


def test_a_json_answer_cut_halfway_with_no_other_provider_is_a_502(raw: httpx.Client, faulty: Broker) -> None:
    resp = raw.post("/chat/completions", json={"model": "fake-cut-stream", "messages": HI})
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("api_error", "upstream_error")
    assert "every upstream attempt failed" in error["message"] and "fakeai/fake-cut-stream" in error["message"]
    events = faulty.settled_events(resp.headers["x-request-id"])
    usage = only(events, "usage.recorded")
    assert (usage["outcome"], usage["status"], usage["usage_source"], usage["cost_micros"]) == (
        "upstream_error", 502, "missing", 0)
    assert only(events, "upstream.failed")["status"] is None


def test_malformed_sse_passes_through_and_settles_once(raw: httpx.Client, faulty: Broker) -> None:
    body = {"model": "fake-malformed-sse", "messages": HI, "stream": True}
    with raw.stream("POST", "/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line]
    assert "data: {not json" in lines
    assert lines[-1] == "data: [DONE]"
    assert not any('"usage":{' in line for line in lines)  # the client did not ask for it
    usage = only(faulty.settled_events(resp.headers["x-request-id"]), "usage.recorded")
    assert (usage["outcome"], usage["usage_source"]) == ("ok", "provider")


def test_a_json_answer_without_usage_is_estimated(client: openai.OpenAI, faulty: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fake-no-usage", messages=HI)  # type: ignore[arg-type]
    reply = raw.parse()
    assert reply.usage is None
    content = reply.choices[0].message.content or ""
    events = faulty.settled_events(raw.headers["x-request-id"])
    usage, received = only(events, "usage.recorded"), only(events, "request.received")
    assert (usage["outcome"], usage["usage_source"]) == ("ok", "estimated")
    assert usage["prompt_tokens"] == received["prompt_tokens_est"]
    assert usage["completion_tokens"] == estimated_tokens(len(content))


def test_a_stream_without_usage_is_estimated(client: openai.OpenAI, faulty: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fake-no-usage", messages=HI, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
    with raw.parse() as stream:
        chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = only(faulty.settled_events(raw.headers["x-request-id"]), "usage.recorded")
    assert (usage["outcome"], usage["usage_source"]) == ("ok", "estimated")
    assert usage["completion_tokens"] == estimated_tokens(len(text))


def test_a_client_that_leaves_mid_stream_settles_once_as_client_disconnect(faulty: Broker) -> None:
    body = {"model": "fake-slow", "messages": HI, "stream": True}
    with httpx.Client(base_url=faulty.base_url, timeout=CLIENT_TIMEOUT_S) as raw:
        with raw.stream("POST", "/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            first = next(resp.iter_raw())
            request_id = resp.headers["x-request-id"]
    assert first.startswith(b"data: ")
    events = faulty.settled_events(request_id)
    usage = only(events, "usage.recorded")
    assert (usage["outcome"], usage["provider"], usage["model"]) == ("client_disconnect", "fakeai", "fake-slow")
    assert usage["usage_source"] == "estimated"
    # the slow stream would have ended by now: still one settlement, not a second one at the end
    time.sleep(1.2)
    assert len(of_kind(faulty.events(request_id), "usage.recorded")) == 1


def test_a_client_that_leaves_before_the_first_byte_settles_once(faulty: Broker) -> None:
    body = {"model": "fake-slow", "messages": HI, "stream": True}  # the fake waits 1 s before its first byte
    request_id = "e2e-leaves-early"
    with httpx.Client(base_url=faulty.base_url, timeout=0.3) as raw, pytest.raises(httpx.ReadTimeout):
        raw.post("/chat/completions", json=body, headers={"X-Request-Id": request_id})
    events = faulty.settled_events(request_id)
    usage = only(events, "usage.recorded")
    assert (usage["outcome"], usage["usage_source"]) == ("client_disconnect", "estimated")
    assert usage["prompt_tokens"] == only(events, "request.received")["prompt_tokens_est"]


def test_every_usage_event_on_this_broker_is_one_per_request(faulty: Broker) -> None:
    rows = faulty.sql("SELECT request_id, count(*) FILTER (WHERE kind = 'usage.recorded.v1') AS usages "
                      "FROM events WHERE request_id <> '' GROUP BY request_id")
    assert rows and all(r["usages"] == 1 for r in rows), rows


def test_no_unhandled_exception_reached_the_broker_log(faulty: Broker) -> None:
    time.sleep(0.2)  # a log line about the last test may still be on its way
    log = faulty.stderr()
    assert "Traceback" not in log, log
    assert "unhandled error" not in log, log
