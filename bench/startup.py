"""Start-up to ready with a large log: how long until `/ready` answers over 1e7 events (target ≤ 3 s).

Run: `python bench/startup.py [--events 10000000] [--runs 3]`. Builds the same synthetic, compacted
log as bench/billing.py, spread from the start of this month to two minutes ago (half of it usage,
so the month's spend rebuild reads 5e6 usage rows),
then starts `aibroker serve --fake` on it several times and times process start → `GET /ready` 200.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench_billing", HERE / "billing.py")
bl = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
spec.loader.exec_module(bl)  # type: ignore[union-attr]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_to_ready(data: Path, limit_s: float = 60.0) -> tuple[float, float]:
    """(seconds from process start to `/ready`, RSS in MiB one second after ready)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "AIBROKER_DATA_DIR": str(data)}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "serve", "--fake", "--port", str(port), "--admin", "off",
                             "--no-sockets"], env=env, cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < limit_s:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as resp:
                    if resp.status == 200:
                        ready = time.monotonic() - started
                        time.sleep(1.0)
                        return ready, rss_mib(proc.pid)
            except OSError:
                time.sleep(0.02)
        raise SystemExit(f"not ready within {limit_s}s")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--log-dir", help="build the log here and keep it (reused when it already holds one)")
    args = ap.parse_args()
    print(f"# bench/startup.py  {time.strftime('%Y-%m-%d %H:%M')}  nproc={os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.log_dir) if args.log_dir else Path(tmp) / "data"
        if (data / "manifest.json").exists():
            print(f"log: reusing {data}")
        else:
            data.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            bl.END_US = time.time_ns() // 1000 - 120_000_000  # the month so far: no events from the future
            bl.write_synthetic_log(data, args.events, bl.template_table(bl.SEGMENT_EVENTS, random.Random(11)))
            bl.compaction.compact(bl.Sealer(data))
            print(f"log: {args.events:,} events in one month, compacted, built in {time.monotonic() - t0:.1f} s")
        empty, empty_rss = time_to_ready(Path(tmp) / "empty")
        print(f"empty-log start for comparison: {empty:.2f} s to ready, RSS {empty_rss:.1f} MiB")
        runs = [time_to_ready(data) for _ in range(args.runs)]
        times = [t for t, _ in runs]
        print("start-up to ready: " + ", ".join(f"{t:.2f} s" for t in times) + f"  (best {min(times):.2f} s; target ≤ 3 s)")
        print("RSS 1 s after ready (--fake: the fake upstream runs in the same process): "
              + ", ".join(f"{r:.1f} MiB" for _, r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
