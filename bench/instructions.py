"""The broker's own work per request as a count of CPU instructions: steady where timings are not.

Run: `python bench/instructions.py [--mode json|sse|both] [--tree DIR] [--without PIECES]`. Runs `bench/hotpath.py` (the
proxy path in-process, stub upstream, real event log) under valgrind's callgrind twice, with 640 and
3,840 measured requests, and prints the event-loop thread's instructions per request: the difference of
the two runs divided by the difference in requests, so start-up and warm-up cancel out. `--tree`
measures another checkout (say, `git worktree add /tmp/old <commit>`) with this script, for an A/B;
`--without` passes `hotpath.py`'s ablation on (what each piece the design requires costs).
Needs valgrind (Debian package `valgrind`); each mode takes about two minutes on the 2-core VM.

On this VM timings of the same code swing by ±20 % within an hour; instruction counts of the same code
differ by a few per cent between runs (the clock-driven work — an event id's per-millisecond prefix,
the WAL's rotation every second — is paid per wall-clock time, and valgrind runs ~50× slower).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNTS = (640, 3840)


def thread_totals(out_dir: Path, requests: int) -> int:
    """Instructions of the event-loop thread (callgrind's part for thread 1) in one run."""
    main = [p for p in out_dir.glob(f"cg.{requests}.*-01")]
    if len(main) != 1:
        raise SystemExit(f"callgrind wrote no output for the {requests}-request run in {out_dir}")
    text = main[0].read_text()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def measure(tree: Path, mode: str, without: str = "") -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        for n in COUNTS:
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                 f"--callgrind-out-file={out_dir}/cg.{n}.%p", sys.executable,
                 str(tree / "bench" / "hotpath.py"), "--mode", mode, "--requests", str(n), "--rounds", "1",
                 *(["--without", without] if without else [])],
                cwd=tree, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
        # hotpath.py rounds the requests down to a multiple of its 64 callers
        made = [n // 64 * 64 for n in COUNTS]
        return (thread_totals(out_dir, COUNTS[1]) - thread_totals(out_dir, COUNTS[0])) / (made[1] - made[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=("json", "sse", "both"), default="both")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    ap.add_argument("--without", default="", help="pieces to switch off (hotpath.py's ablation), e.g. headers,check")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    tree = args.tree.resolve()
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    print(f"# bench/instructions.py  tree {tree} ({commit}); event-loop thread, per request, "
          f"runs of {COUNTS[0]} and {COUNTS[1]} requests" + (f"; switched off: {args.without}" if args.without else ""))
    for mode in (("json", "sse") if args.mode == "both" else (args.mode,)):
        print(f"{mode:4}  {measure(tree, mode, args.without):>10,.0f} instructions per request", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
