"""Admission: the (ip, context) bucket's limits and routing policy, the decision, the headers.

Thin shell over the pure projection: it reads the clock-free decision from `domain`, and owns the
caches that make per-request lookups O(1) (keyed on the policy book's version).
"""

from __future__ import annotations

from domain.events import LimitsChanged, RequestAdmitted, UsageRecorded
from domain.limits import Limits, PolicyBook
from domain.routing import Policy
from domain.usage_projection import Refusal, UsageProjection, duration

Key = tuple[str, str]


def _set(values: tuple[str, ...] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def routing_policy(limits: Limits) -> Policy:
    return Policy(allowed_providers=_set(limits.allowed_providers), denied_providers=_set(limits.denied_providers),
                  allowed_models=_set(limits.allowed_models), denied_models=_set(limits.denied_models),
                  pinned_model=limits.pinned_model, strategy=limits.strategy)


class Admission:
    def __init__(self, book: PolicyBook, usage: UsageProjection) -> None:
        self.book = book
        self.usage = usage
        self._cache: dict[Key, tuple[Limits, Policy]] = {}
        self._version = -1

    def _lookup(self, key: Key) -> tuple[Limits, Policy]:
        if self._version != self.book.version:
            self._cache.clear()
            self._version = self.book.version
        hit = self._cache.get(key)
        if hit is None:
            limits = self.book.effective(*key)
            hit = self._cache[key] = (limits, routing_policy(limits))
        return hit

    def limits(self, key: Key) -> Limits:
        return self._lookup(key)[0]

    def policy(self, key: Key) -> Policy:
        return self._lookup(key)[1]

    def admit(self, admitted: RequestAdmitted) -> Refusal | None:
        """Check and reserve in one synchronous step (no await): exact under concurrency."""
        key = (admitted.ip, admitted.context)
        refusal = self.usage.check(key, self.limits(key), admitted.ts_us, admitted.reserved_tokens,
                                   admitted.reserved_micros)
        if refusal is None:
            self.usage.apply_new(admitted)
        return refusal

    def settle(self, usage: UsageRecorded) -> None:
        """Settle a request this process admitted (its usage event is new: no de-dup)."""
        self.usage.apply_new(usage)

    def replace_book(self, book: PolicyBook) -> None:
        """A reloaded policy (SIGHUP); caches drop because the version moves on."""
        book.version = self.book.version + 1
        self.book = book

    def changed(self, event: LimitsChanged) -> None:
        self.book.apply(event)

    def raw_headers(self, key: Key, now_us: int) -> list[tuple[bytes, bytes]]:
        """`x-ratelimit-*` as OpenAI sends them (reset as a duration like `6m0s`), as ASGI header
        pairs: every answer carries them, so they are built as bytes once, not as text and encoded."""
        room = self.usage.headroom(key, self.limits(key), now_us)
        out: list[tuple[bytes, bytes]] = []
        if room.limit_requests is not None:
            out += ((b"x-ratelimit-limit-requests", b"%d" % room.limit_requests),
                    (b"x-ratelimit-remaining-requests", b"%d" % (room.remaining_requests or 0)),
                    (b"x-ratelimit-reset-requests", duration(room.reset_requests_us).encode()))
        if room.limit_tokens is not None:
            out += ((b"x-ratelimit-limit-tokens", b"%d" % room.limit_tokens),
                    (b"x-ratelimit-remaining-tokens", b"%d" % (room.remaining_tokens or 0)),
                    (b"x-ratelimit-reset-tokens", duration(room.reset_tokens_us).encode()))
        return out

    def headers(self, key: Key, now_us: int) -> dict[str, str]:
        """`raw_headers` as text (a 429's headers, tests)."""
        return {name.decode(): value.decode() for name, value in self.raw_headers(key, now_us)}
