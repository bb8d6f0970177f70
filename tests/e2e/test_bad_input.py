"""Bad input always gets a 4xx in OpenAI's error shape with a message that says what is wrong.

One broker with `MAX_BODY_BYTES=2048` serves the whole module. Raw bodies go through httpx (the
`openai` client would refuse to send most of them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.broker import CLIENT_TIMEOUT_S, Broker, of_kind, only
from tests.e2e.conftest import BrokerFactory

MAX_BODY_BYTES = 2048
OK_MESSAGES = [{"role": "user", "content": "hi"}]
CONTEXT_RULE = "[A-Za-z0-9_-]{1,64}"


@pytest.fixture(scope="module")
def small(broker_factory: BrokerFactory) -> Broker:
    return broker_factory(MAX_BODY_BYTES=str(MAX_BODY_BYTES))


@pytest.fixture
def raw(small: Broker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=small.base_url, timeout=CLIENT_TIMEOUT_S) as c:
        yield c


def assert_openai_error(resp: httpx.Response, status: int, code: str, says: str,
                        param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["type"] == ("invalid_request_error" if status < 500 else "api_error")
    assert says in error["message"], error["message"]
    assert error["param"] == param
    return error  # type: ignore[no-any-return]


def chat_body(**fields: Any) -> bytes:
    return json.dumps({"model": "auto", "messages": OK_MESSAGES, **fields}).encode()


INT64_OVER = 2**63
DEEP = 1020  # nesting levels: 2040 bytes, under the body limit, deeper than the decoder can recurse

# (endpoint, body, status, code, param, what the message must say)
CASES: list[Any] = [
    pytest.param("/chat/completions", b"{bad", 400, "invalid_json", None, "not valid JSON", id="invalid-json"),
    pytest.param("/chat/completions", b"", 400, "invalid_json", None, "body is empty", id="empty-body"),
    pytest.param("/chat/completions", b"  \n ", 400, "invalid_json", None, "body is empty", id="blank-body"),
    pytest.param("/chat/completions", b'[{"role": "user"}]', 400, "invalid_json", None,
                 "must be a JSON object, got list", id="json-array"),
    pytest.param("/chat/completions", b'"hello"', 400, "invalid_json", None, "must be a JSON object, got str",
                 id="json-string"),
    pytest.param("/chat/completions", b"null", 400, "invalid_json", None, "must be a JSON object", id="json-null"),
    pytest.param("/chat/completions", json.dumps({"messages": "hi"}).encode(), 400, "invalid_request", "messages",
                 "'messages' must be a non-empty array", id="messages-string"),
    pytest.param("/chat/completions", json.dumps({"messages": []}).encode(), 400, "invalid_request", "messages",
                 "'messages' must be a non-empty array", id="messages-empty"),
    pytest.param("/chat/completions", json.dumps({"model": "auto"}).encode(), 400, "invalid_request", "messages",
                 "'messages' must be a non-empty array", id="messages-missing"),
    pytest.param("/chat/completions", json.dumps({"messages": ["hi"]}).encode(), 400, "invalid_request",
                 "messages[0]", "messages[0] must be an object with a string 'role'", id="message-not-object"),
    pytest.param("/chat/completions", json.dumps({"messages": [{"role": 5, "content": "x"}]}).encode(), 400,
                 "invalid_request", "messages[0]", "string 'role'", id="role-int"),
    pytest.param("/chat/completions", chat_body(model=5), 400, "invalid_request", "model",
                 "'model' must be a non-empty string, got 5", id="model-int"),
    pytest.param("/chat/completions", chat_body(model=""), 400, "invalid_request", "model",
                 "'model' must be a non-empty string", id="model-empty"),
    pytest.param("/chat/completions", chat_body(stream="yes"), 400, "invalid_request", "stream",
                 "'stream' must be a boolean, got a string", id="stream-yes"),
    pytest.param("/chat/completions", chat_body(max_tokens=-1), 400, "invalid_request", "max_tokens",
                 "'max_tokens' must be an integer >= 1, got -1", id="max-tokens-negative"),
    pytest.param("/chat/completions", chat_body(max_tokens="100"), 400, "invalid_request", "max_tokens",
                 "'max_tokens' must be an integer", id="max-tokens-string"),
    pytest.param("/chat/completions", chat_body(max_tokens=True), 400, "invalid_request", "max_tokens",
                 "'max_tokens' must be an integer", id="max-tokens-bool"),
    pytest.param("/chat/completions", chat_body(max_completion_tokens=0), 400, "invalid_request",
                 "max_completion_tokens", "'max_completion_tokens' must be an integer >= 1",
                 id="max-completion-tokens-zero"),
    pytest.param("/chat/completions", chat_body(stream=True, stream_options=5), 400, "invalid_request",
                 "stream_options", "'stream_options' must be an object", id="stream-options-int"),
    pytest.param("/chat/completions", chat_body(model="no-such-model"), 404, "model_not_found", "model",
                 "'no-such-model'", id="unknown-model"),
    pytest.param("/chat/completions", chat_body(model="fakeai/no-such-model"), 404, "model_not_found", "model",
                 "'fakeai/no-such-model'", id="unknown-model-at-provider"),
    pytest.param("/chat/completions", chat_body(model="fake-embed"), 400, "no_route", "model",
                 "serves embedding, not chat", id="embedding-model-for-chat"),
    pytest.param("/chat/completions", chat_body(model="fake-small", max_tokens=100_000), 400, "no_route", "model",
                 "exceeds every context window", id="too-long-for-every-window"),
    pytest.param("/completions", json.dumps({"model": "auto"}).encode(), 400, "invalid_request", "prompt",
                 "'prompt' is required", id="completion-without-prompt"),
    pytest.param("/completions", json.dumps({"prompt": 5}).encode(), 400, "invalid_request", "prompt",
                 "'prompt' must be a non-empty string or array of strings", id="completion-prompt-int"),
    pytest.param("/embeddings", json.dumps({"model": "auto"}).encode(), 400, "invalid_request", "input",
                 "'input' is required", id="embedding-without-input"),
    pytest.param("/embeddings", json.dumps({"input": []}).encode(), 400, "invalid_request", "input",
                 "'input' must be a non-empty string or array", id="embedding-input-empty"),
    pytest.param("/embeddings", json.dumps({"model": "fake-small", "input": "x"}).encode(), 400, "no_route",
                 "model", "serves chat, not embedding", id="chat-model-for-embeddings"),
    pytest.param("/chat/completions", b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
                 400, "invalid_json", None, "JSON", id="invalid-utf8"),
    pytest.param("/chat/completions", b"[" * DEEP + b"]" * DEEP, 400, "invalid_json", None, "JSON",
                 id="deeply-nested-json"),
    pytest.param("/chat/completions", chat_body(model="fake-small", max_tokens=INT64_OVER), 400, "invalid_request",
                 "max_tokens", "'max_tokens'", id="max-tokens-over-int64"),
]


@pytest.mark.parametrize(("endpoint", "body", "status", "code", "param", "says"), CASES)
def test_bad_body_is_a_4xx_in_openai_shape(raw: httpx.Client, endpoint: str, body: bytes, status: int, code: str,
                                           param: str | None, says: str) -> None:
    resp = raw.post(endpoint, content=body, headers={"content-type": "application/json"})
    assert resp.status_code != 500, resp.text
    assert_openai_error(resp, status, code, says, param)


def test_a_body_over_the_limit_is_a_413_naming_the_limit(raw: httpx.Client) -> None:
    body = chat_body(padding="x" * MAX_BODY_BYTES)
    resp = raw.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(resp, 413, "body_too_large", f"exceeds the limit of {MAX_BODY_BYTES} bytes")
    assert str(len(body)) in error["message"]


def test_a_chunked_body_over_the_limit_is_a_413_too(raw: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "auto", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 512
        yield b'"}]}'

    resp = raw.post("/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert_openai_error(resp, 413, "body_too_large", f"exceeds the limit of {MAX_BODY_BYTES} bytes")


def test_a_body_of_exactly_the_limit_is_served(raw: httpx.Client) -> None:
    skeleton = chat_body(model="fake-small", padding="")
    body = chat_body(model="fake-small", padding="p" * (MAX_BODY_BYTES - len(skeleton)))
    assert len(body) == MAX_BODY_BYTES
    resp = raw.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("context", [
    pytest.param(b"team one", id="space"),
    pytest.param("équipe".encode(), id="utf8-bytes"),
    pytest.param(b"a" * 10_000, id="10kB"),
    pytest.param(b"", id="empty"),
    pytest.param(b"a" * 65, id="65-chars"),
    pytest.param(b"ctx.1", id="dot"),
    pytest.param(b"../etc", id="path"),
])
def test_a_bad_hero_context_is_a_400_naming_the_header_and_the_rule(raw: httpx.Client, context: bytes) -> None:
    resp = raw.post("/chat/completions", content=chat_body(), headers={
        "content-type": "application/json", "X-Hero-Context": context})  # type: ignore[dict-item]
    error = assert_openai_error(resp, 400, "invalid_context", "X-Hero-Context", "X-Hero-Context")
    assert CONTEXT_RULE in error["message"]
    assert len(error["message"]) < 300  # a 10 kB header is not echoed back whole


def test_a_valid_hero_context_of_64_characters_is_accepted(raw: httpx.Client) -> None:
    resp = raw.post("/chat/completions", content=chat_body(), headers={
        "content-type": "application/json", "X-Hero-Context": "A-z_9" * 12 + "abcd"})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(("method", "path"), [("GET", "/chat/completions"), ("PUT", "/embeddings"),
                                              ("DELETE", "/completions")])
def test_a_wrong_method_is_a_405_in_openai_shape(raw: httpx.Client, method: str, path: str) -> None:
    resp = raw.request(method, path)
    assert_openai_error(resp, 405, "method_not_allowed", f"accepts POST only, got {method}")


def test_an_unknown_path_is_a_404_in_openai_shape(raw: httpx.Client) -> None:
    resp = raw.post("/no/such/endpoint", content=chat_body())
    assert resp.status_code == 404
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_a_refused_body_is_logged_as_rejected_with_its_status(raw: httpx.Client, small: Broker) -> None:
    resp = raw.post("/chat/completions", content=chat_body(stream="yes"))
    assert resp.status_code == 400
    events = small.events(resp.headers["x-request-id"])
    assert [e["kind"] for e in events] == ["request.rejected.v1"]
    rejected = events[0]
    assert (rejected["code"], rejected["status"]) == ("invalid_request", 400)
    assert "'stream' must be a boolean" in rejected["message"]


def test_an_unknown_model_is_logged_as_routed_nowhere_and_rejected(raw: httpx.Client, small: Broker) -> None:
    resp = raw.post("/chat/completions", content=chat_body(model="no-such-model"))
    assert resp.status_code == 404
    events = small.events(resp.headers["x-request-id"])
    assert [e["kind"].removesuffix(".v1") for e in events] == ["request.received", "route.decided",
                                                               "request.rejected"]
    assert only(events, "route.decided")["provider"] == ""
    assert only(events, "request.rejected")["status"] == 404
    assert not of_kind(events, "usage.recorded") and not of_kind(events, "request.admitted")
