"""What reading a request costs: the fields routing needs parsed, the body forwarded with a new model.

Run: `python bench/request_body.py [--rounds 2000]`. Prints µs per request for the broker's path
(`parse_chat` + `upstream_body`: top-level fields kept as raw JSON, only the few it reads decoded)
and for the reference it replaced (the whole body decoded into Python objects, then encoded again),
on the benchmark's small body, a 20-turn conversation and the same with an inline image.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from functions.request_body import parse_chat, upstream_body  # noqa: E402

SMALL = b'{"model":"auto","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the benchmark"}]}'


def conversation(image_bytes: int) -> bytes:
    turns: list[dict[str, Any]] = [{"role": "assistant" if i % 2 else "user", "content": "lorem ipsum dolor sit amet " * 20}
                                   for i in range(20)]
    if image_bytes:
        turns.append({"role": "user", "content": [
            {"type": "text", "text": "what is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * image_bytes}}]})
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}]
    return json.dumps({"model": "auto", "messages": turns, "temperature": 0.3, "tools": tools}).encode()


def reference(raw: bytes) -> bytes:
    """Decode everything, set the model, encode everything (what the broker did before)."""
    body = msgspec.json.decode(raw)
    body["model"] = "bench-model"
    return msgspec.json.encode(body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()
    print("# bench/request_body.py  µs per request (best of 5)")
    for label, raw in (("small", SMALL), ("20 turns", conversation(0)), ("20 turns + image", conversation(100_000))):
        def broker(r: bytes = raw) -> bytes:
            return upstream_body(parse_chat(r), "bench-model")

        def before(r: bytes = raw) -> bytes:
            return reference(r)

        assert msgspec.json.decode(broker()) == msgspec.json.decode(before())
        times = [min(timeit.repeat(f, number=args.rounds, repeat=5)) / args.rounds * 1e6 for f in (broker, before)]
        print(f"{label:18} {len(raw):>8,} bytes   broker {times[0]:8.1f} µs   decode + re-encode {times[1]:8.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
