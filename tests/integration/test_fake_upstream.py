"""The fake upstream, served for real, as the official `openai` client and raw HTTP see it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from functions.fake_upstream import FAKE_PROVIDERS

HELLO = [{"role": "user", "content": "hello there"}]  # 11 chars // 4 + 4 per message = 6 prompt tokens
TIMEOUT_S = 10.0


@pytest.fixture
def client(fake_upstream: Any) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_upstream.base_url("fakeai"), api_key="k", max_retries=0, timeout=TIMEOUT_S) as c:
        yield c


@pytest.fixture
def cloud(fake_upstream: Any) -> Iterator[openai.OpenAI]:
    base_url = fake_upstream.base_url("fakecloud")
    with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=TIMEOUT_S) as c:
        yield c


@pytest.fixture
def raw(fake_upstream: Any) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer k"}
    with httpx.Client(base_url=fake_upstream.base_url("fakeai"), headers=headers, timeout=TIMEOUT_S) as c:
        yield c


def sse_lines(raw: httpx.Client, body: dict[str, Any]) -> list[str]:
    with raw.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line]


def test_models_list_has_openai_shape_prices_and_windows(client: openai.OpenAI, raw: httpx.Client) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"fake-small", "fake-medium", "fake-large", "fake-embed", "fake-instruct", "fake-429"} <= ids
    entry = next(m for m in raw.get("/models").json()["data"] if m["id"] == "fake-small")
    assert entry["object"] == "model" and entry["owned_by"] == "fakeai"
    assert entry["pricing"] == {"prompt": "0.0000001", "completion": "0.0000004"}
    assert entry["context_length"] == 8192


def test_shared_model_is_cheaper_on_fakeai_than_on_fakecloud() -> None:
    prices = {p.name: {m.id: m for m in p.models}["fake-medium"].input_usd_per_mtok for p in FAKE_PROVIDERS}
    assert float(prices["fakeai"]) < float(prices["fakecloud"])


def test_chat_json_carries_the_reply_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="fake-small", messages=HELLO)
    content = reply.choices[0].message.content or ""
    assert content.startswith("fake reply from fakeai/fake-small: ")
    assert len(content.split()) == 16
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (6, 16, 22)


def test_max_tokens_caps_the_words_and_reports_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="fake-small", messages=HELLO, max_tokens=5)
    words = (reply.choices[0].message.content or "").split()
    assert words[:4] == ["fake", "reply", "from", "fakeai/fake-small:"] and len(words) == 5
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"


def test_replies_are_deterministic_per_input(client: openai.OpenAI) -> None:
    def ask(text: str) -> str | None:
        messages = [{"role": "user", "content": text}]
        return client.chat.completions.create(model="fake-medium", messages=messages).choices[0].message.content

    assert ask("same question") == ask("same question")
    assert ask("same question") != ask("other question")


def test_chat_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="fake-small", messages=HELLO).choices[0].message.content
    with client.chat.completions.create(model="fake-small", messages=HELLO, stream=True) as stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len(chunks) == 16 + 1


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(client: openai.OpenAI) -> None:
    with client.chat.completions.create(
        model="fake-small", messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (6, 16, 22)
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_raw_stream_ends_with_done(raw: httpx.Client) -> None:
    lines = sse_lines(raw, {"model": "fake-small", "messages": HELLO, "stream": True})
    assert lines[-1] == "data: [DONE]"
    assert all(json.loads(line.removeprefix("data: ")) for line in lines[:-1])


def test_completions_json_and_stream_agree(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="fake-instruct", prompt="Say hi", max_tokens=8)
    assert reply.choices[0].text.startswith("fake reply from fakeai/fake-instruct: ")
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    with client.completions.create(
        model="fake-instruct", prompt="Say hi", max_tokens=8, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == reply.usage.total_tokens


def test_embeddings_are_deterministic_vectors_in_both_encodings(client: openai.OpenAI) -> None:
    first = client.embeddings.create(model="fake-embed", input=["alpha", "beta"])  # the client asks for base64
    again = client.embeddings.create(model="fake-embed", input="alpha", encoding_format="float")
    assert [len(item.embedding) for item in first.data] == [8, 8]
    assert first.data[0].embedding == again.data[0].embedding
    assert first.data[0].embedding != first.data[1].embedding
    assert first.usage.prompt_tokens == first.usage.total_tokens == 2


def test_error_500_model_fails_on_fakeai(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="fake-error-500", messages=HELLO)
    assert caught.value.status_code == 500
    assert "fault error-500" in caught.value.message


def test_429_model_is_rate_limited_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="fake-429", messages=HELLO, stream=True)
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body == {
        "message": "Rate limit reached for requests (fault 429). Please try again in 1s.",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }


@pytest.mark.parametrize("model", ["fake-error-500", "fake-429"])
def test_fault_models_are_healthy_on_fakecloud(cloud: openai.OpenAI, model: str) -> None:
    reply = cloud.chat.completions.create(model=model, messages=HELLO)
    assert (reply.choices[0].message.content or "").startswith(f"fake reply from fakecloud/{model}: ")


def test_cut_stream_breaks_the_stream_midway(client: openai.OpenAI) -> None:
    words: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        with client.chat.completions.create(model="fake-cut-stream", messages=HELLO, stream=True) as stream:
            words.extend(chunk.choices[0].delta.content or "" for chunk in stream)
    assert 0 < len(words) < 16


def test_cut_stream_breaks_a_json_body_too(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="fake-cut-stream", messages=HELLO)


def test_no_usage_model_never_reports_usage(client: openai.OpenAI) -> None:
    assert client.chat.completions.create(model="fake-no-usage", messages=HELLO).usage is None
    with client.chat.completions.create(
        model="fake-no-usage", messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)


def test_malformed_sse_model_sends_one_bad_line_then_finishes(raw: httpx.Client) -> None:
    body = {"model": "fake-malformed-sse", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    lines = sse_lines(raw, body)
    bad = [line for line in lines[:-1] if not line.startswith("data: {\"")]
    assert bad == ["data: {not json"]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["usage"]["completion_tokens"] == 16


def test_slow_model_and_delay_header_hold_the_first_byte(client: openai.OpenAI) -> None:
    started = time.monotonic()
    client.chat.completions.create(model="fake-slow", messages=HELLO)
    assert time.monotonic() - started >= 0.9
    started = time.monotonic()
    client.chat.completions.create(model="fake-small", messages=HELLO, extra_headers={"X-Fake-Delay-Ms": "300"})
    assert time.monotonic() - started >= 0.3


def test_missing_or_empty_bearer_is_401(fake_upstream: Any) -> None:
    with httpx.Client(base_url=fake_upstream.base_url("fakeai"), timeout=TIMEOUT_S) as bare:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
            response = bare.post("/chat/completions", json={"model": "fake-small", "messages": HELLO}, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_404_in_openai_shape(client: openai.OpenAI, raw: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    response = raw.post("/chat/completions", json={"model": "no-such-model", "messages": HELLO})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model `no-such-model` does not exist on fake provider `fakeai`.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_bad_json_and_bad_fields_are_400_naming_the_problem(raw: httpx.Client) -> None:
    broken = raw.post("/chat/completions", content=b"{nope", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    wrong = raw.post("/chat/completions", json={"model": "fake-small", "messages": "hi"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["message"] == "Invalid request body: Expected `array`, got `str` - at `$.messages`"
    assert wrong.json()["error"]["param"] == "messages"


def test_capabilities_are_enforced_per_provider(client: openai.OpenAI, cloud: openai.OpenAI) -> None:
    image = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    messages: Any = [{"role": "user", "content": image}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fake-large", messages=messages)
    assert "`fake-large` on fake provider `fakeai` does not support image input" in caught.value.message
    assert cloud.chat.completions.create(model="fake-large", messages=messages).choices[0].message.content


def test_context_window_overflow_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fake-small", messages=HELLO, max_tokens=9000)
    assert caught.value.code == "context_length_exceeded"
