"""Broker overhead: the same load straight to the fake upstream and through the broker, as ratios.

Run: `python bench/broker.py [--seconds 10] [--connections 64]`. Needs `wrk` (Debian package `wrk`);
a Python load generator on the same 2 cores would measure itself, not the broker. Starts its own
fake upstream and broker on 127.0.0.1 (free ports, temp data dir) and stops them by PID at the end.
It prints req/s, p50/p99 latency and the broker's CPU per request (from /proc) for JSON and SSE.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
BODY = '{"model":"%s","max_tokens":16,%s"messages":[{"role":"user","content":"Say hello to the benchmark"}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers={"Authorization": "Bearer bench"})
            with urllib.request.urlopen(req, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"not ready in {seconds}s: {url}")


@contextmanager
def process(cmd: list[str], env: dict[str, str], ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(ready_url)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: str, seconds: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                'wrk.headers["Authorization"] = "Bearer bench"\n'
                f"wrk.body = [[{body}]]\n")
        script = f.name
    try:
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                             capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {m.group(1): _ms(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    total = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50": lat.get("50", 0.0), "p90": lat.get("90", 0.0), "p99": lat.get("99", 0.0),
            "requests": float(total.group(1)) if total else 0.0, "errors": float(non2xx.group(1)) if non2xx else 0.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--clients", default="aiohttp", help="upstream clients to compare, e.g. aiohttp,httpx")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("bench/broker.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fake_port = free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    print(f"# bench/broker.py  {time.strftime('%Y-%m-%d')}  nproc={os.cpu_count()}  "
          f"{args.connections} connections, {args.seconds}s per run, wrk -t2")
    rows = []
    with process([sys.executable, "-m", "functions.fake_upstream", "--port", str(fake_port), "--log-level",
                  "warning", "--no-access-log"], env, f"{fake_url}/fakeai/v1/models"):
        for client in args.clients.split(","):
            broker_port = free_port()
            broker_env = {**env, "UPSTREAM_CLIENT": client, "MODELS_CONFIG_PATH": str(ROOT / "bench" / "unlimited.yml")}
            with tempfile.TemporaryDirectory() as data, process(
                [sys.executable, "-m", "deploy.cli", "serve", "--port", str(broker_port), "--admin", "off",
                 "--no-sockets", "--fake-url", fake_url],
                {**broker_env, "AIBROKER_DATA_DIR": data, "HERO_SOCKET_DIR": data + "/sockets"},
                f"http://127.0.0.1:{broker_port}/ready",
            ) as broker:
                for label, stream in (("json", ""), ("sse", '"stream":true,')):
                    direct = wrk(f"{fake_url}/fakeai/v1/chat/completions", BODY % ("fake-small", stream),
                                 args.seconds, args.connections)
                    cpu0 = cpu_seconds(broker.pid)
                    via = wrk(f"http://127.0.0.1:{broker_port}/v1/chat/completions", BODY % ("auto", stream),
                              args.seconds, args.connections)
                    cpu_ms = (cpu_seconds(broker.pid) - cpu0) * 1000 / max(via["requests"], 1)
                    rows.append((f"{label}/{client}", direct, via, cpu_ms))
    print(f"{'mode/client':14} {'target':8} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for label, direct, via, cpu_ms in rows:
        for name, r in (("upstream", direct), ("broker", via)):
            print(f"{label:14} {name:8} {r['rps']:8.0f} {r['p50']:8.2f} {r['p90']:8.2f} {r['p99']:8.2f} {r['errors']:8.0f}")
        print(f"{label:14} ratio    broker/upstream req/s = {via['rps'] / direct['rps']:.2f}, "
              f"p99 ratio = {via['p99'] / max(direct['p99'], 1e-9):.2f}, broker CPU per request = {cpu_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
