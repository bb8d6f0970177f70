"""The broker as the official `openai` client sees it: every endpoint, streams, models and routing.

Routing choices are checked three ways: the `x-aibroker-*` response headers, the `route.decided`
event, and an oracle computed here from the fake's own price list (`FAKE_PROVIDERS`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from functions.fake_upstream import FAKE_PROVIDERS, FakeModel
from tests.e2e.broker import Broker, make_client, of_kind, only

HELLO = [{"role": "user", "content": "hello there"}]
EXPECTED_OUTPUT_TOKENS = 256  # the broker's default estimate of a reply when max_tokens is absent
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "weather", "description": "the weather in a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def cheapest(kind: str, prompt_tokens: int, *, max_tokens: int | None = None, needs: tuple[str, ...] = (),
             model: str | None = None) -> tuple[str, str]:
    """The oracle: the offer with the lowest estimated cost, ties broken by (provider, model)."""
    output = 0 if kind == "embedding" else (max_tokens or EXPECTED_OUTPUT_TOKENS)

    def fits(m: FakeModel) -> bool:
        return (m.kind == kind and (model is None or m.id == model) and all(getattr(m, n) for n in needs)
                and m.context_window >= prompt_tokens + (max_tokens or 0))

    def cost(pm: tuple[str, FakeModel]) -> tuple[Decimal, str, str]:
        p, m = pm
        return (Decimal(m.input_usd_per_mtok) * prompt_tokens + Decimal(m.output_usd_per_mtok) * output, p, m.id)

    offers = [(p.name, m) for p in FAKE_PROVIDERS for m in p.models if fits(m)]
    provider, best = min(offers, key=cost)
    return provider, best.id


def served_by(headers: Any) -> tuple[str, str]:
    return headers["x-aibroker-provider"], headers["x-aibroker-model"]


def route_of(broker: Broker, request_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request.received, route.decided) of a request."""
    events = broker.settled_events(request_id)
    return only(events, "request.received"), only(events, "route.decided")


# ---- chat ----------------------------------------------------------------------------------------


def test_auto_chat_answers_json_from_the_cheapest_model(client: openai.OpenAI, broker: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO)  # type: ignore[arg-type]
    reply = raw.parse()
    assert served_by(raw.headers) == ("fakeai", "fake-small")
    assert (reply.choices[0].message.content or "").startswith("fake reply from fakeai/fake-small: ")
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (6, 16)
    received, decided = route_of(broker, raw.headers["x-request-id"])
    assert (decided["provider"], decided["model"]) == cheapest("chat", received["prompt_tokens_est"])
    assert decided["strategy"] == "cheapest"
    eligible = [c for c in decided["candidates"] if c["eligible"]]
    assert (eligible[0]["provider"], eligible[0]["model"]) == ("fakeai", "fake-small")
    assert eligible[0]["est_cost_micros"] == min(c["est_cost_micros"] for c in eligible)
    assert received["model_requested"] == "auto" and received["stream"] is False


def test_chat_stream_without_include_usage_sends_no_usage_chunk(client: openai.OpenAI, broker: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO, stream=True)  # type: ignore[arg-type]
    with raw.parse() as stream:
        chunks = list(stream)
    assert served_by(raw.headers) == ("fakeai", "fake-small")
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert chunks and all(chunk.usage is None for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("fake reply from fakeai/fake-small: ") and len(text.split()) == 16
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the broker asked upstream for usage itself, so the bill is still exact
    usage = only(broker.settled_events(raw.headers["x-request-id"]), "usage.recorded")
    assert (usage["usage_source"], usage["prompt_tokens"], usage["completion_tokens"]) == ("provider", 6, 16)


def test_chat_stream_with_include_usage_ends_with_one_usage_chunk(client: openai.OpenAI, broker: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
    with raw.parse() as stream:
        chunks = list(stream)
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
    assert chunks[-1].usage is not None
    usage = only(broker.settled_events(raw.headers["x-request-id"]), "usage.recorded")
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        usage["prompt_tokens"], usage["completion_tokens"]) == (6, 16)
    assert usage["outcome"] == "ok" and usage["ttft_us"] is not None


# ---- completions and embeddings ------------------------------------------------------------------


@pytest.mark.parametrize("model", ["auto", "fake-instruct"])
def test_completions_go_to_the_cheapest_completion_model(client: openai.OpenAI, model: str) -> None:
    raw = client.completions.with_raw_response.create(model=model, prompt="Say hello", max_tokens=8)
    reply = raw.parse()
    assert served_by(raw.headers) == ("fakeai", "fake-instruct")
    assert reply.choices[0].text.split()[:4] == ["fake", "reply", "from", "fakeai/fake-instruct:"]
    assert reply.usage is not None and reply.usage.completion_tokens == 8


def test_completions_stream(client: openai.OpenAI, broker: Broker) -> None:
    raw = client.completions.with_raw_response.create(model="auto", prompt="Say hello", stream=True)
    with raw.parse() as stream:
        text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text.startswith("fake reply from fakeai/fake-instruct:")
    usage = only(broker.settled_events(raw.headers["x-request-id"]), "usage.recorded")
    assert (usage["usage_source"], usage["outcome"], usage["endpoint"]) == ("provider", "ok", "/v1/completions")


@pytest.mark.parametrize("model", ["fake-embed", "auto"])
def test_embeddings_go_to_the_cheapest_embedding_model(client: openai.OpenAI, broker: Broker, model: str) -> None:
    raw = client.embeddings.with_raw_response.create(model=model, input=["one text", "another text"])
    reply = raw.parse()
    assert served_by(raw.headers) == ("fakeai", "fake-embed")
    assert [d.index for d in reply.data] == [0, 1]
    assert all(len(d.embedding) > 0 and all(isinstance(x, float) for x in d.embedding) for d in reply.data)
    usage = only(broker.settled_events(raw.headers["x-request-id"]), "usage.recorded")
    assert usage["completion_tokens"] == 0 and usage["prompt_tokens"] == reply.usage.prompt_tokens > 0


# ---- models --------------------------------------------------------------------------------------


def test_models_list_has_auto_every_name_and_every_offer(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    offers = {f"{p.name}/{m.id}" for p in FAKE_PROVIDERS for m in p.models}
    names = {m.id for p in FAKE_PROVIDERS for m in p.models}
    assert ids[0] == "auto"
    assert {"auto", "fakeai/fake-small", "fakecloud/fake-large"} <= set(ids)
    assert set(ids) == {"auto"} | offers | names
    assert len(ids) == len(set(ids))


def test_models_retrieve_an_offer_a_name_and_auto(client: openai.OpenAI) -> None:
    offer = client.models.retrieve("fakeai/fake-small")
    assert (offer.id, offer.owned_by) == ("fakeai/fake-small", "fakeai")
    extra = offer.model_extra or {}
    assert extra["pricing"] == {"input_usd_per_mtok": "0.1", "output_usd_per_mtok": "0.4",
                                "cached_input_usd_per_mtok": None}
    assert extra["context_window"] == 8192
    assert client.models.retrieve("fake-large").id == "fake-large"
    assert client.models.retrieve("auto").id == "auto"


def test_models_retrieve_of_an_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert "no-such-model" in str(info.value)


# ---- routing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fake-small", "fake-medium", "fake-large"])
def test_a_model_served_by_both_providers_goes_to_the_cheaper(client: openai.OpenAI, broker: Broker,
                                                             model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO)  # type: ignore[arg-type]
    assert served_by(raw.headers) == ("fakeai", model)
    received, decided = route_of(broker, raw.headers["x-request-id"])
    assert (decided["provider"], decided["model"]) == cheapest("chat", received["prompt_tokens_est"], model=model)
    assert decided["fallbacks"] == [f"fakecloud/{model}"]


def test_provider_slash_model_pins_the_provider(client: openai.OpenAI, broker: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(model="fakecloud/fake-large", messages=HELLO)  # type: ignore[arg-type]
    reply = raw.parse()
    assert served_by(raw.headers) == ("fakecloud", "fake-large")
    assert (reply.choices[0].message.content or "").startswith("fake reply from fakecloud/fake-large: ")
    events = broker.settled_events(raw.headers["x-request-id"])
    decided, usage = only(events, "route.decided"), only(events, "usage.recorded")
    assert (decided["provider"], decided["model"], decided["fallbacks"]) == ("fakecloud", "fake-large", [])
    assert (usage["provider"], usage["model"]) == ("fakecloud", "fake-large")


def test_a_request_with_tools_gets_the_cheapest_offer_with_tools(client: openai.OpenAI, broker: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, tools=[WEATHER_TOOL])  # type: ignore[arg-type, list-item]
    raw.parse()
    received, decided = route_of(broker, raw.headers["x-request-id"])
    assert served_by(raw.headers) == cheapest("chat", received["prompt_tokens_est"], needs=("tools",))
    assert served_by(raw.headers) == ("fakeai", "fake-medium")
    small = [c for c in decided["candidates"] if c["model"] == "fake-small"]
    assert small and not any(c["eligible"] for c in small)
    assert all("lacks tools" in c["reason"] for c in small)


def test_tools_and_an_image_leave_only_fakecloud_large(client: openai.OpenAI, broker: Broker) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=messages, tools=[WEATHER_TOOL])  # type: ignore[arg-type, list-item]
    raw.parse()
    received, _ = route_of(broker, raw.headers["x-request-id"])
    assert served_by(raw.headers) == cheapest("chat", received["prompt_tokens_est"], needs=("tools", "vision"))
    assert served_by(raw.headers) == ("fakecloud", "fake-large")


# ---- identity ------------------------------------------------------------------------------------


def test_hero_context_and_user_land_on_every_event_of_the_request(broker: Broker) -> None:
    headers = {"X-Hero-Context": "ctx-e2e_7", "X-Hero-User": "alice"}
    with make_client(broker, default_headers=headers) as client:
        json_raw = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO)  # type: ignore[arg-type]
        stream_raw = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO, stream=True)  # type: ignore[arg-type]
        with stream_raw.parse() as stream:
            list(stream)
    for raw in (json_raw, stream_raw):
        events = broker.settled_events(raw.headers["x-request-id"])
        kinds = {e["kind"] for e in events}
        assert {"request.received.v1", "route.decided.v1", "request.admitted.v1", "upstream.attempted.v1",
                "usage.recorded.v1"} <= kinds
        assert {(e["context"], e["user"]) for e in events} == {("ctx-e2e_7", "alice")}


def test_without_hero_context_the_default_context_is_used(client: openai.OpenAI, broker: Broker) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO)  # type: ignore[arg-type]
    events = broker.settled_events(raw.headers["x-request-id"])
    assert {e["context"] for e in events} == {"0"}
    assert {e["ip"] for e in events} == {"127.0.0.1"}
    assert of_kind(events, "usage.recorded")
