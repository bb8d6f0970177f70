"""Billing files: line items and totals as CSV, JSON lines, Parquet or CloudEvents — byte-reproducible.

Each format gives `items.<ext>` (one row per line item, in item order) and `totals.<ext>` (one row).
Nothing depends on the clock, the machine or thread scheduling: the same bill gives the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from eventlog.billing import LineItem, Totals, period_bounds, rfc3339

FORMATS = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet", "cloudevents": "cloudevents.jsonl"}
CLOUDEVENT_TYPE = "io.hero.aibroker.usage.v1"
CLOUDEVENT_TOTALS_TYPE = "io.hero.aibroker.usage.totals.v1"
# Fixed Parquet writer options (and pyarrow's own `created_by`): no timestamps, no host data.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd", "compression_level": 3, "use_dictionary": True, "write_statistics": True,
    "version": "2.6", "data_page_version": "1.0", "row_group_size": 1 << 20, "store_schema": True,
}

_ARROW_TYPES = {name: pa.string() for name in ("period", "ip", "context", "provider", "model", "cost_usd")}
_ARROW_TYPES["price_versions"] = pa.list_(pa.string())
_encoder = msgspec.json.Encoder()


class BadFormat(ValueError):
    """An export format we do not write."""


def check_format(fmt: str) -> str:
    """The file extension of `fmt`; raises `BadFormat` naming the value and the choices."""
    if fmt not in FORMATS:
        raise BadFormat(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def render(fmt: str, items: list[LineItem], totals: Totals) -> dict[str, tuple[bytes, int]]:
    """{file name: (bytes, rows)} for the items file and the totals file."""
    ext = check_format(fmt)
    writer = {"csv": _csv, "jsonl": _jsonl, "parquet": _parquet, "cloudevents": _cloudevents}[fmt]
    return {f"items.{ext}": (writer(items, totals, False), len(items)),
            f"totals.{ext}": (writer([totals], totals, True), 1)}


def _csv(records: list[Any], totals: Totals, is_totals: bool) -> bytes:
    """Header + rows, `\\n` line ends; `price_versions` as a JSON array (unambiguous in one cell)."""
    fields = list((Totals if is_totals else LineItem).__struct_fields__)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for record in records:
        writer.writerow([_encoder.encode(v).decode() if isinstance(v, tuple) else v
                         for v in (getattr(record, f) for f in fields)])
    return out.getvalue().encode()


def _jsonl(records: list[Any], totals: Totals, is_totals: bool) -> bytes:
    return b"".join(_encoder.encode(r) + b"\n" for r in records)


def _arrow_schema(is_totals: bool) -> pa.Schema:
    """Strings stay strings (`cost_usd` too: exact), counts and micros are int64, versions a list."""
    fields = (Totals if is_totals else LineItem).__struct_fields__
    return pa.schema([pa.field(name, _ARROW_TYPES.get(name, pa.int64()), nullable=False) for name in fields])


def _parquet(records: list[Any], totals: Totals, is_totals: bool) -> bytes:
    schema = _arrow_schema(is_totals)
    columns = {name: [getattr(r, name) for r in records] for name in schema.names}
    table = pa.table({n: pa.array(columns[n], schema.field(n).type) for n in schema.names}, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return bytes(sink.getvalue().to_pybytes())


def _cloudevents(records: list[Any], totals: Totals, is_totals: bool) -> bytes:
    """CloudEvents 1.0 structured mode, one per line. `time` is the period's last µs (so a meter
    windowing by time keeps it inside the period); `id` is a hash of what the item is and covers."""
    _, end = period_bounds(totals.period)
    lines = []
    for r in records:
        key = ["totals"] if is_totals else [r.ip, r.context, r.provider, r.model]
        ident = _encoder.encode([totals.period, *key, totals.position])
        event: dict[str, Any] = {
            "specversion": "1.0", "type": CLOUDEVENT_TOTALS_TYPE if is_totals else CLOUDEVENT_TYPE,
            "source": "aibroker", "id": hashlib.sha256(ident).hexdigest(), "time": rfc3339(end - 1),
        }
        if not is_totals and r.context:  # a CloudEvents subject, when present, must not be empty
            event["subject"] = r.context
        event.update(datacontenttype="application/json", data=r)
        lines.append(_encoder.encode(event) + b"\n")
    return b"".join(lines)
