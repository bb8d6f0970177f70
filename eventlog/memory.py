"""The in-memory reference `EventLog`: the contract's simplest implementation, for unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence

from domain.events import Event, kind_of
from eventlog.base import EventLogClosed
from eventlog.stamping import Stamper


class MemoryEventLog:
    def __init__(self) -> None:
        self._events: list[Event] = []
        self._stamper = Stamper()
        self._closed = False

    async def append(self, events: Sequence[Event]) -> list[Event]:
        out, fut = self.submit(events)
        await fut
        return out

    def submit(self, events: Sequence[Event]) -> tuple[list[Event], asyncio.Future[None]]:
        if self._closed:
            raise EventLogClosed("the event log is closed")
        first_new = self._stamper.next_seq
        out, _ = self._stamper.prepare(events)
        for event in out:
            if event.seq >= first_new and event.seq > self.last_seq:
                self._events.append(event)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return out, fut

    def replay(
        self,
        after_seq: int = 0,
        since_ts_us: int | None = None,
        kinds: Iterable[str] | None = None,
    ) -> Iterator[Event]:
        wanted = set(kinds) if kinds is not None else None
        for event in list(self._events):
            if event.seq <= after_seq or (since_ts_us is not None and event.ts_us < since_ts_us):
                continue
            if wanted is None or kind_of(event) in wanted:
                yield event

    @property
    def last_seq(self) -> int:
        return self._events[-1].seq if self._events else 0

    async def close(self) -> None:
        self._closed = True
