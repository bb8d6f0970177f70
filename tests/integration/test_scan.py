"""The start-up scans (`eventlog.scan`) on a real log: what they read must equal DuckDB's view of it.

A log with sealed segments, one of them rewritten as an older layout (a column missing), and an
unsealed tail. Checked against `aibroker sql` over the same snapshot: rows, kinds, nulls, dedup order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from domain.events import Event, LimitsChanged, ProviderToggled, RequestAdmitted, UsageRecorded
from eventlog import manifest as mf
from eventlog import scan
from eventlog.filelog import FileEventLog
from eventlog.reader import take_snapshot
from eventlog.segments import columns_id
from eventlog.sql import query
from eventlog.stamping import Stamper
from eventlog.wal import WAL_DIR, wal_name

T0 = 1_742_040_000_000_000


def mixed(n: int) -> list[Event]:
    """Mostly admissions and usage; now and then an operator fact (the rare kinds)."""
    out: list[Event] = []
    for i in range(n):
        env = {"event_id": f"ev-{i}", "ts_us": T0 + i * 1_000_000, "ip": f"10.0.0.{i % 7}", "context": f"c{i % 3}",
               "request_id": f"rq-{i}"}
        if i % 50 == 17:
            out.append(ProviderToggled(**env, provider=f"p{i % 2}", enabled=bool(i % 3)))
        elif i % 50 == 33:
            out.append(LimitsChanged(**env, scope="default", requests_per_min=i))
        elif i % 2:
            out.append(UsageRecorded(**env, provider="p", model="m", cost_micros=i if i % 5 else None,
                                     cached_tokens=i % 4, usage_source="provider"))
        else:
            out.append(RequestAdmitted(**env, provider="p", model="m", reserved_tokens=i))
    return out


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("scanlog")

    async def build() -> None:
        log = await FileEventLog.open(data, rotate_events=100, rotate_s=3600)
        events = mixed(700)
        try:
            for start in range(0, 600, 50):
                await log.append(events[start:start + 50])
            await log.flush_sealed()
        finally:
            await log.close()
        # an older segment layout: the first segment lacks `cached_tokens` (and the manifest says so)
        manifest = mf.load(data)
        entry = manifest.files[0]
        older = pq.read_table(data / entry.path).drop_columns(["cached_tokens"])
        pq.write_table(older, data / entry.path)
        fixed = msgspec.structs.replace(entry, columns_id=columns_id(older.column_names),
                                        bytes=(data / entry.path).stat().st_size)
        mf.save(data, msgspec.structs.replace(manifest, files=[fixed, *manifest.files[1:]]))
        # an unsealed tail, as a writer that died would leave it (the next open would seal it)
        _, lines = Stamper(next_seq=mf.load(data).sealed_through + 1).prepare(events[600:])
        (data / WAL_DIR / wal_name(mf.load(data).sealed_through + 1)).write_bytes(lines)

    asyncio.run(build())
    return data


def sql(data: Path, text: str) -> list[tuple]:  # type: ignore[type-arg]
    _, rows, truncated = query(data, text, max_rows=100_000)
    assert not truncated
    return rows


def test_a_scan_reads_what_sql_reads_missing_columns_as_nulls(log_dir: Path) -> None:
    snap = take_snapshot(log_dir)
    got = scan.table(snap, ["seq", "kind", "cached_tokens"], scan.where())
    expected = sql(log_dir, "SELECT seq, kind, cached_tokens FROM events ORDER BY seq")
    assert list(zip(*(got.column(c).to_pylist() for c in ("seq", "kind", "cached_tokens")))) == expected
    assert len(expected) == 700 and len(take_snapshot(log_dir).tail) == 100  # sealed files and the WAL tail
    assert any(r[2] is None and r[1] == "usage.recorded.v1" for r in expected)  # the older file's rows


@pytest.mark.parametrize("rare", [False, True])
def test_rare_kind_scans_skip_row_groups_without_changing_the_answer(log_dir: Path, rare: bool) -> None:
    kinds = ["limits.changed.v1", "provider.toggled.v1"]
    got = [e.event_id for e in scan.events(take_snapshot(log_dir), scan.where(kinds=kinds, rare=rare), kinds)]
    expected = [r[0] for r in sql(log_dir, "SELECT event_id FROM events WHERE kind IN "
                                           "('limits.changed.v1', 'provider.toggled.v1') ORDER BY seq")]
    assert got == expected and got


def test_time_and_seq_bounds_prune_files_and_rows_alike(log_dir: Path) -> None:
    snap = take_snapshot(log_dir)
    cond = scan.where(after_seq=150, since_ts_us=T0 + 200_000_000, until_ts_us=T0 + 650_000_000, kinds=["usage.recorded.v1"],
                      extra=lambda b: pc.is_valid(b.column("cost_micros")))
    got = sorted(scan.table(snap, ["seq", "cost_micros"], cond).column("seq").to_pylist())
    expected = [r[0] for r in sql(log_dir, f"SELECT seq FROM usage WHERE seq > 150 AND ts_us >= {T0 + 200_000_000} "
                                           f"AND ts_us < {T0 + 650_000_000} AND cost_micros IS NOT NULL ORDER BY seq")]
    assert got == expected and got


def test_map_batches_sees_every_matching_row_once(log_dir: Path) -> None:
    snap = take_snapshot(log_dir)
    counts = list(scan.map_batches(snap, ["cost_micros"], scan.where(kinds=["usage.recorded.v1"]),
                                   lambda b: (b.num_rows, pc.sum(b.column("cost_micros")).as_py() or 0)))
    (rows, total), = sql(log_dir, "SELECT count(*), sum(cost_micros) FROM usage")
    assert sum(n for n, _ in counts) == rows and sum(t for _, t in counts) == total
