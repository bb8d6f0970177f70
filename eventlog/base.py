"""The `EventLog` seam: what every log (in-memory, local files, a shared database) promises."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from domain.events import Event


class EventLogError(Exception):
    """Infrastructure failure of the log; callers must not treat the events as durable."""


class EventLogFailed(EventLogError):
    """The log hit an I/O error and refuses appends until it is reopened (recovery runs then)."""


class EventLogClosed(EventLogError):
    """Append after close."""


class WriterLocked(EventLogError):
    """Another process already writes this data directory (one ledger writer per directory)."""


class EventLog(Protocol):
    """Append-only, durable-on-return event log with replay deduplicated by `event_id`."""

    async def append(self, events: Sequence[Event]) -> list[Event]:
        """Validate all, stamp `seq`, persist; returns the stamped events once durable.

        All-or-nothing per call: a validation error writes nothing. An event whose `event_id` was
        appended recently is not written twice (it comes back with its first `seq`).
        """
        ...

    def submit(self, events: Sequence[Event]) -> tuple[list[Event], asyncio.Future[None]]:
        """Like `append`, but returns at once; the future resolves when the events are durable."""
        ...

    def replay(
        self,
        after_seq: int = 0,
        since_ts_us: int | None = None,
        kinds: Iterable[str] | None = None,
    ) -> Iterator[Event]:
        """Acknowledged events in `seq` order, each `event_id` once."""
        ...

    @property
    def last_seq(self) -> int: ...

    async def close(self) -> None: ...
