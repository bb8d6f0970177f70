"""Validation, `seq` stamping and retry de-duplication shared by every `EventLog` implementation."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from msgspec.structs import replace

from domain.events import EVENT_TYPES, Event, encode_lines, validate_lines

_KNOWN_TYPES = frozenset(EVENT_TYPES)
_EVENT_ID = attrgetter("event_id")  # (with `map`, the ids are read in C)


def _checked_lines(events: list[Event]) -> bytes:
    """WAL lines for `events`, checked against their types' constraints first (raises
    msgspec.ValidationError naming the path)."""
    if not events:
        return b""
    data = encode_lines(events)
    validate_lines(events, data)
    return data


class Stamper:
    """Hands out gapless `seq` numbers and remembers recent `event_id`s (bounded window).

    `prepare` validates the whole batch before any state changes, so a bad event writes nothing.
    The window is two generations of plain dicts: the newest `window // 2` to `window` ids are
    remembered, and forgetting is one swap per `window // 2` ids (no per-append eviction).
    """

    def __init__(self, next_seq: int = 1, window: int = 200_000) -> None:
        self.next_seq = next_seq
        self._young: dict[str, int] = {}
        self._old: dict[str, int] = {}
        self._generation = max(1, window // 2)

    def prepare(self, events: Sequence[Event]) -> tuple[list[Event], bytes]:
        """Returns (events as they stand in the log, WAL lines for the new ones: one per new
        event, each ending in a newline). `next_seq` moves on by the number of new events."""
        ids = list(map(_EVENT_ID, events)) if _KNOWN_TYPES.issuperset(map(type, events)) else None
        if ids is not None and len(set(ids)) == len(ids) and self._young.keys().isdisjoint(ids) \
                and self._old.keys().isdisjoint(ids):
            # every event new (a live request's): the checks above ran in C, the stamping below too
            first = self.next_seq
            end = first + len(ids)
            out = [replace(event, seq=seq) for event, seq in zip(events, range(first, end))]
            data = _checked_lines(out)
            self.next_seq = end
            young = self._young
            young.update(zip(ids, range(first, end)))
            if len(young) >= self._generation:
                self._old, self._young = young, {}
            return out, data  # type: ignore[return-value]
        return self._prepare_each(events)

    def _prepare_each(self, events: Sequence[Event]) -> tuple[list[Event], bytes]:
        """`prepare` one event at a time: retries, duplicates within the batch, foreign types."""
        out: list[Event] = []
        fresh: list[Event] = []
        batch_ids: dict[str, int] = {}
        seq = self.next_seq
        young, old = self._young, self._old
        for event in events:
            if not isinstance(event, Event):
                raise TypeError(f"append takes events, got {type(event).__name__}")
            event_id = event.event_id
            known = young.get(event_id)
            if known is None:
                known = old.get(event_id)
                if known is None and batch_ids:
                    known = batch_ids.get(event_id)
            if known is not None:
                out.append(replace(event, seq=known))
                continue
            stamped = replace(event, seq=seq)
            batch_ids[event_id] = seq
            out.append(stamped)
            fresh.append(stamped)
            seq += 1
        data = _checked_lines(fresh)
        # nothing above changed state: a bad event anywhere in the batch writes nothing
        self.next_seq = seq
        self._remember(batch_ids)
        return out, data

    def remember(self, ids: dict[str, int]) -> None:
        """Mark ids as already logged (their seq), e.g. the newest ones after a reopen."""
        self._remember(ids)

    def _remember(self, ids: dict[str, int]) -> None:
        young = self._young
        young.update(ids)
        if len(young) >= self._generation:
            self._old, self._young = young, {}

    def forget_from(self, seq: int) -> None:
        """Roll back stamping after a failed write so `seq` stays gapless."""
        self.next_seq = min(self.next_seq, seq)
        for ids in (self._young, self._old):
            for key in [k for k, v in ids.items() if v >= seq]:
                del ids[key]
