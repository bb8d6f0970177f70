"""The local, durable `EventLog`: JSONL WAL with group commit, rotated into Parquet segments.

One writer thread owns the WAL file. Appenders validate and stamp synchronously on the event loop,
queue their bytes and wait; the writer takes everything queued, does one `write` + `fdatasync`, then
hands the loop one callback that acknowledges the whole batch. An append that returned is durable.
A thread (not a coroutine hopping through an executor per batch) keeps the loop's share of a batch
to one queue append per caller and one callback. Any I/O error fails the log loudly: it refuses
appends until reopened (recovery then keeps every acknowledged event).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from domain.events import Event
from eventlog import compaction
from eventlog.base import EventLogClosed, EventLogFailed
from eventlog.fsutil import fsync_dir
from eventlog.recovery import lock_writer, recover, unlock_writer
from eventlog.segments import Sealer
from eventlog.stamping import Stamper
from eventlog.wal import WAL_DIR, wal_files, wal_name

log = logging.getLogger("aibroker.eventlog")
RECENT_IDS_ON_OPEN = 20_000
RELEASE_EVERY_S = 30.0  # give Arrow's freed memory back to the OS at most this often
# (WAL bytes, event count, future acknowledged once durable, "rotate after this batch")
Entry = tuple[bytes, int, "asyncio.Future[None]", bool]


def _drain(queue: deque[Entry]) -> list[Entry]:
    """Everything queued now, oldest first (appenders may keep appending meanwhile)."""
    out = []
    try:
        while True:
            out.append(queue.popleft())
    except IndexError:
        return out


class FileEventLog:
    """Use `await FileEventLog.open(data_dir)`; `await log.close()` seals the WAL."""

    def __init__(self, data_dir: Path, *, rotate_events: int, rotate_s: float,
                 max_pending: int, compact_after: int) -> None:
        self.data_dir = data_dir
        self._rotate_events, self._rotate_s = rotate_events, rotate_s
        self._max_pending, self._compact_after = max_pending, compact_after
        self._compact_in_child = True
        # Shared with the writer thread: deque appends and pops are atomic. An appender wakes the
        # writer only when it sleeps (`_idle`), by releasing `_wake` (a lock used as a binary
        # semaphore: one C call, where `Condition.notify` is several Python ones per append).
        self._queue: deque[Entry] = deque()
        self._wake = threading.Lock()
        self._wake.acquire()  # held = no wake-up pending
        self._idle = False  # the writer is about to sleep; it looks at the queue after setting this
        self._stop = False  # writer thread: drain the queue, then exit
        self._pending_events = 0  # loop side: queued, not yet acknowledged
        self._space = asyncio.Event()
        self._sealing = ThreadPoolExecutor(1, thread_name_prefix="wal-seal")
        self._released_at = 0.0
        self._failure: EventLogFailed | None = None
        self._closing = False
        self.sealer = Sealer(data_dir)
        self._lock_fd = -1
        self._fd = -1
        self._file_events = 0  # writer thread side
        self._file_opened = 0.0
        self._next_wal_seq = 1  # writer thread side: seq of the next event written
        self._written_through = 0  # loop side: acknowledged through this seq
        self._stamper = Stamper()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

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
        self._next_wal_seq = next_seq
        self._open_file()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._writer, name="wal-writer", daemon=True)
        self._thread.start()
        return self

    def _remember_recent(self, last_seq: int, count: int = RECENT_IDS_ON_OPEN) -> None:
        """Reload the newest event ids, so a caller retrying across a restart is not stored twice."""
        if last_seq <= 0:
            return
        from eventlog import scan
        from eventlog.reader import take_snapshot

        recent = scan.table(take_snapshot(self.data_dir), ["event_id", "seq"], scan.where(after_seq=max(0, last_seq - count)))
        self._stamper.remember(dict(zip(recent.column(0).to_pylist(), recent.column(1).to_pylist())))

    # ---- appending (event loop) -----------------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> list[Event]:
        while self._pending_events >= self._max_pending:
            self._check_open()
            self._space.clear()
            await self._space.wait()
        out, fut = self.submit(events)  # (checks that the log is open)
        await fut  # a cancelled caller's events are still written
        return out

    def submit(self, events: Sequence[Event]) -> tuple[list[Event], asyncio.Future[None]]:
        """Stamp and queue now (order is fixed at this call); the future resolves once durable.

        No back-pressure wait: for events that ride along a request already admitted.
        """
        if self._failure is not None or self._closing:
            self._check_open()
        stamper = self._stamper
        first = stamper.next_seq
        out, lines = stamper.prepare(events)  # validates first: a bad event writes nothing
        count = stamper.next_seq - first
        # the loop the log was opened on (`get_running_loop()` makes a getpid syscall per call)
        fut: asyncio.Future[None] = (self._loop or asyncio.get_running_loop()).create_future()
        self._enqueue((lines, count, fut, False))
        self._pending_events += count
        return out, fut

    def _enqueue(self, entry: Entry) -> None:
        self._queue.append(entry)
        if self._idle:  # set before the writer's last look at the queue: one of us sees the other
            self._wake_writer()

    def _wake_writer(self) -> None:
        if self._wake.locked():  # else a wake-up is already pending
            try:
                self._wake.release()
            except RuntimeError:  # ... it just became one
                pass

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise EventLogClosed("the event log is closed")

    def _acked(self, batch: list[Entry], count: int) -> None:
        """On the loop: a batch is durable (and rotated, if asked)."""
        self._written_through += count
        self._pending_events -= count
        self._space.set()
        for _, _, fut, _ in batch:
            if not fut.done():
                fut.set_result(None)

    def _fail(self, exc: BaseException, batch: list[Entry]) -> None:
        """On the loop: the writer stopped; every queued append fails, and so will later ones."""
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        self._failure = EventLogFailed(
            f"event log write failed in {self.data_dir / WAL_DIR} ({exc.__class__.__name__}: "
            f"{detail}); appends are refused until the log is reopened"
        )
        log.error("%s", self._failure)
        queued = _drain(self._queue)
        for _, _, fut, _ in batch + queued:
            if not fut.done():
                fut.set_exception(self._failure)
        self._space.set()

    # ---- the writer thread ----------------------------------------------------------------------

    def _writer(self) -> None:
        loop = self._loop
        assert loop is not None
        batch: list[Entry] = []
        try:
            while True:
                if not self._queue:
                    self._idle = True
                    if not self._queue and not self._stop:
                        self._wake.acquire(timeout=self._until_rotation())  # a stale wake-up only loops once
                    self._idle = False
                batch = _drain(self._queue)
                stop = self._stop and not batch
                if stop:
                    return
                count = sum(n for _, n, _, _ in batch)
                if count:
                    self._write(b"".join(data for data, _, _, _ in batch))
                    self._next_wal_seq += count
                    self._file_events += count
                asked = [entry for entry in batch if entry[3]]  # flush_sealed: "rotate now"
                plain = batch if not asked else [entry for entry in batch if not entry[3]]
                if plain:
                    loop.call_soon_threadsafe(self._acked, plain, count)
                batch = asked  # a failed rotation fails these, never the events acknowledged above
                if self._rotation_due() or (asked and self._file_events):
                    self._rotate()
                if asked:
                    loop.call_soon_threadsafe(self._acked, asked, 0)
                batch = []
        except BaseException as exc:  # an I/O error (or anything else) must fail appends, not hang them
            try:
                loop.call_soon_threadsafe(self._fail, exc, batch)
            except RuntimeError:  # the loop is gone (a process ending without close): nobody waits
                pass

    def _until_rotation(self) -> float:
        if not self._file_events:
            return self._rotate_s
        return max(0.0, self._file_opened + self._rotate_s - time.monotonic())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fdatasync(self._fd)

    # ---- rotation, sealing, compaction ----------------------------------------------------------

    def _open_file(self) -> None:
        """A new WAL file, its directory entry made durable before any event in it is acknowledged
        (the file's own `fdatasync` does not promise its name survives a power cut)."""
        path = self.data_dir / WAL_DIR / wal_name(self._next_wal_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_dir(path.parent)
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
            if time.monotonic() - self._released_at >= RELEASE_EVERY_S:  # a trim per seal cost ~10 % throughput
                pa.default_memory_pool().release_unused()  # Arrow's pool keeps freed buffers otherwise
                self._released_at = time.monotonic()
        except Exception:  # keep the WAL file; the next rotation or recovery seals it
            log.exception("sealing the WAL into Parquet failed; will retry")

    async def compact(self) -> None:
        """Merge sealed segments into date partitions now (normally automatic)."""
        await asyncio.get_running_loop().run_in_executor(self._sealing, compaction.compact, self.sealer)

    async def flush_sealed(self) -> None:
        """Rotate and seal everything acknowledged so far (tests, shutdown, benchmarks)."""
        loop = asyncio.get_running_loop()
        if self._thread is not None and self._thread.is_alive() and self._failure is None:
            rotated: asyncio.Future[None] = loop.create_future()
            self._enqueue((b"", 0, rotated, True))
            await rotated
        elif self._file_events:
            await loop.run_in_executor(self._sealing, self._rotate)
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
        if self._thread is None:
            return
        self._closing = True
        self._stop = True
        self._wake_writer()
        await asyncio.to_thread(self._thread.join)
        await asyncio.sleep(0)  # run the writer's last acknowledgements
        self._thread = None
        try:
            if self._failure is None:
                await self.flush_sealed()
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._sealing.shutdown()
            unlock_writer(self._lock_fd)
