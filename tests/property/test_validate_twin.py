"""`validate` checks an event with a twin type (context's pattern checked once per value): it must
accept and refuse exactly what decoding with the event's own type accepts and refuses. A batch
(`validate_lines`, one decoder call) must refuse exactly when one of its events alone would."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.events import (
    Event,
    RequestAdmitted,
    RequestReceived,
    UsageRecorded,
    encode,
    encode_lines,
    validate,
    validate_lines,
)

ints = st.one_of(st.integers(min_value=-5, max_value=2**63 + 5), st.sampled_from([0, 1, -1, 2**63 - 1, 2**63]))
contexts = st.one_of(st.text(max_size=70), st.from_regex(r"[A-Za-z0-9_-]{0,66}", fullmatch=True))
texts = st.text(max_size=12)


def _same_verdict(event: object) -> None:
    line = encode(event)  # type: ignore[arg-type]
    try:
        msgspec.json.Decoder(type(event)).decode(line)
        expected = None
    except msgspec.ValidationError as exc:
        expected = str(exc)
    try:
        validate(event, line)  # type: ignore[arg-type]
        got = None
    except msgspec.ValidationError as exc:
        got = str(exc)
    assert (got is None) == (expected is None), (got, expected)
    if got is not None:  # with several bad fields the two may name different ones; each names a path
        assert "- at `$." in got
    assert _batch_verdict([event]) == got  # type: ignore[list-item]


def _batch_verdict(events: list[Event]) -> str | None:
    try:
        validate_lines(events, encode_lines(events))
        return None
    except msgspec.ValidationError as exc:
        return str(exc)


@settings(max_examples=300, deadline=None)
@given(ts=ints, context=contexts, prompt=ints, completion=ints, cost=st.one_of(st.none(), ints),
       status=ints, source=st.sampled_from(["provider", "estimated", "missing", "other"]), provider=texts)
def test_usage_recorded(ts: int, context: str, prompt: int, completion: int, cost: int | None, status: int,
                        source: str, provider: str) -> None:
    _same_verdict(UsageRecorded(event_id="e", ts_us=ts, context=context, prompt_tokens=prompt,
                                completion_tokens=completion, cost_micros=cost, status=status,
                                usage_source=source, provider=provider))  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(ts=ints, context=contexts, body=ints, max_tokens=st.one_of(st.none(), ints), endpoint=texts)
def test_request_received(ts: int, context: str, body: int, max_tokens: int | None, endpoint: str) -> None:
    _same_verdict(RequestReceived(event_id="e", ts_us=ts, context=context, body_bytes=body,
                                  max_tokens=max_tokens, endpoint=endpoint))


@settings(max_examples=100, deadline=None)
@given(context=contexts, reserved=ints, bad=st.sampled_from([None, 3, b"x"]))
def test_wrong_types_are_refused_like_the_real_type(context: str, reserved: int, bad: object) -> None:
    _same_verdict(RequestAdmitted(event_id="e", ts_us=1, context=context, reserved_micros=reserved,
                                  provider=bad))  # type: ignore[arg-type]


def _received(context: str, body: int) -> RequestReceived:
    return RequestReceived(event_id="e", ts_us=1, context=context, body_bytes=body, endpoint="x")


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(st.tuples(contexts, ints), min_size=1, max_size=4))
def test_a_batch_is_refused_exactly_when_one_of_its_events_is(batch: list[tuple[str, int]]) -> None:
    events: list[Event] = [_received(context, body) for context, body in batch]
    alone = []
    for event in events:
        try:
            validate(event, encode(event))
        except msgspec.ValidationError as exc:
            alone.append(str(exc))
    got = _batch_verdict(events)
    assert (got is None) == (not alone), (got, alone)
    if got is not None:  # the first bad event's own error, with its own path (`$.field`, not `$[i].field`)
        assert got == alone[0]
