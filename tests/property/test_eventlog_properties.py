"""The log against an oracle: what goes in comes back (modulo `seq` stamping), and a torn WAL
recovers to exactly its complete lines.

The oracle is a few lines of obvious Python: keep the first event per `event_id`, number them 1..n.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from domain.events import EVENT_TYPES, Event, RequestReceived, decode, encode, kind_of
from eventlog.columnar import table_to_events, wal_to_table
from eventlog.filelog import FileEventLog
from eventlog.replay import replay_events
from eventlog.wal import WAL_DIR, wal_name
from tests.property.event_strategies import KIND_STRATEGIES, event_lists, events_of

FILE_IO = settings(max_examples=30, deadline=None)  # each example opens a real log on disk
TIMEOUT_S = 60.0


def oracle(stream: list[Event]) -> list[Event]:
    """The log's content after appending `stream`: first event per id, `seq` 1..n."""
    first: dict[str, Event] = {}
    for event in stream:
        first.setdefault(event.event_id, event)
    return [replace(e, seq=n) for n, e in enumerate(first.values(), start=1)]


def batches(stream: list[Event], sizes: list[int]) -> Iterator[list[Event]]:
    start = 0
    for size in sizes:
        if start >= len(stream):
            return
        yield stream[start:start + size]
        start += size
    if start < len(stream):
        yield stream[start:]


@contextmanager
def scratch_dir(factory: pytest.TempPathFactory) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=factory.getbasetemp()) as name:
        yield Path(name)


def run(coro: object) -> object:
    async def bounded() -> object:
        return await asyncio.wait_for(coro, TIMEOUT_S)  # type: ignore[arg-type]

    return asyncio.run(bounded())


# ---- the strategies themselves ------------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.__struct_config__.tag)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_generated_events_of_every_kind_are_valid(cls: type[Event], data: st.DataObject) -> None:
    event = data.draw(events_of(cls))
    assert kind_of(event) == cls.__struct_config__.tag
    assert decode(encode(event)) == event  # validates every constraint


# ---- round trips --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(events=event_lists(max_size=30, unique_ids=True))
def test_wal_lines_round_trip_through_arrow(events: list[Event]) -> None:
    stamped = oracle(events)
    data = b"".join(encode(e) + b"\n" for e in stamped)
    table = wal_to_table(data)
    assert table.num_rows == len(stamped)
    assert list(table_to_events(table)) == stamped


@FILE_IO
@given(stream=event_lists(max_size=25), sizes=st.lists(st.integers(1, 8), max_size=10),
       read=st.sampled_from(["unsealed", "flush_sealed", "compact", "close"]))
def test_any_event_sequence_round_trips_through_the_file_log(
    tmp_path_factory: pytest.TempPathFactory, stream: list[Event], sizes: list[int], read: str
) -> None:
    expected = oracle(stream)

    async def scenario(data_dir: Path) -> list[Event]:
        log = await FileEventLog.open(data_dir, rotate_events=7, rotate_s=60.0, compact_after=1_000)
        try:
            acked = [e for batch in batches(stream, sizes) for e in await log.append(batch)]
            assert [e.event_id for e in acked] == [e.event_id for e in stream]
            assert log.last_seq == len(expected)
            if read in ("flush_sealed", "compact"):
                await log.flush_sealed()
            if read == "compact":
                await log.compact()
            if read != "close":
                return list(log.replay())
        finally:
            await log.close()
        return list(replay_events(data_dir))

    with scratch_dir(tmp_path_factory) as data_dir:
        assert run(scenario(data_dir)) == expected


@FILE_IO
@given(events=event_lists(max_size=12, unique_ids=True), data=st.data())
def test_a_torn_wal_recovers_to_exactly_its_complete_lines(
    tmp_path_factory: pytest.TempPathFactory, events: list[Event], data: st.DataObject
) -> None:
    stamped = oracle(events)
    blob = b"".join(encode(e) + b"\n" for e in stamped)
    cut = data.draw(st.integers(0, len(blob)), label="cut")
    garbage = data.draw(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), label="garbage")
    complete = blob[:cut].count(b"\n")

    async def scenario(data_dir: Path) -> tuple[list[Event], Event]:
        log = await FileEventLog.open(data_dir)
        try:
            recovered = list(log.replay())
            assert log.last_seq == complete
            [new] = await log.append([RequestReceived(event_id="after-recovery", ts_us=0, endpoint="/x")])
            return recovered, new
        finally:
            await log.close()

    with scratch_dir(tmp_path_factory) as data_dir:
        (data_dir / WAL_DIR).mkdir()
        (data_dir / WAL_DIR / wal_name(1)).write_bytes(blob[:cut] + garbage)
        recovered, new = run(scenario(data_dir))  # type: ignore[misc]
        assert recovered == stamped[:complete]
        assert new.seq == complete + 1
        assert not list((data_dir / WAL_DIR).glob("*.corrupt"))
        assert list(replay_events(data_dir)) == stamped[:complete] + [new]


@settings(max_examples=5, deadline=None, database=None)
@given(st.data())
def test_strategies_cover_every_kind(data: st.DataObject) -> None:
    """`any_event` is built from one strategy per kind, and each draws events of its own kind."""
    assert set(KIND_STRATEGIES) == set(EVENT_TYPES)
    for cls, strategy in KIND_STRATEGIES.items():
        assert type(data.draw(strategy)) is cls

