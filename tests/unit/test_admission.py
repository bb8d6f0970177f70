"""Admission: check + reserve in one synchronous step, settlement, and the x-ratelimit headers."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.events import LimitsChanged, RequestAdmitted, UsageRecorded
from domain.limits import Limits, PolicyBook
from domain.usage_projection import DAY_US, WINDOW_US, UsageProjection, duration
from functions.admission import Admission

T0_US = 1_750_000_000_000_000  # a Sunday, 15:06:40 UTC
KEY = ("10.0.0.1", "A")
_ids = itertools.count()


def admission(**limits: Any) -> Admission:
    book = PolicyBook()
    if limits:
        book.set(("default", "", ""), limits)
    return Admission(book, UsageProjection())


def admitted(ts_us: int = T0_US, tokens: int = 10, micros: int = 5, key: tuple[str, str] = KEY,
             request_id: str | None = None) -> RequestAdmitted:
    n = next(_ids)
    return RequestAdmitted(event_id=f"adm-{n}", ts_us=ts_us, ip=key[0], context=key[1],
                           request_id=request_id or f"req-{n}", reserved_tokens=tokens, reserved_micros=micros)


def usage(of: RequestAdmitted, ts_us: int | None = None, tokens: int = 4, cost: int | None = 2) -> UsageRecorded:
    return UsageRecorded(event_id=f"use-{next(_ids)}", ts_us=ts_us or of.ts_us, ip=of.ip, context=of.context,
                         request_id=of.request_id, prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2,
                         cost_micros=cost)


# ---- admit / settle -------------------------------------------------------------------------


def test_a_fresh_book_admits_with_the_built_in_defaults() -> None:
    a = admission()
    first = admitted()
    assert a.admit(first) is None
    assert a.limits(KEY).requests_per_min == 1000
    b = a.usage.bucket(KEY)
    assert list(b.in_flight) == [first.request_id] and b.reserved_micros == 5 and b.window_tokens == 10


def test_the_request_limit_refuses_the_next_request_with_the_wait_until_the_oldest_expires() -> None:
    a = admission(requests_per_min=2)
    assert a.admit(admitted(T0_US)) is None
    assert a.admit(admitted(T0_US + 10_000_000)) is None
    refusal = a.admit(admitted(T0_US + 15_000_000))
    assert refusal is not None
    assert (refusal.code, refusal.limit, refusal.observed, refusal.retry_after_s) == ("rate_limit_requests", 2, 2, 45)
    assert "2 requests per minute" in refusal.message
    assert len(a.usage.bucket(KEY).window) == 2  # a refusal reserves nothing
    assert a.admit(admitted(T0_US + WINDOW_US)) is None  # the oldest left the window exactly now


def test_the_token_limit_counts_reservations_then_actual_tokens() -> None:
    a = admission(tokens_per_min=100)
    first = admitted(tokens=80)
    assert a.admit(first) is None
    refusal = a.admit(admitted(tokens=30))
    assert refusal is not None and refusal.code == "rate_limit_tokens"
    assert (refusal.limit, refusal.observed) == (100, 110)
    assert "needs 30 tokens; 20 of 100" in refusal.message
    a.settle(usage(first, tokens=40))  # the refund: 40 of the 80 reserved tokens come back
    assert a.usage.bucket(KEY).window_tokens == 40
    assert a.admit(admitted(tokens=30)) is None


def test_the_concurrency_limit_counts_only_requests_in_flight() -> None:
    a = admission(concurrent=1)
    first = admitted()
    assert a.admit(first) is None
    refusal = a.admit(admitted())
    assert refusal is not None and refusal.code == "concurrency_limit" and refusal.retry_after_s == 1
    assert "1 requests of this (ip, context) are in flight; the limit is 1" == refusal.message
    a.settle(usage(first))
    assert a.admit(admitted()) is None


def test_budgets_count_spend_and_reservations_and_refund_on_settlement() -> None:
    a = admission(budget_daily_micros=100)
    first = admitted(micros=60)
    assert a.admit(first) is None
    refusal = a.admit(admitted(micros=50))
    assert refusal is not None and refusal.code == "budget_daily"
    assert (refusal.limit, refusal.observed) == (100, 110)
    assert "60 spent or reserved, this request may cost up to 50" in refusal.message
    a.settle(usage(first, cost=20))
    assert a.usage.budget_left(KEY, a.limits(KEY), T0_US) == (80, "budget_daily")
    assert a.admit(admitted(micros=50)) is None
    next_day = (T0_US // DAY_US + 1) * DAY_US
    assert refusal.retry_after_s == -(-(next_day - T0_US) // 1_000_000)


def test_the_monthly_budget_refuses_with_a_wait_until_the_next_month() -> None:
    a = admission(budget_monthly_micros=10)
    a.settle(usage(admitted(), cost=10))
    refusal = a.admit(admitted(micros=1))
    assert refusal is not None and refusal.code == "budget_monthly"
    # 2025-06-15T15:06:40Z → 2025-07-01T00:00:00Z
    assert refusal.retry_after_s == 1_751_328_000 - 1_750_000_000


def test_a_limits_changed_event_takes_effect_on_the_next_decision() -> None:
    a = admission(requests_per_min=1)
    assert a.admit(admitted()) is None
    assert a.admit(admitted()) is not None
    a.changed(LimitsChanged(event_id="lc", ts_us=T0_US, scope="context", context="A", requests_per_min=2))
    assert a.admit(admitted()) is None
    assert a.limits(("10.0.0.9", "B")).requests_per_min == 1


# ---- headers ----------------------------------------------------------------------------------


def test_headers_report_limit_remaining_and_reset_as_a_duration() -> None:
    a = admission(requests_per_min=3, tokens_per_min=1000)
    a.admit(admitted(T0_US, tokens=100))
    a.admit(admitted(T0_US + 6_000_000, tokens=50))
    headers = a.headers(KEY, T0_US + 6_000_000)
    assert headers == {
        "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "54s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "850",
        "x-ratelimit-reset-tokens": "54s",
    }


@given(st.lists(st.one_of(st.integers(-2_000_000, 2 * WINDOW_US),
                          st.sampled_from([0, 1, 999, 1000, 1001, 999_000, 999_001, 999_999, 1_000_000, 1_000_001])),
                max_size=40))
def test_remembered_reset_texts_are_the_durations_they_stand_for(values: list[int]) -> None:
    a = admission()
    for us in values + values:  # the second pass reads what the first remembered
        assert a._reset(us) == duration(us).encode(), us


def test_headers_of_an_idle_bucket_show_full_room_and_no_wait() -> None:
    headers = admission().headers(KEY, T0_US)
    assert headers["x-ratelimit-remaining-requests"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "2000000"
    assert headers["x-ratelimit-reset-requests"] == "0s" == headers["x-ratelimit-reset-tokens"]


def test_remaining_never_goes_negative_when_settlements_overshoot() -> None:
    a = admission(tokens_per_min=100)
    first = admitted(tokens=10)
    a.admit(first)
    a.settle(usage(first, tokens=500))
    assert a.headers(KEY, T0_US)["x-ratelimit-remaining-tokens"] == "0"


def test_a_field_without_a_limit_has_no_headers() -> None:
    a = Admission(PolicyBook(base=Limits()), UsageProjection())  # every field None: no limits at all
    assert a.admit(admitted()) is None
    assert a.headers(KEY, T0_US) == {}


# ---- exactness under concurrency ------------------------------------------------------------


async def _one_request(a: Admission, ts_us: int) -> bool:
    decision = a.admit(admitted(ts_us))
    await asyncio.sleep(0)  # the handler goes on to await the log append
    return decision is None


@pytest.mark.parametrize("limit", [1, 7, 50])
def test_exactly_the_limit_is_admitted_when_many_tasks_race(limit: int) -> None:
    a = admission(requests_per_min=limit)

    async def burst() -> list[bool]:
        return await asyncio.gather(*[_one_request(a, T0_US + i) for i in range(limit * 20)])

    results = asyncio.run(burst())
    assert sum(results) == limit
    assert results[:limit] == [True] * limit  # first come, first served
    assert len(a.usage.bucket(KEY).window) == limit


def test_racing_tasks_never_overspend_a_budget() -> None:
    a = admission(budget_daily_micros=1000, concurrent=10_000)

    async def burst() -> list[bool]:
        return await asyncio.gather(*[_one_request(a, T0_US) for _ in range(500)])  # 5 µUSD each

    assert sum(asyncio.run(burst())) == 200
    assert a.usage.bucket(KEY).reserved_micros == 1000


# ---- client-chosen request ids ---------------------------------------------------------------


def test_reusing_a_request_id_does_not_bypass_the_concurrency_limit() -> None:
    a = admission(concurrent=2)
    decisions = [a.admit(admitted(request_id="same")) for _ in range(4)]
    assert [d is None for d in decisions] == [True, True, False, False]


def test_reusing_a_request_id_does_not_release_another_requests_reservation() -> None:
    a = admission(budget_daily_micros=100)
    decisions = [a.admit(admitted(micros=40, request_id="same")) for _ in range(5)]
    assert [d is None for d in decisions] == [True, True, False, False, False]
