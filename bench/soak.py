"""Soak: the broker's RSS over N requests (default 1e6) of steady load — does it grow per request?

Run: `python bench/soak.py [--requests 1000000] [--connections 64] [--slice 20]`. Needs `wrk`.
Starts the fast upstream and the broker (limits lifted) on 127.0.0.1, drives wrk in slices, and prints
RSS at idle and after every slice, then the growth to the end from the first slice, from the end of a
warm-up as long as the rate window (`--warmup`, 60 s: its entries belong to the steady state), and over
the second half of the run (flat = no per-request growth once the bounded
windows — 60 s of rate entries, 200k remembered event ids — are full). Bounded: stops at N requests
or after `--max-minutes`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench_broker", ROOT / "broker.py")
bb = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
spec.loader.exec_module(bb)  # type: ignore[union-attr]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--slice", type=int, default=20, help="seconds per wrk run")
    ap.add_argument("--max-minutes", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds of load before the steady-state baseline (the rate window is 60 s)")
    args = ap.parse_args()
    env = {**bb.os.environ, "PYTHONPATH": str(bb.ROOT)}
    up = bb.free_port()
    upstream = f"http://127.0.0.1:{up}"
    print(f"# bench/soak.py  {time.strftime('%Y-%m-%d %H:%M')}  target {args.requests:,} requests, "
          f"{args.connections} connections, JSON chat through the broker")
    with tempfile.TemporaryDirectory() as tmp, bb.process([sys.executable, str(ROOT / "fast_upstream.py"), "--port", str(up)],
                                                          env, f"{upstream}/v1/models"):
        Path(tmp, "models.yml").write_text(bb.CONFIG % upstream)
        port = bb.free_port()
        broker_env = {**env, "AIBROKER_DATA_DIR": f"{tmp}/data", "MODELS_CONFIG_PATH": f"{tmp}/models.yml"}
        cmd = [sys.executable, "-m", "deploy.cli", "serve", "--port", str(port), "--admin", "off", "--no-sockets"]
        with bb.process(cmd, broker_env, f"http://127.0.0.1:{port}/ready") as broker:
            idle = bb.rss_mib(broker.pid)
            print(f"idle RSS {idle:.1f} MiB")
            done, warm, half, peak, deadline = 0, None, None, 0.0, time.monotonic() + args.max_minutes * 60
            loaded, steady = 0.0, None
            while done < args.requests and time.monotonic() < deadline:
                r = bb.wrk(f"http://127.0.0.1:{port}/v1/chat/completions", bb.BODY % ("auto", ""), args.slice, args.connections)
                done += int(r["requests"])
                loaded += args.slice
                rss = bb.rss_mib(broker.pid)
                warm = warm or rss
                if steady is None and loaded >= args.warmup:
                    steady = (done, rss)
                peak = max(peak, rss)
                if half is None and done >= args.requests // 2:
                    half = rss
                print(f"{done:>10,} requests  {r['rps']:7.0f} req/s  p99 {r['p99']:7.2f} ms  non-2xx {r['errors']:.0f}  RSS {rss:7.1f} MiB")
            growth = (rss - warm) / warm * 100
            print(f"RSS: idle {idle:.1f} MiB, after the first slice {warm:.1f} MiB, at the end {rss:.1f} MiB "
                  f"({growth:+.1f} % from the first slice to the end, over {done:,} requests), peak {peak:.1f} MiB")
            if steady:
                print(f"RSS after {args.warmup:g} s of warm-up ({steady[0]:,} requests): {steady[1]:.1f} MiB -> {rss:.1f} MiB "
                      f"at the end ({(rss - steady[1]) / steady[1] * 100:+.1f} %)")
            if half:
                print(f"RSS over the second half: {half:.1f} MiB at {args.requests // 2:,}+ requests -> {rss:.1f} MiB "
                      f"at the end ({(rss - half) / half * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
