"""What the broker costs on top of the provider call, against the thinnest possible forwarder.

Run: `python bench/broker.py [--seconds 10] [--connections 16,64] [--clients aiohttp] [--pin] [--rounds N]
[--without PIECES]`. Needs `wrk`
(Debian package). In one run, on 127.0.0.1, it starts a fast upstream (`bench/fast_upstream.py`),
the floor (`bench/floor.py`: uvicorn + aiohttp, bytes in, bytes out) and the broker (`aibroker serve`
with a custom provider on that upstream, every limit lifted), and measures for JSON and SSE at each
connection count: (a) straight to the upstream, (b) the floor, (c) the broker — req/s, p50/p90/p99,
CPU per request (from /proc) — then the broker/floor ratios and the broker's RSS idle and after.
With `--rounds N` the floor and the broker take turns N times per row and the median run (by req/s)
is shown, with the range: on a shared VM one run of each can differ by ±25 % from the next.
`--without` adds brokers with pieces the design requires switched off (`bench/ablation.py`; `/`
between brokers, e.g. `log/headers,check`), each taking its turn with the floor: what the ratios would be
without those pieces.
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = '{"model":"%s","max_tokens":16,%s"messages":[{"role":"user","content":"Say hello to the benchmark"}]}'
CONFIG = """providers:
  bench: {base_url: "%s/v1", keyless: true}
models:
  bench/bench-model: {input: "0.10", output: "0.40", context_window: 131072, listed: true, streaming: true}
limits:
  default: {requests_per_min: 100000000, tokens_per_min: 100000000000, concurrent: 100000}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, seconds: float = 30.0) -> None:
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


def on_cpus(cpus: set[int] | None):  # type: ignore[no-untyped-def]
    """A `preexec_fn` pinning the child (and its threads) to `cpus`; None leaves it free."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


# --pin: the forwarder under test (floor or broker, with all its threads) gets CPU 0 alone; wrk and
# the upstream share CPU 1. Same conditions for both, and far less run-to-run noise than free placement.
SERVER_CPUS: set[int] | None = None
CLIENT_CPUS: set[int] | None = None


@contextmanager
def process(cmd: list[str], env: dict[str, str], ready_url: str,
            cpus: set[int] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=on_cpus(cpus))
    try:
        wait_ready(ready_url)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, body: str, seconds: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                'wrk.headers["Authorization"] = "Bearer bench"\n'
                f"wrk.body = [[{body}]]\n")
        script = f.name
    try:
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                             preexec_fn=on_cpus(CLIENT_CPUS),
                             capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {m.group(1): _ms(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    total = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50": lat.get("50", 0.0), "p90": lat.get("90", 0.0), "p99": lat.get("99", 0.0),
            "requests": float(total.group(1)) if total else 0.0, "errors": float(non2xx.group(1)) if non2xx else 0.0}


def measured(pid: int | None, url: str, body: str, seconds: int, connections: int) -> dict[str, float]:
    cpu0 = cpu_seconds(pid) if pid else 0.0
    result = wrk(url, body, seconds, connections)
    if pid:
        result["cpu_ms"] = (cpu_seconds(pid) - cpu0) * 1000 / max(result["requests"], 1)
    return result


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median req/s (the lower middle of an even count), with the range of req/s."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return {**ordered[(len(ordered) - 1) // 2], "rps_min": ordered[0]["rps"], "rps_max": ordered[-1]["rps"],
            "runs": float(len(ordered)), "errors": sum(r["errors"] for r in runs)}  # non-2xx of every run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", default="16,64")
    ap.add_argument("--clients", default="aiohttp", help="broker upstream clients to run, e.g. aiohttp,httpx")
    ap.add_argument("--rounds", type=int, default=1, help="floor and broker alternate this many runs per row; medians")
    ap.add_argument("--without", default="",
                    help="also run brokers with pieces switched off (an ablation: bench/ablation.py's headers,check,"
                         "metrics,wait,seal,log; `/` between brokers, e.g. log/seal), in turn with the others")
    ap.add_argument("--pin", action="store_true",
                    help="floor and broker on CPU 0 (one at a time under load), wrk and the upstream on CPU 1")
    args = ap.parse_args()
    global SERVER_CPUS, CLIENT_CPUS
    if args.pin:
        SERVER_CPUS, CLIENT_CPUS = {0}, {1}
    from ablation import PIECES  # (beside this script)
    unknown = sorted({p for pieces in args.without.split("/") for p in pieces.split(",") if p} - set(PIECES))
    if unknown:
        ap.error(f"unknown pieces {unknown}; choose from {', '.join(PIECES)}")
    if shutil.which("wrk") is None:
        print("bench/broker.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    conns = [int(c) for c in args.connections.split(",")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    up_port, floor_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    print(f"# bench/broker.py  {time.strftime('%Y-%m-%d %H:%M')}  nproc={os.cpu_count()}  wrk -t2, {args.seconds}s per run; "
          + ("floor/broker pinned to CPU 0, wrk and upstream to CPU 1" if args.pin
             else "upstream, floor, broker and wrk share the machine"))
    rows: list[tuple[str, str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack, \
            process([sys.executable, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(up_port)], env,
                    f"{upstream}/v1/models", CLIENT_CPUS), \
            process([sys.executable, str(ROOT / "bench" / "floor.py"), "--port", str(floor_port), "--upstream", upstream],
                    env, f"http://127.0.0.1:{floor_port}/v1/models", SERVER_CPUS) as floor:
        Path(tmp, "models.yml").write_text(CONFIG % upstream)
        variants = [(client, "") for client in args.clients.split(",")]
        variants += [(variants[0][0], pieces) for pieces in args.without.split("/") if pieces]
        brokers_up: list[tuple[str, int, subprocess.Popen[bytes]]] = []
        for n, (client, without) in enumerate(variants):  # all started first: each row takes turns over them
            port = free_port()
            name = client if not without else f"{client}-{n}"  # (the legend names the pieces)
            broker_env = {**env, "AIBROKER_DATA_DIR": f"{tmp}/data-{n}", "UPSTREAM_CLIENT": client,
                          "MODELS_CONFIG_PATH": f"{tmp}/models.yml"}
            serve = ["serve", "--port", str(port), "--admin", "off", "--no-sockets"]
            cmd = ([sys.executable, "-m", "deploy.cli", *serve] if not without
                   else [sys.executable, str(ROOT / "bench" / "ablation.py"), without, *serve])
            proc = stack.enter_context(process(cmd, broker_env, f"http://127.0.0.1:{port}/ready", SERVER_CPUS))
            brokers_up.append((name, port, proc))
        idle = {name: rss_mib(proc.pid) for name, _, proc in brokers_up}
        for mode, stream in (("json", ""), ("sse", '"stream":true,')):
            for c in conns:
                rows.append((mode, "upstream", c, measured(None, f"{upstream}/v1/chat/completions",
                                                           BODY % ("bench-model", stream), args.seconds, c)))
                floors: list[dict[str, float]] = []
                runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in brokers_up}
                for _ in range(max(1, args.rounds)):  # taking turns: drift in the VM hits all of them
                    floors.append(measured(floor.pid, f"http://127.0.0.1:{floor_port}/v1/chat/completions",
                                           BODY % ("bench-model", stream), args.seconds, c))
                    for name, port, proc in brokers_up:
                        runs[name].append(measured(proc.pid, f"http://127.0.0.1:{port}/v1/chat/completions",
                                                   BODY % ("auto", stream), args.seconds, c))
                rows.append((mode, "floor", c, median_run(floors)))
                rows += [(mode, f"broker/{name}", c, median_run(runs[name])) for name in runs]
        rss: dict[str, tuple[float, float]] = {name: (idle[name], rss_mib(proc.pid)) for name, _, proc in brokers_up}
    report(rows, rss)
    for n, (client, without) in enumerate(variants):
        if without:
            print(f"broker/{client}-{n}: the broker with {without} switched off (an ablation, bench/ablation.py)")
    return 0


def report(rows: list[tuple[str, str, int, dict[str, float]]], rss: dict[str, tuple[float, float]]) -> None:
    spread = any(r.get("runs", 1) > 1 for _, _, _, r in rows)
    print(f"{'mode':5} {'target':15} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10} {'non-2xx':>8}"
          + (f" {'req/s range (runs)':>20}" if spread else ""))
    for mode, target, c, r in rows:
        cpu = f"{r['cpu_ms']:10.3f}" if "cpu_ms" in r else f"{'':>10}"
        extra = f" {r['rps_min']:8.0f}-{r['rps_max']:<6.0f} ({r['runs']:.0f})" if spread and "runs" in r else ""
        print(f"{mode:5} {target:15} {c:5d} {r['rps']:8.0f} {r['p50']:8.2f} {r['p90']:8.2f} {r['p99']:8.2f} {cpu} {r['errors']:8.0f}{extra}")
    print("ratios broker / floor (same mode, same connections):")
    floors = {(m, c): r for m, t, c, r in rows if t == "floor"}
    for mode, target, c, r in rows:
        if target.startswith("broker/"):
            f = floors[(mode, c)]
            print(f"  {mode:5} {target:15} c={c:<3} req/s {r['rps'] / f['rps']:.2f}   p99 {r['p99'] / max(f['p99'], 1e-9):.2f}   "
                  f"CPU/req {r['cpu_ms'] / max(f['cpu_ms'], 1e-9):.2f}")
    for client, (idle, after) in rss.items():
        print(f"broker/{client} RSS: idle {idle:.1f} MiB, after the runs {after:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
