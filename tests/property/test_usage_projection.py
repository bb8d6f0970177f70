"""The usage projection under random traffic: limits hold, and the two fold laws hold.

A run is an interleaving of admission attempts (each one checked, then either folded as
`request.admitted` or logged as `request.rejected`, as the pipeline does) and settlements of
requests still in flight, over a few buckets. Time only moves forward, in steps that collide with
the 60 s window edge and sometimes cross a day.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from domain.events import Event, RequestAdmitted, RequestRejected, UsageRecorded
from domain.limits import Limits
from domain.usage_projection import DAY_US, WINDOW_US, BucketKey, UsageProjection, day_of, month_of

T0_US = 1_740_787_200_000_000  # 2025-03-01T00:00:00Z: a month edge lies a few day-steps back
BUCKETS: tuple[BucketKey, ...] = (("10.0.0.1", "A"), ("10.0.0.1", "B"), ("10.0.0.2", "A"))
STEPS_US = (0, 0, 1, 1_000, 500_000, 5_000_000, 20_000_000, WINDOW_US - 1, WINDOW_US, WINDOW_US + 1, DAY_US)


@dataclass(frozen=True)
class Admit:
    bucket: int
    dt_us: int
    tokens: int
    micros: int


@dataclass(frozen=True)
class Settle:
    bucket: int
    dt_us: int
    pick: int  # which of the bucket's in-flight requests (modulo their number)
    tokens_pct: int  # actual tokens as a percentage of the reservation (> 100: more than reserved)
    cost_pct: int | None  # actual cost likewise; None: the price was unknown


Op = Admit | Settle

steps = st.sampled_from(STEPS_US)
admits = st.builds(Admit, st.integers(0, len(BUCKETS) - 1), steps, st.sampled_from([0, 1, 10, 100, 1000]),
                   st.sampled_from([0, 1, 7, 50, 100]))


def settles(overspend: bool) -> st.SearchStrategy[Settle]:
    pct = st.integers(0, 150 if overspend else 100)
    return st.builds(Settle, st.integers(0, len(BUCKETS) - 1), steps, st.integers(0, 7), pct,
                     st.one_of(pct, st.none()) if overspend else pct)


def runs(overspend: bool = True) -> st.SearchStrategy[list[Op]]:
    return st.lists(st.one_of(admits, admits, settles(overspend)), min_size=8, max_size=60)


limits_sets = st.builds(
    Limits,
    requests_per_min=st.one_of(st.none(), st.integers(1, 4)),
    tokens_per_min=st.one_of(st.none(), st.sampled_from([0, 10, 500, 2000])),
    concurrent=st.one_of(st.none(), st.integers(0, 3)),
    budget_daily_micros=st.one_of(st.none(), st.sampled_from([0, 10, 120, 400])),
    budget_monthly_micros=st.one_of(st.none(), st.sampled_from([0, 50, 600])),
)


@dataclass
class Step:
    """One attempt's outcome, with the bucket's figures right after it."""

    op: Op
    key: BucketKey
    now_us: int
    admitted: bool | None  # None for a settlement
    code: str | None
    spent_today: int
    spent_month: int
    reserved_micros: int
    in_flight: int


@dataclass
class Run:
    projection: UsageProjection
    log: list[Event] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    now_us: int = T0_US


def play(ops: list[Op], limits: Limits, only: set[int] | None = None) -> Run:
    """Drive a projection as the pipeline does; `only` keeps the ops of some buckets (same clock)."""
    run = Run(UsageProjection())
    p = run.projection
    in_flight: dict[BucketKey, list[RequestAdmitted]] = defaultdict(list)
    now = T0_US
    for n, op in enumerate(ops):
        now += op.dt_us
        run.now_us = now
        if only is not None and op.bucket not in only:
            continue
        ip, context = key = BUCKETS[op.bucket]
        envelope: dict[str, Any] = {"event_id": f"e{n}", "ts_us": now, "seq": len(run.log) + 1, "ip": ip,
                                    "context": context, "request_id": f"r{n}"}
        if isinstance(op, Admit):
            refusal = p.check(key, limits, now, op.tokens, op.micros)
            if refusal is None:
                event: Event = RequestAdmitted(**envelope, reserved_tokens=op.tokens, reserved_micros=op.micros)
                in_flight[key].append(event)  # type: ignore[arg-type]
            else:
                event = RequestRejected(**envelope, code=refusal.code, status=429, limit=refusal.limit,
                                        observed=refusal.observed, retry_after_s=refusal.retry_after_s)
            admitted, code = refusal is None, None if refusal is None else refusal.code
        else:
            if not in_flight[key]:
                continue
            held = in_flight[key].pop(op.pick % len(in_flight[key]))
            tokens = held.reserved_tokens * op.tokens_pct // 100
            cost = None if op.cost_pct is None else held.reserved_micros * op.cost_pct // 100
            envelope["request_id"] = held.request_id
            event = UsageRecorded(**envelope, prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2,
                                  cost_micros=cost)
            admitted = code = None
        p.apply(event)
        run.log.append(event)
        b = p.bucket(key)
        run.steps.append(Step(op, key, now, admitted, code, b.spend_day.get(day_of(now), 0),
                              b.spend_month.get(month_of(now), 0), b.reserved_micros, b.in_flight_n))
    return run


def replay(log: list[Event]) -> UsageProjection:
    p = UsageProjection()
    for event in log:
        p.apply(event)
    return p


def figures(p: UsageProjection, key: BucketKey, now_us: int) -> dict[str, Any]:
    """Everything a bucket's decisions depend on, after evicting the window at `now_us`."""
    b = p.bucket(key)
    b.evict(now_us)
    return {
        "window": list(b.window),
        "window_tokens": b.window_tokens,
        "in_flight": {rid: [(h.tokens, h.micros) for h in holds] for rid, holds in b.in_flight.items()},
        "reserved_micros": b.reserved_micros,
        "spend_day": {d: m for d, m in b.spend_day.items() if m},
        "spend_month": {k: m for k, m in b.spend_month.items() if m},
    }


def state(p: UsageProjection, now_us: int) -> dict[BucketKey, dict[str, Any]]:
    return {key: figures(p, key, now_us) for key in BUCKETS}


def decisions(p: UsageProjection, key: BucketKey, limits: Limits, now_us: int) -> list[Any]:
    probes = [(0, 0), (1, 1), (100, 50), (5000, 500)]
    return [p.check(key, limits, now_us, tokens, micros) for tokens, micros in probes] + [
        p.headroom(key, limits, now_us), p.budget_left(key, limits, now_us)]


# ---- limits hold ---------------------------------------------------------------------------


@given(runs(), st.integers(1, 5))
def test_at_most_the_limit_of_requests_is_admitted_in_any_60s_window(ops: list[Op], limit: int) -> None:
    run = play(ops, Limits(requests_per_min=limit))
    admitted: dict[BucketKey, list[int]] = defaultdict(list)
    for step in run.steps:
        if step.admitted is None:
            continue
        earlier = [t for t in admitted[step.key] if t > step.now_us - WINDOW_US]
        # exact both ways: refused if and only if the window (t - 60 s, t] is already full
        assert step.admitted == (len(earlier) < limit), (step, earlier)
        assert step.admitted or step.code == "rate_limit_requests"
        if step.admitted:
            admitted[step.key].append(step.now_us)
            assert len(earlier) + 1 <= limit


@given(runs(overspend=False), st.sampled_from([0, 1, 10, 120, 400]), st.sampled_from([None, 150, 1000]))
def test_spend_plus_reservations_never_exceed_the_budget(ops: list[Op], daily: int, monthly: int | None) -> None:
    run = play(ops, Limits(budget_daily_micros=daily, budget_monthly_micros=monthly))
    for step in run.steps:
        assert step.spent_today + step.reserved_micros <= daily, step
        if monthly is not None:
            assert step.spent_month + step.reserved_micros <= monthly, step
        if step.admitted is False:
            assert step.code in ("budget_daily", "budget_monthly")


@given(runs(overspend=False), st.sampled_from([0, 10, 400]))
def test_admitted_worst_cases_of_a_day_fit_the_budget_when_nothing_is_refunded(ops: list[Op], daily: int) -> None:
    exact = [Settle(s.bucket, s.dt_us, s.pick, s.tokens_pct, 100) if isinstance(s, Settle) else s for s in ops]
    run = play(exact, Limits(budget_daily_micros=daily))
    per_day: dict[tuple[BucketKey, int], int] = defaultdict(int)
    for step, event in zip(run.steps, run.log):
        if isinstance(event, RequestAdmitted):
            per_day[(step.key, day_of(step.now_us))] += event.reserved_micros
    assert all(total <= daily for total in per_day.values()), per_day


@given(runs(), st.integers(0, 3))
def test_at_most_the_concurrency_limit_is_in_flight(ops: list[Op], limit: int) -> None:
    run = play(ops, Limits(concurrent=limit))
    for step in run.steps:
        assert step.in_flight <= limit, step
        if step.admitted is False:
            assert step.code == "concurrency_limit"


# ---- the laws ------------------------------------------------------------------------------


@given(runs(), limits_sets)
def test_law_folding_event_by_event_equals_replaying_the_log(ops: list[Op], limits: Limits) -> None:
    for n in range(0, len(ops), 7):  # prefixes too: the law holds at every point, not just at the end
        prefix = play(ops[:n], limits)
        assert state(prefix.projection, prefix.now_us) == state(replay(prefix.log), prefix.now_us)
    run = play(ops, limits)
    assert state(run.projection, run.now_us) == state(replay(run.log), run.now_us)
    fresh = replay(run.log)
    for key in BUCKETS:
        later = run.now_us + 30_000_000
        assert decisions(run.projection, key, limits, later) == decisions(fresh, key, limits, later)



@given(runs(), limits_sets, st.data())
def test_law_an_event_applied_twice_changes_nothing(ops: list[Op], limits: Limits, data: st.DataObject) -> None:
    run = play(ops, limits)
    if not run.log:
        return
    i = data.draw(st.integers(0, len(run.log) - 1), label="duplicated")
    j = data.draw(st.integers(i + 1, len(run.log)), label="inserted at")
    with_duplicate = [*run.log[:j], run.log[i], *run.log[j:]]
    assert state(replay(with_duplicate), run.now_us) == state(replay(run.log), run.now_us)
    twice = replay(run.log)
    twice.apply(run.log[i])
    assert state(twice, run.now_us) == state(replay(run.log), run.now_us)


@given(runs(), limits_sets, st.integers(0, len(BUCKETS) - 1))
def test_buckets_are_isolated(ops: list[Op], limits: Limits, kept: int) -> None:
    everyone = play(ops, limits)
    alone = play(ops, limits, only={kept})
    key = BUCKETS[kept]
    mine = [(s.now_us, s.admitted, s.code, s.spent_today, s.reserved_micros) for s in everyone.steps if s.key == key]
    assert mine == [(s.now_us, s.admitted, s.code, s.spent_today, s.reserved_micros) for s in alone.steps]
    assert figures(everyone.projection, key, everyone.now_us) == figures(alone.projection, key, alone.now_us)
    later = everyone.now_us + 1
    assert decisions(everyone.projection, key, limits, later) == decisions(alone.projection, key, limits, later)


@given(st.lists(st.tuples(st.integers(0, 90), st.integers(1, 1000)), min_size=1, max_size=60))
def test_a_bucket_keeps_only_its_two_newest_days_and_months_of_spend(settled: list[tuple[int, int]]) -> None:
    """Budgets read today and this month; a long-lived bucket must not grow by an entry per day. The
    newest day's and month's totals stay exact whatever order settlements come in."""
    p = UsageProjection()
    start = 1_740_787_200_000_000  # 2025-03-01T00:00:00Z
    for n, (day, micros) in enumerate(settled):
        p.apply(UsageRecorded(event_id=f"e{n}", ts_us=start + day * DAY_US + n, ip="10.0.0.1", context="0",
                              request_id=f"r{n}", cost_micros=micros, usage_source="provider"))
    b = p.bucket(("10.0.0.1", "0"))
    assert len(b.spend_day) <= 2 and len(b.spend_month) <= 2
    newest_day = max(day for day, _ in settled)
    newest_month = month_of(start + newest_day * DAY_US)
    assert b.spend_day[day_of(start) + newest_day] == sum(m for d, m in settled if d == newest_day)
    assert b.spend_month[newest_month] == sum(m for d, m in settled if month_of(start + d * DAY_US) == newest_month)
