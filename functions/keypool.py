"""A provider's keys: pick the least-loaded healthy key; cool down, back off or disable on failure.

Rules: 401/403 disables a key; 429 cools it down for `Retry-After` (default 60 s); 5xx and network
errors back off exponentially (5 s, doubling, capped at 5 min). The back-off applies to the offer
(provider × model) that failed, not the key: one broken model must not bench a provider's others.
Only key ids leave this module.
Time is an argument (`now_s`), so the rules are testable without a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BACKOFF_START_S = 5.0
BACKOFF_CAP_S = 300.0
MAX_COOLDOWN_S = 3600.0  # a Retry-After longer than this is not believed


@dataclass
class KeyState:
    key_id: str
    in_flight: int = 0
    disabled: bool = False
    until_s: float = 0.0  # not usable before this time

    def usable(self, now_s: float) -> bool:
        return not self.disabled and now_s >= self.until_s


class Backoff:
    """Offers ("provider/model") that failed with 5xx or a network error, and until when they rest."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}  # consecutive failures per offer (empty: nothing to clear)
        self._until: dict[str, float] = {}

    def failed(self, key: str, now_s: float) -> None:
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        self._until[key] = now_s + min(BACKOFF_START_S * 2 ** min(n - 1, 16), BACKOFF_CAP_S)

    def succeeded(self, key: str) -> None:
        if key in self.failures:
            del self.failures[key]
            self._until.pop(key, None)

    def resting(self, now_s: float) -> frozenset[str]:
        if not self._until:
            return frozenset()
        return frozenset(k for k, until in self._until.items() if until > now_s)

    def snapshot(self, now_s: float) -> dict[str, float]:
        return {k: round(u - now_s, 1) for k, u in self._until.items() if u > now_s}


class KeyPool:
    def __init__(self, provider: str, keys: tuple[str, ...], default_cooldown_s: float = 60.0) -> None:
        self._keys = keys
        self.states = [KeyState(f"{provider}#{i}") for i in range(len(keys))]
        self._default_cooldown_s = default_cooldown_s

    def acquire(self, now_s: float) -> tuple[int, str] | None:
        """(index, key) of the least-loaded usable key, counted as in flight; None if none is."""
        best = None
        for i, st in enumerate(self.states):
            if st.usable(now_s) and (best is None or st.in_flight < self.states[best].in_flight):
                best = i
        if best is None:
            return None
        self.states[best].in_flight += 1
        return best, self._keys[best]

    def release(self, index: int) -> None:
        self.states[index].in_flight -= 1

    def healthy(self, now_s: float) -> bool:
        for st in self.states:  # a loop, not any(genexpr): this runs on every request
            if st.usable(now_s):
                return True
        return False

    def report(self, index: int, status: int | None, now_s: float, retry_after_s: float | None = None) -> None:
        """Record an attempt's outcome: `status` None means a network error or timeout."""
        st = self.states[index]
        if status in (401, 403):
            st.disabled = True
        elif status == 429:
            sane = retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s >= 0
            st.until_s = now_s + (min(retry_after_s, MAX_COOLDOWN_S) if sane else self._default_cooldown_s)  # type: ignore[type-var]

    def key_id(self, index: int) -> str:
        return self.states[index].key_id

    def snapshot(self, now_s: float) -> list[dict[str, object]]:
        return [
            {"key_id": st.key_id, "in_flight": st.in_flight, "disabled": st.disabled,
             "cooldown_s": max(0.0, round(st.until_s - now_s, 1))}
            for st in self.states
        ]
