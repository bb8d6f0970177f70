"""What reading usage out of a stream costs: `SseScanner` over the fast upstream's 26-event stream.

Run: `python bench/sse_scan.py [--rounds 5000]`. Prints µs per stream when the stream arrives in one
read (what `bench/broker.py`'s upstream sends) and when every event arrives on its own, counting the
text eagerly (needed for a budget cap) or lazily (the relay's default).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fast_upstream import STREAM  # noqa: E402
from functions.usage_capture import SseScanner  # noqa: E402


def scan(parts: list[bytes], eager: bool = True) -> None:
    scanner = SseScanner(strip_usage_chunk=True, eager_chars=eager)
    for part in parts:
        scanner.feed(part)
    scanner.finish()
    assert scanner.done and scanner.usage is not None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5000)
    args = ap.parse_args()
    events = [e + b"\n\n" for e in STREAM.split(b"\n\n")[:-1]]
    print(f"# bench/sse_scan.py  {len(events)} events, {len(STREAM)} bytes per stream")
    cases = (("one read", [STREAM], True), ("one read per event", events, True),
             ("one read, lazy", [STREAM], False), ("per event, lazy", events, False))
    for label, parts, eager in cases:
        best = min(timeit.repeat(lambda p=parts, e=eager: scan(p, e), number=args.rounds, repeat=3)) / args.rounds
        print(f"{label:20} {best * 1e6:8.1f} µs per stream")
    print("lazy: text is counted only if the stream ends without usage (the relay, when no budget cap applies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
