"""Events as Arrow columns: one wide schema for every kind, WAL bytes → table, rows → typed events.

The schema is derived from the event structs, so adding a field to an event adds a nullable column;
Parquet files written before simply lack it (readers use `union_by_name`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from domain.events import EVENT_TYPES, Event

ENVELOPE = ("kind", "event_id", "seq", "ts_us", "source", "request_id", "ip", "context", "user")


def _arrow_type(t: mi.Type) -> pa.DataType:
    if isinstance(t, mi.UnionType):
        inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union in an event field: {t}")
        return _arrow_type(inner[0])
    if isinstance(t, mi.IntType):
        return pa.int64()
    if isinstance(t, (mi.StrType, mi.LiteralType)):
        return pa.string()
    if isinstance(t, mi.BoolType):
        return pa.bool_()
    if isinstance(t, mi.ListType):
        return pa.list_(_arrow_type(t.item_type))
    if isinstance(t, mi.StructType):
        return pa.struct([pa.field(f.name, _arrow_type(f.type)) for f in t.fields])
    raise TypeError(f"unsupported type in an event field: {t}")


@cache
def event_schema() -> pa.Schema:
    """The union of every kind's fields; one name has one type across kinds (checked here)."""
    fields: dict[str, pa.DataType] = {"kind": pa.string()}
    for cls in EVENT_TYPES:
        info = mi.type_info(cls)
        assert isinstance(info, mi.StructType)
        for f in info.fields:
            typ = _arrow_type(f.type)
            if fields.setdefault(f.name, typ) != typ:
                raise TypeError(f"field {f.name!r} has two types across event kinds")
    ordered = list(ENVELOPE) + [n for n in fields if n not in ENVELOPE]
    return pa.schema([pa.field(n, fields[n]) for n in ordered])


def empty_table() -> pa.Table:
    return event_schema().empty_table()


def wal_to_table(data: bytes) -> pa.Table:
    """Parse JSONL event lines (as the WAL holds them) into an Arrow table, in C++."""
    if not data or data.isspace():  # (not `strip()`: that copies a whole WAL file)
        return empty_table()
    options = pa_json.ParseOptions(
        explicit_schema=event_schema(), unexpected_field_behavior="ignore"
    )
    read = pa_json.ReadOptions(use_threads=False, block_size=max(1 << 20, len(data) + 1))
    return pa_json.read_json(io.BytesIO(data), read_options=read, parse_options=options)


@cache
def _field_plan(cls: type[Event]) -> tuple[tuple[str, Any], ...]:
    """(name, default-for-null) per field; fields that accept None keep None."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    plan = []
    for f in info.fields:
        nullable = isinstance(f.type, mi.UnionType) and any(
            isinstance(x, mi.NoneType) for x in f.type.types
        )
        default = f.default if f.default is not mi.NODEFAULT else None
        if f.default_factory is not mi.NODEFAULT:
            default = f.default_factory()
        plan.append((f.name, None if nullable else default))
    return tuple(plan)


def table_to_events(table: pa.Table) -> Iterator[Event]:
    """Typed events from a table of rows (any mix of kinds), in the table's row order."""
    kinds = table.column("kind")
    per_kind: dict[int, Event] = {}
    for cls in EVENT_TYPES:
        tag = cls.__struct_config__.tag
        mask = pc.equal(kinds, tag)
        if not pc.any(mask).as_py():
            continue
        indices = pc.indices_nonzero(mask).to_pylist()
        sub = table.filter(mask)
        columns = {}
        for name, default in _field_plan(cls):
            if name not in sub.column_names:
                columns[name] = [default] * sub.num_rows
                continue
            col = sub.column(name)
            if default is None or not col.null_count:
                columns[name] = col.to_pylist()
            elif isinstance(default, list):
                columns[name] = [[] if v is None else v for v in col.to_pylist()]
            else:
                columns[name] = pc.fill_null(col, default).to_pylist()
        names = list(columns)
        rows = [dict(zip(names, values)) for values in zip(*columns.values())]
        events = msgspec.convert(rows, list[cls])  # type: ignore[valid-type]
        per_kind.update(zip(indices, events))
    for i in range(table.num_rows):
        yield per_kind[i]
