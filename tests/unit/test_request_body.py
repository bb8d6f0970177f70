"""The few request fields the broker reads, the rules they must follow, and the body sent upstream."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from functions.errors import BrokerError
from functions.request_body import (
    ParsedRequest, decode_object, parse_chat, parse_completion, parse_embedding, upstream_body,
)

USER = {"role": "user", "content": "hello there"}  # 11 characters


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def chat(**fields: Any) -> ParsedRequest:
    return parse_chat(body(**{"messages": [USER], **fields}))


def refusal(parse: Any, raw: bytes) -> BrokerError:
    with pytest.raises(BrokerError) as info:
        parse(raw)
    assert info.value.status == 400
    return info.value


# ---- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "says"), [
    (b"", "the request body is empty; send a JSON object"),
    (b" \n\t", "the request body is empty"),
    (b"{nope", "the request body is not valid JSON"),
    (b'{"a": 1', "the request body is not valid JSON"),
    (b"[1, 2]", "the request body must be a JSON object, got list"),
    (b"42", "the request body must be a JSON object, got int"),
    (b"null", "the request body must be a JSON object, got NoneType"),
])
def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes, says: str) -> None:
    error = refusal(decode_object, raw)
    assert error.code == "invalid_json" and says in error.message


def test_decode_keeps_every_field_as_the_clients_bytes() -> None:
    fields = decode_object(b'{"a": {"b": [1, 2.5e0, null]}, "c": "d\\u00e9"}')
    assert {k: bytes(v) for k, v in fields.items()} == {"a": b'{"b": [1, 2.5e0, null]}', "c": b'"d\\u00e9"'}


@pytest.mark.parametrize("raw", [b'{"x": [1, 2}', b'{"x": "\xff"}', b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
def test_a_field_the_broker_does_not_read_must_still_be_valid_json(raw: bytes) -> None:
    assert refusal(decode_object, raw).code == "invalid_json"


def test_invalid_utf8_is_an_invalid_json_refusal() -> None:
    error = refusal(decode_object, b'{"messages": "\xff\xfe"}')
    assert error.code == "invalid_json"


def test_deeply_nested_json_is_an_invalid_json_refusal() -> None:
    error = refusal(decode_object, b"[" * 5000 + b"]" * 5000)
    assert error.code == "invalid_json"


# ---- chat ----------------------------------------------------------------------------------------


def test_a_minimal_chat_routes_auto_without_needs() -> None:
    parsed = chat()
    assert parsed.route.model is None and parsed.route.auto
    assert parsed.route.kind == "chat"
    assert parsed.route.needs == frozenset()
    assert (parsed.stream, parsed.wants_usage, parsed.messages, parsed.prompt_chars) == (False, False, 1, 11)
    assert parsed.route.prompt_tokens_est == 3 + 4  # ceil(11 / 4) + 4 per message
    assert parsed.route.max_tokens is None


@pytest.mark.parametrize("model", ["auto", "fake-small", "fakecloud/fake-large"])
def test_the_model_is_taken_as_given(model: str) -> None:
    assert chat(model=model).route.model == model


@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"model": 5}, "model", "'model' must be a non-empty string, got 5"),
    ({"model": ""}, "model", "'model' must be a non-empty string, got an empty string"),
    ({"model": ["a"]}, "model", "'model' must be a non-empty string"),
    ({"stream": "yes"}, "stream", "'stream' must be a boolean, got a string of 3 characters"),
    ({"stream": 1}, "stream", "'stream' must be a boolean, got 1"),
    ({"max_tokens": -1}, "max_tokens", "'max_tokens' must be an integer >= 1, got -1"),
    ({"max_tokens": 0}, "max_tokens", "'max_tokens' must be an integer >= 1, got 0"),
    ({"max_tokens": 1.5}, "max_tokens", "'max_tokens' must be an integer >= 1, got 1.5"),
    ({"max_tokens": True}, "max_tokens", "'max_tokens' must be an integer >= 1, got True"),
    ({"max_completion_tokens": "9"}, "max_completion_tokens", "'max_completion_tokens' must be an integer >= 1"),
    ({"stream": True, "stream_options": []}, "stream_options", "'stream_options' must be an object"),
])
def test_a_wrong_field_is_refused_naming_the_param(fields: dict[str, Any], param: str, says: str) -> None:
    error = refusal(parse_chat, body(messages=[USER], **fields))
    assert (error.code, error.param) == ("invalid_request", param)
    assert says in error.message


@pytest.mark.parametrize(("messages", "param"), [
    ("hello", "messages"), ([], "messages"), (None, "messages"), ({"role": "user"}, "messages"),
    (["hello"], "messages[0]"), ([USER, {"content": "no role"}], "messages[1]"), ([{"role": 1}], "messages[0]"),
])
def test_messages_must_be_a_non_empty_array_of_objects_with_a_role(messages: Any, param: str) -> None:
    error = refusal(parse_chat, body(messages=messages))
    assert error.param == param
    assert ("non-empty array" in error.message) if param == "messages" else (
        f"{param} must be an object with a string 'role'" in error.message)


def test_a_missing_messages_field_is_refused() -> None:
    assert refusal(parse_chat, body(model="auto")).param == "messages"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=50, max_completion_tokens=20).route.max_tokens == 20
    assert chat(max_tokens=50).route.max_tokens == 50
    assert chat(max_tokens=None).route.max_tokens is None


def test_an_absurd_max_tokens_is_refused() -> None:
    error = refusal(parse_chat, body(messages=[USER], max_tokens=2**63))
    assert error.param == "max_tokens"


def test_stream_null_means_not_streaming() -> None:
    assert chat(stream=None).stream is False


def test_streaming_needs_and_include_usage() -> None:
    plain = chat(stream=True)
    assert plain.stream and plain.route.needs == frozenset({"streaming"}) and not plain.wants_usage
    asked = chat(stream=True, stream_options={"include_usage": True})
    assert asked.wants_usage
    assert not chat(stream=True, stream_options={"include_usage": "yes"}).wants_usage
    assert not chat(stream=False, stream_options={"include_usage": True}).wants_usage


@pytest.mark.parametrize(("fields", "needs"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, {"tools"}),
    ({"functions": [{"name": "f"}]}, {"tools"}),
    ({"tools": []}, set()),
    ({"response_format": {"type": "json_object"}}, {"json_mode"}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, {"json_mode"}),
    ({"response_format": {"type": "text"}}, set()),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     {"vision"}),
    ({"messages": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}, {"vision"}),
    ({"stream": True, "tools": [{"type": "function"}], "response_format": {"type": "json_object"}},
     {"streaming", "tools", "json_mode"}),
])
def test_capabilities_a_chat_needs(fields: dict[str, Any], needs: set[str]) -> None:
    assert chat(**fields).route.needs == frozenset(needs)


def test_prompt_size_counts_text_parts_of_every_message() -> None:
    messages = [
        {"role": "system", "content": "be brief"},  # 8
        {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": 5}, "stray"]},  # 4
        {"role": "assistant", "content": None, "tool_calls": []},  # 0
    ]
    parsed = parse_chat(body(messages=messages))
    assert (parsed.prompt_chars, parsed.messages) == (12, 3)
    assert parsed.route.prompt_tokens_est == 3 + 3 * 4


# ---- completions and embeddings ------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "chars"), [
    ("Say hi", 6), (["ab", "cde"], 5), ([1, 2, 3], 12), ([[1, 2], [3]], 12), ("", 0),
])
def test_a_completion_prompt_may_be_text_texts_or_token_ids(prompt: Any, chars: int) -> None:
    parsed = parse_completion(body(prompt=prompt, max_tokens=9))
    assert parsed.route.kind == "completion"
    assert parsed.prompt_chars == chars
    assert parsed.route.prompt_tokens_est == -(-chars // 4)
    assert parsed.route.max_tokens == 9 and parsed.messages == 0


@pytest.mark.parametrize("prompt", [5, [], [1, "a"], {"text": "x"}, None])
def test_a_bad_completion_prompt_is_refused(prompt: Any) -> None:
    error = refusal(parse_completion, body(prompt=prompt))
    assert error.param == "prompt"
    assert "'prompt' must be a non-empty string or array of strings" in error.message


def test_a_completion_needs_a_prompt() -> None:
    error = refusal(parse_completion, body(model="auto"))
    assert (error.param, error.message) == ("prompt", "'prompt' is required")


def test_a_streamed_completion_needs_streaming() -> None:
    parsed = parse_completion(body(prompt="x", stream=True, stream_options={"include_usage": True}))
    assert parsed.stream and parsed.wants_usage and parsed.route.needs == frozenset({"streaming"})


def test_an_embedding_never_streams_and_has_no_output() -> None:
    parsed = parse_embedding(body(model="fake-embed", input=["abcd", "efgh"]))
    assert parsed.route.kind == "embedding"
    assert (parsed.stream, parsed.wants_usage, parsed.route.max_tokens) == (False, False, None)
    assert parsed.route.prompt_tokens_est == 2 and parsed.route.model == "fake-embed"


@pytest.mark.parametrize("fields", [{}, {"input": 3}, {"input": []}, {"input": [None]}])
def test_a_bad_embedding_input_is_refused(fields: dict[str, Any]) -> None:
    error = refusal(parse_embedding, body(model="auto", **fields))
    assert error.param == "input"


# ---- the body sent upstream ------------------------------------------------------------------------


def test_upstream_body_sets_the_model_and_keeps_unknown_fields() -> None:
    parsed = chat(model="auto", temperature=0.2, seed=7, x_vendor={"nested": [1, None]}, user="u1")
    sent = msgspec.json.decode(upstream_body(parsed, "fake-small"))
    assert sent == {"model": "fake-small", "messages": [USER], "temperature": 0.2, "seed": 7,
                    "x_vendor": {"nested": [1, None]}, "user": "u1"}
    assert "stream_options" not in sent


def test_upstream_body_asks_for_stream_usage_and_keeps_other_stream_options() -> None:
    parsed = chat(stream=True, stream_options={"include_obfuscation": False})
    sent = msgspec.json.decode(upstream_body(parsed, "fake-small"))
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert parsed.wants_usage is False  # the client did not ask: the usage chunk will be stripped


def test_upstream_body_does_not_change_the_parsed_request() -> None:
    parsed = chat(model="auto", stream=True, stream_options={"include_usage": False})
    upstream_body(parsed, "fake-small")
    assert msgspec.json.decode(parsed.body["model"]) == "auto"
    assert msgspec.json.decode(parsed.body["stream_options"]) == {"include_usage": False}


def test_upstream_body_passes_other_fields_through_byte_for_byte() -> None:
    raw = (b'{"model": "auto", "messages": [{"role": "user", "content": "caf\xc3\xa9 \\u00e9",  "x": 1.50}],'
           b' "temperature": 1e-1, "tools": [ {"type": "function"} ], "seed": 1e400}')
    sent = upstream_body(parse_chat(raw), "fake-small")
    assert b'"messages":[{"role": "user", "content": "caf\xc3\xa9 \\u00e9",  "x": 1.50}]' in sent
    assert b'"temperature":1e-1' in sent and b'"tools":[ {"type": "function"} ]' in sent
    assert b'"seed":1e400' in sent  # valid JSON a float cannot hold: the upstream decides, not the broker
    assert sent.startswith(b'{"model":"fake-small",')


@pytest.mark.parametrize(("content", "chars", "vision"), [
    ("hello", 5, False),
    ([{"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "data:" + "A" * 5000}}], 3, True),
    ([{"type": "text", "text": "abc"}, "loose string", 7], 3, False),  # parts that are not objects: ignored
    ({"odd": "shape"}, 0, False),
    (None, 0, False),
])
def test_content_of_any_shape_is_counted_as_before(content: Any, chars: int, vision: bool) -> None:
    parsed = parse_chat(body(messages=[{"role": "user", "content": content, "name": "n"}]))
    assert parsed.prompt_chars == chars and ("vision" in parsed.route.needs) == vision


@pytest.mark.parametrize(("tools", "needs_tools"), [
    ([], False), (None, False), ([{"type": "function", "function": {"name": "f" * 100}}], True),
    ({}, False), ("", False),
])
def test_tools_are_a_need_only_when_not_empty(tools: Any, needs_tools: bool) -> None:
    assert ("tools" in chat(tools=tools).route.needs) == needs_tools


def test_a_long_but_empty_tools_array_is_not_a_need() -> None:
    raw = b'{"messages": [{"role": "user", "content": "x"}], "tools": [' + b" " * 200 + b"]}"
    assert "tools" not in parse_chat(raw).route.needs


def test_upstream_body_for_a_pinned_model_sends_the_bare_model_name() -> None:
    parsed = chat(model="fakecloud/fake-large")
    assert msgspec.json.decode(upstream_body(parsed, "fake-large"))["model"] == "fake-large"
