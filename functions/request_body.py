"""The few request fields the broker needs, checked with messages that name the param.

The body's top level is parsed once (msgspec, in C) into raw JSON values: the fields routing needs
are decoded from theirs (message text, to count it; an inline image's data is checked, never built),
and every other field passes upstream as the client's own bytes, never encoded again: numbers keep
their spelling, unknown fields their order. Only `model` (and `stream_options` for streams) are
rewritten before forwarding.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from domain.cost import estimate_prompt_tokens, estimate_tokens_from_chars
from domain.routing import RouteRequest
from functions.errors import BrokerError


MAX_TOKENS_PARAM = 2**31 - 1  # no model has a larger window; the log stores int64


class ParsedRequest(msgspec.Struct):
    body: dict[str, Any]  # top-level fields as `msgspec.Raw` (the client's bytes), as sent upstream
    route: RouteRequest
    stream: bool
    wants_usage: bool  # the client itself asked for stream usage
    messages: int
    prompt_chars: int


class _Part(msgspec.Struct):
    """A content part, as far as the estimate reads it: its other fields (image data) are skipped."""

    type: Any = None
    text: Any = None


class _Message(msgspec.Struct):
    role: Any = None
    content: Union[str, list[_Part], None] = None  # any other shape: the generic path below


_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])
_messages = msgspec.json.Decoder(list[_Message])
_generic = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_JSON_KIND = {ord("["): "list", ord('"'): "str", ord("t"): "bool", ord("f"): "bool", ord("n"): "NoneType"}


def _shown(value: Any) -> str:
    """A wrong value as an error may show it: small numbers and booleans as they are, anything else
    by its type only — a misplaced prompt must never reach the log through an error message."""
    if isinstance(value, (bool, int, float)) and len(repr(value)) <= 24:
        return repr(value)
    if isinstance(value, str):
        return f"a string of {len(value)} characters" if value else "an empty string"
    return f"a {type(value).__name__}" if value is not None else "null"


def _bad(message: str, param: str | None) -> BrokerError:
    return BrokerError("invalid_request", message, param=param)


def decode_object(raw: bytes) -> dict[str, msgspec.Raw]:
    """The body's top-level fields, each as its raw JSON; the whole body is checked to be valid JSON
    (syntax, nesting, UTF-8) without building the values."""
    if not raw or raw.isspace():
        raise BrokerError("invalid_json", "the request body is empty; send a JSON object")
    try:
        body = _top_level.decode(raw)
        if not raw.isascii():
            raw.decode("utf-8")  # skipped values are not checked for UTF-8 by the decoder
    except msgspec.ValidationError:  # valid JSON, but not an object
        raise BrokerError("invalid_json", f"the request body must be a JSON object, got {_kind(raw)}") from None
    except msgspec.DecodeError as exc:
        raise BrokerError("invalid_json", f"the request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise BrokerError("invalid_json", "the request body is not valid JSON: a string is not valid UTF-8") from None
    except RecursionError:
        raise BrokerError("invalid_json", "the request body is not valid JSON we accept: it is nested too deeply") from None
    return body


def _kind(raw: bytes) -> str:
    """The Python type name of a valid JSON value that is not an object, from its first byte."""
    first = raw.lstrip()[:1]
    kind = _JSON_KIND.get(first[0]) if first else None
    return kind or type(_generic.decode(raw)).__name__  # a number: small, decoded


def _value(body: dict[str, msgspec.Raw], name: str) -> Any:
    """A small field's value (None when absent)."""
    raw = body.get(name)
    return None if raw is None else _generic.decode(raw)


def _truthy(body: dict[str, msgspec.Raw], name: str) -> bool:
    """Whether a field is present and not empty/false, without decoding a long value (tool schemas)."""
    raw = body.get(name)
    if raw is None:
        return False
    if len(raw) <= 64:
        return bool(_generic.decode(raw))
    head = bytes(memoryview(raw)[:64])
    if head[:1] not in (b"[", b"{") or not head[1:].isspace():
        return True  # a long string, or an array/object with something in it
    return not bytes(raw)[1:-1].isspace()  # (`[` then much whitespace: read it all)


def _content_chars(content: Any) -> tuple[int, bool]:
    """(text characters, has an image) of a message's content (string or list of parts)."""
    if isinstance(content, str):
        return len(content), False
    chars, image = 0, False
    if isinstance(content, list):
        for part in content:
            if isinstance(part, _Part):
                kind, text = part.type, part.text
            elif isinstance(part, dict):
                kind, text = part.get("type"), part.get("text")
            else:
                continue
            chars += len(text) if isinstance(text, str) else 0
            image = image or kind in ("image_url", "input_image")
    return chars, image


def _int_param(body: dict[str, msgspec.Raw], name: str, minimum: int) -> int | None:
    value = _value(body, name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _bad(f"'{name}' must be an integer >= {minimum}, got {_shown(value)}", name)
    if value > MAX_TOKENS_PARAM:
        raise _bad(f"'{name}' must be at most {MAX_TOKENS_PARAM}, got {value}", name)
    return value


def _common(body: dict[str, msgspec.Raw]) -> tuple[str | None, bool, int | None]:
    model = _value(body, "model")
    if model is not None and (not isinstance(model, str) or not model):
        raise _bad(f"'model' must be a non-empty string, got {_shown(model)}", "model")
    stream = _value(body, "stream")
    stream = False if stream is None else stream
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be a boolean, got {_shown(stream)}", "stream")
    max_tokens = _int_param(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int_param(body, "max_tokens", 1)
    return model, stream, max_tokens


def _stream_options(body: dict[str, msgspec.Raw]) -> dict[str, Any]:
    opts = _value(body, "stream_options")
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    return opts


def _wants_usage(body: dict[str, msgspec.Raw]) -> bool:
    return _stream_options(body).get("include_usage") is True


def _message_chars(raw: msgspec.Raw | None) -> tuple[int, int, bool]:
    """(messages, text characters, has an image) of the `messages` array; refusals name the message."""
    try:
        messages: list[Any] = _messages.decode(raw) if raw is not None else []
    except msgspec.ValidationError:  # not an array of objects with plain content: read it generically
        messages = _generic.decode(raw)
        if not isinstance(messages, list):
            messages = []
    if not messages:
        raise _bad("'messages' must be a non-empty array of message objects", "messages")
    chars, vision = 0, False
    for i, msg in enumerate(messages):
        if isinstance(msg, _Message):
            role, content = msg.role, msg.content
        elif isinstance(msg, dict):
            role, content = msg.get("role"), msg.get("content")
        else:
            role = content = None
        if not isinstance(role, str):
            raise _bad(f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
        c, image = _content_chars(content)
        chars, vision = chars + c, vision or image
    return len(messages), chars, vision


def parse_chat(raw: bytes) -> ParsedRequest:
    body = decode_object(raw)
    model, stream, max_tokens = _common(body)
    count, chars, vision = _message_chars(body.get("messages"))
    needs = set()
    if _truthy(body, "tools") or _truthy(body, "functions"):
        needs.add("tools")
    if vision:
        needs.add("vision")
    if "response_format" in body:
        fmt = _value(body, "response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            needs.add("json_mode")
    if stream:
        needs.add("streaming")
    route = RouteRequest(model=model, kind="chat", prompt_tokens_est=estimate_prompt_tokens(chars, count),
                         max_tokens=max_tokens, needs=frozenset(needs))
    return ParsedRequest(body, route, stream, stream and _wants_usage(body), count, chars)


def _text_chars(value: Any, param: str) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return sum(len(v) for v in value)
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return len(value) * 4  # token ids: one token each
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return sum(len(v) for v in value) * 4
    raise _bad(f"'{param}' must be a non-empty string or array of strings", param)


def parse_completion(raw: bytes) -> ParsedRequest:
    body = decode_object(raw)
    model, stream, max_tokens = _common(body)
    if "prompt" not in body:
        raise _bad("'prompt' is required", "prompt")
    chars = _text_chars(_value(body, "prompt"), "prompt")
    needs = frozenset({"streaming"}) if stream else frozenset()
    route = RouteRequest(model=model, kind="completion", prompt_tokens_est=estimate_tokens_from_chars(chars),
                         max_tokens=max_tokens, needs=needs)
    return ParsedRequest(body, route, stream, stream and _wants_usage(body), 0, chars)


def parse_embedding(raw: bytes) -> ParsedRequest:
    body = decode_object(raw)
    model, _, _ = _common(body)
    if "input" not in body:
        raise _bad("'input' is required", "input")
    chars = _text_chars(_value(body, "input"), "input")
    route = RouteRequest(model=model, kind="embedding", prompt_tokens_est=estimate_tokens_from_chars(chars),
                         max_tokens=None, needs=frozenset())
    return ParsedRequest(body, route, False, False, 0, chars)


def upstream_body(parsed: ParsedRequest, model: str) -> bytes:
    """The client's body for one provider: its model name, and stream usage asked for; every other
    field is the client's own bytes."""
    body: dict[str, Any] = dict(parsed.body)
    body["model"] = model
    if parsed.stream:
        body["stream_options"] = {**_stream_options(parsed.body), "include_usage": True}
    return _encoder.encode(body)
