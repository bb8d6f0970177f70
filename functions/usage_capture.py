"""Reading usage out of upstream answers without decoding what we do not need.

JSON bodies: one msgspec decode into a struct holding only `usage` (and the text, when usage is
missing and must be estimated). SSE streams: events are framed on blank lines and forwarded as
they complete; only an event that mentions `"usage"` is decoded. The extra usage-only chunk the
broker asked for is dropped when the client did not ask for it.
"""

from __future__ import annotations

import re

import msgspec

from domain.cost import estimate_tokens_from_chars


class _Details(msgspec.Struct):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None

    @property
    def cached(self) -> int:
        d = self.prompt_tokens_details
        return (d.cached_tokens or 0) if d else 0

    @property
    def reasoning(self) -> int:
        d = self.completion_tokens_details
        return (d.reasoning_tokens or 0) if d else 0


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None
    choices: list[msgspec.Raw] | None = None


_usage_decoder = msgspec.json.Decoder(_WithUsage)
_HAS_USAGE = re.compile(rb'"usage"\s*:\s*\{')  # `"usage":null` on every chunk is not usage
_TEXT = re.compile(rb'"(?:content|text)"\s*:\s*"((?:[^"\\]|\\.)*)"')
_EVENT = re.compile(rb"(?s).*?(?:\r\n\r\n|\n\n)")  # one event with its blank-line terminator
_DONE = re.compile(rb"(?m)^data: ?\[DONE\][ \t]*\r?$")  # a whole line: text inside JSON has no raw newline


def usage_of_body(body: bytes) -> Usage | None:
    try:
        return _usage_decoder.decode(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def text_chars(data: bytes) -> int:
    """Characters of generated text in a body or chunk (for estimates when usage is missing)."""
    return sum(len(m) for m in _TEXT.findall(data))


def estimate_completion_tokens(chars: int) -> int:
    return estimate_tokens_from_chars(chars)


class SseScanner:
    """Frames an SSE byte stream into events; notes usage, [DONE] and text length as they pass."""

    def __init__(self, strip_usage_chunk: bool) -> None:
        self._strip = strip_usage_chunk
        self._buf = b""
        self.usage: Usage | None = None
        self.done = False
        self.chars = 0
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now: every complete event in the stream so far."""
        data = self._buf + chunk if self._buf else chunk
        end = data.rfind(b"\n\n") + 2
        if b"\r" in data:  # SSE also allows CRLF line ends
            end = max(end, data.rfind(b"\r\n\r\n") + 4)
        if end < 2:
            self._buf = data
            return b""
        self._buf = data[end:]
        complete = data[:end]
        if not _HAS_USAGE.search(complete):
            self._note(complete)
            return complete
        return b"".join(self._event(m.group(0)) for m in _EVENT.finditer(complete))

    def _note(self, events: bytes) -> None:
        self.events += events.count(b"\n\n") + events.count(b"\r\n\r\n")
        self.chars += text_chars(events)
        if b"[DONE]" in events and _DONE.search(events):
            self.done = True

    def _event(self, framed: bytes) -> bytes:
        self._note(framed)
        if framed.startswith(b"data: {") and _HAS_USAGE.search(framed):
            try:
                parsed = _usage_decoder.decode(framed[6:])
            except (msgspec.DecodeError, msgspec.ValidationError):
                return framed
            if parsed.usage is not None:
                self.usage = parsed.usage
                if self._strip and not parsed.choices:
                    return b""
        return framed

    def finish(self) -> bytes:
        """Whatever trailing bytes never got a blank line (forwarded as they are)."""
        rest, self._buf = self._buf, b""
        if rest:
            self.chars += text_chars(rest)
        return rest
