"""Key pools and offer back-off: the rules, with time passed in as an argument."""

from __future__ import annotations

import pytest

from functions.keypool import BACKOFF_CAP_S, BACKOFF_START_S, Backoff, KeyPool

KEYS = ("sk-secret-zero", "sk-secret-one", "sk-secret-two")


def pool(n: int = 3, cooldown_s: float = 60.0) -> KeyPool:
    return KeyPool("acme", KEYS[:n], default_cooldown_s=cooldown_s)


# ---- picking --------------------------------------------------------------------------------------


def test_acquire_picks_the_least_loaded_key_lowest_index_first() -> None:
    keys = pool()
    assert keys.acquire(0.0) == (0, "sk-secret-zero")
    assert keys.acquire(0.0) == (1, "sk-secret-one")
    assert keys.acquire(0.0) == (2, "sk-secret-two")
    assert keys.acquire(0.0) == (0, "sk-secret-zero")  # all at 1: the tie goes to the lowest index
    keys.release(2)
    keys.release(0)
    keys.release(0)
    assert [s.in_flight for s in keys.states] == [0, 1, 0]
    assert keys.acquire(0.0) == (0, "sk-secret-zero")
    assert keys.acquire(0.0) == (2, "sk-secret-two")


def test_an_empty_pool_has_nothing_to_give() -> None:
    keys = KeyPool("acme", ())
    assert keys.acquire(0.0) is None
    assert not keys.healthy(0.0)
    assert keys.snapshot(0.0) == []


def test_key_ids_name_the_provider_and_index() -> None:
    keys = pool()
    assert [keys.key_id(i) for i in range(3)] == ["acme#0", "acme#1", "acme#2"]


# ---- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_an_auth_failure_disables_the_key_for_good(status: int) -> None:
    keys = pool(2)
    keys.report(0, status, now_s=10.0)
    assert keys.states[0].disabled
    for later in (10.0, 1e6):
        assert keys.acquire(later) == (1, "sk-secret-one")
        keys.release(1)
    keys.report(1, status, now_s=11.0)
    assert not keys.healthy(1e9)
    assert keys.acquire(1e9) is None


def test_a_429_cools_the_key_for_retry_after_then_it_recovers() -> None:
    keys = pool(1)
    keys.report(0, 429, now_s=100.0, retry_after_s=2.5)
    assert not keys.healthy(100.0)
    assert keys.acquire(102.49) is None
    assert keys.acquire(102.5) == (0, "sk-secret-zero")
    assert not keys.states[0].disabled


def test_a_429_without_retry_after_uses_the_default_cooldown() -> None:
    keys = pool(2, cooldown_s=30.0)
    keys.report(0, 429, now_s=0.0)
    assert keys.acquire(29.9) == (1, "sk-secret-one")  # the other key serves meanwhile
    assert keys.healthy(29.9)
    keys.release(1)
    keys.report(1, 429, now_s=0.0)
    assert not keys.healthy(29.9)
    assert keys.healthy(30.0)


@pytest.mark.parametrize("status", [None, 500, 502, 503, 400, 404, 200])
def test_other_outcomes_leave_the_key_usable(status: int | None) -> None:
    keys = pool(1)
    keys.report(0, status, now_s=0.0)
    assert keys.acquire(0.0) == (0, "sk-secret-zero")


def test_a_nonsense_retry_after_falls_back_to_the_default_cooldown() -> None:
    keys = pool(1, cooldown_s=60.0)
    keys.report(0, 429, now_s=0.0, retry_after_s=float("nan"))
    assert keys.healthy(60.0)


def test_a_snapshot_shows_state_but_never_key_material() -> None:
    keys = pool()
    keys.acquire(0.0)
    keys.report(1, 429, now_s=0.0, retry_after_s=12.0)
    keys.report(2, 401, now_s=0.0)
    snap = keys.snapshot(2.0)
    assert snap == [
        {"key_id": "acme#0", "in_flight": 1, "disabled": False, "cooldown_s": 0.0},
        {"key_id": "acme#1", "in_flight": 0, "disabled": False, "cooldown_s": 10.0},
        {"key_id": "acme#2", "in_flight": 0, "disabled": True, "cooldown_s": 0.0},
    ]
    shown = repr(snap) + repr(keys) + repr(keys.states)
    assert not any(k in shown or k[3:] in shown for k in KEYS)


# ---- offer back-off -------------------------------------------------------------------------------


def test_backoff_starts_at_5s_and_doubles_up_to_the_cap() -> None:
    backoff = Backoff()
    rests = []
    for _ in range(9):
        backoff.failed("acme/m", now_s=1000.0)
        rests.append(backoff.snapshot(1000.0)["acme/m"])
    assert rests == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert (BACKOFF_START_S, BACKOFF_CAP_S) == (5.0, 300.0)


def test_a_resting_offer_is_listed_until_its_time_is_up() -> None:
    backoff = Backoff()
    assert backoff.resting(0.0) == frozenset()
    backoff.failed("acme/a", now_s=0.0)
    backoff.failed("acme/b", now_s=3.0)
    assert backoff.resting(4.99) == frozenset({"acme/a", "acme/b"})
    assert backoff.resting(5.0) == frozenset({"acme/b"})
    assert backoff.resting(8.0) == frozenset()
    assert backoff.snapshot(8.0) == {}


def test_a_success_resets_the_backoff() -> None:
    backoff = Backoff()
    for _ in range(4):
        backoff.failed("acme/m", now_s=0.0)
    backoff.succeeded("acme/m")
    assert backoff.resting(0.0) == frozenset()
    backoff.failed("acme/m", now_s=100.0)
    assert backoff.snapshot(100.0) == {"acme/m": 5.0}
    backoff.succeeded("never/failed")  # harmless


def test_backoff_is_per_offer() -> None:
    backoff = Backoff()
    backoff.failed("acme/a", now_s=0.0)
    backoff.failed("acme/a", now_s=0.0)
    backoff.failed("acme/b", now_s=0.0)
    assert backoff.snapshot(0.0) == {"acme/a": 10.0, "acme/b": 5.0}


def test_backoff_survives_a_very_long_outage() -> None:
    backoff = Backoff()
    for _ in range(1100):
        backoff.failed("acme/m", now_s=0.0)
    assert backoff.snapshot(0.0) == {"acme/m": 300.0}
