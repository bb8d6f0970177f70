"""The few request fields the broker needs, checked with messages that name the param.

The body is decoded once (msgspec, in C) into a dict so unknown fields pass through untouched;
only `model` (and `stream_options` for streams) are rewritten before forwarding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from domain.cost import estimate_prompt_tokens, estimate_tokens_from_chars
from domain.routing import RouteRequest
from functions.errors import BrokerError


MAX_TOKENS_PARAM = 2**31 - 1  # no model has a larger window; the log stores int64


@dataclass
class ParsedRequest:
    body: dict[str, Any]
    route: RouteRequest
    stream: bool
    wants_usage: bool  # the client itself asked for stream usage
    messages: int
    prompt_chars: int


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


def decode_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BrokerError("invalid_json", "the request body is empty; send a JSON object")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BrokerError("invalid_json", f"the request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise BrokerError("invalid_json", "the request body is not valid JSON: a string is not valid UTF-8") from None
    except RecursionError:
        raise BrokerError("invalid_json", "the request body is not valid JSON we accept: it is nested too deeply") from None
    if not isinstance(body, dict):
        raise BrokerError("invalid_json", f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _content_chars(content: Any) -> tuple[int, bool]:
    """(text characters, has an image) of a message's content (string or list of parts)."""
    if isinstance(content, str):
        return len(content), False
    chars, image = 0, False
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                chars += len(text) if isinstance(text, str) else 0
                image = image or part.get("type") in ("image_url", "input_image")
    return chars, image


def _int_param(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _bad(f"'{name}' must be an integer >= {minimum}, got {_shown(value)}", name)
    if value > MAX_TOKENS_PARAM:
        raise _bad(f"'{name}' must be at most {MAX_TOKENS_PARAM}, got {value}", name)
    return value


def _common(body: dict[str, Any]) -> tuple[str | None, bool, int | None]:
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise _bad(f"'model' must be a non-empty string, got {_shown(model)}", "model")
    stream = body.get("stream")
    stream = False if stream is None else stream
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be a boolean, got {_shown(stream)}", "stream")
    max_tokens = _int_param(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int_param(body, "max_tokens", 1)
    return model, stream, max_tokens


def _wants_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    return opts.get("include_usage") is True


def parse_chat(raw: bytes) -> ParsedRequest:
    body = decode_object(raw)
    model, stream, max_tokens = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array of message objects", "messages")
    chars, vision = 0, False
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
        c, image = _content_chars(msg.get("content"))
        chars, vision = chars + c, vision or image
    needs = set()
    if body.get("tools") or body.get("functions"):
        needs.add("tools")
    if vision:
        needs.add("vision")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json_mode")
    if stream:
        needs.add("streaming")
    route = RouteRequest(model=model, kind="chat", prompt_tokens_est=estimate_prompt_tokens(chars, len(messages)),
                         max_tokens=max_tokens, needs=frozenset(needs))
    return ParsedRequest(body, route, stream, stream and _wants_usage(body), len(messages), chars)


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
    chars = _text_chars(body["prompt"], "prompt")
    needs = frozenset({"streaming"}) if stream else frozenset()
    route = RouteRequest(model=model, kind="completion", prompt_tokens_est=estimate_tokens_from_chars(chars),
                         max_tokens=max_tokens, needs=needs)
    return ParsedRequest(body, route, stream, stream and _wants_usage(body), 0, chars)


def parse_embedding(raw: bytes) -> ParsedRequest:
    body = decode_object(raw)
    model, _, _ = _common(body)
    if "input" not in body:
        raise _bad("'input' is required", "input")
    chars = _text_chars(body["input"], "input")
    route = RouteRequest(model=model, kind="embedding", prompt_tokens_est=estimate_tokens_from_chars(chars),
                         max_tokens=None, needs=frozenset())
    return ParsedRequest(body, route, False, False, 0, chars)


def upstream_body(parsed: ParsedRequest, model: str) -> bytes:
    """The client's body for one provider: its model name, and stream usage asked for."""
    body = dict(parsed.body)
    body["model"] = model
    if parsed.stream:
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
    return msgspec.json.encode(body)
