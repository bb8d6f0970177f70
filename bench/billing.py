"""Billing benchmark: spend by context and monthly exports over a 1e7-event month.

Run: `python bench/billing.py [--quick] [--out DIR]` (a script, not a test).

1. A synthetic log, written FAST as the sealer would (Arrow tables of the real event schema → Parquet
   segments of 10k events + manifest entries; never through `append`): half `request.admitted`, half
   `usage.recorded` (5 models, 3 price lists, ~2% unknown prices), 50 ips × 200 contexts, timestamps
   over November 2026. Then `compaction.compact` (date partitions sorted by context, ts).
2. Timed, median of 3 after a warm-up, each run from nothing (`reader.connect` included):
   - spend by context for the month: `SELECT context, sum(cost_micros) FROM usage WHERE ts_us >= start
     AND ts_us < end GROUP BY context` — target <= 0.5 s;
   - `billing.export` of the month, csv and parquet — target <= 10 s;
   - for reference: `line_items`, `unbilled`, `reprice` (one model at a corrected price).
The export's totals are checked against the spend query (exact micro-USD).

`--quick` writes 1e6 events instead of 1e7. Data goes to a temporary directory (deleted at the end)
or under `--out DIR` (kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds eventlog.py: drop this folder from the path so `eventlog` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from domain.cost import Prices, cost_micros  # noqa: E402
from domain.events import Event, RequestAdmitted, UsageRecorded, encode  # noqa: E402
from eventlog import billing, compaction  # noqa: E402
from eventlog import manifest as mf  # noqa: E402
from eventlog.columnar import wal_to_table  # noqa: E402
from eventlog.reader import connect  # noqa: E402
from eventlog.reprice import reprice  # noqa: E402
from eventlog.segments import SEGMENT_DIR, Sealer, entry_for, write_parquet  # noqa: E402

PERIOD = "2026-11"
START_US, END_US = billing.period_bounds(PERIOD)
SEGMENT_EVENTS = 10_000
IPS = [f"10.{i // 16}.{i % 16}.{7 + i}" for i in range(50)]
CONTEXTS = [f"ctx-{i:03d}" for i in range(200)]
MODELS = [("groq", "llama-3.1-8b-instant"), ("openai", "gpt-4o-mini"), ("openrouter", "qwen/qwen-2.5-72b"),
          ("sambanova", "Meta-Llama-3.3-70B"), ("alibaba", "qwen-plus")]
PRICE_LISTS = {"2026-10-01": Prices(150_000, 600_000, 75_000), "2026-11-15": Prices(140_000, 560_000, 70_000),
               "unknown": Prices(None, None, None)}
SPEND = (f"SELECT context, sum(cost_micros) FROM usage WHERE ts_us >= {START_US} AND ts_us < {END_US} "
         "GROUP BY context")
TARGET_SPEND_S, TARGET_EXPORT_S = 0.5, 10.0


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = f", {int(Path('/proc/meminfo').read_text().split('MemTotal:')[1].split()[0]) / 2**20:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        mem = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"date {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
            "load average %.2f %.2f %.2f\n" % os.getloadavg()
            + f"machine: nproc {cores}, CPU {cpu}{mem}, {platform.system()} {platform.release()}\n"
            f"python {platform.python_version()}, duckdb {duckdb.__version__}, pyarrow {pa.__version__}")


def template_table(rows: int, rng: random.Random) -> pa.Table:
    """`rows` real events, admitted / usage alternating, through the WAL → Arrow path."""
    out: list[bytes] = []
    for i in range(rows):
        provider, model = MODELS[rng.randrange(len(MODELS))]
        env: dict[str, Any] = dict(event_id="x", ts_us=START_US, source="broker-1", request_id="r")
        if i % 2 == 0:
            ev: Event = RequestAdmitted(**env, provider=provider, model=model,
                                        reserved_tokens=rng.randrange(100, 8000), reserved_micros=rng.randrange(10, 5000))
        else:
            version = "unknown" if rng.random() < 0.02 else rng.choice(["2026-10-01", "2026-11-15"])
            p = PRICE_LISTS[version]
            prompt, completion = rng.randrange(20, 4000), rng.randrange(1, 1500)
            cached = min(prompt, rng.choice((0, 0, 64, 1024)))
            ev = UsageRecorded(**env, provider=provider, model=model, prompt_tokens=prompt, completion_tokens=completion,
                               cached_tokens=cached, reasoning_tokens=rng.choice((0, 0, 128)),
                               usage_source=rng.choice(("provider",) * 8 + ("estimated", "missing")),
                               input_micros_per_mtok=p.input, output_micros_per_mtok=p.output,
                               cached_micros_per_mtok=p.cached, price_version="" if p.input is None else version,
                               cost_micros=cost_micros(prompt, completion, cached, p),
                               latency_us=rng.randrange(100_000, 5_000_000), endpoint="/v1/chat/completions")
        out.append(encode(ev) + b"\n")
    return wal_to_table(b"".join(out))


def random_ints(n: int, high: int) -> pa.Array:
    return pc.cast(pc.floor(pc.multiply(pc.random(n), float(high))), pa.int64())


def segment_table(template: pa.Table, first_seq: int, total: int) -> pa.Table:
    """The template with this segment's seq, time (over the month), ids, ips and contexts (per request)."""
    n = template.num_rows
    seq = pa.array(range(first_seq, first_seq + n), pa.int64())
    step = (END_US - START_US) // total
    ts = pc.add(pc.add(pc.multiply(pc.subtract(seq, 1), step), START_US), random_ints(n, step))
    request = pc.divide(pc.subtract(seq, 1), 2)  # admitted + usage per request
    local = pc.subtract(request, (first_seq - 1) // 2)
    ctx_of, ip_of = random_ints(n // 2 + 1, len(CONTEXTS)), random_ints(n // 2 + 1, len(IPS))
    columns = {
        "seq": seq, "ts_us": ts,
        "event_id": pc.binary_join_element_wise("0194f3c2", pc.cast(random_ints(n, 2**52), pa.string()),
                                                pc.cast(seq, pa.string()), "-"),
        "request_id": pc.binary_join_element_wise("req", pc.cast(request, pa.string()), "-"),
        "context": pc.take(pa.array(CONTEXTS), pc.take(ctx_of, local)),
        "ip": pc.take(pa.array(IPS), pc.take(ip_of, local)),
    }
    for name, col in columns.items():
        template = template.set_column(template.schema.get_field_index(name), name, col)
    return template


def write_synthetic_log(data_dir: Path, total: int, template: pa.Table) -> None:
    m = mf.load(data_dir)
    for first in range(1, total + 1, SEGMENT_EVENTS):
        table = segment_table(template, first, total)
        rel = f"{SEGMENT_DIR}/seg-{first:020d}-{first + table.num_rows - 1:020d}.parquet"
        m = mf.with_segment(m, entry_for(table, rel, write_parquet(table, data_dir / rel)))
    mf.save(data_dir, m)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_of_3(fn: Callable[[], Any]) -> tuple[float, Any]:
    out = fn()  # warm-up: page cache, imports
    times = []
    for _ in range(3):
        t, out = timed(fn)
        times.append(t)
    return statistics.median(times), out


def spend_by_context(data_dir: Path) -> dict[str, int]:
    con = connect(data_dir)
    try:
        return {c: int(s or 0) for c, s in con.execute(SPEND).fetchall()}
    finally:
        con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1e6 events instead of 1e7")
    ap.add_argument("--out", type=Path, help="keep the data under this directory (default: a temp dir)")
    args = ap.parse_args()
    total = 1_000_000 if args.quick else 10_000_000
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-billing-", dir=args.out))
    print(f"billing benchmark{' (--quick)' if args.quick else ''}\n{machine()}\ndata: {work}")
    try:
        data = work / "log"
        write_s, _ = timed(lambda: write_synthetic_log(data, total, template_table(SEGMENT_EVENTS, random.Random(11))))
        compact_s, parts = timed(lambda: compaction.compact(Sealer(data)))
        size = sum(f.bytes for f in mf.load(data).files)
        print(f"\n1. synthetic log: {total:,} events ({total // 2:,} usage) over {PERIOD}, {len(IPS)} ips, "
              f"{len(CONTEXTS)} contexts, {len(MODELS)} models\n   written in {write_s:.1f} s, compacted in "
              f"{compact_s:.1f} s into {parts} parts, {size / 2**20:.0f} MiB ({size / total:.1f} B/event)")

        rows: list[tuple[str, float, str]] = []
        spend_s, spend = median_of_3(lambda: spend_by_context(data))
        rows.append(("spend by context (connect + query)", spend_s, f"{len(spend)} contexts"))
        exports: dict[str, float] = {}
        for fmt in ("csv", "parquet"):
            exports[fmt], manifest = median_of_3(lambda fmt=fmt: billing.export(data, work / f"out-{fmt}", PERIOD, fmt))
            assert manifest["totals"]["cost_micros"] == sum(spend.values()), "export totals differ from SQL spend"
            items = manifest["files"][f"items.{fmt}"]
            rows.append((f"export {PERIOD} as {fmt}", exports[fmt], f"{items['rows']:,} items, "
                         f"{manifest['totals']['requests']:,} requests, {items['bytes'] / 2**20:.1f} MiB"))
        items_s, (items, totals, _) = median_of_3(lambda: billing.line_items(data, PERIOD))
        rows.append(("line_items (no files)", items_s, f"{len(items):,} items, {totals.cost_usd} USD"))
        unbilled_s, left = median_of_3(lambda: billing.unbilled(data))
        rows.append(("unbilled (whole log, no marks)", unbilled_s, f"{len(left):,} items"))
        corrected = {"openai/gpt-4o-mini": {"input": 300_000, "output": 1_200_000, "cached": 150_000}}
        reprice_s, result = median_of_3(lambda: reprice(data, PERIOD, corrected))
        diff = sum(r.diff_micros for r in result)
        rows.append(("reprice (one model corrected)", reprice_s, f"{len(result)} contexts, diff {billing.usd(diff)} USD"))

        print(f"\n2. timings, median of 3 after a warm-up, each from a fresh reader.connect\n"
              f"   {'what':<36} {'seconds':>8}  notes")
        for what, seconds, notes in rows:
            print(f"   {what:<36} {seconds:>8.3f}  {notes}")

        print("\ntargets")
        checks = [(f"spend by context over {total:,} events <= {TARGET_SPEND_S} s", spend_s, TARGET_SPEND_S)]
        checks += [(f"monthly export as {fmt} <= {TARGET_EXPORT_S:g} s", exports[fmt], TARGET_EXPORT_S)
                   for fmt in exports]
        for name, got, target in checks:
            print(f"   {'met ' if got <= target else 'MISS'}  {name}: {got:.3f} s")
        if args.quick:
            print("   (--quick: 1/10 of the target size)")
        print("   load average at the end: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
