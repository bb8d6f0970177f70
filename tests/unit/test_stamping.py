"""The stamper: gapless seq, retries de-duplicated inside its bounded window, rollback."""

from __future__ import annotations

from domain.events import RequestReceived
from eventlog.stamping import Stamper


def _event(i: int) -> RequestReceived:
    return RequestReceived(event_id=f"id-{i}", ts_us=1_000 + i, endpoint="chat/completions")


def test_seq_is_gapless_and_a_retried_event_keeps_its_first_seq() -> None:
    stamper = Stamper()
    out, lines = stamper.prepare([_event(1), _event(2)])
    assert [e.seq for e in out] == [1, 2] and lines.count(b"\n") == 2
    again, lines = stamper.prepare([_event(2), _event(3)])
    assert [e.seq for e in again] == [2, 3] and lines.count(b"\n") == 1


def test_a_duplicate_inside_one_batch_is_written_once() -> None:
    out, lines = Stamper().prepare([_event(1), _event(1)])
    assert [e.seq for e in out] == [1, 1] and lines.count(b"\n") == 1


def test_the_window_keeps_at_least_half_its_size_of_the_newest_ids_and_forgets_older_ones() -> None:
    window = 100
    stamper = Stamper(window=window)
    for i in range(1, 1_001):
        stamper.prepare([_event(i)])
    newest = range(1_000 - window // 2 + 1, 1_001)
    for i in newest:  # still known: a retry returns the first seq and writes nothing
        out, lines = stamper.prepare([_event(i)])
        assert out[0].seq == i and not lines
    out, lines = stamper.prepare([_event(1)])  # long forgotten: written again, as a new event
    assert out[0].seq == 1_001 and lines.count(b"\n") == 1
    remembered = len(stamper._young) + len(stamper._old)
    assert window // 2 <= remembered <= window


def test_forget_from_rolls_back_seq_and_the_ids_it_handed_out() -> None:
    stamper = Stamper(window=4)
    for i in range(1, 7):
        stamper.prepare([_event(i)])
    stamper.forget_from(5)
    assert stamper.next_seq == 5
    out, lines = stamper.prepare([_event(5)])
    assert out[0].seq == 5 and lines.count(b"\n") == 1
