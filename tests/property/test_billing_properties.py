"""Properties of a bill over random logs: items sum exactly to the totals, and each context's total is
the Python sum of its events' `cost_micros` (unknown prices count 0) to the micro-dollar.

Events go through a real `FileEventLog` (part sealed and maybe compacted, part in the WAL tail); their
times cluster on the period's edges, where off-by-one bugs live.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.events import INT64_MAX, UsageRecorded
from eventlog.billing import SUMMED, line_items, period_bounds
from eventlog.filelog import FileEventLog

PERIODS = ("2026-02", "2026-02-28", "2026-03-01")
EDGES = ("start", "end")


@st.composite
def usage_events(draw: st.DrawFn, period: str) -> list[UsageRecorded]:
    start, end = period_bounds(period)
    times = st.one_of(st.sampled_from([start - 1, start, start + 1, end - 1, end, end + 1]),
                      st.integers(start - 86_400_000_000, end + 86_400_000_000))
    costs = st.one_of(st.none(), st.sampled_from([0, 1, 499_999, 10**12]), st.integers(0, INT64_MAX // 10_000))
    specs = draw(st.lists(st.tuples(times, st.sampled_from(["A", "B", "0"]), st.sampled_from(["10.0.0.1", "::1"]),
                                    st.sampled_from(["m1", "m2"]), costs, st.integers(0, 10**9),
                                    st.sampled_from(["provider", "estimated", "missing"])), max_size=40))
    return [UsageRecorded(event_id=f"e{n}", ts_us=ts, context=ctx, ip=ip, provider="p", model=model,
                          prompt_tokens=tokens, completion_tokens=tokens // 3, cost_micros=cost, usage_source=source)
            for n, (ts, ctx, ip, model, cost, tokens, source) in enumerate(specs)]


async def _write(data_dir: Path, events: list[UsageRecorded], sealed: int, compact: bool) -> None:
    log = await FileEventLog.open(data_dir)
    try:
        await log.append(events[:sealed])
        await log.flush_sealed()
        if compact:
            await log.compact()
        await log.append(events[sealed:])
    finally:
        await log.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(PERIODS).flatmap(lambda p: st.tuples(st.just(p), usage_events(p))),
       st.floats(0, 1), st.booleans())
def test_items_sum_to_totals_and_totals_equal_the_python_sum(tmp_path: Path, drawn: tuple[str, list[UsageRecorded]],
                                                             sealed_part: float, compact: bool) -> None:
    period, events = drawn
    data_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    asyncio.run(_write(data_dir, events, int(len(events) * sealed_part), compact))
    items, totals, position = line_items(data_dir, period)

    for name in SUMMED:
        assert getattr(totals, name) == sum(getattr(i, name) for i in items), name
    start, end = period_bounds(period)
    inside = [e for e in events if start <= e.ts_us < end]
    want_micros: Counter[str] = Counter()
    want_requests: Counter[str] = Counter()
    for e in inside:
        want_micros[e.context] += e.cost_micros or 0
        want_requests[e.context] += 1
    got_micros: Counter[str] = Counter()
    got_requests: Counter[str] = Counter()
    for i in items:
        got_micros[i.context] += i.cost_micros
        got_requests[i.context] += i.requests
    assert got_micros == want_micros and got_requests == want_requests
    assert totals.unpriced_requests == sum(1 for e in inside if e.cost_micros is None)
    assert position == max((n + 1 for n, e in enumerate(events) if start <= e.ts_us < end), default=0)
    keys = [(i.ip, i.context, i.provider, i.model) for i in items]
    assert keys == sorted({(e.ip, e.context, e.provider, e.model) for e in inside})
