"""Every served request leaves one complete, ordered trail in the log, and its bill is exact.

The cost is recomputed here from the fake's own price list with `Decimal` (USD per 1M tokens, so
`tokens × price` is micro-USD), rounded half up once, and must match the event to the micro-dollar.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import openai
import pytest

from functions.fake_upstream import FAKE_PROVIDERS
from tests.e2e.broker import REPO_ROOT, Broker, make_client, only

PRICES = {(p.name, m.id): (Decimal(m.input_usd_per_mtok), Decimal(m.output_usd_per_mtok))
          for p in FAKE_PROVIDERS for m in p.models}
# 28 characters: 28 // 4 + 4 = 11 prompt tokens at the fake, so fake-small costs 11 × 0.10 + 16 × 0.40
# = 7.5 micro-USD, which only rounding half up makes 8 (banker's rounding would say 7).
HALF_MICRO_PROMPT = "x" * 28


def expected_cost_micros(provider: str, model: str, prompt_tokens: int, completion_tokens: int) -> int:
    usd_in, usd_out = PRICES[(provider, model)]
    exact = prompt_tokens * usd_in + completion_tokens * usd_out  # micro-USD
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def chat(model: str, content: str = "hello there", **kw: Any) -> Callable[[openai.OpenAI], str]:
    def call(client: openai.OpenAI) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}], **kw)
        if kw.get("stream"):
            with raw.parse() as stream:
                list(stream)
        else:
            raw.parse()
        return raw.headers["x-request-id"]

    return call


def completion(client: openai.OpenAI) -> str:
    raw = client.completions.with_raw_response.create(model="auto", prompt="Count to three", max_tokens=7)
    raw.parse()
    return raw.headers["x-request-id"]


def embedding(client: openai.OpenAI) -> str:
    raw = client.embeddings.with_raw_response.create(model="auto", input="a sentence to embed, please")
    raw.parse()
    return raw.headers["x-request-id"]


CALLS: dict[str, Callable[[openai.OpenAI], str]] = {
    "chat-auto": chat("auto"),
    "chat-half-micro": chat("fake-small", HALF_MICRO_PROMPT),
    "chat-named-max-tokens": chat("fake-medium", "write a haiku about logs", max_tokens=5),
    "chat-pinned-pricier": chat("fakecloud/fake-large", "a longer question " * 20),
    "chat-cloud-small": chat("fakecloud/fake-small", "odd" * 13),
    "chat-stream": chat("auto", "stream it", stream=True),
    "chat-stream-usage": chat("fake-medium", "stream it", stream=True, stream_options={"include_usage": True}),
    "completion": completion,
    "embedding": embedding,
}


@pytest.fixture(scope="module")
def trails(broker: Broker) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """Each call's events once settled, keyed by the call's name."""
    with make_client(broker, default_headers={"X-Hero-Context": "billing-test"}) as client:
        ids = {name: call(client) for name, call in CALLS.items()}
    yield {name: broker.settled_events(rid) for name, rid in ids.items()}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_request_leaves_exactly_one_of_each_event_in_order(trails: dict[str, list[dict[str, Any]]],
                                                              name: str) -> None:
    events = trails[name]
    counts = Counter(e["kind"].removesuffix(".v1") for e in events)
    assert counts["request.received"] == 1
    assert counts["route.decided"] == 1
    assert counts["request.admitted"] == 1
    assert counts["upstream.attempted"] >= 1
    assert counts["usage.recorded"] == 1
    assert counts["request.rejected"] == 0
    order = [e["kind"].removesuffix(".v1") for e in events]
    assert order[:3] == ["request.received", "route.decided", "request.admitted"]
    assert order[-1] == "usage.recorded"
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["context"] for e in events} == {"billing-test"}


@pytest.mark.parametrize("name", list(CALLS))
def test_usage_cost_matches_the_fake_price_list_to_the_micro_dollar(trails: dict[str, list[dict[str, Any]]],
                                                                     name: str) -> None:
    events = trails[name]
    usage, decided = only(events, "usage.recorded"), only(events, "route.decided")
    assert usage["usage_source"] == "provider" and usage["outcome"] == "ok" and usage["status"] == 200
    assert (usage["provider"], usage["model"]) == (decided["provider"], decided["model"])
    usd_in, usd_out = PRICES[(usage["provider"], usage["model"])]
    assert usage["input_micros_per_mtok"] == usd_in * 1_000_000
    assert usage["output_micros_per_mtok"] == usd_out * 1_000_000
    assert usage["price_version"] == decided["price_version"] != ""
    assert usage["cost_micros"] == expected_cost_micros(
        usage["provider"], usage["model"], usage["prompt_tokens"], usage["completion_tokens"])


def test_half_a_micro_dollar_rounds_up(trails: dict[str, list[dict[str, Any]]]) -> None:
    usage = only(trails["chat-half-micro"], "usage.recorded")
    assert (usage["provider"], usage["model"], usage["prompt_tokens"], usage["completion_tokens"]) == (
        "fakeai", "fake-small", 11, 16)
    assert usage["cost_micros"] == 8  # 7.5 micro-USD, half up


def test_the_reservation_names_the_chosen_offer_and_covers_the_prompt(
        trails: dict[str, list[dict[str, Any]]]) -> None:
    for name, events in trails.items():
        admitted, received = only(events, "request.admitted"), only(events, "request.received")
        decided = only(events, "route.decided")
        assert (admitted["provider"], admitted["model"]) == (decided["provider"], decided["model"]), name
        assert admitted["reserved_tokens"] >= received["prompt_tokens_est"], name


def test_sql_spend_rollup_equals_the_sum_of_the_usage_events(broker: Broker,
                                                             trails: dict[str, list[dict[str, Any]]]) -> None:
    rows = broker.sql("SELECT sum(cost_micros) AS micros, sum(requests) AS n FROM spend_daily "
                      "WHERE context = 'billing-test'")
    usages = [only(events, "usage.recorded") for events in trails.values()]
    assert rows == [{"micros": sum(u["cost_micros"] for u in usages), "n": len(usages)}]


def test_concurrent_requests_each_settle_exactly_once(broker: Broker) -> None:
    def call(i: int) -> str:
        with make_client(broker, default_headers={"X-Hero-Context": "concurrent"}) as client:
            return chat("auto", f"question number {i}", stream=i % 2 == 0)(client)

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(call, range(48)))
    assert len(set(ids)) == len(ids)
    for rid in ids:
        events = broker.settled_events(rid)
        assert [e["kind"] for e in events].count("usage.recorded.v1") == 1, rid
    rows = broker.sql("SELECT count(*) AS n FROM usage WHERE context = 'concurrent'")
    assert rows == [{"n": len(ids)}]


def test_the_sql_cli_reads_the_same_usage_as_the_test(broker: Broker,
                                                      trails: dict[str, list[dict[str, Any]]]) -> None:
    rid = only(trails["chat-half-micro"], "usage.recorded")["request_id"]
    command = [sys.executable, "-m", "deploy.cli", "sql", "--data-dir", str(broker.data_dir), "--format", "json",
               f"SELECT provider, model, prompt_tokens, completion_tokens, cost_micros FROM usage "
               f"WHERE request_id = '{rid}'"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows == [{"provider": "fakeai", "model": "fake-small", "prompt_tokens": 11, "completion_tokens": 16,
                     "cost_micros": 8}]
