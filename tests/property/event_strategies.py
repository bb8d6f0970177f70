"""Hypothesis strategies for every event kind, derived from the event structs themselves.

Each field's strategy follows its msgspec type and constraints (bounds, literals, optional, lists,
nested structs), so a new kind or field is covered the day it is added. Strings are any Unicode text
(newlines, quotes, NUL, emoji); only constrained strings need a strategy here (`PATTERNS`), and a new
pattern fails loudly until it gets one. Integers stay within int64, which the log stores.
"""

from __future__ import annotations

from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st
from msgspec.structs import replace

from domain.events import EVENT_TYPES, Event

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# a pattern constraint → a strategy for exactly the strings it accepts
PATTERNS: dict[str, st.SearchStrategy[str]] = {
    r"^[A-Za-z0-9_-]{0,64}$": st.from_regex(r"[A-Za-z0-9_-]{0,64}", fullmatch=True),
    r"^[A-Za-z0-9_-]{0,64}\Z": st.from_regex(r"[A-Za-z0-9_-]{0,64}", fullmatch=True),
}

texts = st.text(max_size=16)


def _int_bounds(t: mi.IntType) -> tuple[int, int]:
    low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else INT64_MIN)
    high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else INT64_MAX)
    return max(low, INT64_MIN), min(high, INT64_MAX)


def _str_strategy(t: mi.StrType) -> st.SearchStrategy[str]:
    if t.pattern is not None:
        if t.pattern not in PATTERNS:
            raise KeyError(f"no strategy for the string pattern {t.pattern!r}: add one to PATTERNS")
        return PATTERNS[t.pattern]
    return st.text(min_size=t.min_length or 0, max_size=max(t.min_length or 0, min(t.max_length or 16, 16)))


def for_type(t: mi.Type) -> st.SearchStrategy[Any]:
    """Valid values of one msgspec type."""
    match t:
        case mi.UnionType():
            return st.one_of(*[for_type(x) for x in t.types])
        case mi.NoneType():
            return st.none()
        case mi.BoolType():
            return st.booleans()
        case mi.IntType():
            low, high = _int_bounds(t)
            return st.integers(min_value=low, max_value=high)
        case mi.StrType():
            return _str_strategy(t)
        case mi.LiteralType():
            return st.sampled_from(t.values)
        case mi.ListType():
            return st.lists(for_type(t.item_type), max_size=3)
        case mi.StructType():
            return st.builds(t.cls, **{f.name: for_type(f.type) for f in t.fields})
    raise TypeError(f"no strategy for the event field type {t!r}")


def events_of(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Any valid event of one kind, every field drawn (defaults included)."""
    return for_type(mi.type_info(cls))


KIND_STRATEGIES: dict[type[Event], st.SearchStrategy[Event]] = {cls: events_of(cls) for cls in EVENT_TYPES}
any_event: st.SearchStrategy[Event] = st.one_of(*KIND_STRATEGIES.values())

# few distinct ids: so a list of events also holds retries of the same event_id
colliding_ids = st.sampled_from(["a", "b", "c", "0190-ffff", "é\n\"x"])


def event_lists(*, max_size: int = 20, unique_ids: bool = False) -> st.SearchStrategy[list[Event]]:
    if unique_ids:
        return st.lists(any_event, max_size=max_size, unique_by=lambda e: e.event_id)
    retried = st.tuples(any_event, colliding_ids).map(lambda p: replace(p[0], event_id=p[1]))
    return st.lists(st.one_of(any_event, retried), max_size=max_size)
