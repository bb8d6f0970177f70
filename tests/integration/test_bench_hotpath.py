"""`bench/hotpath.py` runs the proxy path and its ablation (the tool the performance figures come from);
`bench/broker.py` checks the pieces it is asked to switch off.

It is a benchmark, not a test of speed: these only check that it still drives the broker to 200s in
both modes, with each piece switched off, and refuses a piece it does not know.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _hotpath(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "hotpath.py"), "--requests", "128", "--rounds", "1",
                           *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["json", "sse"])
@pytest.mark.parametrize("without", ["", "headers", "check", "metrics", "wait", "seal", "log", "headers,check,metrics,log"])
def test_hotpath_serves_every_request_with_any_piece_switched_off(mode: str, without: str) -> None:
    done = _hotpath("--mode", mode, *(["--without", without] if without else []))
    assert done.returncode == 0, done.stderr
    assert f"{mode} round 1: 128 requests" in done.stdout  # (it exits non-zero on any answer but a 200)
    assert ("switched off: " + without.replace(",", ", ") in done.stdout) == bool(without)


def test_hotpath_refuses_an_unknown_piece() -> None:
    done = _hotpath("--without", "routing")
    assert done.returncode == 2
    assert "unknown pieces ['routing']" in done.stderr


def test_broker_benchmark_refuses_an_unknown_piece_before_starting_anything() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "broker.py"), "--without", "log/routing"],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown pieces ['routing']" in done.stderr
