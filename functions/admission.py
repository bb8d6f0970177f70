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
RESETS_REMEMBERED = 4096  # distinct reset texts: at most ~1,000 ms values and a window's seconds


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
        # per bucket: (limits, routing policy, the limits as header values)
        self._cache: dict[Key, tuple[Limits, Policy, tuple[bytes | None, bytes | None]]] = {}
        self._version = -1
        self._resets: dict[int, bytes] = {}

    def _lookup(self, key: Key) -> tuple[Limits, Policy, tuple[bytes | None, bytes | None]]:
        if self._version != self.book.version:
            self._cache.clear()
            self._version = self.book.version
        hit = self._cache.get(key)
        if hit is None:
            limits = self.book.effective(*key)
            rpm, tpm = limits.requests_per_min, limits.tokens_per_min
            shown = (None if rpm is None else b"%d" % rpm, None if tpm is None else b"%d" % tpm)
            hit = self._cache[key] = (limits, routing_policy(limits), shown)
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
            self.usage.reserve(admitted)
        return refusal

    def settle(self, usage: UsageRecorded) -> None:
        """Settle a request this process admitted (its usage event is new: no de-dup)."""
        self.usage.settle(usage)

    def replace_book(self, book: PolicyBook) -> None:
        """A reloaded policy (SIGHUP); caches drop because the version moves on."""
        book.version = self.book.version + 1
        self.book = book

    def changed(self, event: LimitsChanged) -> None:
        self.book.apply(event)

    def raw_headers(self, key: Key, now_us: int) -> list[tuple[bytes, bytes]]:
        """`x-ratelimit-*` as OpenAI sends them (reset as a duration like `6m0s`), as ASGI header
        pairs: every answer carries them, so they are built as bytes once, not as text and encoded."""
        limits, _, (rpm, tpm) = self._lookup(key)
        room = self.usage.headroom(key, limits, now_us)
        reset = self._reset(room.reset_requests_us)
        out: list[tuple[bytes, bytes]] = []
        if rpm is not None:
            out += ((b"x-ratelimit-limit-requests", rpm),
                    (b"x-ratelimit-remaining-requests", b"%d" % (room.remaining_requests or 0)),
                    (b"x-ratelimit-reset-requests", reset))
        if tpm is not None:
            same = room.reset_tokens_us == room.reset_requests_us
            out += ((b"x-ratelimit-limit-tokens", tpm),
                    (b"x-ratelimit-remaining-tokens", b"%d" % (room.remaining_tokens or 0)),
                    (b"x-ratelimit-reset-tokens", reset if same else self._reset(room.reset_tokens_us)))
        return out

    def _reset(self, us: int) -> bytes:
        """`duration(us)` as bytes, remembered by the value it rounds to (ms below a second, else s):
        a busy bucket's reset reads the same (`59s`) for many answers in a row."""
        rounded = -(-us // 1000) if us < 1_000_000 else 1_000_000 - (-us // 1_000_000)
        text = self._resets.get(rounded)
        if text is None:
            if len(self._resets) >= RESETS_REMEMBERED:
                self._resets.clear()
            text = self._resets[rounded] = duration(us).encode()
        return text

    def headers(self, key: Key, now_us: int) -> dict[str, str]:
        """`raw_headers` as text (a 429's headers, tests)."""
        return {name.decode(): value.decode() for name, value in self.raw_headers(key, now_us)}
