"""What routing an `auto` request costs as the catalog grows: `route` (every offer checked in Python)
against `route_auto` (the table the broker keeps per catalog version and rules).

Run: `python bench/routing.py [--rounds 300]`. For catalogs of 1, 10, 100, 300 and 1,000 chat offers
(random prices and windows, a few providers, most with tools), prints µs per decision for a small
request, and for a large one that some offers' windows cannot hold; the table's build time (once per
catalog version, policy and health state) and whether both ways decided the same (the same offer, or
no route: `route_auto` then returns None and the broker routes in full for the refusal's message). The
best of five runs is shown (the VM's timings swing).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from domain.catalog import Capabilities, Catalog, Offer, Prices  # noqa: E402
from domain.routing import Policy, RouteDecision, RouteRequest, auto_table, route, route_auto  # noqa: E402

SIZES = (1, 10, 100, 300, 1000)
KEEP = 32  # what the broker keeps: the first 32 candidates


def catalog(size: int, seed: int = 1) -> Catalog:
    rng = random.Random(seed)
    return Catalog("bench", [
        Offer(provider=rng.choice(["openrouter", "groq", "openai", "local"]), model=f"model-{i}", kind="chat",
              prices=Prices(input=rng.randint(1, 300) * 1_000, output=rng.randint(1, 900) * 1_000),
              context_window=rng.choice([8_192, 32_768, 131_072]),
              caps=Capabilities(tools=rng.random() < 0.8, streaming=True))
        for i in range(size)])


def best_us(fn: object, rounds: int) -> float:
    return min(timeit.repeat(fn, number=rounds, repeat=5)) / rounds * 1e6  # type: ignore[arg-type]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    policy, healthy = Policy(), frozenset[str]()
    small = RouteRequest(prompt_tokens_est=20, max_tokens=16, needs=frozenset({"streaming"}))
    large = RouteRequest(prompt_tokens_est=20_000, max_tokens=16_000, needs=frozenset({"tools"}))
    print(f"# bench/routing.py  {time.strftime('%Y-%m-%d %H:%M')}  µs per decision, best of 5 runs of {args.rounds}")
    print(f"{'offers':>6}  {'request':7} {'route':>9} {'route_auto':>11}  {'table build':>11}  same choice")
    for size in SIZES:
        cat = catalog(size)
        for name, request in (("small", small), ("large", large)):
            built = time.perf_counter()
            table = auto_table(cat, "chat", policy, healthy, request.needs)
            build_us = (time.perf_counter() - built) * 1e6
            full = route(cat, request, unhealthy=healthy, policy=policy)
            fast = route_auto(table, request, keep=KEEP)
            same = (fast.chosen == full.chosen) if isinstance(full, RouteDecision) and fast else (fast is None)
            slow_us = best_us(lambda: route(cat, request, unhealthy=healthy, policy=policy), args.rounds)
            fast_us = best_us(lambda: route_auto(table, request, keep=KEEP), args.rounds)
            print(f"{size:>6}  {name:7} {slow_us:9.1f} {fast_us:11.1f}  {build_us:11.1f}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
