"""Admission cost: pure-Python decisions/s and memory per bucket, then the broker with limits on vs off.

Run: `python bench/admission.py [--decisions 200000] [--seconds 5] [--connections 64] [--no-broker]`.
Part 1 (in-process): `Admission.admit` (check + fold of `request.admitted`) on a random bucket of
10k active ones, plus the settlement (`usage.recorded`) of an earlier request, with pre-built events;
target >= 100k decisions/s. Part 2: tracemalloc of the projection after one request settled in each
of 100k buckets. Part 3 (needs `wrk`, reuses bench/broker.py's helpers): the same wrk load through the
broker with limits effectively off (huge limits: every call is served) and on (every limit kind set,
budgets included, high enough that nothing is refused), one bucket and 1000 buckets; prints the ratio.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domain.events import RequestAdmitted, UsageRecorded  # noqa: E402
from domain.limits import Limits, PolicyBook  # noqa: E402
from domain.usage_projection import UsageProjection  # noqa: E402
from functions.admission import Admission  # noqa: E402

T0_US = 1_750_000_000_000_000
IN_FLIGHT = 64  # each decision settles the request admitted this many decisions earlier
REALISTIC = {"requests_per_min": 1000, "tokens_per_min": 2_000_000, "concurrent": 100,
             "budget_daily_micros": 10_000_000, "budget_monthly_micros": 100_000_000}
HUGE = {"requests_per_min": 10**8, "tokens_per_min": 10**11, "concurrent": 10**5}
ON_CONFIG = ("limits:\n  default: {requests_per_min: 100000000, tokens_per_min: 100000000000, concurrent: 100000,\n"
             "            budget_daily_usd: '1000000', budget_monthly_usd: '10000000'}\n")
OFF_CONFIG = "limits:\n  default: {requests_per_min: 100000000, tokens_per_min: 100000000000, concurrent: 100000}\n"


def buckets(n: int) -> list[tuple[str, str]]:
    return [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"ctx{i % 97}") for i in range(n)]


def request(i: int, key: tuple[str, str], admitted_us: int, settled_us: int) -> tuple[RequestAdmitted, UsageRecorded]:
    """Request `i` of bucket `key`: its admission (300 tokens, 120 micro-USD held) and its settlement."""
    ip, ctx = key
    return (RequestAdmitted(event_id=f"a{i}", ts_us=admitted_us, ip=ip, context=ctx, request_id=f"r{i}",
                            reserved_tokens=300, reserved_micros=120),
            UsageRecorded(event_id=f"u{i}", ts_us=settled_us, ip=ip, context=ctx, request_id=f"r{i}",
                          prompt_tokens=40, completion_tokens=60, cost_micros=30))


def events(n: int, keys: list[tuple[str, str]], seed: int = 7) -> tuple[list[RequestAdmitted], list[UsageRecorded]]:
    rng = random.Random(seed)
    admitted, settled = [], []
    for i in range(n):
        ts = T0_US + i * 10  # 100k decisions per second of event time
        a, u = request(i, keys[rng.randrange(len(keys))], ts, ts + IN_FLIGHT * 10)
        admitted.append(a)
        settled.append(u)
    return admitted, settled


def decisions_per_s(limits: dict[str, int] | None, admitted: list[RequestAdmitted],
                    settled: list[UsageRecorded]) -> tuple[float, int]:
    book = PolicyBook(base=Limits()) if limits is None else PolicyBook()
    if limits is not None:
        book.set(("default", "", ""), limits)
    admission = Admission(book, UsageProjection())
    admit, settle = admission.admit, admission.settle
    refused = 0
    gc.collect()
    start = time.perf_counter()
    for i, event in enumerate(admitted):
        if admit(event) is not None:
            refused += 1
        if i >= IN_FLIGHT:
            settle(settled[i - IN_FLIGHT])
    elapsed = time.perf_counter() - start
    return len(admitted) / elapsed, refused


def window_memory(n: int) -> float:
    """MiB traced for `n` requests admitted and settled in one bucket within a minute (its rate window)."""
    key = buckets(1)[0]
    rows = [request(i, key, T0_US + i * 300, T0_US + i * 300 + 100) for i in range(n)]
    book = PolicyBook()
    book.set(("default", "", ""), HUGE)  # every request admitted
    admission = Admission(book, UsageProjection())
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for a, u in rows:
        admission.admit(a)
        admission.settle(u)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(admission.usage.bucket(key).window) == n
    return used / (1024 * 1024)


def memory_per_bucket(n: int) -> tuple[float, float, float]:
    """MiB traced after one settled request per bucket through the admission (the live path, which
    keeps no de-dup ids), then without its per-bucket (Limits, Policy) cache; and the bytes per event id
    that replay's de-dup sets hold (the same events folded as a replay folds them)."""
    pairs = [request(i, key, T0_US + i, T0_US + i) for i, key in enumerate(buckets(n))]  # one request per bucket
    admitted, settled = [a for a, _ in pairs], [u for _, u in pairs]
    book = PolicyBook()
    book.set(("default", "", ""), REALISTIC)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    admission = Admission(book, UsageProjection())
    for a, u in zip(admitted, settled):
        admission.admit(a)
        admission.settle(u)
    live = tracemalloc.get_traced_memory()[0] - base
    admission._cache.clear()
    gc.collect()
    projection_only = tracemalloc.get_traced_memory()[0] - base
    del admission
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    replay = UsageProjection()
    for a, u in zip(admitted, settled):
        replay.apply(a)
        replay.apply(u)
    folded = tracemalloc.get_traced_memory()[0] - base
    seen = len(replay._seen) + len(replay._seen_before)
    replay._seen.clear()
    replay._seen_before.clear()
    gc.collect()
    without_seen = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    mib = 1024 * 1024
    return live / mib, projection_only / mib, (folded - without_seen) / max(seen, 1)


# ---- the broker under wrk ------------------------------------------------------------------


def _bench_broker():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_broker", ROOT / "bench" / "broker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MANY_BUCKETS_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
counter = 0
request = function()
  counter = counter + 1
  wrk.headers["X-Hero-Context"] = "c" .. (counter %% 1000)
  return wrk.format(nil)
end
"""


def wrk_many_buckets(bb, url: str, body: str, seconds: int, connections: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(MANY_BUCKETS_LUA % body)
        script = f.name
    try:
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                             capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {m.group(1): bb._ms(m.group(2), m.group(3))
           for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50": lat.get("50", 0.0), "p99": lat.get("99", 0.0),
            "requests": float(total.group(1)) if total else 0.0, "errors": float(non2xx.group(1)) if non2xx else 0.0}


def broker_runs(seconds: int, connections: int) -> None:
    bb = _bench_broker()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fake_port = bb.free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    body = bb.BODY % ("auto", "")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, bb.process(
        [sys.executable, "-m", "functions.fake_upstream", "--port", str(fake_port), "--log-level", "warning",
         "--no-access-log"], env, f"{fake_url}/fakeai/v1/models",
    ):
        for label, config in (("off", OFF_CONFIG), ("on", ON_CONFIG)):
            path = Path(tmp) / f"{label}.yml"
            path.write_text(config)
            port = bb.free_port()
            data = Path(tmp) / f"data-{label}"
            with bb.process([sys.executable, "-m", "deploy.cli", "serve", "--port", str(port), "--no-sockets", "--fake-url", fake_url,
                             "--admin", "off"],
                            {**env, "AIBROKER_DATA_DIR": str(data), "MODELS_CONFIG_PATH": str(path)},
                            f"http://127.0.0.1:{port}/ready") as proc:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                for buckets_label, run in (("1 bucket", lambda: bb.wrk(url, body, seconds, connections)),
                                           ("1000 buckets", lambda: wrk_many_buckets(bb, url, body, seconds,
                                                                                     connections))):
                    cpu0 = bb.cpu_seconds(proc.pid)
                    result = run()
                    cpu_ms = (bb.cpu_seconds(proc.pid) - cpu0) * 1000 / max(result["requests"], 1)
                    rows.append((label, buckets_label, result, cpu_ms))
    print(f"{'limits':6} {'traffic':12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'CPU ms/req':>10}")
    for label, traffic, r, cpu_ms in rows:
        print(f"{label:6} {traffic:12} {r['rps']:8.0f} {r['p50']:8.2f} {r['p99']:8.2f} {r['errors']:8.0f} {cpu_ms:10.3f}")
    by = {(label, traffic): (r, cpu) for label, traffic, r, cpu in rows}
    for traffic in ("1 bucket", "1000 buckets"):
        (off, off_cpu), (on, on_cpu) = by[("off", traffic)], by[("on", traffic)]
        print(f"ratio on/off ({traffic}): req/s = {on['rps'] / off['rps']:.2f}, p99 = "
              f"{on['p99'] / max(off['p99'], 1e-9):.2f}, CPU per request = {on_cpu / max(off_cpu, 1e-9):.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--decisions", type=int, default=200_000)
    ap.add_argument("--buckets", type=int, default=10_000)
    ap.add_argument("--memory-buckets", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--no-broker", action="store_true", help="skip the wrk runs through the broker")
    args = ap.parse_args()
    print(f"# bench/admission.py  {time.strftime('%Y-%m-%d')}  nproc={os.cpu_count()}  "
          f"python {sys.version.split()[0]}")
    admitted, settled = events(args.decisions, buckets(args.buckets))
    for label, limits in (("realistic limits (all five kinds)", REALISTIC), ("huge limits", HUGE),
                          ("no limits at all", None)):
        best, refused = max(decisions_per_s(limits, admitted, settled) for _ in range(3))
        verdict = "ok" if best >= 100_000 else "BELOW TARGET"
        print(f"admit+settle, {args.buckets} buckets, {label:34}: {best:10,.0f} decisions/s "
              f"(target >= 100,000: {verdict}); refused {refused}")
    live, projection_only, per_id = memory_per_bucket(args.memory_buckets)
    per = 1024 * 1024 / args.memory_buckets
    print(f"memory, {args.memory_buckets:,} buckets (1 settled request each, through the admission): {live:.1f} MiB "
          f"traced ({live * per:.0f} B/bucket); projection alone, without the per-bucket limits cache "
          f"{projection_only:.1f} MiB ({projection_only * per:.0f} B/bucket)")
    busy = 180_000
    print(f"rate window, {busy:,} requests in one bucket's minute (3,000 req/s): {window_memory(busy):.1f} MiB traced")
    window = 2 * UsageProjection()._generation
    print(f"replay's dedup sets: {per_id:.0f} B per remembered event id -> {per_id * window / 1024 / 1024:.0f} MiB "
          f"when full (at most {window:,} ids; live admissions and settlements keep none)")
    if args.no_broker:
        return 0
    import shutil

    if shutil.which("wrk") is None:
        print("broker runs skipped: needs wrk (apt-get install wrk)")
        return 0
    print(f"# broker through wrk -t2 -c{args.connections}, {args.seconds}s per run, JSON chat, model auto")
    broker_runs(args.seconds, args.connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
