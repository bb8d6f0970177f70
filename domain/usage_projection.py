"""Per-(ip, context) usage as a projection of the log: rate windows, in-flight, reservations, spend.

`apply(event)` folds one event; `check` decides an admission without changing anything; the shell
calls `check`, then folds the `request.admitted` event it appends — in one synchronous step, so
concurrent requests can never both take the last unit of a limit. Time comes only from events
(`ts_us`) and the caller's `now_us`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import NamedTuple

from msgspec import Struct

from domain.events import INT64_MAX, Event, RequestAdmitted, UsageRecorded
from domain.limits import Limits

WINDOW_US = 60_000_000
DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
BucketKey = tuple[str, str]  # (ip, context)


def day_of(ts_us: int) -> int:
    return ts_us // DAY_US


@lru_cache(maxsize=64)
def _month_of_day(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m")


def month_of(ts_us: int) -> str:
    return _month_of_day(ts_us // DAY_US)


def month_start_us(ts_us: int) -> int:
    d = _EPOCH + timedelta(microseconds=ts_us)
    return (datetime(d.year, d.month, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(microseconds=1)


def next_month_us(ts_us: int) -> int:
    d = _EPOCH + timedelta(microseconds=ts_us)
    first = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=timezone.utc)
    return (first - _EPOCH) // timedelta(microseconds=1)


class RateWindow:
    """One bucket's admissions of the last minute, oldest first, as two int64 arrays (time, tokens)
    and a moving head: 16 bytes an entry, where a list per entry cost ~120 (a busy bucket holds a
    minute of requests). An entry is named by its position since the bucket began, so a settlement
    can correct its tokens while it is still in the window; a cancelled entry is voided in place
    (tokens -1) and no longer counts."""

    __slots__ = ("base", "head", "live", "tokens", "total", "ts", "voids")
    COMPACT_AFTER = 1024  # dropped entries before the arrays are cut (and renumbered)

    def __init__(self) -> None:
        self.ts = array("q")
        self.tokens = array("q")
        self.head = 0  # index of the oldest live entry
        self.base = 0  # position of index 0
        self.total = 0  # tokens of the entries in the window
        self.voids = 0  # voided entries at or after head
        self.live = 0  # entries in the window, not voided (== len(self); an attribute, read per request)

    def __len__(self) -> int:
        return self.live

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(ts_us, tokens) of each entry in the window, oldest first."""
        for i in range(self.head, len(self.ts)):
            if self.tokens[i] >= 0:
                yield self.ts[i], self.tokens[i]

    def append(self, ts_us: int, tokens: int) -> int:
        tokens = min(tokens, INT64_MAX)  # (a count beyond int64 is refused by any limit anyway)
        self.ts.append(ts_us)
        self.tokens.append(tokens)
        self.total += tokens
        self.live += 1
        return self.base + len(self.ts) - 1

    def oldest_ts(self) -> int | None:
        tokens = self.tokens
        for i in range(self.head, len(tokens)):
            if tokens[i] >= 0:
                return self.ts[i]
        return None

    def evict(self, horizon_us: int) -> None:
        """Drop entries at or before `horizon_us`; compact once the dropped part is the larger."""
        ts, tokens, head, end = self.ts, self.tokens, self.head, len(self.ts)
        if head == end or ts[head] > horizon_us:  # the usual: nothing has expired since the last look
            return
        while head < end and ts[head] <= horizon_us:
            if tokens[head] < 0:
                self.voids -= 1
            else:
                self.total -= tokens[head]
                self.live -= 1
            head += 1
        self.head = head
        if head >= self.COMPACT_AFTER and 2 * head >= end:
            del ts[:head], tokens[:head]
            self.base += head
            self.head = 0

    def correct(self, position: int, tokens: int) -> None:
        """Set an entry's tokens (its settlement), if it is still in the window."""
        i = position - self.base
        if i >= self.head and self.tokens[i] >= 0:
            tokens = min(tokens, INT64_MAX)
            self.total += tokens - self.tokens[i]
            self.tokens[i] = tokens

    def void(self, position: int) -> None:
        """Take an entry out (its admission never reached the log), if it is still in the window."""
        i = position - self.base
        if i >= self.head and self.tokens[i] >= 0:
            self.total -= self.tokens[i]
            self.tokens[i] = -1
            self.voids += 1
            self.live -= 1


class Held(Struct, gc=False):
    """An admitted request's reservation, until its usage settles it. (A Struct: made per request,
    its `__init__` runs in C; plain ints, so the GC need not track it.)"""

    tokens: int
    micros: int
    position: int  # its rate-window entry


@dataclass
class Bucket:
    window: RateWindow = field(default_factory=RateWindow)
    # holds per request id: a client may reuse its X-Request-Id, and every admission holds its own
    in_flight: dict[str, list[Held]] = field(default_factory=dict)
    in_flight_n: int = 0
    reserved_micros: int = 0
    # spend of the two newest days and months settled: budgets read today's and this month's only,
    # and a bucket must not grow by a day's entry every day it lives (a late settlement for the
    # day before still lands)
    spend_day: dict[int, int] = field(default_factory=dict)
    spend_month: dict[str, int] = field(default_factory=dict)

    @property
    def window_tokens(self) -> int:
        return self.window.total

    def evict(self, now_us: int) -> None:
        self.window.evict(now_us - WINDOW_US)


@dataclass(frozen=True)
class Refusal:
    """Why a request may not go ahead now: the limit's code, its value, what was observed."""

    code: str
    limit: int
    observed: int
    retry_after_s: int
    message: str


class Headroom(NamedTuple):
    """What the rate-limit response headers report after a decision (a tuple: made per answer)."""

    limit_requests: int | None
    remaining_requests: int | None
    reset_requests_us: int
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens_us: int


def add_spend(b: Bucket, day: int, month: str, micros: int) -> None:
    """Count settled spend; keep only the two newest days and months (older ones no budget reads)."""
    b.spend_day[day] = b.spend_day.get(day, 0) + micros
    if len(b.spend_day) > 2:
        del b.spend_day[min(b.spend_day)]
    b.spend_month[month] = b.spend_month.get(month, 0) + micros
    if len(b.spend_month) > 2:
        del b.spend_month[min(b.spend_month)]


class UsageProjection:
    """All buckets. Duplicate events (same `event_id`) are ignored within a recent window: the ids of
    the last `dedup_window / 2` to `dedup_window` events, kept as two generations of plain sets (a set
    lookup and add per event, and a swap every `dedup_window / 2` events — no per-event eviction)."""

    def __init__(self, dedup_window: int = 200_000) -> None:
        self.buckets: dict[BucketKey, Bucket] = {}
        self._seen: set[str] = set()
        self._seen_before: set[str] = set()
        self._generation = max(dedup_window // 2, 1)
        self.last_seq = 0

    def bucket(self, key: BucketKey) -> Bucket:
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = Bucket()
        return b

    def apply(self, event: Event) -> UsageProjection:
        kind = type(event)  # exact types: this runs twice per request, on the hot path
        if kind is RequestAdmitted or kind is UsageRecorded:
            seen, event_id = self._seen, event.event_id
            if event_id in seen or event_id in self._seen_before:
                return self
            seen.add(event_id)
            if len(seen) >= self._generation:
                self._seen_before, self._seen = seen, set()
            if kind is RequestAdmitted:
                self.reserve(event)  # type: ignore[arg-type]
            else:
                self.settle(event)  # type: ignore[arg-type]
        if event.seq > self.last_seq:
            self.last_seq = event.seq
        return self

    # `reserve` and `settle` fold an admission or settlement the caller just made (a fresh
    # `event_id`): no de-dup bookkeeping. The seen-id sets are for replay, where a log may repeat an
    # event; live, they would cost two set operations per request and hold up to `dedup_window` ids.

    def reserve(self, e: RequestAdmitted) -> None:
        key = (e.ip, e.context)
        b = self.buckets.get(key) or self.bucket(key)
        position = b.window.append(e.ts_us, e.reserved_tokens)
        b.in_flight.setdefault(e.request_id, []).append(Held(e.reserved_tokens, e.reserved_micros, position))
        b.in_flight_n += 1
        b.reserved_micros += e.reserved_micros

    def _release(self, b: Bucket, request_id: str, newest: bool = False) -> Held | None:
        holds = b.in_flight.get(request_id)
        if not holds:
            return None
        held = holds.pop() if newest else holds.pop(0)
        if not holds:
            del b.in_flight[request_id]
        b.in_flight_n -= 1
        b.reserved_micros -= held.micros
        return held

    def settle(self, e: UsageRecorded) -> None:
        key = (e.ip, e.context)
        b = self.buckets.get(key) or self.bucket(key)
        held = self._release(b, e.request_id)
        if held is not None:
            b.window.correct(held.position, e.prompt_tokens + e.completion_tokens)
        cost = e.cost_micros or 0
        if cost:
            add_spend(b, day_of(e.ts_us), month_of(e.ts_us), cost)

    def cancel(self, key: BucketKey, request_id: str) -> None:
        """Undo an admission whose event never reached the log (the append failed)."""
        b = self.bucket(key)
        held = self._release(b, request_id, newest=True)
        if held is not None:
            b.window.void(held.position)

    def release_all_in_flight(self) -> None:
        """After a restart: requests of the previous run are gone, so are their reservations."""
        for b in self.buckets.values():
            b.in_flight.clear()
            b.in_flight_n = 0
            b.reserved_micros = 0

    # ---- decisions --------------------------------------------------------------------------

    def check(self, key: BucketKey, limits: Limits, now_us: int, tokens: int, micros: int) -> Refusal | None:
        """May a request reserving `tokens` and `micros` (worst case) start now? Changes nothing
        but evicting expired window entries."""
        b = self.buckets.get(key) or self.bucket(key)
        window = b.window
        window.evict(now_us - WINDOW_US)
        if limits.concurrent is not None and b.in_flight_n >= limits.concurrent:
            return Refusal("concurrency_limit", limits.concurrent, b.in_flight_n, 1,
                           f"{b.in_flight_n} requests of this (ip, context) are in flight; the limit is {limits.concurrent}")
        rpm = limits.requests_per_min
        if rpm is not None and window.live + 1 > rpm:
            oldest = window.oldest_ts()
            wait = (oldest + WINDOW_US - now_us) if oldest is not None else WINDOW_US
            return Refusal("rate_limit_requests", rpm, window.live, _ceil_s(wait),
                           f"rate limit of {rpm} requests per minute reached for this (ip, context)")
        tpm = limits.tokens_per_min
        if tpm is not None and window.total + tokens > tpm:
            return Refusal("rate_limit_tokens", tpm, b.window_tokens + tokens, _ceil_s(_tokens_wait(b, tpm, tokens, now_us)),
                           f"this request needs {tokens} tokens; {max(tpm - b.window_tokens, 0)} of {tpm} "
                           "tokens per minute are left for this (ip, context)")
        if limits.budget_daily_micros is None and limits.budget_monthly_micros is None:
            return None
        return self._check_budgets(b, limits, now_us, micros)

    def _check_budgets(self, b: Bucket, limits: Limits, now_us: int, micros: int) -> Refusal | None:
        day_limit, month_limit = limits.budget_daily_micros, limits.budget_monthly_micros
        if day_limit is not None:
            used = b.spend_day.get(day_of(now_us), 0) + b.reserved_micros
            if used + micros > day_limit:
                wait = (day_of(now_us) + 1) * DAY_US - now_us
                return Refusal("budget_daily", day_limit, used + micros, _ceil_s(wait),
                               f"daily budget of {day_limit} micro-USD reached for this (ip, context): "
                               f"{used} spent or reserved, this request may cost up to {micros}")
        if month_limit is not None:
            used = b.spend_month.get(month_of(now_us), 0) + b.reserved_micros
            if used + micros > month_limit:
                wait = next_month_us(now_us) - now_us
                return Refusal("budget_monthly", month_limit, used + micros, _ceil_s(wait),
                               f"monthly budget of {month_limit} micro-USD reached for this (ip, context): "
                               f"{used} spent or reserved, this request may cost up to {micros}")
        return None

    def headroom(self, key: BucketKey, limits: Limits, now_us: int) -> Headroom:
        window = (self.buckets.get(key) or self.bucket(key)).window
        window.evict(now_us - WINDOW_US)
        oldest = window.oldest_ts()
        reset = (oldest + WINDOW_US - now_us) if oldest is not None else 0
        rpm, tpm = limits.requests_per_min, limits.tokens_per_min
        return Headroom(rpm, None if rpm is None else max(rpm - window.live, 0), reset,
                        tpm, None if tpm is None else max(tpm - window.total, 0), reset)

    def budget_left(self, key: BucketKey, limits: Limits, now_us: int) -> tuple[int, str] | None:
        """(micro-USD this bucket may still spend now, the binding budget's code); None: no budget."""
        b = self.bucket(key)
        lefts = []
        if limits.budget_daily_micros is not None:
            lefts.append((limits.budget_daily_micros - b.spend_day.get(day_of(now_us), 0) - b.reserved_micros,
                          "budget_daily"))
        if limits.budget_monthly_micros is not None:
            lefts.append((limits.budget_monthly_micros - b.spend_month.get(month_of(now_us), 0) - b.reserved_micros,
                          "budget_monthly"))
        return min(lefts) if lefts else None


def _tokens_wait(b: Bucket, tpm: int, tokens: int, now_us: int) -> int:
    """Time until enough window entries expire for `tokens` to fit (a full window if never)."""
    if tokens > tpm:
        return WINDOW_US
    excess = b.window_tokens + tokens - tpm
    for ts, used in b.window:
        excess -= used
        if excess <= 0:
            return ts + WINDOW_US - now_us
    return WINDOW_US


def _ceil_s(us: int) -> int:
    return max(1, -(-us // 1_000_000))


def duration(us: int) -> str:
    """OpenAI's reset format: `6m0s`, `1s`, `250ms`."""
    if us <= 0:
        return "0s"
    if us < 1_000_000:
        return f"{-(-us // 1000)}ms"
    seconds = -(-us // 1_000_000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
