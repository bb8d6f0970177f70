"""An ablation: pieces the design requires switched off in one process, to show what each costs.

The broker itself has no such switches: `bench/hotpath.py --without` and `bench/instructions.py
--without` use `switch_off` in their own process, and `bench/broker.py --without` serves through this
script: `python bench/ablation.py PIECES serve --port N ...` (PIECES comma-separated) is `aibroker
serve` with those pieces off.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

PIECES = ("headers", "check", "metrics", "wait", "seal", "log")


def switch_off(pieces: list[str]) -> None:
    """Switch pieces the broker must do off in this process only, to show what each costs (an
    ablation; the broker itself has no such switches). `headers`: the six `x-ratelimit-*` answer
    headers; `check`: checking each batch of events against its types' constraints before it is
    queued; `metrics`: the metrics fold of every appended event; `wait`: waiting for an append to be
    durable (appends return once queued; the writer still writes and fsyncs them); `seal`: sealing
    WAL files into Parquet (they stay in the WAL directory); `log`: the whole event log (no stamping,
    encoding, check, queue, writer or durable wait; appends return at once)."""
    unknown = sorted(set(pieces) - set(PIECES))
    if unknown:
        raise ValueError(f"unknown pieces {unknown}; choose from {', '.join(PIECES)}")
    from eventlog import stamping
    from eventlog.filelog import FileEventLog
    from functions.admission import Admission
    from functions.state import TappedLog

    if "headers" in pieces:
        Admission.raw_headers = lambda self, key, now_us: []  # type: ignore[method-assign,assignment]
    if "check" in pieces:
        stamping.validate_lines = lambda events, data: None  # type: ignore[assignment]
    if "metrics" in pieces:
        async def append_unobserved(self: TappedLog, events: Any) -> Any:
            return await self.inner.append(events)

        TappedLog.append = append_unobserved  # type: ignore[method-assign]
        TappedLog.submit = lambda self, events: self.inner.submit(events)  # type: ignore[method-assign]
    if "wait" in pieces:
        async def append_unawaited(self: FileEventLog, events: Any) -> Any:
            return self.submit(events)[0]

        FileEventLog.append = append_unawaited  # type: ignore[method-assign]
    if "seal" in pieces:
        FileEventLog._seal_closed = lambda self: None  # type: ignore[method-assign]
    if "log" in pieces:
        async def append_nowhere(self: FileEventLog, events: Any) -> Any:
            return list(events)

        def submit_nowhere(self: FileEventLog, events: Any) -> Any:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return list(events), done

        FileEventLog.append = append_nowhere  # type: ignore[method-assign]
        FileEventLog.submit = submit_nowhere  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from deploy.cli import main

    switch_off([piece for piece in sys.argv[1].split(",") if piece])
    sys.exit(main(sys.argv[2:]))
