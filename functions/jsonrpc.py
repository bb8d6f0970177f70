"""JSON-RPC 2.0 over HTTP: method definitions, dispatch (single, batch, notifications), OpenRPC.

A method is a name, a msgspec Struct of params (named or positional, in field order), a result
type and an async handler. The OpenRPC document is generated from those same definitions, so the
schema and the behaviour cannot drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
log = logging.getLogger("aibroker.rpc")


class RpcError(Exception):
    """An error answer: `code` (JSON-RPC or -32000..-32099 for ours), message, optional data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class RawParams(msgspec.Struct):
    """Marker: the handler takes the params object as given (e.g. an OpenAI request body)."""


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    params: type[msgspec.Struct]
    result: Any
    handler: Callable[[Any, Any], Awaitable[Any]]  # (context, params) -> result


def method(registry: dict[str, Method], name: str, params: type[msgspec.Struct], result: Any,
           summary: str) -> Callable[[Callable[[Any, Any], Awaitable[Any]]], Callable[[Any, Any], Awaitable[Any]]]:
    """Decorator: register an async handler under `name`."""

    def register(handler: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
        registry[name] = Method(name, summary, params, result, handler)
        return handler

    return register


def _bind(m: Method, raw: Any) -> Any:
    if m.params is RawParams:
        if not isinstance(raw, dict):
            raise RpcError(INVALID_PARAMS, f"{m.name} takes its params by name (an object)")
        return raw
    names = [f.encode_name for f in msgspec.structs.fields(m.params)]
    if raw is None:
        raw = {}
    elif isinstance(raw, list):
        if len(raw) > len(names):
            raise RpcError(INVALID_PARAMS, f"{m.name} takes at most {len(names)} positional params, got {len(raw)}")
        raw = dict(zip(names, raw))
    elif not isinstance(raw, dict):
        raise RpcError(INVALID_PARAMS, "params must be an object (by name) or an array (by position)")
    try:
        return msgspec.convert(raw, m.params)
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$.", "`").replace("at `$`", "in params")
        raise RpcError(INVALID_PARAMS, f"invalid params for {m.name}: {text}") from None


def _error(id_: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": id_}


async def _one(registry: dict[str, Method], ctx: Any, req: Any) -> dict[str, Any] | None:
    if not isinstance(req, dict):
        return _error(None, INVALID_REQUEST, "invalid request: each request must be a JSON object")
    id_ = req.get("id")
    notify = "id" not in req
    valid_id = id_ is None or isinstance(id_, (str, int, float)) and not isinstance(id_, bool)
    if req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str) or not (notify or valid_id):
        return _error(id_ if valid_id else None, INVALID_REQUEST,
                      'invalid request: needs "jsonrpc": "2.0", a string "method" and an id that is a string, number or null')
    m = registry.get(req["method"])
    try:
        if m is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {req['method']!r} (rpc.discover lists them)")
        result = await m.handler(ctx, _bind(m, req.get("params")))
    except RpcError as exc:
        return None if notify else _error(id_, exc.code, exc.message, exc.data)
    except Exception:
        log.exception("rpc method %s failed", req.get("method"))
        return None if notify else _error(id_, INTERNAL_ERROR, "internal error")
    return None if notify else {"jsonrpc": "2.0", "result": msgspec.to_builtins(result), "id": id_}


async def dispatch(registry: dict[str, Method], ctx: Any, body: bytes) -> Any:
    """The response document (dict or list), or None when nothing is to be sent (notifications)."""
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _error(None, PARSE_ERROR, "parse error: the body is not valid JSON")
    if isinstance(doc, list):
        if not doc:
            return _error(None, INVALID_REQUEST, "invalid request: an empty batch")
        answers = [a for a in [await _one(registry, ctx, r) for r in doc] if a is not None]
        return answers or None
    return await _one(registry, ctx, doc)


def openrpc(registry: dict[str, Method], title: str, version: str) -> dict[str, Any]:
    """An OpenRPC 1.2 document generated from the method definitions."""
    methods = []
    for m in sorted(registry.values(), key=lambda m: m.name):
        params = []
        if m.params is RawParams:
            params.append({"name": "request", "required": False, "schema": {"type": "object"},
                           "description": "the OpenAI request body, flat or wrapped as {\"request\": {...}}"})
        for f in msgspec.structs.fields(m.params):
            schema = msgspec.json.schema(f.type)
            params.append({"name": f.encode_name, "required": f.required, "schema": _inline(schema)})
        methods.append({
            "name": m.name, "summary": m.summary, "paramStructure": "either", "params": params,
            "result": {"name": f"{m.name}.result", "schema": _inline(msgspec.json.schema(m.result))},
        })
    return {"openrpc": "1.2.6", "info": {"title": title, "version": version}, "methods": methods}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve `$defs` references so each schema stands alone (OpenRPC tools like that best)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.split("/")[-1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]
