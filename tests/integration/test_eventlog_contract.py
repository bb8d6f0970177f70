"""The `EventLog` contract (DESIGN.md §4, §10): one suite, every implementation must pass it.

The first part runs against each implementation; the second holds what only the local file log
promises (reopen, the writer lock, sealing and compaction, the DuckDB read side, the `aibroker` CLI).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from msgspec.structs import replace

from domain.events import (
    Candidate,
    Event,
    RequestReceived,
    RequestRejected,
    RouteDecided,
    UsageRecorded,
    encode,
    kind_of,
)
from eventlog import manifest as mf
from eventlog.base import EventLog, EventLogClosed, WriterLocked
from eventlog.filelog import FileEventLog
from eventlog.memory import MemoryEventLog
from eventlog.reader import connect
from eventlog.wal import WAL_DIR, wal_files, wal_name

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SCENARIO_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 60.0


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, SCENARIO_TIMEOUT_S)

    return asyncio.run(bounded())


def event(i: int, *, ts_us: int | None = None) -> Event:
    """The i-th event of a mixed stream: requests, routes, usage and rejections over a few contexts."""
    env = dict(event_id=f"ev-{i:06d}", ts_us=T0 + i * 1_000 if ts_us is None else ts_us,
               source="test", request_id=f"req-{i // 4}", ip=f"192.0.2.{i % 5}", context=f"ctx{i % 3}")
    match i % 4:
        case 0:
            return RequestReceived(**env, endpoint="/v1/chat/completions", model_requested="auto")
        case 1:
            return RouteDecided(**env, strategy="cheapest", provider="groq", model="m1")
        case 2:
            return UsageRecorded(**env, provider="groq", model="m1", prompt_tokens=i, completion_tokens=2 * i,
                                 cost_micros=10 * i)
        case _:
            return RequestRejected(**env, code="rate_limit_requests", status=429, limit=60, observed=61)


def events(start: int, stop: int) -> list[Event]:
    return [event(i) for i in range(start, stop)]


def stamped(evs: list[Event], first_seq: int = 1) -> list[Event]:
    return [replace(e, seq=first_seq + n) for n, e in enumerate(evs)]


Opener = Callable[[], Awaitable[EventLog]]


async def open_file_log(data_dir: Path, **options: Any) -> FileEventLog:
    """A small rotation so the contract also crosses sealed segments and the unsealed tail."""
    return await FileEventLog.open(data_dir, **{"rotate_events": 7, "compact_after": 3, **options})


@pytest.fixture(params=["memory", "file"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "memory":
        async def open_memory() -> EventLog:
            return MemoryEventLog()
        return open_memory

    async def open_file() -> EventLog:
        return await open_file_log(tmp_path / "log")
    return open_file


def in_log(opener: Opener, body: Callable[[EventLog], Awaitable[Any]]) -> Any:
    async def scenario() -> Any:
        log = await opener()
        try:
            return await body(log)
        finally:
            await log.close()

    return run(scenario())


# ---- the contract: every implementation --------------------------------------------------------


def test_append_returns_stamped_events_with_gapless_seq_from_1(opener: Opener) -> None:
    async def body(log: EventLog) -> None:
        assert log.last_seq == 0
        out: list[Event] = []
        for start, stop in [(0, 1), (1, 4), (4, 20), (20, 21)]:
            got = await log.append(events(start, stop))
            assert got == stamped(events(start, stop), first_seq=start + 1)
            out += got
        assert [e.seq for e in out] == list(range(1, 22))
        assert log.last_seq == 21

    in_log(opener, body)


def test_append_of_an_empty_batch_changes_nothing(opener: Opener) -> None:
    async def body(log: EventLog) -> None:
        await log.append(events(0, 3))
        assert await log.append([]) == []
        assert log.last_seq == 3
        assert (await log.append(events(3, 4)))[0].seq == 4

    in_log(opener, body)


def test_replay_returns_the_appended_events_equal_and_in_order(opener: Opener) -> None:
    async def body(log: EventLog) -> None:
        acked = [e for start in range(0, 40, 8) for e in await log.append(events(start, start + 8))]
        assert list(log.replay()) == acked == stamped(events(0, 40))

    in_log(opener, body)


def test_replay_filters_by_after_seq_since_ts_and_kinds(opener: Opener) -> None:
    async def body(log: EventLog) -> None:
        acked = await log.append(events(0, 30))
        assert list(log.replay(after_seq=0)) == acked
        assert list(log.replay(after_seq=12)) == acked[12:]
        assert list(log.replay(after_seq=30)) == []
        assert list(log.replay(since_ts_us=T0 + 17_000)) == acked[17:]
        assert list(log.replay(since_ts_us=T0 + 17_001)) == acked[18:]
        usage = [e for e in acked if isinstance(e, UsageRecorded)]
        assert list(log.replay(kinds=["usage.recorded.v1"])) == usage
        two = {"usage.recorded.v1", "request.rejected.v1"}
        assert list(log.replay(kinds=two)) == [e for e in acked if kind_of(e) in two]
        assert list(log.replay(kinds=[])) == []
        assert list(log.replay(kinds=["no.such.kind.v1"])) == []
        assert list(log.replay(after_seq=10, since_ts_us=T0 + 5_000, kinds=["usage.recorded.v1"])) == [
            e for e in usage if e.seq > 10
        ]

    in_log(opener, body)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (UsageRecorded(event_id="bad", ts_us=T0, cost_micros=-1), "Expected `int` >= 0 - at `$.cost_micros`"),
        (UsageRecorded(event_id="bad", ts_us=T0, context="bad\ncontext"), "at `$.context`"),
        (UsageRecorded(event_id="bad", ts_us=T0, context="a b"), "at `$.context`"),
        (RequestReceived(event_id="bad", ts_us=-5, endpoint="/v1/models"), "Expected `int` >= 0 - at `$.ts_us`"),
        (RouteDecided(event_id="bad", ts_us=T0, strategy="s", candidates=[
            Candidate(provider="p", model="m"), Candidate(provider="p", model="m", est_cost_micros=-3),
        ]), "Expected `int` >= 0 - at `$.candidates[1].est_cost_micros`"),
    ],
    ids=["negative-cost", "newline-in-context", "space-in-context", "negative-ts", "nested-candidate"],
)
def test_invalid_event_raises_a_validation_error_naming_the_field(opener: Opener, bad: Event, message: str) -> None:
    async def body(log: EventLog) -> None:
        with pytest.raises(msgspec.ValidationError) as info:
            await log.append([bad])
        assert message in str(info.value)

    in_log(opener, body)


def test_a_batch_with_one_invalid_event_writes_nothing(opener: Opener) -> None:
    async def body(log: EventLog) -> None:
        acked = await log.append(events(0, 5))
        bad = UsageRecorded(event_id="bad", ts_us=T0, cost_micros=-1)
        with pytest.raises(msgspec.ValidationError, match=r"\$\.cost_micros"):
            await log.append(events(5, 8) + [bad] + events(8, 10))
        assert log.last_seq == 5
        assert list(log.replay()) == acked
        # nothing was half-taken either: the good events of the refused batch append normally
        again = await log.append(events(5, 10))
        assert [e.seq for e in again] == [6, 7, 8, 9, 10]
        assert list(log.replay()) == acked + again

    in_log(opener, body)


def test_append_takes_events_only(opener: Opener) -> None:
    async def body(log: EventLog) -> None:
        with pytest.raises(TypeError, match="append takes events, got dict"):
            await log.append([{"kind": "usage.recorded.v1"}])  # type: ignore[list-item]
        assert log.last_seq == 0

    in_log(opener, body)


def test_the_same_event_id_twice_is_stored_once_with_its_first_seq(opener: Opener) -> None:
    async def body(log: EventLog) -> None:
        first = await log.append(events(0, 3))
        retry = await log.append([event(1), event(3)])
        assert retry == [first[1], replace(event(3), seq=4)]
        same_batch = await log.append([event(4), event(4), event(2)])
        assert [e.seq for e in same_batch] == [5, 5, 3]
        assert log.last_seq == 5
        assert [e.event_id for e in log.replay()] == [f"ev-{i:06d}" for i in range(5)]

    in_log(opener, body)


def test_append_after_close_raises_event_log_closed(opener: Opener) -> None:
    async def scenario() -> None:
        log = await opener()
        await log.append(events(0, 2))
        await log.close()
        with pytest.raises(EventLogClosed, match="the event log is closed"):
            await log.append(events(2, 3))
        await log.close()  # closing twice is harmless

    run(scenario())


def test_a_context_with_a_trailing_newline_is_refused(opener: Opener) -> None:
    async def body(log: EventLog) -> None:
        with pytest.raises(msgspec.ValidationError, match=r"at `\$\.context`"):
            await log.append([UsageRecorded(event_id="nl", ts_us=T0, context="ctx\n")])
        assert log.last_seq == 0

    in_log(opener, body)




@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt_tokens", 2**63),
        ("ts_us", 253_402_300_800_000_000),  # 10000-01-01: the date partitions end at year 9999
        pytest.param("status", 2**63),
        pytest.param("status", -(2**63) - 1),
    ],
)
def test_an_integer_the_log_cannot_store_is_refused_at_append(opener: Opener, field: str, value: int) -> None:
    """Acknowledging it would poison the log: sealing, every read and every reopen would fail."""

    async def body(log: EventLog) -> None:
        with pytest.raises(msgspec.ValidationError, match=rf"at `\$\.{field}`"):
            await log.append([UsageRecorded(event_id="big", **{"ts_us": T0, field: value})])
        await log.append(events(0, 1))
        assert [e.event_id for e in log.replay()] == ["ev-000000"]

    in_log(opener, body)


def test_submit_stamps_now_and_resolves_once_durable(opener: Opener) -> None:
    async def body(log: EventLog) -> None:
        first, fut1 = log.submit(events(0, 3))
        second, fut2 = log.submit(events(3, 5) + [event(1)])
        assert [e.seq for e in first + second] == [1, 2, 3, 4, 5, 2]  # order fixed at the call
        await asyncio.gather(fut1, fut2)
        assert list(log.replay()) == stamped(events(0, 5))
        with pytest.raises(msgspec.ValidationError, match=r"\$\.cost_micros"):
            log.submit([UsageRecorded(event_id="bad", ts_us=T0, cost_micros=-1)])
        assert log.last_seq == 5

    in_log(opener, body)


# ---- the local file log ------------------------------------------------------------------------


def test_reopen_after_close_keeps_everything_and_continues_seq(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await open_file_log(tmp_path)
        first = await log.append(events(0, 10))
        await log.close()
        log = await open_file_log(tmp_path)
        try:
            assert log.last_seq == 10
            assert list(log.replay()) == first
            more = await log.append(events(10, 15))
            assert [e.seq for e in more] == [11, 12, 13, 14, 15]
            assert list(log.replay()) == first + more
        finally:
            await log.close()

    run(scenario())


def test_a_second_writer_on_the_same_directory_is_refused_clearly(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await open_file_log(tmp_path)
        try:
            await log.append(events(0, 3))
            with pytest.raises(WriterLocked) as info:
                await open_file_log(tmp_path)
            message = str(info.value)
            assert f"pid {os.getpid()}" in message and str(tmp_path) in message
            assert "one ledger writer per data directory" in message
            assert (await log.append(events(3, 4)))[0].seq == 4  # the first writer is unharmed
        finally:
            await log.close()
        again = await open_file_log(tmp_path)  # the lock is released by close
        await again.close()

    run(scenario())


def test_replay_is_unchanged_by_sealing_and_compaction(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await open_file_log(tmp_path, rotate_events=1_000, compact_after=1_000)
        try:
            acked: list[Event] = []
            for start in range(0, 60, 10):
                acked += await log.append(events(start, start + 10))
                if start % 20 == 0:
                    await log.flush_sealed()
            assert list(log.replay()) == acked
            await log.flush_sealed()
            assert list(log.replay()) == acked
            assert mf.load(tmp_path).sealed_through == 60
            await log.compact()
            m = mf.load(tmp_path)
            assert m.files and all(f.compacted for f in m.files)
            assert list(log.replay()) == acked
            acked += await log.append(events(60, 65))  # an unsealed tail over compacted files
            assert list(log.replay()) == acked
            assert list(log.replay(after_seq=58, kinds=["usage.recorded.v1"])) == [
                e for e in acked[58:] if isinstance(e, UsageRecorded)
            ]
        finally:
            await log.close()

    run(scenario())


def test_events_view_counts_sealed_files_and_the_unsealed_tail(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await open_file_log(tmp_path, rotate_events=10_000, rotate_s=60.0)
        try:
            acked = await log.append(events(0, 25))
            await log.flush_sealed()
            acked += await log.append(events(25, 40))
            assert mf.load(tmp_path).sealed_through == 25 and wal_files(tmp_path)
            con = connect(tmp_path)
            try:
                n, ids, seqs, top = con.execute(
                    "SELECT count(*), count(DISTINCT event_id), count(DISTINCT seq), max(seq) FROM events"
                ).fetchone() or ()
                assert (n, ids, seqs, top) == (40, 40, 40, 40)
                per_view = {v: con.execute(f"SELECT count(*) FROM {v}").fetchone()[0]  # type: ignore[index]
                            for v in ("requests", "routes", "usage", "rejections", "admissions")}
                assert per_view == {"requests": 10, "routes": 10, "usage": 10, "rejections": 10, "admissions": 0}
                sql_spend = dict(con.execute("SELECT context, sum(cost_micros) FROM usage GROUP BY 1").fetchall())
            finally:
                con.close()
            fold: dict[str, int] = {}
            for e in acked:
                if isinstance(e, UsageRecorded):
                    fold[e.context] = fold.get(e.context, 0) + (e.cost_micros or 0)
            assert sql_spend == fold
        finally:
            await log.close()

    run(scenario())


def test_a_retry_after_reopen_is_stored_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await open_file_log(tmp_path)
        first = await log.append(events(0, 3))
        await log.close()
        log = await open_file_log(tmp_path)
        try:
            assert await log.append([event(2)]) == [first[2]]
            con = connect(tmp_path)
            try:
                assert con.execute("SELECT count(*) FROM events").fetchone() == (3,)
            finally:
                con.close()
        finally:
            await log.close()

    run(scenario())


def test_the_latest_valid_timestamp_compacts(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await open_file_log(tmp_path)
        try:
            acked = await log.append([event(0), event(1, ts_us=253_402_300_799_999_999)])
            await log.flush_sealed()
            await log.compact()
            m = mf.load(tmp_path)
            assert sorted(f.path.split("/")[0] for f in m.files) == ["date=2026-01-01", "date=9999-12-31"]
            assert list(log.replay()) == acked
        finally:
            await log.close()

    run(scenario())


# ---- the CLI over a log -------------------------------------------------------------------------

SEALED, TAIL = 24, 16


@pytest.fixture(scope="module")
def cli_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log with no writer: SEALED events in Parquet, then TAIL in a WAL file a crash left unsealed."""
    data_dir = tmp_path_factory.mktemp("cli") / "log"

    async def build() -> None:
        log = await open_file_log(data_dir, rotate_events=10_000, rotate_s=60.0)
        try:
            await log.append(events(0, SEALED))
        finally:
            await log.close()

    run(build())
    live = data_dir / WAL_DIR / wal_name(SEALED + 1)  # close leaves the next (empty) WAL file
    assert wal_files(data_dir) == [live] and live.stat().st_size == 0
    live.write_bytes(b"".join(encode(e) + b"\n" for e in stamped(events(SEALED, SEALED + TAIL), SEALED + 1)))
    pq.write_table(pa.table({"secret": [1]}), data_dir.parent / "outside.parquet")  # beside, not inside
    return data_dir


REPO_ROOT = Path(__file__).resolve().parents[2]


def aibroker(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process, importing this checkout's code."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "deploy.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("COPY events TO '{out}/copy.csv'", "only SELECT is allowed; got COPY"),
        ("ATTACH '{out}/other.db' AS other", "only SELECT is allowed; got ATTACH"),
        ("SET enable_external_access = true", "only SELECT is allowed; got SET"),
        ("INSERT INTO wal_tail SELECT * FROM wal_tail", "only SELECT is allowed; got INSERT"),
        ("CREATE TABLE stolen AS SELECT * FROM events", "only SELECT is allowed; got CREATE"),
        ("SELECT 1; SELECT 2", "exactly one SELECT statement is allowed; got 2 statements"),
        ("SELECT count(*) FROM events; COPY events TO '{out}/two.csv'", "exactly one SELECT statement"),
        ("SELECT * FROM read_csv('/etc/passwd')", "the query may only read the event log"),
        ("SELECT * FROM read_parquet('{out}/outside.parquet')", "the query may only read the event log"),
        ("SELECT * FROM read_parquet('{data}/../outside.parquet')", "the query may only read the event log"),
        ("SELEKT 1", "SQL does not parse"),
    ],
    ids=["copy", "attach", "set", "insert", "create", "two-selects", "select-then-copy", "read-csv-etc",
         "read-parquet-outside", "dotdot-escape", "garbage"],
)
def test_sql_cli_refuses_all_but_one_read_only_select(cli_log: Path, tmp_path: Path, sql: str, message: str) -> None:
    pq.write_table(pa.table({"secret": [1]}), tmp_path / "outside.parquet")
    result = aibroker("sql", sql.format(out=tmp_path, data=cli_log), "--data-dir", cli_log, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.startswith("aibroker sql: refused: ") and message in result.stderr, result.stderr
    assert not any(tmp_path.glob("*.csv")) and not (tmp_path / "other.db").exists()


def test_sql_cli_formats_csv_json_and_table(cli_log: Path, tmp_path: Path) -> None:
    sql = "SELECT context, count(*) AS n, sum(cost_micros) AS cost FROM usage GROUP BY context ORDER BY context"
    expected = {}
    for e in events(0, SEALED + TAIL):
        if isinstance(e, UsageRecorded):
            n, cost = expected.get(e.context, (0, 0))
            expected[e.context] = (n + 1, cost + (e.cost_micros or 0))

    as_csv = aibroker("sql", sql, "--data-dir", cli_log, "--format", "csv", cwd=tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0] == ["context", "n", "cost"]
    assert {r[0]: (int(r[1]), int(r[2])) for r in rows[1:]} == expected

    as_json = aibroker("sql", sql, "--data-dir", cli_log, "--format", "json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    objs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {o["context"]: (o["n"], int(o["cost"])) for o in objs} == expected

    as_table = aibroker("sql", sql, "--data-dir", cli_log, "--format", "table", cwd=tmp_path)
    assert as_table.returncode == 0, as_table.stderr
    header, rule, *body = as_table.stdout.splitlines()
    assert header.split() == ["context", "n", "cost"] and set(rule.replace(" ", "")) == {"-"}
    assert {line.split()[0]: (int(line.split()[1]), int(line.split()[2])) for line in body} == expected


def test_log_stats_cli_prints_the_event_count(cli_log: Path, tmp_path: Path) -> None:
    result = aibroker("log", "stats", "--data-dir", cli_log, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["events"] == SEALED + TAIL and stats["last_seq"] == SEALED + TAIL
    assert stats["unsealed_events"] == TAIL
    assert stats["events_by_kind"] == {
        "request.received.v1": 10, "request.rejected.v1": 10, "route.decided.v1": 10, "usage.recorded.v1": 10,
    }


def test_sql_cli_reads_beside_a_live_writer(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = await open_file_log(tmp_path / "log", rotate_events=5)
        try:
            await log.append(events(0, 12))
            result = aibroker("sql", "SELECT count(*) AS n, max(seq) AS top FROM events",
                              "--data-dir", tmp_path / "log", "--format", "json", cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == {"n": 12, "top": 12}
            assert (await log.append(events(12, 13)))[0].seq == 13
        finally:
            await log.close()

    run(scenario())
