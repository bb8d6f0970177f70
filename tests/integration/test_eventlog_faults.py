"""Disk faults: the file log fails loudly on I/O errors and recovery keeps every acknowledged event.

Syscalls are faulted where `eventlog.filelog` makes them (`eventlog.filelog.os.write` / `.fdatasync`
/ `.open`), and only for the WAL's own file descriptors, so the rest of the process is unaffected.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from domain.events import Event, RequestReceived, UsageRecorded, encode
from eventlog.base import EventLogFailed
from eventlog.filelog import FileEventLog
from eventlog.recovery import unlock_writer
from eventlog.replay import replay_events
from eventlog.wal import WAL_DIR, wal_files, wal_name

T0 = 1_767_225_600_000_000
TIMEOUT_S = 30.0


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, TIMEOUT_S)

    return asyncio.run(bounded())


def event(i: int) -> Event:
    env = dict(event_id=f"ev-{i:06d}", ts_us=T0 + i, request_id=f"req-{i}", ip="192.0.2.1", context="ctx")
    if i % 2:
        return UsageRecorded(**env, prompt_tokens=i, cost_micros=i)
    return RequestReceived(**env, endpoint="/v1/chat/completions")


def events(start: int, stop: int) -> list[Event]:
    return [event(i) for i in range(start, stop)]


def wal_lines(evs: list[Event], first_seq: int) -> bytes:
    """The bytes the writer would have put in the WAL for these events."""
    return b"".join(encode(replace(e, seq=first_seq + n)) + b"\n" for n, e in enumerate(evs))


def is_wal_fd(fd: int) -> bool:
    try:
        return f"/{WAL_DIR}/wal-" in os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False


class DiskFault:
    """Wraps a syscall: once `armed`, calls on a WAL file descriptor fail with `errno`.

    `short_first`: the first faulted `write` still writes half its bytes (a torn batch), then fails.
    """

    def __init__(self, real: Callable[..., Any], err: int, *, short_first: bool = False) -> None:
        self.real, self.err, self.short_first = real, err, short_first
        self.armed = False
        self.hits = 0

    def __call__(self, fd: int, *args: Any) -> Any:
        if not (self.armed and is_wal_fd(fd)):
            return self.real(fd, *args)
        self.hits += 1
        if self.short_first and self.hits == 1:
            data = bytes(args[0])
            return self.real(fd, data[: len(data) // 2])
        raise OSError(self.err, os.strerror(self.err))


def ids(evs: list[Event]) -> list[str]:
    return [e.event_id for e in evs]


def assert_gapless(evs: list[Event]) -> None:
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))


async def reopen_and_check(data_dir: Path, acked: list[Event]) -> list[Event]:
    """Recovery keeps every acknowledged event, `seq` stays gapless, and appends work again."""
    log = await FileEventLog.open(data_dir, rotate_events=8)
    try:
        replayed = list(log.replay())
        assert ids(replayed)[: len(acked)] == ids(acked)
        assert replayed[: len(acked)] == acked
        assert_gapless(replayed)
        assert log.last_seq == len(replayed)
        more = await log.append(events(900, 903))
        assert [e.seq for e in more] == [len(replayed) + 1, len(replayed) + 2, len(replayed) + 3]
        assert list(log.replay()) == replayed + more
        return replayed
    finally:
        await log.close()


@pytest.mark.parametrize(
    ("syscall", "err", "short_first"),
    [
        ("fdatasync", errno.EIO, False),
        ("write", errno.EIO, False),
        ("write", errno.ENOSPC, False),
        ("write", errno.EIO, True),
    ],
    ids=["fdatasync-EIO", "write-EIO", "write-ENOSPC", "short-write-then-EIO"],
)
def test_io_error_fails_appends_loudly_and_keeps_acked_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    syscall: str, err: int, short_first: bool,
) -> None:
    fault = DiskFault(getattr(os, syscall), err, short_first=short_first)
    monkeypatch.setattr(f"eventlog.filelog.os.{syscall}", fault)

    async def scenario() -> list[Event]:
        log = await FileEventLog.open(tmp_path, rotate_events=8)
        try:
            acked = [e for start in range(0, 30, 3) for e in await log.append(events(start, start + 3))]
            assert_gapless(acked)
            fault.armed = True
            with pytest.raises(EventLogFailed) as info:
                await log.append(events(30, 34))
            message = str(info.value)
            assert f"event log write failed in {tmp_path / WAL_DIR}" in message
            assert os.strerror(err) in message and "refused until the log is reopened" in message
            # the log stays failed: later appends, one by one or many at once, raise at once
            with pytest.raises(EventLogFailed):
                await log.append(events(34, 35))
            results = await asyncio.gather(*(log.append([event(i)]) for i in range(40, 50)),
                                           return_exceptions=True)
            assert all(isinstance(r, EventLogFailed) for r in results), results
            # every acknowledged event is still readable beside the failed writer
            seen = ids(list(replay_events(tmp_path)))
            assert seen[: len(acked)] == ids(acked)
            assert set(seen) <= set(ids(acked + events(30, 34)))
            return acked
        finally:
            fault.armed = False
            await asyncio.wait_for(log.close(), 10)  # a failed log closes without hanging

    acked = run(scenario())
    assert fault.hits >= 1
    assert any(r.levelno == logging.ERROR and "event log write failed" in r.getMessage() for r in caplog.records)
    replayed = run(reopen_and_check(tmp_path, acked))
    # what recovery keeps beyond the acknowledged events: whole lines of the failed batch, never more
    assert ids(replayed[len(acked):]) == ids(events(30, 30 + len(replayed) - len(acked)))


def closed_log_with_tail(data_dir: Path, tail: bytes) -> list[Event]:
    """A closed log of 20 events whose live WAL file then got `tail` (as a crash would leave it)."""

    async def build() -> list[Event]:
        log = await FileEventLog.open(data_dir, rotate_events=8)
        try:
            return await log.append(events(0, 20))
        finally:
            await log.close()

    acked: list[Event] = run(build())
    live = data_dir / WAL_DIR / wal_name(21)
    assert wal_files(data_dir) == [live] and live.stat().st_size == 0
    live.write_bytes(tail)
    return acked


HALF_LINE = wal_lines(events(23, 24), 24)[:57]


@pytest.mark.parametrize(
    "torn",
    [b"garbage-without-newline", HALF_LINE, b"\x00" * 512, HALF_LINE[:-1] + b"\xff\xfe"],
    ids=["garbage", "half-a-line", "zero-fill", "half-line-invalid-utf8"],
)
@pytest.mark.parametrize("complete_before", [0, 3])
def test_a_torn_last_wal_line_is_dropped_on_reopen(tmp_path: Path, torn: bytes, complete_before: int) -> None:
    written = events(20, 20 + complete_before)  # whole lines that reached the disk before the crash
    acked = closed_log_with_tail(tmp_path, wal_lines(written, 21) + torn)
    replayed = run(reopen_and_check(tmp_path, acked))
    assert ids(replayed) == ids(acked + written)
    assert not list((tmp_path / WAL_DIR).glob("*.corrupt")), "a torn last line is not corruption"


def corrupt_middle(data_dir: Path) -> tuple[list[Event], bytes]:
    good = events(20, 22)
    bad = b'{"kind":"usage.recorded.v1","event_id":"ev-0\x00\x00\x00 disk garbage\n'
    after = wal_lines(events(23, 25), 24)
    return closed_log_with_tail(data_dir, wal_lines(good, 21) + bad + after), bad + after


def test_a_corrupt_line_in_the_middle_is_cut_and_kept_aside(tmp_path: Path) -> None:
    acked, cut = corrupt_middle(tmp_path)
    replayed = run(reopen_and_check(tmp_path, acked))
    assert ids(replayed) == ids(acked + events(20, 22))  # the valid prefix, nothing after the bad line
    kept = list((tmp_path / WAL_DIR).glob("*.corrupt"))
    assert [p.name for p in kept] == [wal_name(21) + ".corrupt"]
    assert kept[0].read_bytes() == cut


def test_cutting_a_corrupt_middle_line_is_logged_for_the_operator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acked, _ = corrupt_middle(tmp_path)
    caplog.set_level(logging.WARNING)
    run(reopen_and_check(tmp_path, acked))
    assert any(".corrupt" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)


def test_a_failed_rotation_still_closes_cleanly_and_releases_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    armed = False

    def open_fails_for_wal(path: Any, *args: Any, **kwargs: Any) -> int:
        if armed and f"/{WAL_DIR}/wal-" in str(path):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("eventlog.filelog.os.open", open_fails_for_wal)

    async def scenario() -> None:
        nonlocal armed
        log = await FileEventLog.open(tmp_path, rotate_events=4)
        closed = False
        try:
            acked = await log.append(events(0, 3))
            armed = True
            acked += await log.append(events(3, 5))  # durable; the rotation after it fails
            with pytest.raises(EventLogFailed, match="Input/output error"):
                for i in range(5, 50):
                    await log.append([event(i)])
                    await asyncio.sleep(0.01)
            armed = False
            await asyncio.wait_for(log.close(), 10)
            closed = True
        finally:
            armed = False
            if not closed:  # clean up what close() left behind (only while the bug lives)
                log._sealing.shutdown(wait=False)
                unlock_writer(log._lock_fd)
        again = await FileEventLog.open(tmp_path)
        try:
            assert ids(list(again.replay()))[:5] == ids(acked)
        finally:
            await again.close()

    run(scenario())


def test_a_new_wal_files_name_is_durable_before_anything_is_written_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A power cut may keep a file's data but lose its directory entry unless the directory is
    fsynced: each WAL file's directory is, between its creation and its first write."""
    import eventlog.filelog as filelog

    steps: list[tuple[str, object]] = []
    real_open, real_write, real_fsync_dir = os.open, os.write, filelog.fsync_dir

    def opening(path: Any, flags: int, *args: Any) -> int:
        fd = real_open(path, flags, *args)
        if f"/{WAL_DIR}/wal-" in str(path) and flags & os.O_CREAT:
            steps.append(("created", os.path.basename(path)))
        return fd

    def writing(fd: int, data: Any) -> int:
        if is_wal_fd(fd):
            steps.append(("written", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_write(fd, data)

    def syncing_dir(path: Path) -> None:
        if path.name == WAL_DIR:
            steps.append(("dir synced", frozenset(os.listdir(path))))
        real_fsync_dir(path)

    monkeypatch.setattr("eventlog.filelog.os.open", opening)
    monkeypatch.setattr("eventlog.filelog.os.write", writing)
    monkeypatch.setattr("eventlog.filelog.fsync_dir", syncing_dir)

    async def scenario() -> None:
        log = await FileEventLog.open(tmp_path, rotate_events=8)
        try:
            for start in range(0, 40, 4):
                await log.append(events(start, start + 4))
        finally:
            await log.close()

    run(scenario())
    created = [name for kind, name in steps if kind == "created"]
    assert len(created) >= 3  # the first file and rotations
    for name in created:
        made = steps.index(("created", name))
        written = [i for i, step in enumerate(steps) if step == ("written", name)]
        synced = [i for i, (kind, seen) in enumerate(steps)
                  if kind == "dir synced" and i > made and name in seen]  # type: ignore[operator]
        assert synced, f"{name}: its directory was never fsynced after it was made"
        assert not written or synced[0] < written[0], f"{name}: written before its name was durable"
