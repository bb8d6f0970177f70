"""The local, durable `EventLog`: JSONL WAL with group commit, rotated into Parquet segments.

One writer task owns the WAL file. Appenders validate and stamp synchronously, queue their bytes and
wait; the writer takes everything queued, does one `write` + `fdatasync` in an I/O thread, then
acknowledges the whole batch. An append that returned is durable. Any I/O error fails the log loudly:
it refuses appends until reopened (recovery then keeps every acknowledged event).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from domain.events import Event
from eventlog import compaction
from eventlog.base import EventLogClosed, EventLogFailed
from eventlog.recovery import lock_writer, recover, unlock_writer
from eventlog.segments import Sealer
from eventlog.stamping import Stamper
from eventlog.wal import WAL_DIR, wal_files, wal_name

log = logging.getLogger("aibroker.eventlog")
RECENT_IDS_ON_OPEN = 20_000


class FileEventLog:
    """Use `await FileEventLog.open(data_dir)`; `await log.close()` seals the WAL."""

    def __init__(self, data_dir: Path, *, rotate_events: int, rotate_s: float,
                 max_pending: int, compact_after: int) -> None:
        self.data_dir = data_dir
        self._rotate_events, self._rotate_s = rotate_events, rotate_s
        self._max_pending, self._compact_after = max_pending, compact_after
        self._compact_in_child = True
        self._pending: list[tuple[bytes, int, asyncio.Future[None]]] = []
        self._pending_events = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="wal-io")
        self._sealing = ThreadPoolExecutor(1, thread_name_prefix="wal-seal")
        self._failure: EventLogFailed | None = None
        self._closing = False
        self.sealer = Sealer(data_dir)
        self._lock_fd = -1
        self._fd = -1
        self._file_events = 0
        self._file_opened = 0.0
        self._written_through = 0
        self._stamper = Stamper()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, data_dir: str | Path, *, rotate_events: int = 10_000, rotate_s: float = 1.0,
                   max_pending: int = 65_536, compact_after: int = 256,
                   compact_in_child: bool = True) -> FileEventLog:
        path = Path(data_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        self = cls(path, rotate_events=rotate_events, rotate_s=rotate_s,
                   max_pending=max_pending, compact_after=compact_after)
        self._compact_in_child = compact_in_child  # automatic compaction: DuckDB stays out of this process
        self._lock_fd = lock_writer(path)
        try:
            next_seq = await asyncio.to_thread(recover, path, self.sealer)
        except BaseException:
            unlock_writer(self._lock_fd)
            raise
        self._stamper.next_seq = next_seq
        await asyncio.to_thread(self._remember_recent, next_seq - 1)
        self._written_through = next_seq - 1
        self._open_file()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="wal-writer")
        return self

    def _remember_recent(self, last_seq: int, count: int = RECENT_IDS_ON_OPEN) -> None:
        """Reload the newest event ids, so a caller retrying across a restart is not stored twice."""
        if last_seq <= 0:
            return
        from eventlog.replay import replay_batches

        for batch in replay_batches(self.data_dir, after_seq=max(0, last_seq - count), columns=["event_id", "seq"]):
            self._stamper.remember(dict(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())))

    # ---- appending ------------------------------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> list[Event]:
        self._check_open()
        while self._pending_events >= self._max_pending:
            self._space.clear()
            await self._space.wait()
            self._check_open()
        out, fut = self.submit(events)
        await fut  # a cancelled caller's events are still written
        return out

    def submit(self, events: Sequence[Event]) -> tuple[list[Event], asyncio.Future[None]]:
        """Stamp and queue now (order is fixed at this call); the future resolves once durable.

        No back-pressure wait: for events that ride along a request already admitted.
        """
        self._check_open()
        out, lines = self._stamper.prepare(events)  # validates first: a bad event writes nothing
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((b"".join(lines), len(lines), fut))
        self._pending_events += len(lines)
        self._wake.set()
        return out, fut

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise EventLogClosed("the event log is closed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._rotate_s)
                except TimeoutError:
                    pass
                self._wake.clear()
            await asyncio.sleep(0)  # let appenders woken by the last ack join this batch
            batch, self._pending = self._pending, []
            count = sum(n for _, n, _ in batch)
            try:
                if count:
                    await loop.run_in_executor(self._io, self._write, b"".join(c for c, _, _ in batch))
            except OSError as exc:
                self._fail(exc, batch)
                return
            self._written_through += count
            self._file_events += count
            self._pending_events -= count
            self._space.set()
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            if self._rotation_due():
                try:
                    await loop.run_in_executor(self._io, self._rotate)
                except OSError as exc:
                    self._fail(exc, [])
                    return

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fdatasync(self._fd)

    def _fail(self, exc: OSError, batch: list[tuple[bytes, int, asyncio.Future[None]]]) -> None:
        self._failure = EventLogFailed(
            f"event log write failed in {self.data_dir / WAL_DIR} ({exc.__class__.__name__}: "
            f"{exc.strerror or exc}); appends are refused until the log is reopened"
        )
        log.error("%s", self._failure)
        for _, _, fut in batch + self._pending:
            if not fut.done():
                fut.set_exception(self._failure)
        self._pending = []
        self._space.set()

    # ---- rotation, sealing, compaction ----------------------------------------------------------

    def _open_file(self) -> None:
        path = self.data_dir / WAL_DIR / wal_name(self._written_through + 1)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file_events = 0
        self._file_opened = time.monotonic()

    def _rotation_due(self) -> bool:
        if self._file_events == 0:
            return False
        return (self._file_events >= self._rotate_events
                or time.monotonic() - self._file_opened >= self._rotate_s)

    def _rotate(self) -> None:
        fd, self._fd = self._fd, -1  # never keep a closed descriptor (its number gets reused)
        os.close(fd)
        self._open_file()
        self._sealing.submit(self._seal_closed)

    def _seal_closed(self) -> None:
        """Seal closed WAL files in order; stop at the first failure so `seq` stays contiguous."""
        try:
            for path in wal_files(self.data_dir)[:-1]:  # the newest file is the live one
                self.sealer.seal(path)
            if compaction.segments_waiting(self.sealer) >= self._compact_after:
                compaction.compact(self.sealer, in_child=self._compact_in_child)
            pa.default_memory_pool().release_unused()  # Arrow's pool keeps freed buffers otherwise
        except Exception:  # keep the WAL file; the next rotation or recovery seals it
            log.exception("sealing the WAL into Parquet failed; will retry")

    async def compact(self) -> None:
        """Merge sealed segments into date partitions now (normally automatic)."""
        await asyncio.get_running_loop().run_in_executor(self._sealing, compaction.compact, self.sealer)

    async def flush_sealed(self) -> None:
        """Rotate and seal everything acknowledged so far (tests, shutdown, benchmarks)."""
        loop = asyncio.get_running_loop()
        if self._file_events:
            await loop.run_in_executor(self._io, self._rotate)
        await loop.run_in_executor(self._sealing, self._seal_closed)

    # ---- reading, closing -----------------------------------------------------------------------

    def replay(self, after_seq: int = 0, since_ts_us: int | None = None,
               kinds: Iterable[str] | None = None) -> Iterator[Event]:
        from eventlog.replay import replay_events

        return replay_events(self.data_dir, after_seq=after_seq, since_ts_us=since_ts_us, kinds=kinds)

    @property
    def last_seq(self) -> int:
        return self._written_through

    @property
    def backlog(self) -> int:
        """Events queued but not yet durable."""
        return self._pending_events

    async def close(self) -> None:
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
        try:
            if self._failure is None:
                await self.flush_sealed()
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._io.shutdown()
            self._sealing.shutdown()
            unlock_writer(self._lock_fd)
