"""Usage out of upstream answers: JSON bodies, and SSE streams framed as they pass through."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.usage_capture import SseScanner, estimate_completion_tokens, text_chars, usage_of_body


def event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def content_chunk(text: str, *, usage_null: bool = False) -> bytes:
    chunk: dict[str, Any] = {"id": "c1", "choices": [{"index": 0, "delta": {"content": text}}]}
    if usage_null:
        chunk["usage"] = None
    return event(chunk)


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
USAGE_CHUNK = event({"id": "c1", "choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"
STREAM = content_chunk("Hello", usage_null=True) + content_chunk(" world", usage_null=True) + USAGE_CHUNK + DONE


def scan_in_pieces(data: bytes, cuts: list[int], strip: bool) -> tuple[bytes, SseScanner]:
    scanner = SseScanner(strip_usage_chunk=strip)
    out, start = b"", 0
    for cut in [*cuts, len(data)]:
        out += scanner.feed(data[start:cut])
        start = cut
    return out + scanner.finish(), scanner


# ---- SseScanner -----------------------------------------------------------------------------------


def test_complete_events_are_forwarded_at_once_and_partial_ones_wait() -> None:
    scanner = SseScanner(strip_usage_chunk=False)
    first = content_chunk("Hi")
    assert scanner.feed(first + b"data: {\"id\"") == first
    assert scanner.feed(b':"c1","choices":[]}\n\n') == b'data: {"id":"c1","choices":[]}\n\n'
    assert scanner.finish() == b""  # nothing held back: both events went out whole


def test_a_usage_chunk_split_across_feeds_is_still_read() -> None:
    scanner = SseScanner(strip_usage_chunk=False)
    half = len(USAGE_CHUNK) // 2
    assert scanner.feed(USAGE_CHUNK[:half]) == b""
    assert scanner.usage is None
    assert scanner.feed(USAGE_CHUNK[half:]) == USAGE_CHUNK
    assert scanner.usage is not None
    assert (scanner.usage.prompt_tokens, scanner.usage.completion_tokens) == (7, 3)


@pytest.mark.parametrize("strip", [False, True])
def test_every_split_point_gives_the_same_output_usage_and_text(strip: bool) -> None:
    expected = STREAM.replace(USAGE_CHUNK, b"") if strip else STREAM
    for cut in range(len(STREAM) + 1):
        out, scanner = scan_in_pieces(STREAM, [cut], strip)
        assert out == expected, cut
        assert scanner.usage is not None and scanner.usage.completion_tokens == 3, cut
        assert scanner.done, cut
        assert scanner.chars == len("Hello world"), cut


def test_byte_by_byte_feeding_loses_nothing() -> None:
    out, scanner = scan_in_pieces(STREAM, list(range(1, len(STREAM))), strip=False)
    assert out == STREAM
    assert scanner.usage is not None and scanner.done and scanner.chars == len("Hello world")


def test_the_usage_only_chunk_is_stripped_when_the_client_did_not_ask() -> None:
    scanner = SseScanner(strip_usage_chunk=True)
    out = scanner.feed(STREAM)
    assert USAGE_CHUNK not in out and b'"usage":{' not in out
    assert out == content_chunk("Hello", usage_null=True) + content_chunk(" world", usage_null=True) + DONE
    assert scanner.usage is not None and scanner.usage.prompt_tokens == 7  # read, then dropped


def test_the_usage_only_chunk_is_kept_when_the_client_asked() -> None:
    scanner = SseScanner(strip_usage_chunk=False)
    assert scanner.feed(STREAM) == STREAM
    assert scanner.usage is not None


def test_usage_riding_on_a_content_chunk_is_never_stripped() -> None:
    chunk = event({"id": "c1", "choices": [{"index": 0, "delta": {"content": "end"}}], "usage": USAGE})
    scanner = SseScanner(strip_usage_chunk=True)
    assert scanner.feed(chunk + DONE) == chunk + DONE
    assert scanner.usage is not None and scanner.usage.total_tokens == 10


@pytest.mark.parametrize("null", [b'"usage":null', b'"usage": null', b'"usage" : null'])
def test_usage_null_on_every_chunk_is_not_usage(null: bytes) -> None:
    chunk = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"x"}}],' + null + b"}\n\n"
    scanner = SseScanner(strip_usage_chunk=True)
    assert scanner.feed(chunk * 3) == chunk * 3
    assert scanner.usage is None


def test_the_last_usage_seen_wins() -> None:
    later = event({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}})
    scanner = SseScanner(strip_usage_chunk=False)
    scanner.feed(USAGE_CHUNK + later)
    assert scanner.usage is not None and (scanner.usage.prompt_tokens, scanner.usage.completion_tokens) == (9, 5)


def test_done_is_seen_only_on_the_done_event() -> None:
    scanner = SseScanner(strip_usage_chunk=False)
    scanner.feed(content_chunk("[DONE] is just text here"))
    assert not scanner.done
    scanner.feed(b"data: [DO")
    assert not scanner.done
    assert scanner.feed(b"NE]\n\n") == DONE
    assert scanner.done


def test_done_written_by_the_model_is_not_the_end_of_the_stream() -> None:
    scanner = SseScanner(strip_usage_chunk=False)
    scanner.feed(content_chunk("end each stream with data: [DONE] and a blank line"))
    assert not scanner.done


def test_done_next_to_a_usage_chunk_is_seen() -> None:
    scanner = SseScanner(strip_usage_chunk=True)
    assert scanner.feed(USAGE_CHUNK + DONE) == DONE
    assert scanner.done


def test_text_characters_are_counted_across_chunks() -> None:
    scanner = SseScanner(strip_usage_chunk=False)
    for word in ["Once", " upon", " a", " time"]:
        scanner.feed(content_chunk(word, usage_null=True))
    assert scanner.chars == len("Once upon a time")


def test_completion_text_chunks_are_counted_too() -> None:
    scanner = SseScanner(strip_usage_chunk=False)
    scanner.feed(event({"choices": [{"index": 0, "text": "abc"}]}) + event({"choices": [{"index": 0, "text": "de"}]}))
    assert scanner.chars == 5


@pytest.mark.parametrize("bad", [b"data: {not json\n\n", b'data: {"usage":{broken\n\n', b"event: ping\n\n",
                                 b": a comment\n\n", b"data: \xff\xfe\n\n"])
def test_a_malformed_event_passes_through_untouched(bad: bytes) -> None:
    scanner = SseScanner(strip_usage_chunk=True)
    stream = content_chunk("a") + bad + content_chunk("b") + DONE
    assert scanner.feed(stream) == stream
    assert scanner.usage is None
    assert scanner.done


def test_trailing_bytes_without_a_blank_line_come_out_at_finish() -> None:
    scanner = SseScanner(strip_usage_chunk=False)
    assert scanner.feed(content_chunk("a") + b'data: {"choices":[{"delta":{"content":"tail"}}]}\n') == content_chunk("a")
    assert scanner.finish() == b'data: {"choices":[{"delta":{"content":"tail"}}]}\n'
    assert scanner.chars == len("a") + len("tail")
    assert scanner.finish() == b""


def test_crlf_framed_events_are_forwarded_as_they_complete() -> None:
    scanner = SseScanner(strip_usage_chunk=False)
    first = b'data: {"choices":[{"delta":{"content":"hi"}}]}\r\n\r\n'
    assert scanner.feed(first + b"data: [DONE]\r\n\r\n") == first + b"data: [DONE]\r\n\r\n"
    assert scanner.done


# ---- JSON bodies ------------------------------------------------------------------------------------


def test_usage_of_a_body_with_cached_and_reasoning_details() -> None:
    body = json.dumps({"choices": [], "usage": {
        "prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details": {"reasoning_tokens": 12}}})
    usage = usage_of_body(body.encode())
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached, usage.reasoning) == (100, 40, 64, 12)


@pytest.mark.parametrize("body", [b"{}", b'{"usage":null}', b"not json", b"[1,2]", b'{"usage":"lots"}', b""])
def test_a_body_without_readable_usage_has_none(body: bytes) -> None:
    assert usage_of_body(body) is None


def test_usage_without_details_counts_no_cached_or_reasoning_tokens() -> None:
    usage = usage_of_body(b'{"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":null}}')
    assert usage is not None and (usage.cached, usage.reasoning) == (0, 0)


def test_text_chars_counts_content_and_text_fields() -> None:
    body = b'{"choices":[{"message":{"role":"assistant","content":"Hello there"}},{"text":"abc"}]}'
    assert text_chars(body) == len("Hello there") + len("abc")
    assert text_chars(b'{"content":null}') == 0


def test_text_chars_counts_spaced_json_too() -> None:
    assert text_chars(b'{"choices": [{"message": {"role": "assistant", "content": "Hello there"}}]}') == 11


def test_completion_estimate_rounds_characters_up_to_tokens() -> None:
    assert [estimate_completion_tokens(n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens"])
@pytest.mark.parametrize("value", [-1, 2**40 + 1, 2**63])
def test_impossible_provider_counts_are_not_usage(field: str, value: int) -> None:
    """A negative or absurd count would make `usage.recorded` invalid (the log refuses it and the
    settlement is lost): such usage is unreadable, so the broker estimates instead."""
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, field: value}}).encode()
    assert usage_of_body(body) is None
    scanner = SseScanner(strip_usage_chunk=True)
    out = scanner.feed(b"data: " + body + b"\n\ndata: [DONE]\n\n")
    assert scanner.usage is None and scanner.done and out.startswith(b"data: ")


def test_the_largest_sane_counts_are_usage() -> None:
    usage = usage_of_body(b'{"usage": {"prompt_tokens": 1099511627776, "completion_tokens": 0}}')
    assert usage is not None and usage.prompt_tokens == 2**40


@pytest.mark.parametrize("strip", [False, True])
def test_lazy_text_counting_gives_the_same_stream_and_counts_when_usage_never_comes(strip: bool) -> None:
    """The relay counts text only when it may need an estimate: without usage the count is the eager
    one at every split point; the forwarded bytes never change."""
    no_usage = STREAM.replace(USAGE_CHUNK, b"")
    for data in (STREAM, no_usage):
        for cut in range(len(data) + 1):
            eager = SseScanner(strip_usage_chunk=strip)
            lazy = SseScanner(strip_usage_chunk=strip, eager_chars=False)
            outs = [b"".join(s.feed(part) for part in (data[:cut], data[cut:])) + s.finish() for s in (eager, lazy)]
            assert outs[0] == outs[1], cut
            if data is no_usage:
                assert lazy.usage is None and lazy.chars == eager.chars == len("Hello world"), cut


def test_lazy_counting_lets_go_of_text_once_usage_arrives_and_bounds_what_it_keeps() -> None:
    scanner = SseScanner(strip_usage_chunk=True, eager_chars=False)
    scanner.feed(content_chunk("Hello") + USAGE_CHUNK)
    assert scanner.usage is not None and scanner._uncounted == []
    scanner.feed(content_chunk("after usage"))  # never needed for an estimate: not kept
    assert scanner._uncounted == []
    long_stream = SseScanner(strip_usage_chunk=True, eager_chars=False)
    piece = content_chunk("x" * 1000)
    for _ in range(600):  # ~600 kB of text and no usage yet: counted as it goes past the bound
        long_stream.feed(piece)
    assert long_stream._uncounted_bytes <= 256 * 1024
    assert long_stream.chars == 600 * 1000
