"""Reading usage out of upstream answers without decoding what we do not need.

JSON bodies: one msgspec decode into a struct holding only `usage` (and the text, when usage is
missing and must be estimated). SSE streams: events are framed on blank lines and forwarded as
they complete; only an event that mentions `"usage"` is decoded. The extra usage-only chunk the
broker asked for is dropped when the client did not ask for it.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from domain.cost import estimate_tokens_from_chars


# A provider's numbers are input: negative or absurd counts make the usage unreadable (it is then
# estimated), instead of an event the log must refuse (which would lose the settlement).
Tokens = Annotated[int, msgspec.Meta(ge=0, le=2**40)]


class _Details(msgspec.Struct):
    cached_tokens: Tokens | None = None
    reasoning_tokens: Tokens | None = None


class Usage(msgspec.Struct):
    prompt_tokens: Tokens | None = 0
    completion_tokens: Tokens | None = 0
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


class _BodyUsage(msgspec.Struct):
    usage: Usage | None = None  # (a whole body: its choices are skipped, not collected)


_usage_decoder = msgspec.json.Decoder(_WithUsage)
_body_usage_decoder = msgspec.json.Decoder(_BodyUsage)
_USAGE_KEY = b'"usage"'
_USAGE_OBJECT = re.compile(rb"\s*:\s*\{")  # after the key: `"usage":null` on every chunk is not usage
_TEXT = re.compile(rb'"(?:content|text)"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')  # unrolled: no per-char alternation
_EVENT = re.compile(rb"(?s).*?(?:\r\n\r\n|\n\n)")  # one event with its blank-line terminator
_DONE_LINE = re.compile(rb"data: ?\[DONE\][ \t]*\r?")  # a whole line: text inside JSON has no raw newline


def usage_of_body(body: bytes) -> Usage | None:
    try:
        return _body_usage_decoder.decode(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def text_chars(data: bytes) -> int:
    """Characters of generated text in a body or chunk (for estimates when usage is missing)."""
    return sum(map(len, _TEXT.findall(data)))


def _has_done_line(events: bytes, at: int | None = None) -> bool:
    """A `data: [DONE]` line (found by its marker, from the end, where it stands; a regex over every
    line start costs ~10× more). `at`: where the last marker is, when the caller already looked."""
    at = events.rfind(b"[DONE]") if at is None else at
    while at >= 0:
        start = events.rfind(b"\n", 0, at) + 1
        end = events.find(b"\n", at)
        if _DONE_LINE.fullmatch(events, start, end if end >= 0 else len(events)):
            return True
        at = events.rfind(b"[DONE]", 0, at)
    return False


def _usage_at(data: bytes, start: int = 0) -> int:
    """Where the next `"usage": {` starts, or -1. The key is found with `bytes.find` and only its
    hits are matched: a regex search stops at every `"` of the JSON."""
    at = data.find(_USAGE_KEY, start)
    while at >= 0 and _USAGE_OBJECT.match(data, at + 7) is None:
        at = data.find(_USAGE_KEY, at + 7)
    return at


def estimate_completion_tokens(chars: int) -> int:
    return estimate_tokens_from_chars(chars)


LAZY_TEXT_BYTES = 256 * 1024  # text kept uncounted at most this long (then counted and let go)


class SseScanner:
    """Frames an SSE byte stream into events; notes usage, [DONE] and text length as they pass.

    Text length only matters when the stream ends without usage (it is then estimated) or when a
    budget cap is checked as the stream goes. With `eager_chars=False` the forwarded events are
    counted only if `chars` is read before usage arrives; once usage is seen they are never counted.
    """

    __slots__ = ("_strip", "_eager", "_buf", "usage", "done", "_chars", "_uncounted", "_uncounted_bytes")

    def __init__(self, strip_usage_chunk: bool, eager_chars: bool = True) -> None:
        self._strip = strip_usage_chunk
        self._eager = eager_chars
        self._buf = b""
        self.usage: Usage | None = None
        self.done = False
        self._chars = 0
        self._uncounted: list[bytes] = []
        self._uncounted_bytes = 0

    @property
    def chars(self) -> int:
        """Characters of generated text seen so far (what an estimate uses)."""
        if self._uncounted:
            self._chars += sum(map(text_chars, self._uncounted))
            self._uncounted, self._uncounted_bytes = [], 0
        return self._chars

    @chars.setter
    def chars(self, value: int) -> None:
        self._uncounted, self._uncounted_bytes = [], 0
        self._chars = value

    def _count_text(self, events: bytes) -> None:
        if self._eager:
            self._chars += text_chars(events)
        elif self.usage is None:
            self._uncounted.append(events)
            self._uncounted_bytes += len(events)
            if self._uncounted_bytes > LAZY_TEXT_BYTES:
                _ = self.chars  # count and let go: a long stream must not pin its text

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now: every complete event in the stream so far.

        Whole runs of events pass as one slice; only an event that carries usage is cut out and
        decoded. A chunk costs a few C-level scans and no Python call in the common case (a token
        stream is hundreds of chunks)."""
        data = self._buf + chunk if self._buf else chunk
        crlf = b"\r" in data  # SSE also allows CRLF line ends
        end = data.rfind(b"\n\n") + 2
        if crlf:
            end = max(end, data.rfind(b"\r\n\r\n") + 4)
        if end < 2:
            self._buf = data
            return b""
        if end == len(data):
            complete, self._buf = data, b""
        else:
            complete, self._buf = data[:end], data[end:]
        if not self.done:
            at = complete.rfind(b"[DONE]")  # from the end, where it stands: one short scan
            if at >= 0:
                self.done = _has_done_line(complete, at)
        found = complete.find(_USAGE_KEY)  # each scan of a chunk counts: a stream can be kilobytes
        if found >= 0:
            complete = self._with_usage(complete, crlf, found)
        self._count_text(complete)  # after usage: text that came with usage is not held for an estimate
        return complete

    def _with_usage(self, complete: bytes, crlf: bool, key_at: int) -> bytes:
        """`complete` with each event that carries usage noted, and the usage-only one dropped
        (`key_at`: where the first `"usage"` key is)."""
        found = _usage_at(complete, key_at)
        if found < 0:
            return complete
        if crlf:
            return b"".join(self._usage_event(m.group(0)) for m in _EVENT.finditer(complete))
        parts: list[bytes] = []
        taken = 0
        while found >= 0:
            start = complete.rfind(b"\n\n", 0, found) + 2
            start = start if start >= 2 else 0
            stop = complete.find(b"\n\n", found) + 2
            if not self._usage_event(complete[start:stop], checked=True):
                parts.append(complete[taken:start])
                taken = stop
            found = _usage_at(complete, stop)
        if not taken:
            return complete
        parts.append(complete[taken:])
        return b"".join(parts)

    def _usage_event(self, framed: bytes, checked: bool = False) -> bytes:
        """One framed event that mentions usage: note it; b"" when it is the usage-only chunk to drop.
        `checked`: the event is known to hold a `"usage": {` (framed around one)."""
        if framed.startswith(b"data: {") and (checked or _usage_at(framed) >= 0):
            try:
                parsed = _usage_decoder.decode(framed[6:])
            except (msgspec.DecodeError, msgspec.ValidationError):
                return framed
            if parsed.usage is not None:
                self.usage = parsed.usage
                self._uncounted, self._uncounted_bytes = [], 0  # usage came: no estimate needed
                if self._strip and not parsed.choices:
                    return b""
        return framed

    def finish(self) -> bytes:
        """Whatever trailing bytes never got a blank line (forwarded as they are)."""
        rest, self._buf = self._buf, b""
        if rest:
            self._count_text(rest)
        return rest
