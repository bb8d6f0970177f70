"""The admin JSON-RPC surface served for real: every method against the broker's own log and REST surface.

The module runs its own broker (it switches providers off, changes limits and refreshes the catalog,
which the shared healthy broker must never see). REST calls go through the official client with
distinct `X-Hero-Context`s first, so spend, usage and events have something to show.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.broker import CLIENT_TIMEOUT_S, Broker, make_client, of_kind, only, poll, sql_literal
from tests.e2e.conftest import BrokerFactory

HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "auto", "messages": HI}
FAKE_KEYS = ("fake-key-1", "fake-key-2")
SQL_REFUSED = -32010
INVALID_PARAMS = -32602
REST_KINDS = ["request.received.v1", "route.decided.v1", "request.admitted.v1", "upstream.attempted.v1",
              "usage.recorded.v1"]
KNOWN_METHODS = {
    "spend.by_context", "spend.by_ip", "spend.by_bucket", "usage.request", "events.tail", "limits.get",
    "limits.set", "limits.reset", "routing.explain", "models.list", "models.refresh", "providers.list",
    "providers.set_enabled", "sql.query", "ai.chat", "ai.embed", "rpc.discover",
}
SCHEMA_KEYWORDS = {"type", "anyOf", "oneOf", "allOf", "enum", "const", "not", "properties", "items"}


class Admin:
    """A JSON-RPC client for the admin surface that keeps every answer's text (for the secrets check)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S)
        self.seen: list[str] = []

    def post(self, doc: Any) -> httpx.Response:
        resp = self.http.post("/rpc", content=json.dumps(doc).encode(), headers={"content-type": "application/json"})
        self.seen.append(resp.text)
        return resp

    def get(self, path: str) -> httpx.Response:
        resp = self.http.get(path)
        self.seen.append(resp.text)
        return resp

    def answer(self, method: str, params: Any = None, id_: Any = 1) -> dict[str, Any]:
        doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            doc["params"] = params
        resp = self.post(doc)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        assert body["jsonrpc"] == "2.0" and body["id"] == id_, body
        return body

    def call(self, method: str, params: Any = None) -> Any:
        body = self.answer(method, params)
        assert "error" not in body, f"{method}({params}) failed: {body['error']}"
        return body["result"]

    def error(self, method: str, params: Any = None) -> dict[str, Any]:
        body = self.answer(method, params)
        assert "result" not in body, f"{method}({params}) should have failed: {body}"
        error: dict[str, Any] = body["error"]
        return error


@pytest.fixture(scope="module")
def broker(broker_factory: BrokerFactory) -> Broker:
    return broker_factory()


@pytest.fixture(scope="module")
def admin(broker: Broker) -> Iterator[Admin]:
    a = Admin(broker.admin_url)
    try:
        yield a
    finally:
        a.http.close()


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def rest_chat(broker: Broker, context: str, **body: Any) -> httpx.Headers:
    with make_client(broker, default_headers={"X-Hero-Context": context}) as client:
        raw = client.chat.completions.with_raw_response.create(**{**CHAT, **body})
        raw.parse()
        assert raw.http_response.status_code == 200
        return raw.headers


def settled(broker: Broker, request_id: str) -> list[dict[str, Any]]:
    events = broker.settled_events(request_id)
    assert of_kind(events, "usage.recorded"), events
    return events


def context_events(broker: Broker, context: str, n: int) -> list[dict[str, Any]]:
    """The events of a context once `n` usage.recorded are in, in log order."""
    def read() -> list[dict[str, Any]]:
        return broker.sql(f"SELECT * FROM events WHERE context = {sql_literal(context)} ORDER BY seq")

    return poll(read, lambda evs: len(of_kind(evs, "usage.recorded")) >= n)


@pytest.fixture(scope="module")
def seeded(broker: Broker) -> dict[str, list[str]]:
    """REST traffic in three contexts (two chats, one chat, one embedding); request ids per context."""
    ids: dict[str, list[str]] = {"adm-a": [], "adm-b": [], "adm-c": []}
    for context in ("adm-a", "adm-a", "adm-b"):
        ids[context].append(rest_chat(broker, context)["x-request-id"])
    with make_client(broker, default_headers={"X-Hero-Context": "adm-c"}) as client:
        raw = client.embeddings.with_raw_response.create(model="fake-embed", input="hello")
        raw.parse()
        ids["adm-c"].append(raw.headers["x-request-id"])
    for request_ids in ids.values():
        for rid in request_ids:
            settled(broker, rid)
    return ids


def sql_spend(broker: Broker) -> dict[str, int]:
    rows = broker.sql("SELECT context, sum(cost_micros) AS cost FROM usage GROUP BY context")
    return {r["context"]: int(r["cost"] or 0) for r in rows}


def day(offset: int) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=offset)).strftime("%Y-%m-%d")


# ---- spend ----------------------------------------------------------------------------------------


def test_spend_by_context_equals_the_sql_rollup(admin: Admin, broker: Broker, seeded: dict[str, list[str]]) -> None:
    rows = admin.call("spend.by_context")
    assert {r["context"]: r["cost_micros"] for r in rows} == sql_spend(broker)
    counts = {r["context"]: r["requests"] for r in rows}
    assert (counts["adm-a"], counts["adm-b"], counts["adm-c"]) == (2, 1, 1)
    for r in rows:
        assert r["cost_usd"] == f"{r['cost_micros'] // 1_000_000}.{r['cost_micros'] % 1_000_000:06d}"
    assert [r["cost_micros"] for r in rows] == sorted((r["cost_micros"] for r in rows), reverse=True)
    assert rows[[r["context"] for r in rows].index("adm-a")]["cost_micros"] > 0


def test_spend_by_context_groups_by_day_and_month(admin: Admin, broker: Broker, seeded: dict[str, list[str]]) -> None:
    totals = sql_spend(broker)
    days = {r["period"] for r in broker.sql("SELECT DISTINCT strftime(ts, '%Y-%m-%d') AS period FROM usage")}
    for group_by, width in (("day", 10), ("month", 7)):
        rows = admin.call("spend.by_context", {"group_by": group_by})
        assert {r["period"] for r in rows} == {d[:width] for d in days}
        summed: dict[str, int] = {}
        for r in rows:
            summed[r["context"]] = summed.get(r["context"], 0) + r["cost_micros"]
        assert summed == totals


def test_spend_filters_narrow_the_rollup(admin: Admin, broker: Broker, seeded: dict[str, list[str]]) -> None:
    totals = sql_spend(broker)
    assert admin.call("spend.by_context", {"context": "adm-a"}) == [
        r for r in admin.call("spend.by_context") if r["context"] == "adm-a"]
    window = admin.call("spend.by_context", {"from": day(-1), "to": day(2)})
    assert {r["context"]: r["cost_micros"] for r in window} == totals
    assert admin.call("spend.by_context", {"from": day(2)}) == []
    assert admin.call("spend.by_context", {"to": "2000-01-01T00:00:00Z"}) == []
    embed = admin.call("spend.by_context", {"model": "fake-embed"})
    assert [r["context"] for r in embed] == ["adm-c"]
    by_provider = admin.call("spend.by_context", {"provider": "no-such-provider"})
    assert by_provider == []
    message = admin.error("spend.by_context", {"from": "last tuesday"})["message"]
    assert "'from'" in message and "last tuesday" in message
    message = admin.error("spend.by_context", {"group_by": "week"})["message"]
    assert "group_by" in message


def test_spend_by_ip_and_by_bucket_agree_with_by_context(admin: Admin, broker: Broker,
                                                         seeded: dict[str, list[str]]) -> None:
    total = sum(sql_spend(broker).values())
    by_ip = admin.call("spend.by_ip")
    assert [(r["ip"], r["cost_micros"]) for r in by_ip] == [("127.0.0.1", total)]
    by_bucket = admin.call("spend.by_bucket")
    assert {(r["ip"], r["context"]): r["cost_micros"] for r in by_bucket} == {
        ("127.0.0.1", c): cost for c, cost in sql_spend(broker).items()}
    assert admin.call("spend.by_ip", {"ip": "10.9.9.9"}) == []


def test_the_document_names_the_spend_window_params_as_the_wire_does(admin: Admin) -> None:
    doc = admin.call("rpc.discover")
    spend = next(m for m in doc["methods"] if m["name"] == "spend.by_context")
    assert [p["name"] for p in spend["params"]][:2] == ["from", "to"]


def test_spend_takes_its_window_by_position(admin: Admin, seeded: dict[str, list[str]]) -> None:
    assert admin.answer("spend.by_context", [day(2)]).get("result") == []


# ---- usage and events --------------------------------------------------------------------------------


def test_usage_request_returns_the_requests_events_in_log_order(admin: Admin, broker: Broker,
                                                               seeded: dict[str, list[str]]) -> None:
    rid = seeded["adm-b"][0]
    events = admin.call("usage.request", {"request_id": rid})
    assert [e["kind"] for e in events] == REST_KINDS
    assert [e["seq"] for e in events] == [e["seq"] for e in broker.events(rid)]
    assert all(e["request_id"] == rid and e["context"] == "adm-b" for e in events)
    assert events[-1]["cost_micros"] == broker.events(rid)[-1]["cost_micros"]
    assert admin.call("usage.request", {"request_id": "no-such-request"}) == []
    assert "request_id" in admin.error("usage.request", {})["message"]


def test_events_tail_returns_the_newest_n_oldest_first(admin: Admin, broker: Broker,
                                                       seeded: dict[str, list[str]]) -> None:
    newest = broker.sql("SELECT max(seq) AS seq FROM events")[0]["seq"]
    tail = admin.call("events.tail", {"n": 3})
    assert [e["seq"] for e in tail] == [newest - 2, newest - 1, newest]
    assert len(admin.call("events.tail")) == min(20, newest)


def test_events_tail_filters_by_kind_context_and_ip(admin: Admin, broker: Broker,
                                                    seeded: dict[str, list[str]]) -> None:
    usage = admin.call("events.tail", {"n": 1000, "kind": "usage.recorded.v1"})
    assert usage and {e["kind"] for e in usage} == {"usage.recorded.v1"}
    assert len(usage) == broker.sql("SELECT count(*) AS n FROM usage")[0]["n"]
    in_a = admin.call("events.tail", {"n": 1000, "context": "adm-a"})
    assert [e["seq"] for e in in_a] == [
        e["seq"] for e in broker.sql("SELECT seq FROM events WHERE context = 'adm-a' ORDER BY seq")]
    assert len(in_a) == 2 * len(REST_KINDS)
    two = admin.call("events.tail", {"n": 2, "kind": "usage.recorded.v1", "context": "adm-a"})
    assert [e["request_id"] for e in two] == seeded["adm-a"]
    assert admin.call("events.tail", {"ip": "10.9.9.9"}) == []
    for n in (0, 1001, -1):
        message = admin.error("events.tail", {"n": n})["message"]
        assert "'n'" in message and str(n) in message


# ---- limits ------------------------------------------------------------------------------------------


def limits_events(broker: Broker, context: str) -> list[dict[str, Any]]:
    return broker.sql("SELECT * FROM events WHERE kind = 'limits.changed.v1' "
                      f"AND context = {sql_literal(context)} ORDER BY seq")


def test_limits_set_is_logged_shown_and_enforced_at_once(admin: Admin, broker: Broker) -> None:
    context = fresh("adm-rpm")
    result = admin.call("limits.set", {"scope": "context", "context": context, "requests_per_min": 1,
                                       "actor": "ops-alice", "reason": "e2e: one request a minute"})
    assert result["effective"]["requests_per_min"] == 1
    shown = admin.call("limits.get", {"context": context})
    assert shown["effective"]["requests_per_min"] == 1
    assert {"scope": "context", "ip": "", "context": context, "settings": {"requests_per_min": 1}} in shown["overrides"]
    assert admin.call("limits.get", {"context": fresh("other")})["effective"]["requests_per_min"] != 1
    event = only(limits_events(broker, context), "limits.changed")
    assert (event["event_id"], event["actor"], event["reason"]) == (
        result["event_id"], "ops-alice", "e2e: one request a minute")
    assert (event["scope"], event["requests_per_min"], event["reset"]) == ("context", 1, False)

    rest_chat(broker, context)
    with make_client(broker, default_headers={"X-Hero-Context": context}) as client:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    body = info.value.response.json()["error"]
    assert (info.value.response.status_code, body["code"]) == (429, "rate_limit_requests")


def test_limits_set_without_actor_names_the_rpc_peer(admin: Admin, broker: Broker) -> None:
    context = fresh("adm-actor")
    admin.call("limits.set", {"scope": "context", "context": context, "tokens_per_min": 5000})
    event = only(limits_events(broker, context), "limits.changed")
    assert event["actor"] == "rpc@127.0.0.1" and event["tokens_per_min"] == 5000


def test_limits_reset_drops_the_override(admin: Admin, broker: Broker) -> None:
    context = fresh("adm-reset")
    admin.call("limits.set", {"scope": "context", "context": context, "requests_per_min": 1, "reason": "tight"})
    rest_chat(broker, context)
    result = admin.call("limits.reset", {"scope": "context", "context": context, "reason": "loosen"})
    assert result["effective"]["requests_per_min"] > 1
    shown = admin.call("limits.get", {"context": context})
    assert [o for o in shown["overrides"] if o["context"] == context] == []
    assert shown["effective"] == admin.call("limits.get", {"context": fresh("other")})["effective"]
    events = limits_events(broker, context)
    assert [(e["reset"], e["reason"]) for e in events] == [(False, "tight"), (True, "loosen")]
    rest_chat(broker, context)  # served again


@pytest.mark.parametrize(("params", "names"), [
    ({"scope": "context", "requests_per_min": -1}, ["requests_per_min"]),
    ({"scope": "context", "concurrent": -5}, ["concurrent"]),
    ({"scope": "context", "budget_daily_usd": "-1"}, ["budget_daily_usd"]),
    ({"scope": "context", "budget_monthly_usd": "lots"}, ["budget_monthly_usd"]),
    ({"scope": "galaxy"}, ["scope"]),
    ({"scope": "context", "context": ""}, ["scope", "'context'"]),
    ({"scope": "bucket", "ip": ""}, ["'ip'"]),
    ({"scope": "context", "cleared": ["requests_per_min", "bogus"]}, ["cleared", "bogus"]),
    ({"scope": "context", "strategy": "random"}, ["strategy", "random"]),
    ({"scope": "context", "requests_per_min": "ten"}, ["requests_per_min"]),
    ({"scope": "context", "colour": "blue"}, ["colour"]),
])
def test_limits_set_refuses_bad_values_naming_the_param(admin: Admin, broker: Broker, params: dict[str, Any],
                                                        names: list[str]) -> None:
    context = fresh("adm-bad")
    before = broker.sql("SELECT count(*) AS n FROM events WHERE kind = 'limits.changed.v1'")[0]["n"]
    error = admin.error("limits.set", {"context": context, "ip": "10.0.0.1", **params})
    assert error["code"] == INVALID_PARAMS
    for name in names:
        assert name in error["message"], error
    assert broker.sql("SELECT count(*) AS n FROM events WHERE kind = 'limits.changed.v1'")[0]["n"] == before
    assert [o for o in admin.call("limits.get", {"context": context})["overrides"] if o["context"] == context] == []


# ---- routing, models, providers ------------------------------------------------------------------------


def test_routing_explain_predicts_the_offer_a_real_call_takes(admin: Admin, broker: Broker) -> None:
    context = fresh("adm-route")
    explained = admin.call("routing.explain", {"request": CHAT, "context": context})
    candidates = explained["candidates"]
    assert candidates and all(isinstance(c["est_cost_micros"], int) and c["est_cost_micros"] > 0 for c in candidates)
    assert {c["provider"] for c in candidates} == {"fakeai", "fakecloud"}
    cheapest = min((c for c in candidates if c["eligible"]), key=lambda c: c["est_cost_micros"])
    assert explained["chosen"] == f"{cheapest['provider']}/{cheapest['model']}"
    assert explained["est_cost_micros"] == cheapest["est_cost_micros"]
    assert explained["strategy"] == "cheapest" and explained["chosen"] not in explained["fallbacks"]
    headers = rest_chat(broker, context)
    assert f"{headers['x-aibroker-provider']}/{headers['x-aibroker-model']}" == explained["chosen"]
    decided = only(settled(broker, headers["x-request-id"]), "route.decided")
    assert [(c["provider"], c["model"], c["est_cost_micros"]) for c in decided["candidates"]] == [
        (c["provider"], c["model"], c["est_cost_micros"]) for c in candidates]


def test_routing_explain_refuses_a_bad_request_body(admin: Admin) -> None:
    error = admin.error("routing.explain", {"request": {"model": "auto"}})
    assert error["code"] == INVALID_PARAMS and "request" in error["message"] and "messages" in error["message"]
    assert "endpoint" in admin.error("routing.explain", {"request": CHAT, "endpoint": "images"})["message"]
    explained = admin.call("routing.explain", {"request": {"model": "no-such-model", "messages": HI}})
    assert explained["chosen"] is None and "no-such-model" in explained["reason"]


def test_models_list_matches_the_rest_listing(admin: Admin, broker: Broker) -> None:
    listed = admin.call("models.list")
    ids = {m["id"] for m in listed["data"]}
    assert {"auto", "fake-small", "fake-embed", "fakeai/fake-small", "fakecloud/fake-small"} <= ids
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
        rest = http.get(f"{broker.base_url}/models").json()
    assert ids == {m["id"] for m in rest["data"]}
    small = next(m for m in listed["data"] if m["id"] == "fake-small")
    assert small["providers"] == ["fakeai", "fakecloud"] and small["pricing"]["input_usd_per_mtok"] == "0.1"


def test_models_refresh_appends_a_catalog_refreshed_event(admin: Admin, broker: Broker) -> None:
    def refreshed() -> list[dict[str, Any]]:
        return broker.sql("SELECT * FROM events WHERE kind = 'catalog.refreshed.v1' ORDER BY seq")

    before = refreshed()
    result = admin.call("models.refresh")
    after = poll(refreshed, lambda evs: len(evs) > len(before))
    assert len(after) == len(before) + 1
    assert (after[-1]["price_version"], after[-1]["offers"]) == (result["price_version"], result["offers"])
    assert result["offers"] == len([m for m in admin.call("models.list")["data"] if "/" in m["id"]])
    assert sorted(after[-1]["providers"]) == ["fakeai", "fakecloud"]


def test_providers_list_shows_key_ids_but_never_keys(admin: Admin) -> None:
    providers = admin.call("providers.list")
    assert [p["name"] for p in providers] == ["fakeai", "fakecloud"]
    for p in providers:
        assert p["enabled"] is True and p["usable"] is True
        assert [k["key_id"] for k in p["keys"]] == [f"{p['name']}#0", f"{p['name']}#1"]
        assert all(set(k) >= {"key_id", "in_flight", "disabled", "cooldown_s"} for k in p["keys"])
    text = admin.seen[-1]
    assert not any(key in text for key in FAKE_KEYS), text


def test_a_disabled_provider_is_skipped_by_routing_until_enabled_again(admin: Admin, broker: Broker) -> None:
    context = fresh("adm-prov")
    assert rest_chat(broker, context)["x-aibroker-provider"] == "fakeai"
    try:
        assert admin.call("providers.set_enabled", {"name": "fakeai", "enabled": False}) == {
            "name": "fakeai", "enabled": False}
        fakeai = next(p for p in admin.call("providers.list") if p["name"] == "fakeai")
        assert (fakeai["enabled"], fakeai["usable"]) == (False, False)
        headers = rest_chat(broker, context)
        assert (headers["x-aibroker-provider"], headers["x-aibroker-model"]) == ("fakecloud", "fake-small")
        assert admin.call("routing.explain", {"request": CHAT, "context": context})["chosen"] == "fakecloud/fake-small"
    finally:
        admin.call("providers.set_enabled", {"name": "fakeai", "enabled": True})
    assert rest_chat(broker, context)["x-aibroker-provider"] == "fakeai"
    error = admin.error("providers.set_enabled", {"name": "nosuch", "enabled": False})
    assert error["code"] == INVALID_PARAMS and "nosuch" in error["message"]
    assert "enabled" in admin.error("providers.set_enabled", {"name": "fakeai"})["message"]


# ---- SQL ----------------------------------------------------------------------------------------------


def test_sql_query_reads_the_log(admin: Admin, broker: Broker, seeded: dict[str, list[str]]) -> None:
    result = admin.call("sql.query", {"sql": "SELECT context, count(*) AS n FROM usage "
                                             "WHERE context LIKE 'adm-_' GROUP BY context ORDER BY context"})
    assert result == {"columns": ["context", "n"], "rows": [["adm-a", 2], ["adm-b", 1], ["adm-c", 1]],
                      "truncated": False}


def test_sql_query_truncates_at_max_rows(admin: Admin, broker: Broker, seeded: dict[str, list[str]]) -> None:
    result = admin.call("sql.query", {"sql": "SELECT seq FROM events ORDER BY seq", "max_rows": 3})
    assert result == {"columns": ["seq"], "rows": [[1], [2], [3]], "truncated": True}
    for bad in (0, 10_001):
        assert "max_rows" in admin.error("sql.query", {"sql": "SELECT 1", "max_rows": bad})["message"]
    assert "timeout_s" in admin.error("sql.query", {"sql": "SELECT 1", "timeout_s": 0})["message"]


def test_sql_query_stops_a_query_past_its_timeout(admin: Admin) -> None:
    error = admin.error("sql.query", {"sql": "SELECT count(*) FROM range(1000000000000)", "timeout_s": 0.3})
    assert error["code"] == SQL_REFUSED and "0.3s" in error["message"]


@pytest.mark.parametrize(("sql", "says"), [
    ("COPY (SELECT * FROM events) TO '{tmp}/out.csv'", "only SELECT"),
    ("ATTACH '{tmp}/other.duckdb' AS other", "only SELECT"),
    ("SET threads = 1", "only SELECT"),
    ("INSERT INTO events (kind) VALUES ('x')", "only SELECT"),
    ("SELECT 1; SELECT 2", "exactly one SELECT"),
    ("SELECT * FROM read_csv('/etc/passwd')", "may only read the event log"),
    ("SELECT * FROM read_text('{tmp}/secret.txt')", "may only read the event log"),
])
def test_sql_query_refuses_anything_but_one_read_only_select(admin: Admin, tmp_path: Path, sql: str,
                                                             says: str) -> None:
    (tmp_path / "secret.txt").write_text("top secret\n")
    error = admin.error("sql.query", {"sql": sql.format(tmp=tmp_path)})
    assert error["code"] == SQL_REFUSED
    assert error["message"].startswith("sql refused: ") and says in error["message"], error
    assert "top secret" not in error["message"] and "root:" not in error["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt"]  # nothing written


# ---- the broker itself over RPC -------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["flat", "wrapped"])
def test_ai_chat_answers_and_is_logged_like_a_rest_call(admin: Admin, broker: Broker, wrapped: bool) -> None:
    context = fresh("adm-ai")
    params = {"request": CHAT, "context": context} if wrapped else {**CHAT, "context": context}
    answer = admin.call("ai.chat", params)
    assert answer["object"] == "chat.completion" and answer["model"] == "fake-small"
    assert answer["choices"][0]["message"]["content"].startswith("fake reply from fakeai/fake-small")
    assert answer["usage"]["completion_tokens"] > 0
    events = context_events(broker, context, 1)
    assert [e["kind"] for e in events] == REST_KINDS
    assert len({e["request_id"] for e in events}) == 1 and events[0]["request_id"]
    assert events[0]["endpoint"] == "/v1/chat/completions" and events[0]["ip"] == "127.0.0.1"
    usage = only(events, "usage.recorded")
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"])
    assert usage["cost_micros"] and usage["outcome"] == "ok"
    rest = settled(broker, rest_chat(broker, fresh("adm-ai-rest"))["x-request-id"])
    assert [e["kind"] for e in rest] == [e["kind"] for e in events]
    assert [r["requests"] for r in admin.call("spend.by_context", {"context": context})] == [1]


def test_ai_chat_errors_carry_the_openai_error(admin: Admin) -> None:
    error = admin.error("ai.chat", {"model": "no-such-model", "messages": HI})
    assert -32099 <= error["code"] <= -32000
    assert error["data"]["status"] == 404 and error["data"]["error"]["code"] == "model_not_found"
    assert "no-such-model" in error["message"]
    stream = admin.error("ai.chat", {**CHAT, "stream": True})
    assert stream["code"] == INVALID_PARAMS and "stream" in stream["message"]
    assert admin.error("ai.chat", [CHAT])["code"] == INVALID_PARAMS


def test_ai_chat_refuses_a_bad_context_naming_it(admin: Admin) -> None:
    error = admin.error("ai.chat", {**CHAT, "context": "bad context!"})
    assert error["code"] == INVALID_PARAMS and "context" in error["message"], error


def test_ai_embed_answers_and_is_logged(admin: Admin, broker: Broker) -> None:
    context = fresh("adm-emb")
    answer = admin.call("ai.embed", {"request": {"model": "fake-embed", "input": ["a", "b"]}, "context": context})
    assert answer["object"] == "list" and [d["index"] for d in answer["data"]] == [0, 1]
    assert all(isinstance(x, float) for x in answer["data"][0]["embedding"])
    events = context_events(broker, context, 1)
    assert events[0]["kind"] == "request.received.v1" and events[0]["endpoint"] == "/v1/embeddings"
    assert only(events, "usage.recorded")["model"] == "fake-embed"


# ---- the protocol over HTTP ----------------------------------------------------------------------------


def test_a_notification_over_http_is_204_with_an_empty_body(admin: Admin, broker: Broker) -> None:
    context = fresh("adm-note")
    resp = admin.post({"jsonrpc": "2.0", "method": "limits.set",
                       "params": {"scope": "context", "context": context, "concurrent": 3, "reason": "notified"}})
    assert (resp.status_code, resp.content) == (204, b"")
    assert only(limits_events(broker, context), "limits.changed")["reason"] == "notified"  # it still ran
    resp = admin.post([{"jsonrpc": "2.0", "method": "models.list"}, {"jsonrpc": "2.0", "method": "no.such"}])
    assert (resp.status_code, resp.content) == (204, b"")


def test_a_batch_over_http_answers_in_order(admin: Admin) -> None:
    resp = admin.post([
        {"jsonrpc": "2.0", "method": "limits.get", "params": {"context": "adm-a"}, "id": "a"},
        {"jsonrpc": "2.0", "method": "models.list"},
        {"jsonrpc": "2.0", "method": "no.such", "id": 2},
        {"jsonrpc": "2.0", "method": "events.tail", "params": [1], "id": 3},
        "junk",
    ])
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    answers = resp.json()
    assert [a["id"] for a in answers] == ["a", 2, 3, None]
    assert answers[0]["result"]["context"] == "adm-a"
    assert answers[1]["error"]["code"] == -32601 and "no.such" in answers[1]["error"]["message"]
    assert len(answers[2]["result"]) == 1
    assert answers[3]["error"]["code"] == -32600


def test_bad_json_over_http_is_a_parse_error(admin: Admin) -> None:
    resp = admin.http.post("/rpc", content=b'{"jsonrpc": "2.0", "method": ', headers={"content-type": "application/json"})
    assert resp.status_code == 200
    assert resp.json() == {"jsonrpc": "2.0", "id": None,
                           "error": {"code": -32700, "message": "parse error: the body is not valid JSON"}}


# ---- discovery -------------------------------------------------------------------------------------------


def is_schema(node: Any) -> bool:
    return isinstance(node, dict) and (not node or bool(SCHEMA_KEYWORDS & set(node)))


def test_openrpc_document_has_the_meta_schema_shape(admin: Admin) -> None:
    resp = admin.get("/openrpc.json")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc == admin.call("rpc.discover")
    assert isinstance(doc["openrpc"], str) and doc["openrpc"].startswith("1.2")
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    names = [m["name"] for m in doc["methods"]]
    assert len(names) == len(set(names)) and KNOWN_METHODS <= set(names)
    for m in doc["methods"]:
        assert isinstance(m["params"], list), m["name"]
        param_names = [p["name"] for p in m["params"]]
        assert len(param_names) == len(set(param_names)), m["name"]
        for p in m["params"]:
            assert isinstance(p["name"], str) and isinstance(p["required"], bool), (m["name"], p)
            assert is_schema(p["schema"]), (m["name"], p)
        assert isinstance(m["result"]["name"], str) and is_schema(m["result"]["schema"]), m["name"]
    assert "$ref" not in json.dumps(doc)
    limits_set = next(m for m in doc["methods"] if m["name"] == "limits.set")
    scope = next(p for p in limits_set["params"] if p["name"] == "scope")
    assert scope["required"] is True and set(scope["schema"]["enum"]) == {"default", "context", "ip", "bucket"}


def test_heroservice_and_health(admin: Admin) -> None:
    hero = admin.get("/.well-known/heroservice.json").json()
    assert (hero["name"], hero["protocol"], hero["rpc"], hero["openrpc"], hero["health"]) == (
        "hero_aibroker", "jsonrpc-2.0", "/rpc", "/openrpc.json", "/health")
    assert hero["methods"] == sorted(m["name"] for m in admin.call("rpc.discover")["methods"])
    health = admin.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


# ---- last: nothing leaked ----------------------------------------------------------------------------------


def test_no_answer_log_or_event_reveals_key_material(admin: Admin, broker: Broker) -> None:
    """Runs last in the module: every admin answer seen so far, the whole event log, the broker's output."""
    dump = admin.call("sql.query", {"sql": "SELECT * FROM events ORDER BY seq", "max_rows": 10_000})
    assert not dump["truncated"] and len(dump["rows"]) > 50
    events_text = json.dumps(broker.sql("SELECT * FROM events ORDER BY seq"), default=str)
    raw_files = b"".join(p.read_bytes() for p in broker.data_dir.rglob("*") if p.is_file())
    outputs = broker.stderr() + (broker.stderr_path.parent / "stdout.log").read_text(errors="replace")
    assert len(admin.seen) > 50
    for key in FAKE_KEYS:
        assert not [t for t in admin.seen if key in t]
        assert key not in events_text and key.encode() not in raw_files and key not in outputs
