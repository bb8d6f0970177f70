"""What the fake upstream says: request shapes, deterministic replies, token counts, SSE chunks, errors.

Pure functions of the request (plus `now_s` and a response id passed in), so tests can predict
every byte that matters:
- the reply is `fake reply from {provider}/{model}: ` followed by words picked by a SHA-256 of
  (model, last user text); it is `min(max_tokens or 16, 16)` words long and 1 word == 1 token;
- prompt tokens = total characters of all texts // 4 + 4 per chat message (0 per prompt or
  embedding input), at least 1;
- embeddings are unit vectors of `EMBEDDING_DIM` float32 values from a hash of (model, input).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

DEFAULT_COMPLETION_TOKENS = 16
EMBEDDING_DIM = 8
CHAT_TOKENS_PER_MESSAGE = 4
WORDS = (
    "amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor",
    "indigo", "juniper", "kelp", "lumen", "maple", "nectar", "onyx", "pepper",
    "quartz", "raven", "saffron", "tundra", "umber", "velvet", "willow", "xenon",
    "yarrow", "zephyr", "acorn", "birch", "comet", "dune", "echo", "flint",
)  # fmt: skip

PositiveInt = Annotated[int, Meta(ge=1)]
Json = dict[str, Any]
T = TypeVar("T")


class ContentPart(Struct):
    type: str
    text: str | None = None


class ChatMessage(Struct):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(Struct):
    include_usage: bool = False


class ResponseFormat(Struct):
    type: str


class ChatRequest(Struct):
    model: str
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(Struct):
    model: str
    prompt: str | Annotated[list[str], Meta(min_length=1)]
    max_tokens: PositiveInt | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class EmbeddingRequest(Struct):
    model: str
    input: str | Annotated[list[str], Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"


def message_text(message: ChatMessage) -> str:
    """The text of a message: its string content, or its text parts joined by spaces."""
    if isinstance(message.content, str):
        return message.content
    return " ".join(part.text or "" for part in message.content or () if part.type == "text")


def has_image(request: ChatRequest) -> bool:
    return any(
        part.type in ("image_url", "input_image")
        for message in request.messages
        if isinstance(message.content, list)
        for part in message.content
    )


def count_prompt_tokens(texts: list[str], per_item_tokens: int) -> int:
    return max(1, sum(len(text) for text in texts) // 4 + per_item_tokens * len(texts))


def chat_prompt_tokens(request: ChatRequest) -> int:
    return count_prompt_tokens([message_text(m) for m in request.messages], CHAT_TOKENS_PER_MESSAGE)


def prompts(request: CompletionRequest) -> list[str]:
    return [request.prompt] if isinstance(request.prompt, str) else request.prompt


def chat_max_tokens(request: ChatRequest) -> int | None:
    return request.max_completion_tokens or request.max_tokens


def reply_words(provider: str, model: str, prompt_text: str, max_tokens: int | None) -> list[str]:
    """The reply, one word per token; the same (model, prompt, max_tokens) gives the same words."""
    count = min(max_tokens or DEFAULT_COMPLETION_TOKENS, DEFAULT_COMPLETION_TOKENS)
    digest = hashlib.sha256(f"{model}\x00{prompt_text}".encode()).digest()
    tail = [WORDS[byte % len(WORDS)] for byte in digest]
    return ["fake", "reply", "from", f"{provider}/{model}:", *tail][:count]


def finish_reason(max_tokens: int | None) -> str:
    return "length" if max_tokens is not None and max_tokens < DEFAULT_COMPLETION_TOKENS else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> Json:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def last_user_text(request: ChatRequest) -> str:
    users = [m for m in request.messages if m.role == "user"]
    return message_text(users[-1]) if users else ""


def chat_reply(provider: str, request: ChatRequest) -> list[str]:
    return reply_words(provider, request.model, last_user_text(request), chat_max_tokens(request))


def _head(rid: str, object_: str, now_s: int, model: str) -> Json:
    return {"id": rid, "object": object_, "created": now_s, "model": model}


def chat_completion(provider: str, request: ChatRequest, rid: str, now_s: int, with_usage: bool) -> Json:
    words = chat_reply(provider, request)
    message = {"role": "assistant", "content": " ".join(words), "refusal": None}
    reason = finish_reason(chat_max_tokens(request))
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
    body: Json = {**_head(rid, "chat.completion", now_s, request.model), "choices": [choice]}
    if with_usage:
        body["usage"] = usage(chat_prompt_tokens(request), len(words))
    return body


def chat_chunks(provider: str, request: ChatRequest, rid: str, now_s: int, with_usage: bool) -> list[Json]:
    """OpenAI's stream: role + first word, one chunk per word, a finish chunk, then usage if asked."""
    words = chat_reply(provider, request)
    head = _head(rid, "chat.completion.chunk", now_s, request.model)
    tail = {"usage": None} if with_usage else {}

    def chunk(delta: Json, reason: str | None) -> Json:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}], **tail}

    deltas = [{"content": word if i == 0 else f" {word}"} for i, word in enumerate(words)]
    chunks = [chunk({"role": "assistant", **deltas[0]} if i == 0 else d, None) for i, d in enumerate(deltas)]
    chunks.append(chunk({}, finish_reason(chat_max_tokens(request))))
    if with_usage:
        chunks.append({**head, "choices": [], "usage": usage(chat_prompt_tokens(request), len(words))})
    return chunks


def completion_words(provider: str, request: CompletionRequest) -> list[list[str]]:
    return [reply_words(provider, request.model, text, request.max_tokens) for text in prompts(request)]


def completion_usage(request: CompletionRequest, replies: list[list[str]]) -> Json:
    return usage(count_prompt_tokens(prompts(request), 0), sum(len(words) for words in replies))


def text_completion(provider: str, request: CompletionRequest, rid: str, now_s: int, with_usage: bool) -> Json:
    replies = completion_words(provider, request)
    reason = finish_reason(request.max_tokens)
    choices = [
        {"index": i, "text": " ".join(words), "logprobs": None, "finish_reason": reason}
        for i, words in enumerate(replies)
    ]
    body: Json = {**_head(rid, "text_completion", now_s, request.model), "choices": choices}
    if with_usage:
        body["usage"] = completion_usage(request, replies)
    return body


def completion_chunks(
    provider: str, request: CompletionRequest, rid: str, now_s: int, with_usage: bool
) -> list[Json]:
    replies = completion_words(provider, request)
    head = _head(rid, "text_completion", now_s, request.model)
    tail = {"usage": None} if with_usage else {}

    def chunk(index: int, text: str, reason: str | None) -> Json:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
        return {**head, "choices": [choice], **tail}

    chunks = []
    for index, words in enumerate(replies):
        chunks += [chunk(index, word if i == 0 else f" {word}", None) for i, word in enumerate(words)]
        chunks.append(chunk(index, "", finish_reason(request.max_tokens)))
    if with_usage:
        chunks.append({**head, "choices": [], "usage": completion_usage(request, replies)})
    return chunks


def embedding_vector(model: str, text: str) -> list[float]:
    """A unit vector of float32-exact values, so float and base64 encodings agree bit for bit."""
    digest = hashlib.sha256(f"{model}\x00{text}".encode()).digest()
    raw = [int.from_bytes(digest[i * 4 : i * 4 + 4], "big") / 2**31 - 1.0 for i in range(EMBEDDING_DIM)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return list(struct.unpack(f"<{EMBEDDING_DIM}f", struct.pack(f"<{EMBEDDING_DIM}f", *(x / norm for x in raw))))


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embeddings(request: EmbeddingRequest, with_usage: bool) -> Json:
    texts = [request.input] if isinstance(request.input, str) else request.input
    vectors = [encode_vector(embedding_vector(request.model, text), request.encoding_format) for text in texts]
    data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
    body: Json = {"object": "list", "data": data, "model": request.model}
    if with_usage:
        tokens = count_prompt_tokens(texts, 0)
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return body


class Refusal(Exception):
    """An OpenAI-shaped error answer, raised before the first byte of the response."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None,
                 param: str | None = None, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, type_, code, param), headers


def decode(body: bytes, type_: type[T]) -> T:
    """The request as `type_`, or a 400 naming what is wrong and where (`param`)."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        found = re.search(r"at `\$\.?([^`]*)`$", str(exc))
        param = found.group(1) or None if found else None
        raise Refusal(400, f"Invalid request body: {exc}", "invalid_request_error", "invalid_value", param) from exc
    except msgspec.DecodeError as exc:
        message = f"The request body is not valid JSON: {exc}"
        raise Refusal(400, message, "invalid_request_error", "invalid_json") from exc


def check_window(context_window: int, prompt_tokens: int, max_tokens: int | None) -> None:
    wanted = prompt_tokens + (max_tokens or DEFAULT_COMPLETION_TOKENS)
    if wanted > context_window:
        raise Refusal(400, f"This model's maximum context length is {context_window} tokens. However, you "
                      f"requested {wanted} tokens ({prompt_tokens} in the messages, {wanted - prompt_tokens} in the "
                      "completion).", "invalid_request_error", "context_length_exceeded", "messages")


def usd_per_token(usd_per_mtok: str) -> str:
    """'0.15' USD per 1M tokens -> '0.00000015' USD per token (OpenRouter's `pricing` unit)."""
    return format((Decimal(usd_per_mtok) / 1_000_000).normalize(), "f")


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> Json:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
