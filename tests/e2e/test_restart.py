"""Limits survive a restart: the next broker on the same data directory rebuilds them from the log.

Exhaust a request limit and a daily budget, stop the broker (SIGTERM: graceful; SIGKILL: nothing
runs at exit), start another on the same data directory and config: it still refuses, with the
same figures, and SQL reports the same spend. A request killed in flight frees its slot.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.broker import (
    CLIENT_TIMEOUT_S, Broker, poll, signal_and_reap, start_broker, write_limits_config,
)

HI = [{"role": "user", "content": "hi"}]
LIMITS = {"contexts": {"rpm": {"requests_per_min": 3},
                       "budget": {"budget_daily_usd": "0.00001"},  # 10 µUSD: one 7 µUSD request
                       "conc": {"concurrent": 1}}}
SPEND_SQL = "SELECT context, sum(cost_micros) AS micros, count(*) AS n FROM usage GROUP BY ALL ORDER BY context"


def post(broker: Broker, context: str, **body: Any) -> httpx.Response:
    with httpx.Client(base_url=broker.base_url, timeout=CLIENT_TIMEOUT_S, headers={"X-Hero-Context": context}) as c:
        return c.post("/chat/completions", json={"model": "auto", "messages": HI, "max_tokens": 16, **body})


def refused(broker: Broker, context: str, code: str) -> httpx.Headers:
    resp = post(broker, context)
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["code"] == code
    return resp.headers


def exhaust(broker: Broker) -> httpx.Headers:
    assert [post(broker, "rpm").status_code for _ in range(3)] == [200, 200, 200]
    first = refused(broker, "rpm", "rate_limit_requests")
    assert first["x-ratelimit-remaining-requests"] == "0"
    assert post(broker, "budget").status_code == 200
    refused(broker, "budget", "budget_daily")
    assert post(broker, "other").status_code == 200
    return first


def assert_still_limited(broker: Broker, before: httpx.Headers) -> None:
    after = refused(broker, "rpm", "rate_limit_requests")
    assert after["x-ratelimit-limit-requests"] == before["x-ratelimit-limit-requests"] == "3"
    assert after["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(after["retry-after"]) <= int(before["retry-after"])
    refused(broker, "budget", "budget_daily")
    assert post(broker, "other").status_code == 200  # an unrelated bucket is not affected


def config_env(tmp_path: Path) -> dict[str, str]:
    return {"MODELS_CONFIG_PATH": str(write_limits_config(tmp_path / "modelsconfig.yml", LIMITS))}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_limits_and_spend_survive_a_restart(tmp_path: Path, sig: signal.Signals) -> None:
    env, workdir = config_env(tmp_path), tmp_path / "broker"
    with start_broker(workdir, env) as first:
        before = exhaust(first)
        spend = first.sql(SPEND_SQL)
        status = signal_and_reap(first, sig)
    if sig == signal.SIGTERM:  # uvicorn re-raises SIGTERM once its graceful shutdown is done
        assert (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0) or os.WTERMSIG(status) == signal.SIGTERM
        assert "Traceback" not in first.stderr(), first.stderr()
    else:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert [row["context"] for row in spend] == ["budget", "other", "rpm"]
    with start_broker(workdir, env) as second:
        assert second.sql(SPEND_SQL) == spend
        assert_still_limited(second, before)
        without_other = [row for row in second.sql(SPEND_SQL) if row["context"] != "other"]
        assert without_other == [row for row in spend if row["context"] != "other"]  # refusals cost nothing


def test_a_request_killed_in_flight_frees_its_slot_after_a_restart(tmp_path: Path) -> None:
    env, workdir = config_env(tmp_path), tmp_path / "broker"
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            post(first, "conc", model="fake-slow")
        except httpx.TransportError as exc:  # the broker dies under it
            errors.append(exc)

    with start_broker(workdir, env) as first:
        caller = threading.Thread(target=slow)
        caller.start()
        admitted = poll(lambda: first.sql("SELECT count(*) AS n FROM admissions WHERE context = 'conc'"),
                        lambda rows: rows[0]["n"] == 1)
        assert admitted == [{"n": 1}]
        refused(first, "conc", "concurrency_limit")  # the slot is held
        signal_and_reap(first, signal.SIGKILL)
        caller.join(CLIENT_TIMEOUT_S)
    assert len(errors) == 1
    with start_broker(workdir, env) as second:
        assert second.sql("SELECT count(*) AS n FROM usage WHERE context = 'conc'") == [{"n": 0}]
        resp = post(second, "conc")
        assert resp.status_code == 200, resp.text
