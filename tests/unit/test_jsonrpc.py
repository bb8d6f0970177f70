"""JSON-RPC 2.0 dispatch and the OpenRPC document, driven with a tiny registry of test methods."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import msgspec
import pytest

from functions.jsonrpc import (
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, Method, NoParams, RawParams,
    RpcError, dispatch, method, openrpc,
)

SECRET_DETAIL = "db password is hunter2"
CUSTOM_CODE = -32042


class Pair(msgspec.Struct, forbid_unknown_fields=True):
    a: int
    b: str = "x"
    c: bool = False


class Window(msgspec.Struct, forbid_unknown_fields=True):
    start: str | None = msgspec.field(default=None, name="from")
    end: str | None = msgspec.field(default=None, name="to")


def make_registry(calls: list[str]) -> dict[str, Method]:
    reg: dict[str, Method] = {}

    @method(reg, "pair.echo", Pair, dict[str, Any], "Echo a pair.")
    async def pair_echo(ctx: Any, p: Pair) -> dict[str, Any]:
        calls.append(f"pair.echo {p.a}")
        return {"a": p.a, "b": p.b, "c": p.c, "ctx": ctx}

    @method(reg, "ping", NoParams, str, "Pong.")
    async def ping(ctx: Any, _: NoParams) -> str:
        calls.append("ping")
        return "pong"

    @method(reg, "raw.echo", RawParams, dict[str, Any], "Echo the params object.")
    async def raw_echo(ctx: Any, raw: dict[str, Any]) -> dict[str, Any]:
        return raw

    @method(reg, "window.echo", Window, dict[str, Any], "Echo a window with renamed fields.")
    async def window_echo(ctx: Any, p: Window) -> dict[str, Any]:
        return {"from": p.start, "to": p.end}

    @method(reg, "fail.expected", NoParams, str, "Raises an RpcError.")
    async def fail_expected(ctx: Any, _: NoParams) -> str:
        calls.append("fail.expected")
        raise RpcError(CUSTOM_CODE, "the widget is busy", {"retry_after_s": 3})

    @method(reg, "fail.bug", NoParams, str, "Raises a bug.")
    async def fail_bug(ctx: Any, _: NoParams) -> str:
        calls.append("fail.bug")
        raise ValueError(SECRET_DETAIL)

    return reg


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def reg(calls: list[str]) -> dict[str, Method]:
    return make_registry(calls)


def call(reg: dict[str, Method], doc: Any, ctx: Any = "CTX") -> Any:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return asyncio.run(dispatch(reg, ctx, body))


def req(method_name: str, params: Any = None, id_: Any = 1, *, notify: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method_name}
    if params is not None:
        doc["params"] = params
    if not notify:
        doc["id"] = id_
    return doc


def error_of(answer: Any, code: int, id_: Any = 1) -> str:
    assert isinstance(answer, dict), answer
    assert answer.get("jsonrpc") == "2.0" and "result" not in answer, answer
    assert answer["id"] == id_ and type(answer["id"]) is type(id_), answer
    assert answer["error"]["code"] == code, answer
    message: str = answer["error"]["message"]
    assert isinstance(message, str) and message
    return message


# ---- single calls ---------------------------------------------------------------------------


def test_a_call_by_name_answers_with_the_result_and_the_context(reg: dict[str, Method]) -> None:
    answer = call(reg, req("pair.echo", {"a": 7, "b": "y"}, id_=3))
    assert answer == {"jsonrpc": "2.0", "result": {"a": 7, "b": "y", "c": False, "ctx": "CTX"}, "id": 3}


def test_missing_params_mean_an_empty_object(reg: dict[str, Method]) -> None:
    assert call(reg, req("ping"))["result"] == "pong"
    assert call(reg, req("ping", {}))["result"] == "pong"
    assert call(reg, req("ping", []))["result"] == "pong"


def test_positional_params_map_to_fields_in_declaration_order(reg: dict[str, Method]) -> None:
    assert call(reg, req("pair.echo", [5, "z", True]))["result"] == {"a": 5, "b": "z", "c": True, "ctx": "CTX"}
    assert call(reg, req("pair.echo", [5]))["result"] == {"a": 5, "b": "x", "c": False, "ctx": "CTX"}


def test_too_many_positional_params_are_invalid_params(reg: dict[str, Method]) -> None:
    message = error_of(call(reg, req("pair.echo", [1, "b", True, "extra"])), INVALID_PARAMS)
    assert "at most 3" in message and "got 4" in message


def test_params_that_are_neither_object_nor_array_are_invalid_params(reg: dict[str, Method]) -> None:
    message = error_of(call(reg, req("pair.echo", 5)), INVALID_PARAMS)
    assert "object" in message and "array" in message


def test_a_wrongly_typed_param_is_named_in_the_error(reg: dict[str, Method]) -> None:
    message = error_of(call(reg, req("pair.echo", {"a": "seven"})), INVALID_PARAMS)
    assert "`a`" in message and "int" in message and "pair.echo" in message


def test_a_missing_required_param_is_named_in_the_error(reg: dict[str, Method]) -> None:
    message = error_of(call(reg, req("pair.echo", {"b": "only"})), INVALID_PARAMS)
    assert "`a`" in message and "missing" in message.lower()


def test_an_unknown_param_is_named_in_the_error(reg: dict[str, Method]) -> None:
    message = error_of(call(reg, req("pair.echo", {"a": 1, "zzz": 2})), INVALID_PARAMS)
    assert "zzz" in message


def test_raw_params_take_the_object_as_given_and_refuse_an_array(reg: dict[str, Method]) -> None:
    body = {"model": "m", "nested": {"k": [1, 2]}}
    assert call(reg, req("raw.echo", body))["result"] == body
    message = error_of(call(reg, req("raw.echo", [1, 2])), INVALID_PARAMS)
    assert "raw.echo" in message and "by name" in message


def test_an_unknown_method_is_method_not_found_and_named(reg: dict[str, Method]) -> None:
    message = error_of(call(reg, req("no.such", {}, id_="x")), METHOD_NOT_FOUND, "x")
    assert "no.such" in message


def test_a_body_that_is_not_json_is_a_parse_error_with_a_null_id(reg: dict[str, Method]) -> None:
    for body in (b'{"jsonrpc": "2.0", "method": "ping", "id": 1', b"", b"\xff\xfe\x00", b"[1, 2"):
        message = error_of(call(reg, body), PARSE_ERROR, None)
        assert "parse error" in message


@pytest.mark.parametrize("doc", [
    {"method": "ping", "id": 1},  # no jsonrpc
    {"jsonrpc": "1.0", "method": "ping", "id": 1},
    {"jsonrpc": 2.0, "method": "ping", "id": 1},
    {"jsonrpc": "2.0", "id": 1},  # no method
    {"jsonrpc": "2.0", "method": 5, "id": 1},
])
def test_a_malformed_request_object_is_an_invalid_request_keeping_a_valid_id(reg: dict[str, Method],
                                                                            doc: dict[str, Any]) -> None:
    message = error_of(call(reg, doc), INVALID_REQUEST, 1)
    assert '"jsonrpc": "2.0"' in message


@pytest.mark.parametrize("doc", [5, "ping", None, True])
def test_a_request_that_is_not_an_object_is_an_invalid_request(reg: dict[str, Method], doc: Any) -> None:
    error_of(call(reg, doc), INVALID_REQUEST, None)


@pytest.mark.parametrize("bad_id", [{"a": 1}, [1]])
def test_an_id_of_the_wrong_type_is_an_invalid_request_with_a_null_id(reg: dict[str, Method], bad_id: Any) -> None:
    error_of(call(reg, req("ping", id_=bad_id)), INVALID_REQUEST, None)


def test_a_bool_id_is_an_invalid_request(reg: dict[str, Method], calls: list[str]) -> None:
    answer = call(reg, req("ping", id_=True))
    assert answer["error"]["code"] == INVALID_REQUEST
    assert calls == []  # the method did not run


def test_a_bool_id_is_answered_with_a_null_id(reg: dict[str, Method]) -> None:
    error_of(call(reg, req("ping", id_=True)), INVALID_REQUEST, None)


@pytest.mark.parametrize("id_", ["abc-1", "", 0, 42, -7, 2**53, None])
def test_string_number_and_null_ids_are_kept(reg: dict[str, Method], id_: Any) -> None:
    answer = call(reg, req("ping", id_=id_))
    assert answer == {"jsonrpc": "2.0", "result": "pong", "id": id_}
    assert type(answer["id"]) is type(id_)
    error_of(call(reg, req("no.such", id_=id_)), METHOD_NOT_FOUND, id_)


def test_a_fractional_number_id_is_kept(reg: dict[str, Method]) -> None:
    assert call(reg, req("ping", id_=1.5)) == {"jsonrpc": "2.0", "result": "pong", "id": 1.5}


# ---- handler errors ---------------------------------------------------------------------------


def test_an_rpc_error_from_a_handler_keeps_its_code_message_and_data(reg: dict[str, Method]) -> None:
    answer = call(reg, req("fail.expected", id_=9))
    assert answer == {"jsonrpc": "2.0", "id": 9,
                      "error": {"code": CUSTOM_CODE, "message": "the widget is busy", "data": {"retry_after_s": 3}}}


def test_an_unexpected_exception_is_an_internal_error_that_leaks_nothing(
        reg: dict[str, Method], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="aibroker.rpc"):
        answer = call(reg, req("fail.bug", id_="b"))
    message = error_of(answer, INTERNAL_ERROR, "b")
    text = json.dumps(answer)
    assert SECRET_DETAIL not in text and "ValueError" not in text and "Traceback" not in text
    assert message == "internal error"
    assert any("fail.bug" in r.getMessage() for r in caplog.records)  # the operator still sees it in the log


# ---- notifications and batches ------------------------------------------------------------------


def test_a_notification_runs_the_method_and_answers_nothing(reg: dict[str, Method], calls: list[str]) -> None:
    assert call(reg, req("ping", notify=True)) is None
    assert calls == ["ping"]


def test_a_failing_notification_answers_nothing(reg: dict[str, Method], calls: list[str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.CRITICAL, logger="aibroker.rpc"):
        for name, params in (("fail.expected", None), ("fail.bug", None), ("no.such", None), ("pair.echo", {"a": "x"})):
            assert call(reg, req(name, params, notify=True)) is None
    assert calls == ["fail.expected", "fail.bug"]


def test_a_batch_answers_each_non_notification_in_order(reg: dict[str, Method], calls: list[str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    batch = [
        req("pair.echo", {"a": 1}, id_="first"),
        req("ping", notify=True),
        req("no.such", id_=2),
        7,  # not an object
        req("pair.echo", {"a": "bad"}, id_=3),
        req("pair.echo", [2, "q"], id_=None),
        req("fail.bug", notify=True),
        {"jsonrpc": "2.0", "method": "ping", "id": {"no": 1}},
        req("fail.expected", id_=4),
        req("ping", id_="last"),
    ]
    with caplog.at_level(logging.CRITICAL, logger="aibroker.rpc"):
        answers = call(reg, batch)
    assert isinstance(answers, list)
    assert [a["id"] for a in answers] == ["first", 2, None, 3, None, None, 4, "last"]
    assert answers[0]["result"] == {"a": 1, "b": "x", "c": False, "ctx": "CTX"}
    error_of(answers[1], METHOD_NOT_FOUND, 2)
    error_of(answers[2], INVALID_REQUEST, None)
    assert "`a`" in error_of(answers[3], INVALID_PARAMS, 3)
    assert answers[4]["result"] == {"a": 2, "b": "q", "c": False, "ctx": "CTX"}
    error_of(answers[5], INVALID_REQUEST, None)
    error_of(answers[6], CUSTOM_CODE, 4)
    assert answers[7] == {"jsonrpc": "2.0", "result": "pong", "id": "last"}
    assert calls == ["pair.echo 1", "ping", "pair.echo 2", "fail.bug", "fail.expected", "ping"]


def test_a_batch_of_only_notifications_answers_nothing(reg: dict[str, Method], calls: list[str]) -> None:
    assert call(reg, [req("ping", notify=True), req("pair.echo", {"a": 5}, notify=True)]) is None
    assert calls == ["ping", "pair.echo 5"]


def test_an_empty_batch_is_one_invalid_request(reg: dict[str, Method]) -> None:
    answer = call(reg, [])
    assert "empty batch" in error_of(answer, INVALID_REQUEST, None)


def test_a_batch_of_non_objects_answers_one_invalid_request_each(reg: dict[str, Method]) -> None:
    answers = call(reg, [1, 2, 3])
    assert len(answers) == 3
    for answer in answers:
        error_of(answer, INVALID_REQUEST, None)


# ---- renamed fields (a wire name differs from the Python name) ----------------------------------


def test_renamed_fields_are_bound_by_their_wire_name(reg: dict[str, Method]) -> None:
    answer = call(reg, req("window.echo", {"from": "2026-01-01", "to": "2026-02-01"}))
    assert answer["result"] == {"from": "2026-01-01", "to": "2026-02-01"}


def test_renamed_fields_are_bound_by_position(reg: dict[str, Method]) -> None:
    answer = call(reg, req("window.echo", ["2026-01-01", "2026-02-01"]))
    assert answer.get("result") == {"from": "2026-01-01", "to": "2026-02-01"}, answer


def test_the_document_names_renamed_params_as_the_wire_does(reg: dict[str, Method]) -> None:
    doc = openrpc(reg, "t", "1")
    window = next(m for m in doc["methods"] if m["name"] == "window.echo")
    assert [p["name"] for p in window["params"]] == ["from", "to"]


# ---- the OpenRPC document -------------------------------------------------------------------------


def test_the_document_lists_every_method_with_typed_params_and_a_result(reg: dict[str, Method]) -> None:
    doc = openrpc(reg, "test api", "9.9.9")
    assert doc["openrpc"] == "1.2.6" and doc["info"] == {"title": "test api", "version": "9.9.9"}
    assert [m["name"] for m in doc["methods"]] == sorted(reg)
    pair = next(m for m in doc["methods"] if m["name"] == "pair.echo")
    assert pair["summary"] == "Echo a pair."
    assert [(p["name"], p["required"]) for p in pair["params"]] == [("a", True), ("b", False), ("c", False)]
    assert [p["schema"] for p in pair["params"]] == [{"type": "integer"}, {"type": "string"}, {"type": "boolean"}]
    assert pair["result"] == {"name": "pair.echo.result", "schema": {"type": "object"}}
    raw = next(m for m in doc["methods"] if m["name"] == "raw.echo")
    assert [p["name"] for p in raw["params"]] == ["request"]
    ping = next(m for m in doc["methods"] if m["name"] == "ping")
    assert ping["params"] == [] and ping["result"]["schema"] == {"type": "string"}
    json.dumps(doc)  # plain JSON all the way down


class Inner(msgspec.Struct):
    x: int


class Outer(msgspec.Struct):
    inner: Inner
    more: list[Inner] = []


def test_the_document_inlines_struct_references() -> None:
    reg: dict[str, Method] = {}

    @method(reg, "nested", Outer, Inner, "Nested structs.")
    async def nested(ctx: Any, p: Outer) -> Inner:
        return p.inner

    doc = openrpc(reg, "t", "1")
    assert "$ref" not in json.dumps(doc) and "$defs" not in json.dumps(doc)
    m = doc["methods"][0]
    assert m["params"][0]["schema"]["properties"]["x"] == {"type": "integer"}
    assert m["result"]["schema"]["required"] == ["x"]
    assert call(reg, req("nested", {"inner": {"x": 4}}))["result"] == {"x": 4}
