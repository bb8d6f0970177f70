"""The broker's life as an operator sees it: stop, reload, logs, and one function run on its own.

SIGTERM lets in-flight streams finish (within SHUTDOWN_GRACE_S), settles every one of them exactly
once, seals the WAL and exits 0; SIGHUP re-reads modelsconfig.yml (or refuses a broken one and keeps
the old); logs are JSON lines at LOG_LEVEL, and logs and events hold no prompt text and no key;
`uvicorn functions.chat:app --uds` serves the OpenAI API alone, and a second such process on the
same data directory cannot start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from eventlog.stats import log_stats
from eventlog.wal import wal_files
from tests.e2e.broker import (
    CLIENT_TIMEOUT_S, REPO_ROOT, Broker, broker_env, free_port, poll, running, signal_and_reap, start_broker,
    uds_client, wait_until, write_limits_config,
)

STREAMS = 50
SECRET_KEY = "sk-lifecycle-DO-NOT-LOG-7c1d"
PROMPT = "the-zebra-juggles-kumquats-4242"  # distinctive: it must never reach a log line


def admitted(broker: Broker, prefix: str) -> int:
    return int(broker.sql(f"SELECT count(*) AS n FROM admissions WHERE request_id LIKE '{prefix}%'")[0]["n"])


def exited_cleanly(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


class Streams:
    """`n` concurrent streaming chat calls over TCP, each keeping what it received (or its error).

    `fake-slow` waits 1 s before its first byte, then sends ~20 chunks 50 ms apart: ~2 s a stream.
    """

    def __init__(self, broker: Broker, prefix: str, n: int, model: str = "fake-slow") -> None:
        self.broker, self.prefix, self.n, self.model = broker, prefix, n, model
        self.bodies: dict[str, bytes] = {}
        self.errors: dict[str, str] = {}
        self.ended: dict[str, float] = {}  # time.monotonic() when each call ended
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=n)
        self.futures = [self.pool.submit(self._one, f"{prefix}{i:02d}") for i in range(n)]

    def _one(self, rid: str) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "tell me"}], "stream": True}
        got = b""
        try:
            with httpx.Client(timeout=CLIENT_TIMEOUT_S) as c, \
                    c.stream("POST", f"{self.broker.base_url}/chat/completions", json=body,
                             headers={"X-Request-Id": rid}) as resp:
                assert resp.status_code == 200, resp.read()
                for chunk in resp.iter_bytes():
                    got += chunk
        except (httpx.TransportError, AssertionError) as exc:
            with self.lock:
                self.errors[rid] = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.bodies[rid] = got
            self.ended[rid] = time.monotonic()

    def join(self, timeout_s: float = CLIENT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for f in self.futures:
            f.result(timeout=max(0.1, deadline - time.monotonic()))
        self.pool.shutdown(wait=True)


# ---- SIGTERM -----------------------------------------------------------------------------------------


def test_sigterm_lets_50_streams_finish_settles_them_and_exits_0(tmp_path: Path) -> None:
    with start_broker(tmp_path, {"SHUTDOWN_GRACE_S": "20"}) as b:
        streams = Streams(b, "drain-", STREAMS)
        try:
            in_flight = poll(lambda: admitted(b, "drain-"), lambda n: n == STREAMS, timeout_s=10.0)
            assert in_flight == STREAMS
            finished = b.sql("SELECT count(*) AS n FROM usage")[0]["n"]
            assert finished < STREAMS // 2, "SIGTERM must land while the streams are in flight"
            started = time.monotonic()
            status = signal_and_reap(b, signal.SIGTERM, timeout_s=25.0)
            took = time.monotonic() - started
        finally:
            streams.join()
    assert exited_cleanly(status), (status, b.stderr())
    assert took < 20.0, took
    assert not streams.errors, streams.errors
    assert len(streams.bodies) == STREAMS
    for rid, body in streams.bodies.items():
        assert body.rstrip().endswith(b"data: [DONE]"), (rid, body[-200:])
        assert b'"error"' not in body, (rid, body)
    usage = b.sql("SELECT request_id, outcome, completion_tokens FROM usage "
                  "WHERE request_id LIKE 'drain-%' ORDER BY request_id")
    assert [u["request_id"] for u in usage] == sorted(streams.bodies)  # exactly one each
    assert {u["outcome"] for u in usage} == {"ok"}
    assert all(u["completion_tokens"] > 0 for u in usage)
    assert "Traceback" not in b.stderr(), b.stderr()
    # a clean stop seals the WAL: every event is in Parquet, nothing left to replay
    cli = subprocess.run([sys.executable, "-m", "deploy.cli", "log", "stats", "--data-dir", str(b.data_dir)],
                         cwd=REPO_ROOT, env=broker_env(b.data_dir), capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    stats = json.loads(cli.stdout)
    assert stats["unsealed_events"] == 0, stats
    assert all(not p.exists() or not p.read_bytes().strip() for p in wal_files(b.data_dir)), wal_files(b.data_dir)
    assert stats["events_by_kind"]["usage.recorded.v1"] == STREAMS


def test_sigterm_with_a_short_grace_cuts_streams_but_settles_each_once(tmp_path: Path) -> None:
    grace_s = 1
    with start_broker(tmp_path, {"SHUTDOWN_GRACE_S": str(grace_s)}) as b:
        streams = Streams(b, "cut-", 10)
        try:
            assert poll(lambda: admitted(b, "cut-"), lambda n: n == 10, timeout_s=10.0) == 10
            started = time.monotonic()
            status = signal_and_reap(b, signal.SIGTERM, timeout_s=grace_s + 10.0)
            took = time.monotonic() - started
        finally:
            streams.join()
    assert exited_cleanly(status), (status, b.stderr())
    assert took < grace_s + 4.0, took
    assert len(streams.bodies) == 10
    assert any(not body.rstrip().endswith(b"data: [DONE]") for body in streams.bodies.values())  # it did cut
    usage = b.sql("SELECT request_id, outcome FROM usage WHERE request_id LIKE 'cut-%' ORDER BY request_id")
    assert [u["request_id"] for u in usage] == sorted(streams.bodies), usage  # exactly one each
    assert {u["outcome"] for u in usage} <= {"ok", "client_disconnect", "upstream_cut"}, usage
    assert log_stats(b.data_dir)["unsealed_events"] == 0
    err = b.stderr()  # uvicorn reports each task it cancelled at the deadline; nothing else may fail
    cancelled = "CancelledError: Task cancelled, timeout graceful shutdown exceeded"
    assert err.count("Traceback") == err.count(cancelled), err


GRACE_TRUNCATED = (
    "BUG: deploy/serve.py _server passes timeout_graceful_shutdown=int(grace_s) to uvicorn, so a fractional "
    "SHUTDOWN_GRACE_S (accepted by deploy/settings.py as a float) is truncated: 0.9 becomes 0 and in-flight "
    "requests are cancelled at once. Fix: pass the float (uvicorn hands it to asyncio.wait_for), or make "
    "settings require an integer")


def test_a_fractional_grace_period_is_honoured(tmp_path: Path) -> None:
    with start_broker(tmp_path, {"SHUTDOWN_GRACE_S": "0.9"}) as b:
        streams = Streams(b, "frac-", 2)  # each would need ~2 s: longer than the grace
        try:
            assert poll(lambda: admitted(b, "frac-"), lambda n: n == 2, timeout_s=10.0) == 2
            started = time.monotonic()
            status = signal_and_reap(b, signal.SIGTERM, timeout_s=10.0)
        finally:
            streams.join()
    assert exited_cleanly(status), b.stderr()
    cut_after = min(streams.ended.values()) - started
    assert cut_after >= 0.7, f"in-flight requests were cut {cut_after:.2f}s after SIGTERM, before the 0.9 s grace"


# ---- SIGHUP ------------------------------------------------------------------------------------------


def _post(broker: Broker, context: str) -> httpx.Response:
    with httpx.Client(base_url=broker.base_url, timeout=CLIENT_TIMEOUT_S) as c:
        return c.post("/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                                                 "max_tokens": 4}, headers={"X-Hero-Context": context})


def _reloads(broker: Broker, n: int) -> list[dict[str, Any]]:
    return poll(lambda: broker.sql("SELECT ok, error, path, sha256 FROM config_reloads ORDER BY seq"),
                lambda rows: len(rows) >= n)


def test_sighup_reloads_limits_and_refuses_broken_yaml(tmp_path: Path) -> None:
    config = write_limits_config(tmp_path / "modelsconfig.yml", {"contexts": {"hup": {"requests_per_min": 100}}})
    with start_broker(tmp_path / "broker", {"MODELS_CONFIG_PATH": str(config)}) as b:
        assert [_post(b, "hup").status_code for _ in range(3)] == [200] * 3
        write_limits_config(config, {"contexts": {"hup": {"requests_per_min": 4}}})
        os.kill(b.pid, signal.SIGHUP)
        first = _reloads(b, 1)
        assert len(first) == 1 and first[0]["ok"] is True and first[0]["error"] == "", first
        assert first[0]["path"] == str(config) and len(first[0]["sha256"]) == 64
        assert _post(b, "hup").status_code == 200  # the 4th this minute
        refused = _post(b, "hup")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_requests"
        assert refused.headers["x-ratelimit-limit-requests"] == "4"

        config.write_text("limits:\n  contexts:\n    hup: {requests_per_min: [unclosed\n")
        os.kill(b.pid, signal.SIGHUP)
        second = _reloads(b, 2)
        assert len(second) == 2 and second[1]["ok"] is False, second
        assert "MODELS_CONFIG_PATH" in second[1]["error"] and "YAML" in second[1]["error"], second
        still = _post(b, "hup")
        assert still.status_code == 429 and still.headers["x-ratelimit-limit-requests"] == "4"  # old config in force
        assert _post(b, "other").status_code == 200
        assert os.kill(b.pid, 0) is None  # still running
        status = signal_and_reap(b, signal.SIGTERM)
    assert exited_cleanly(status), b.stderr()
    assert "keeping the running configuration" in b.stderr(), b.stderr()


RELOAD_CRASH = (
    "BUG: deploy/serve.py reload_config catches only SettingsError/OSError/ValueError, but load_config lets "
    "decimal.InvalidOperation (a `.nan` budget, domain/limits.usd_to_micros) and AttributeError (a `limits:` "
    "that is a list) through, so SIGHUP with such a file raises out of the serve loop and the running broker "
    "exits 1 with a traceback. Fix: validate in domain/limits (ValueError naming the key) and catch Exception "
    "in reload_config, logging a config.reloaded ok=false")
PARTIAL_RELOAD = (
    "BUG: deploy/serve.py reload_config applies the new limits (rebuild_policy + admission.replace_book) and "
    "the new catalog overrides before catalog.refresh validates the overrides; when that fails it appends "
    "config.reloaded ok=false and logs 'keeping the running configuration', yet the new limits stay in force "
    "and the bad overrides stay in state.catalog.overrides (every periodic refresh then fails). Fix: validate "
    "everything first (deploy/settings should check_spec the overrides), apply only on success, or restore the "
    "old book/overrides on failure")


def test_sighup_with_a_nan_budget_is_refused_and_the_broker_keeps_running(tmp_path: Path) -> None:
    config = write_limits_config(tmp_path / "modelsconfig.yml", {"contexts": {"hup": {"requests_per_min": 100}}})
    with start_broker(tmp_path / "broker", {"MODELS_CONFIG_PATH": str(config)}) as b:
        config.write_text("limits:\n  contexts:\n    hup: {budget_daily_usd: .nan}\n")
        os.kill(b.pid, signal.SIGHUP)
        reloads = poll(lambda: b.sql("SELECT ok FROM config_reloads"), lambda rows: len(rows) >= 1, timeout_s=3.0)
        alive = wait_until(lambda: _post(b, "hup").status_code == 200, timeout_s=2.0)
        assert alive, b.stderr()
        assert reloads == [{"ok": False}], reloads


def test_a_refused_reload_changes_nothing(tmp_path: Path) -> None:
    config = write_limits_config(tmp_path / "modelsconfig.yml", {"contexts": {"hup": {"requests_per_min": 100}}})
    with start_broker(tmp_path / "broker", {"MODELS_CONFIG_PATH": str(config)}) as b:
        config.write_text(yaml.safe_dump({"limits": {"contexts": {"hup": {"requests_per_min": 1}}},
                                          "models": {"fakeai/fake-small": {"context_window": "big"}}}))
        os.kill(b.pid, signal.SIGHUP)
        reloads = _reloads(b, 1)
        assert [r["ok"] for r in reloads] == [False], reloads
        statuses = [_post(b, "hup").status_code for _ in range(3)]
    assert statuses == [200, 200, 200], "the refused file's requests_per_min=1 was applied"


# ---- logs --------------------------------------------------------------------------------------------


def _log_docs(text: str) -> list[dict[str, Any]]:
    bad = [line for line in text.splitlines() if not line.startswith("{")]
    assert not bad, f"stderr lines that are not JSON: {bad[:3]}"
    docs = [json.loads(line) for line in text.splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(d) for d in docs), docs
    return docs


def _broken_reload(b: Broker, config: Path) -> None:
    """A broken modelsconfig.yml on SIGHUP: the broker logs an error (after its apps are built)."""
    config.write_text("limits: {contexts: [unclosed\n")
    os.kill(b.pid, signal.SIGHUP)
    assert wait_until(lambda: bool(b.sql("SELECT 1 AS x FROM config_reloads")), timeout_s=5.0)
    assert wait_until(lambda: "keeping the running configuration" in b.stderr(), timeout_s=5.0), b.stderr()


def _secret_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A custom provider whose key is SECRET_KEY and whose discovery fails (a log line naming it)."""
    config = tmp_path / "modelsconfig.yml"
    config.write_text(yaml.safe_dump({"providers": {"localai": {
        "base_url": f"http://127.0.0.1:{free_port()}/v1", "key_env": "LOCALAI_API_KEY"}}}))
    env = {"LOCALAI_API_KEY": SECRET_KEY, "OPENROUTER_API_KEYS": f"{SECRET_KEY}-a,{SECRET_KEY}-b",
           "ADMIN_TOKEN": f"adm-{SECRET_KEY}", "LOG_LEVEL": "debug", "MODELS_CONFIG_PATH": str(config)}
    return env, config


def _send_the_prompt_every_way(b: Broker) -> None:
    prompt = [{"role": "user", "content": PROMPT}]
    with httpx.Client(base_url=b.base_url, timeout=CLIENT_TIMEOUT_S,
                      headers={"Authorization": f"Bearer {SECRET_KEY}"}) as c:
        for model in ("fake-small", "fake-error-500", "fake-cut-stream", "fake-malformed-sse", "no-such-model"):
            for stream in (False, True):
                c.post("/chat/completions", json={"model": model, "stream": stream, "messages": prompt})
        c.post("/completions", json={"model": "auto", "prompt": PROMPT})
        c.post("/embeddings", json={"model": "auto", "input": PROMPT})
        c.post("/chat/completions", json={"model": "auto", "messages": [{"role": PROMPT, "content": PROMPT}]})
        c.post("/chat/completions", content=b'{"model": "auto", "messages": [' + PROMPT.encode(),
               headers={"content-type": "application/json"})
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as admin:
        admin.post(f"{b.admin_url}/rpc", json={"jsonrpc": "2.0", "method": "rpc.discover", "id": 1},
                   headers={"Authorization": "Bearer wrong"})


def test_logs_and_events_hold_no_prompt_text_and_no_key(tmp_path: Path) -> None:
    env, config = _secret_env(tmp_path)
    with start_broker(tmp_path / "broker", env) as b:
        _send_the_prompt_every_way(b)
        _broken_reload(b, config)
        status = signal_and_reap(b, signal.SIGTERM)
    assert exited_cleanly(status), b.stderr()
    text = b.stderr() + (tmp_path / "broker" / "stdout.log").read_text()
    assert "model discovery failed for localai" in text  # the provider with the key was logged about…
    assert SECRET_KEY not in text and PROMPT not in text  # …but never its key, nor any prompt
    assert "Traceback" not in text, text
    rows = b.sql("SELECT to_json(e)::VARCHAR AS doc FROM events e")
    assert len(rows) > 20
    leaked = [r["doc"] for r in rows if PROMPT in r["doc"] or SECRET_KEY in r["doc"]]
    assert not leaked, leaked


ECHOED_VALUES = (
    "BUG: functions/request_body.py echoes a wrong-typed field's value with {value!r} ('max_tokens' must be an "
    "integer >= 1, got [...], likewise 'model' and 'stream'), and pipeline.Call.event_rejected stores that message "
    "(up to 500 chars) in the durable request.rejected event: a client that puts its messages in the wrong field "
    "gets its prompt text into the ledger (DESIGN §3: no prompt text, ever). Fix: name the type, not the value "
    "(got {type(value).__name__}), at least in the event")


@pytest.mark.parametrize("field", ["max_tokens", "stream", "model"])
def test_a_prompt_in_the_wrong_field_stays_out_of_the_ledger(broker: Broker, field: str) -> None:
    rid = f"misplaced-{field}"
    prompt = [{"role": "user", "content": PROMPT}]
    body = {"model": "auto", "messages": prompt, field: prompt}
    with httpx.Client(base_url=broker.base_url, timeout=CLIENT_TIMEOUT_S) as c:
        resp = c.post("/chat/completions", json=body, headers={"X-Request-Id": rid})
    assert resp.status_code == 400, resp.text
    events = poll(lambda: broker.events(rid), lambda evs: any(e["kind"] == "request.rejected.v1" for e in evs))
    assert events and all(PROMPT not in json.dumps(e, default=str) for e in events), events


def test_logs_are_json_lines_at_the_configured_level(tmp_path: Path) -> None:
    config = write_limits_config(tmp_path / "modelsconfig.yml", {})
    env = {"ADMIN_TOKEN": "t0ken", "LOG_LEVEL": "error", "MODELS_CONFIG_PATH": str(config)}
    with start_broker(tmp_path / "broker", env) as b:
        _broken_reload(b, config)
        status = signal_and_reap(b, signal.SIGTERM)
    assert exited_cleanly(status), b.stderr()
    docs = _log_docs(b.stderr())
    assert any(d["level"] == "error" and "keeping the running configuration" in d["message"] for d in docs), docs
    assert {d["level"] for d in docs} == {"error"}, docs  # LOG_LEVEL=error: nothing below it


def test_the_admin_token_warning_is_a_json_log_line(tmp_path: Path) -> None:
    with start_broker(tmp_path) as b:  # admin on loopback TCP, no ADMIN_TOKEN: a warning, then it runs
        status = signal_and_reap(b, signal.SIGTERM)
    assert exited_cleanly(status), b.stderr()
    docs = _log_docs(b.stderr())
    assert any(d["level"] == "warning" and "ADMIN_TOKEN" in d["message"] for d in docs), docs


# ---- one function on its own: `uvicorn functions.chat:app` ------------------------------------------


def test_uvicorn_runs_the_chat_function_alone_and_one_writer_per_data_dir(tmp_path: Path) -> None:
    port = free_port()
    models = tmp_path / "modelsconfig.yml"
    models.write_text(yaml.safe_dump({"providers": {"fakeai": {"base_url": f"http://127.0.0.1:{port}/fakeai/v1",
                                                               "keyless": True}}}))
    data_dir = tmp_path / "data"
    env = broker_env(data_dir, {"MODELS_CONFIG_PATH": str(models)})
    fake_cmd = [sys.executable, "-m", "functions.fake_upstream", "--port", str(port), "--no-access-log"]
    app_cmd = [sys.executable, "-m", "uvicorn", "functions.chat:app", "--log-level", "info", "--uds"]
    first_sock, second_sock = tmp_path / "a.sock", tmp_path / "b.sock"
    fake_log, first_log = tmp_path / "fake.log", tmp_path / "first.log"
    with running(fake_cmd, env, fake_log):
        # the function reads the upstream's model list as it starts: the fake must be up first
        assert wait_until(lambda: "Uvicorn running on" in fake_log.read_text(), timeout_s=20.0), fake_log.read_text()
        with running([*app_cmd, str(first_sock)], env, first_log) as first:
            _serves_alone(first_log, first_sock)
            second = subprocess.run([*app_cmd, str(second_sock)], cwd=REPO_ROOT, env=env, capture_output=True,
                                    text=True, timeout=30)
            assert second.returncode != 0, second.stderr
            assert "already writes the event log" in second.stderr, second.stderr
            assert first.poll() is None  # the first one is unaffected
            with uds_client(first_sock) as c:
                assert c.get("/health").status_code == 200


def _serves_alone(first_log: Path, first_sock: Path) -> None:
    assert wait_until(lambda: "Uvicorn running on unix socket" in first_log.read_text(), timeout_s=20.0), \
        first_log.read_text()
    with uds_client(first_sock) as c:
        assert c.get("/ready").status_code == 200
        ids = {m["id"] for m in c.get("/v1/models").json()["data"]}
        assert {"auto", "fake-small", "fake-embed"} <= ids
        reply = c.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"].startswith(
            "fake reply from fakeai/fake-small: ")
