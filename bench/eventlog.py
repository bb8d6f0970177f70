"""Event log benchmark: durable appends, replay into a projection, GROUP BY over big logs, bytes per event.

Run: `python bench/eventlog.py [--quick] [--out DIR] [--seconds S]` (a script, not a test).

1. Durable appends: one event per `append` call (events built before timing), 1/16/64/256 concurrent
   appenders on a fresh `FileEventLog`, each run `--seconds` long (uvloop when importable). Prints
   events/s and p50/p99/max latency per call, beside the disk's raw `write + fdatasync` latency.
2. A synthetic log, written FAST as the sealer would (Arrow tables of the real event schema → Parquet
   segments of 10k events + manifest entries; never through `append`): requests, routes, admissions
   and usage from ~50 ips × ~200 contexts over four days. Then `compaction.compact`.
3. Replay of 1e6 events into a spend-per-(ip, context) fold: `replay_batches` with four columns
   folded from column lists, and typed `replay_events`.
4. `SELECT context, count(*), sum(cost_micros) FROM events GROUP BY context` on `reader.connect`,
   median of 5 after a warm-up, at 1e6 and 1e7 events, uncompacted and compacted (connect time apart).
5. Bytes on disk per event, uncompacted and compacted.

`--quick` divides every size by 10 (1e5/1e6) and shortens the append runs: a smoke run.
Data goes to a temporary directory (deleted at the end) or under `--out DIR` (kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is called eventlog.py: drop its own folder from the path so `eventlog` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import datetime as dt  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Coroutine  # noqa: E402
from typing import Any  # noqa: E402

import duckdb  # noqa: E402
import msgspec  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from domain.events import (  # noqa: E402
    Candidate,
    Event,
    RequestAdmitted,
    RequestReceived,
    RouteDecided,
    UsageRecorded,
    encode,
)
from eventlog import compaction  # noqa: E402
from eventlog import manifest as mf  # noqa: E402
from eventlog.columnar import wal_to_table  # noqa: E402
from eventlog.filelog import FileEventLog  # noqa: E402
from eventlog.ids import uuid7  # noqa: E402
from eventlog.reader import connect  # noqa: E402
from eventlog.replay import replay_batches, replay_events  # noqa: E402
from eventlog.segments import SEGMENT_DIR, Sealer, entry_for, write_parquet  # noqa: E402

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SPAN_US = 4 * 86_400_000_000  # the synthetic log covers four days
SEGMENT_EVENTS = 10_000
IPS = [f"10.{i // 16}.{i % 16}.{7 + i}" for i in range(50)]
CONTEXTS = [f"ctx-{i:03d}" for i in range(200)]
MODELS = [("groq", "llama-3.1-8b-instant"), ("openai", "gpt-4o-mini"), ("openrouter", "qwen/qwen-2.5-72b"),
          ("sambanova", "Meta-Llama-3.3-70B"), ("alibaba", "qwen-plus")]
USAGE_KIND = "usage.recorded.v1"
GROUP_BY = "SELECT context, count(*) AS n, sum(cost_micros) AS cost FROM events GROUP BY context"
TARGET_APPEND_EPS, TARGET_APPEND_P99_MS = 50_000, 5.0
TARGET_GROUP_BY_S, TARGET_REPLAY_S = 0.5, 2.0


def event_loop_runner() -> tuple[asyncio.Runner, str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner(), "asyncio"
    return asyncio.Runner(loop_factory=uvloop.new_event_loop), f"uvloop {uvloop.__version__}"


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    runner, _ = event_loop_runner()
    with runner:
        return runner.run(coro)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def human(n: int) -> str:
    """1000000 → 1e6; anything else with thousands separators."""
    digits = len(str(n)) - 1
    return f"1e{digits}" if n == 10**digits else f"{n:,}"


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    _, loop = event_loop_runner()
    load = "load average %.2f %.2f %.2f" % os.getloadavg()
    return (f"date {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, {load}\n"
            f"machine: nproc {cores}, CPU {cpu}{mem}, {platform.system()} {platform.release()}\n"
            f"python {platform.python_version()}, {loop}, duckdb {duckdb.__version__}, "
            f"pyarrow {pa.__version__}, msgspec {msgspec.__version__}")


# ---- 1. durable appends ------------------------------------------------------------------------


def usage_event(i: int, ts_us: int) -> UsageRecorded:
    provider, model = MODELS[i % len(MODELS)]
    return UsageRecorded(
        event_id=uuid7(), ts_us=ts_us, source="bench", request_id=f"req-{i}", ip=IPS[i % len(IPS)],
        context=CONTEXTS[(i * 7) % len(CONTEXTS)], provider=provider, model=model,
        prompt_tokens=300 + i % 2000, completion_tokens=50 + i % 700, cached_tokens=i % 3 * 64,
        input_micros_per_mtok=150_000, output_micros_per_mtok=600_000, price_version="2026-01-01",
        cost_micros=90 + i % 1500, latency_us=800_000 + i % 400_000, ttft_us=200_000 + i % 90_000,
        endpoint="/v1/chat/completions",
    )


def fdatasync_baseline(data_dir: Path, calls: int = 300) -> tuple[float, float]:
    """(p50, p99) ms of one raw `write` (one ~600-byte line) + `fdatasync` on this disk: the floor."""
    path = data_dir / "fsync-probe"
    line = encode(usage_event(0, T0)) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(calls):
            t0 = time.perf_counter()
            os.write(fd, line)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return times[calls // 2] * 1e3, times[int(calls * 0.99)] * 1e3


async def append_run(data_dir: Path, appenders: int, seconds: float,
                     pool: list[Event]) -> tuple[float, float, float, float, int]:
    """(events/s, p50 ms, p99 ms, max ms, events) for `appenders` tasks, one event per call."""
    log = await FileEventLog.open(data_dir)
    try:
        events = iter(pool)
        for _, ev in zip(range(min(2_000, len(pool) // 10)), events):  # warm-up: open files, caches
            await log.append([ev])
        latencies: list[float] = []
        clock = time.perf_counter
        stop_at = clock() + seconds

        async def appender() -> None:
            record = latencies.append
            for ev in events:  # one shared iterator: each event appended once
                t0 = clock()
                await log.append([ev])
                t1 = clock()
                record(t1 - t0)
                if t1 >= stop_at:
                    return

        t0 = clock()
        await asyncio.gather(*(appender() for _ in range(appenders)))
        elapsed = clock() - t0
    finally:
        await log.close()
    latencies.sort()
    n = len(latencies)
    pick = lambda q: latencies[min(n - 1, int(q * n))] * 1e3  # noqa: E731
    return n / elapsed, pick(0.50), pick(0.99), latencies[-1] * 1e3, n


def bench_appends(work: Path, seconds: float, levels: list[int]) -> dict[int, tuple[float, ...]]:
    pool_size = int(max(200_000, 160_000 * seconds))
    build_s, pool = timed(lambda: [usage_event(i, T0 + i) for i in range(pool_size)])
    print(f"\n1. durable appends: 1 event per append() call, {seconds:g} s per run "
          f"(pool of {pool_size:,} events built in {build_s:.1f} s, before timing)")
    p50, p99 = fdatasync_baseline(work)
    print(f"   baseline, raw write+fdatasync of one line on this disk: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
          f"(one fsync per event would cap at ~{1e3 / p50:,.0f}/s)")
    print(f"   {'appenders':>9}  {'events/s':>10}  {'p50 ms':>7}  {'p99 ms':>7}  {'max ms':>7}  {'events':>8}")
    results = {}
    for n in levels:
        d = work / f"append-{n}"
        eps, p50, p99, worst, count = run_async(append_run(d, n, seconds, pool))
        results[n] = (eps, p50, p99, worst)
        print(f"   {n:>9}  {eps:>10,.0f}  {p50:>7.3f}  {p99:>7.3f}  {worst:>7.2f}  {count:>8,}")
        shutil.rmtree(d)
    return results


# ---- 2. a synthetic log, written like the sealer writes it -------------------------------------


def template_table(rows: int, rng: random.Random) -> pa.Table:
    """`rows` real events (admitted, received, route, usage per request) through the WAL → Arrow path."""
    out: list[bytes] = []
    for i in range(rows):
        provider, model = MODELS[rng.randrange(len(MODELS))]
        env = dict(event_id="x", ts_us=T0, source="broker-1", request_id="r", ip="", context="")
        match i % 4:
            case 0:
                ev: Event = RequestReceived(**env, endpoint="/v1/chat/completions", model_requested="auto",
                                            stream=rng.random() < 0.6, body_bytes=rng.randrange(200, 20_000),
                                            messages=rng.randrange(1, 30), prompt_tokens_est=rng.randrange(20, 4000))
            case 1:
                cands = [Candidate(provider=p, model=m, est_cost_micros=rng.randrange(10, 3000))
                         for p, m in rng.sample(MODELS, 3)]
                ev = RouteDecided(**env, strategy="cheapest", provider=provider, model=model,
                                  reason="cheapest eligible offer", price_version="2026-01-01",
                                  candidates=cands, fallbacks=[f"{c.provider}/{c.model}" for c in cands[1:]])
            case 2:
                ev = RequestAdmitted(**env, provider=provider, model=model,
                                     reserved_tokens=rng.randrange(100, 8000), reserved_micros=rng.randrange(10, 5000))
            case _:
                prompt, completion = rng.randrange(20, 4000), rng.randrange(1, 1500)
                cost = (prompt * 150_000 + completion * 600_000) // 10**6
                ev = UsageRecorded(**env, provider=provider, model=model, prompt_tokens=prompt,
                                   completion_tokens=completion, cached_tokens=rng.choice((0, 0, 64, 1024)),
                                   input_micros_per_mtok=150_000, output_micros_per_mtok=600_000,
                                   price_version="2026-01-01", cost_micros=cost,
                                   latency_us=rng.randrange(100_000, 5_000_000),
                                   ttft_us=rng.randrange(50_000, 900_000), endpoint="/v1/chat/completions")
        out.append(encode(ev) + b"\n")
    return wal_to_table(b"".join(out))


def random_ints(n: int, high: int) -> pa.Array:
    return pc.cast(pc.floor(pc.multiply(pc.random(n), float(high))), pa.int64())


def segment_table(template: pa.Table, first_seq: int, total: int) -> pa.Table:
    """The template with this segment's seq, time, ids, ips and contexts (per request)."""
    n = template.num_rows
    seq = pa.array(range(first_seq, first_seq + n), pa.int64())
    step = SPAN_US // total
    ts = pc.add(pc.add(pc.multiply(seq, step), T0), random_ints(n, step))
    ids = pc.binary_join_element_wise("0194f3c2", pc.cast(random_ints(n, 2**52), pa.string()),
                                      pc.cast(seq, pa.string()), "-")
    request = pc.divide(pc.subtract(seq, 1), 4)  # integer division: 4 events per request
    local = pc.subtract(request, (first_seq - 1) // 4)
    ctx_of = random_ints(n // 4 + 1, len(CONTEXTS))  # one (ip, context) per request
    ip_of = random_ints(n // 4 + 1, len(IPS))
    columns = {
        "seq": seq, "ts_us": ts, "event_id": ids,
        "request_id": pc.binary_join_element_wise("req", pc.cast(request, pa.string()), "-"),
        "context": pc.take(pa.array(CONTEXTS), pc.take(ctx_of, local)),
        "ip": pc.take(pa.array(IPS), pc.take(ip_of, local)),
    }
    for name, col in columns.items():
        template = template.set_column(template.schema.get_field_index(name), name, col)
    return template


def write_synthetic_log(data_dir: Path, total: int, template: pa.Table) -> float:
    """Segments of SEGMENT_EVENTS rows + manifest entries, as sealing would leave them. Returns seconds."""
    t0 = time.perf_counter()
    m = mf.load(data_dir)
    for first in range(1, total + 1, SEGMENT_EVENTS):
        table = segment_table(template, first, total)
        rel = f"{SEGMENT_DIR}/seg-{first:020d}-{first + table.num_rows - 1:020d}.parquet"
        size = write_parquet(table, data_dir / rel)
        m = mf.with_segment(m, entry_for(table, rel, size))
    mf.save(data_dir, m)
    return time.perf_counter() - t0


def bytes_per_event(data_dir: Path) -> float:
    m = mf.load(data_dir)
    return sum(f.bytes for f in m.files) / sum(f.rows for f in m.files)


# ---- 3. replay into a projection ---------------------------------------------------------------


def fold_batches(data_dir: Path) -> dict[tuple[str, str], int]:
    spend: dict[tuple[str, str], int] = defaultdict(int)
    for batch in replay_batches(data_dir, columns=["kind", "ip", "context", "cost_micros"]):
        kinds, ips, contexts, costs = (batch.column(i).to_pylist() for i in range(4))
        for kind, ip, context, cost in zip(kinds, ips, contexts, costs):
            if kind == USAGE_KIND and cost is not None:
                spend[(ip, context)] += cost
    return dict(spend)


def fold_events(data_dir: Path) -> dict[tuple[str, str], int]:
    spend: dict[tuple[str, str], int] = defaultdict(int)
    for event in replay_events(data_dir):
        if type(event) is UsageRecorded and event.cost_micros is not None:
            spend[(event.ip, event.context)] += event.cost_micros
    return dict(spend)


def sql_spend(data_dir: Path) -> dict[tuple[str, str], int]:
    con = connect(data_dir)
    try:
        rows = con.execute("SELECT ip, context, sum(cost_micros) FROM usage GROUP BY ALL").fetchall()
    finally:
        con.close()
    return {(ip, ctx): int(cost) for ip, ctx, cost in rows}


# ---- 4. GROUP BY -------------------------------------------------------------------------------


def group_by(data_dir: Path, repeat: int = 5) -> tuple[float, float, int]:
    """(connect s, median query s, rows counted) — warm-up first, then `repeat` timed runs."""
    connect_s, con = timed(lambda: connect(data_dir))
    try:
        rows = con.execute(GROUP_BY).fetchall()
        times = [timed(lambda: con.execute(GROUP_BY).fetchall())[0] for _ in range(repeat)]
    finally:
        con.close()
    return connect_s, statistics.median(times), sum(r[1] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes 1e5/1e6 and 0.5 s append runs: a smoke run")
    ap.add_argument("--out", type=Path, help="keep the data under this directory (default: a temp dir)")
    ap.add_argument("--seconds", type=float, help="length of each append run (default 2.5, quick 0.5)")
    ap.add_argument("--appenders", default="1,16,64,256", help="concurrency levels (comma-separated)")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    seconds = args.seconds or (0.5 if args.quick else 2.5)
    small, large, replay_n = 1_000_000 // scale, 10_000_000 // scale, 1_000_000 // scale

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench-eventlog-", dir=args.out))
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-eventlog-"))
    print(f"event log benchmark{' (--quick)' if args.quick else ''}\n{machine()}\ndata: {work}")
    try:
        appends = bench_appends(work, seconds, [int(x) for x in args.appenders.split(",")])

        print(f"\n2. synthetic logs (segments of {SEGMENT_EVENTS:,} events, {len(IPS)} ips, "
              f"{len(CONTEXTS)} contexts, 4 days; admitted/received/route/usage per request)")
        template = template_table(SEGMENT_EVENTS, random.Random(7))
        print(f"   {'events':>8}  {'write s':>8}  {'segments':>8}  {'B/event':>8}  {'compact s':>9}  "
              f"{'parts':>5}  {'B/event':>8}")
        layouts: dict[int, dict[str, tuple[float, float, int]]] = {}
        replay: dict[str, float] = {}
        for total in (small, large):
            d = work / f"log-{human(total)}"
            write_s = write_synthetic_log(d, total, template)
            segments = len(mf.load(d).files)
            raw_bpe = bytes_per_event(d)
            layouts[total] = {"uncompacted": group_by(d)}
            compact_s, parts = timed(lambda: compaction.compact(Sealer(d)))
            layouts[total]["compacted"] = group_by(d)
            print(f"   {human(total):>8}  {write_s:>8.1f}  {segments:>8,}  {raw_bpe:>8.1f}  {compact_s:>9.1f}  "
                  f"{parts:>5}  {bytes_per_event(d):>8.1f}")
            if total == replay_n:
                expected = sql_spend(d)
                replay["batches"], got = timed(lambda: fold_batches(d))
                assert got == expected, "replay_batches fold differs from SQL"
                replay["events"], got = timed(lambda: fold_events(d))
                assert got == expected, "replay_events fold differs from SQL"
            if total != large:
                shutil.rmtree(d)

        print(f"\n3. replay {human(replay_n)} events (compacted log) into spend per (ip, context)")
        print(f"   replay_batches, 4 columns, fold over column lists: {replay['batches']:6.2f} s "
              f"({replay_n / replay['batches']:>12,.0f} events/s)")
        print(f"   replay_events, typed events:                       {replay['events']:6.2f} s "
              f"({replay_n / replay['events']:>12,.0f} events/s)")

        print(f"\n4. {GROUP_BY}\n   (median of 5 after a warm-up; connect = snapshot + views, once per connection)")
        print(f"   {'events':>8}  {'layout':>11}  {'connect s':>9}  {'query s':>8}  {'rows seen':>10}")
        for total, by_layout in layouts.items():
            for layout, (connect_s, query_s, rows) in by_layout.items():
                assert rows == total, f"GROUP BY counted {rows} of {total} events"
                print(f"   {human(total):>8}  {layout:>11}  {connect_s:>9.3f}  {query_s:>8.3f}  {rows:>10,}")

        print("\ntargets")
        eps, _, p99, _ = appends.get(64, (0.0, 0.0, float("inf"), 0.0))
        gb = layouts[large]["compacted"][1]
        checks = [
            (f">= {TARGET_APPEND_EPS:,} durable events/s at 64 appenders", f"{eps:,.0f}/s",
             eps >= TARGET_APPEND_EPS),
            (f"p99 append <= {TARGET_APPEND_P99_MS:g} ms at 64 appenders", f"{p99:.2f} ms",
             p99 <= TARGET_APPEND_P99_MS),
            (f"GROUP BY context over {human(large)} compacted <= {TARGET_GROUP_BY_S} s", f"{gb:.3f} s",
             gb <= TARGET_GROUP_BY_S),
            (f"replay of {human(replay_n)} <= {TARGET_REPLAY_S:g} s (replay_batches)", f"{replay['batches']:.2f} s",
             replay["batches"] <= TARGET_REPLAY_S),
            (f"replay of {human(replay_n)} <= {TARGET_REPLAY_S:g} s (replay_events, typed)",
             f"{replay['events']:.2f} s", replay["events"] <= TARGET_REPLAY_S),
        ]
        for name, value, ok in checks:
            print(f"   {'met ' if ok else 'MISS'}  {name}: {value}")
        if args.quick:
            print("   (--quick: sizes are 1/10 of the targets' sizes)")
        print("   load average at the end: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
