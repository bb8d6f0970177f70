"""Billing over a real log in `tmp_path`: exact line items, reproducible files, closed periods, repricing, CLI.

Logs are written through a real `FileEventLog`: part sealed into Parquet and compacted, part still in
the WAL tail, so every figure is read the way an operator's export reads it.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest

from domain.cost import Prices, cost_micros
from domain.events import Event, RequestAdmitted, UsageRecorded
from eventlog.billing import BadPeriod, export, line_items, mark_event, period_bounds, unbilled, usd
from eventlog.billing_formats import BadFormat
from eventlog.filelog import FileEventLog
from eventlog.reprice import reprice
from eventlog.sql import query

REPO_ROOT = Path(__file__).resolve().parents[2]
NOV_US = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 1_000_000
DEC_US = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp()) * 1_000_000
FORMATS = ("csv", "jsonl", "parquet", "cloudevents")
EXT = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet", "cloudevents": "cloudevents.jsonl"}
MODELS = (("groq", "llama-3.1-8b"), ("openai", "gpt-4o-mini"), ("openrouter", "qwen/qwen-2.5-72b"))
PRICES = {"groq": Prices(50_000, 80_000), "openai": Prices(150_000, 600_000, 75_000),
          "openrouter": Prices(None, None)}  # openrouter's price unknown: cost None


def usage(n: int, ts_us: int, *, ip: str = "10.0.0.1", context: str = "A", model: int = 0, prompt: int = 1000,
          completion: int = 100, cached: int = 0, source: str = "provider", version: str = "2026-11-01") -> UsageRecorded:
    provider, name = MODELS[model]
    p = PRICES[provider]
    return UsageRecorded(
        event_id=f"u-{n}", ts_us=ts_us, ip=ip, context=context, request_id=f"r-{n}", provider=provider, model=name,
        prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached, reasoning_tokens=n % 3,
        usage_source=source, input_micros_per_mtok=p.input, output_micros_per_mtok=p.output,  # type: ignore[arg-type]
        cached_micros_per_mtok=p.cached, price_version=version,
        cost_micros=cost_micros(prompt, completion, cached, p))


def month_of_usage(count: int = 240) -> list[Event]:
    """A November of usage over 3 ips × 4 contexts × 3 models, plus noise the bill must ignore."""
    out: list[Event] = []
    for n in range(count):
        ts = NOV_US + n * (DEC_US - NOV_US) // count
        out.append(usage(n, ts, ip=f"10.0.0.{n % 3}", context="ABCD"[n % 4], model=n // 12 % 3, prompt=100 + 37 * n,
                         completion=n * 11 % 900, cached=(n % 5) * 20, source=("provider", "estimated", "missing")[n % 7 % 3],
                         version="2026-11-01" if n < count // 2 else "2026-11-15"))
        if n % 10 == 0:
            out.append(RequestAdmitted(event_id=f"a-{n}", ts_us=ts, ip="10.0.0.1", context="A", reserved_micros=10**6))
    out.append(usage(10_000, NOV_US - 1, context="A"))  # October
    out.append(usage(10_001, DEC_US, context="A"))  # December
    return out


async def _append(data_dir: Path, events: Sequence[Event], sealed: int, compact: bool) -> None:
    log = await FileEventLog.open(data_dir)
    try:
        for start in range(0, sealed, 50):
            await log.append(events[start:min(start + 50, sealed)])
        if sealed:
            await log.flush_sealed()
        if compact:
            await log.compact()
        if len(events) > sealed:
            await log.append(events[sealed:])
    finally:
        await log.close()


def write_log(data_dir: Path, events: Sequence[Event], sealed: int | None = None, compact: bool = True) -> Path:
    """Append `events`: the first `sealed` (default: two thirds) sealed and compacted, the rest after."""
    asyncio.run(_append(data_dir, events, len(events) * 2 // 3 if sealed is None else sealed, compact))
    return data_dir


def append_later(data_dir: Path, events: Sequence[Event]) -> None:
    asyncio.run(_append(data_dir, events, 0, False))


def read_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture
def november(tmp_path: Path) -> Path:
    return write_log(tmp_path / "log", month_of_usage())


# ---- line items ------------------------------------------------------------------------------------


def test_line_items_sum_exactly_to_totals(november: Path) -> None:
    items, totals, position = line_items(november, "2026-11")
    assert len(items) == totals.line_items == 36  # every (ip, context, model) the 36-request cycle hits
    for name in ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
                 "cost_micros", "unpriced_requests", "usage_provider", "usage_estimated", "usage_missing"):
        assert getattr(totals, name) == sum(getattr(i, name) for i in items), name
    assert totals.requests == 240 == totals.usage_provider + totals.usage_estimated + totals.usage_missing
    assert totals.cost_usd == usd(totals.cost_micros) and "e" not in totals.cost_usd
    assert totals.price_versions == ("2026-11-01", "2026-11-15")
    assert position == 264  # the last November usage: 240 usage + 24 admissions, in order


def test_totals_equal_a_plain_sql_sum_by_context(november: Path) -> None:
    items, _, _ = line_items(november, "2026-11")
    start, end = period_bounds("2026-11")
    _, rows, _ = query(november, f"SELECT context, sum(cost_micros), count(*) FROM usage "
                                 f"WHERE ts_us >= {start} AND ts_us < {end} GROUP BY context")
    by_context: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    for i in items:
        by_context[i.context] += i.cost_micros
        requests[i.context] += i.requests
    assert {c: (by_context[c], requests[c]) for c in by_context} == {c: (int(s), n) for c, s, n in rows}


def test_items_come_in_ip_context_provider_model_order(november: Path) -> None:
    items, _, _ = line_items(november, "2026-11")
    keys = [(i.ip, i.context, i.provider, i.model) for i in items]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_unknown_prices_are_counted_apart_and_add_nothing(tmp_path: Path) -> None:
    data = write_log(tmp_path, [usage(1, NOV_US, model=2), usage(2, NOV_US + 1, model=2), usage(3, NOV_US + 2)])
    items, totals, _ = line_items(data, "2026-11")
    unknown = next(i for i in items if i.provider == "openrouter")
    assert (unknown.requests, unknown.unpriced_requests, unknown.cost_micros, unknown.cost_usd) == (2, 2, 0, "0.000000")
    assert totals.unpriced_requests == 2 and totals.cost_micros == cost_micros(1000, 100, 0, PRICES["groq"])


@pytest.mark.parametrize(("period", "first", "last"), [("2026-11", NOV_US, DEC_US - 1),
                                                        ("2026-11-30", DEC_US - 86_400_000_000, DEC_US - 1)])
def test_period_keeps_its_last_microsecond_and_not_the_next_first(tmp_path: Path, period: str, first: int,
                                                                  last: int) -> None:
    events = [usage(1, first - 1, context="before"), usage(2, first, context="first"),
              usage(3, last, context="last"), usage(4, last + 1, context="after")]
    items, _, _ = line_items(write_log(tmp_path, events), period)
    assert [i.context for i in items] == ["first", "last"]


def test_filters_by_context_and_ip(november: Path) -> None:
    items, _, _ = line_items(november, "2026-11")
    some, totals, _ = line_items(november, "2026-11", contexts=["A", "C"], ips=["10.0.0.2"])
    assert some == [i for i in items if i.context in ("A", "C") and i.ip == "10.0.0.2"] and some
    assert totals.cost_micros == sum(i.cost_micros for i in some)
    assert line_items(november, "2026-11", contexts=[])[0] == []


def test_a_bad_period_is_refused_with_the_rule(november: Path) -> None:
    for bad in ("2026-13", "2026-11-31", "2026/11", "26-11", "2026-11-01T00"):
        with pytest.raises(BadPeriod, match=r"period '.*'"):
            line_items(november, bad)
    with pytest.raises(BadPeriod, match="must be YYYY-MM .a UTC month. or YYYY-MM-DD .a UTC day."):
        line_items(november, "November")


# ---- files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_reexport_is_byte_identical_and_the_manifest_hashes_the_files(november: Path, tmp_path: Path, fmt: str) -> None:
    first = export(november, tmp_path / "one", "2026-11", fmt)
    second = export(november, tmp_path / "two", "2026-11", fmt)
    assert first == second
    assert read_files(tmp_path / "one") == read_files(tmp_path / "two")
    names = {f"items.{EXT[fmt]}", f"totals.{EXT[fmt]}"}
    assert set(first["files"]) == names and set(read_files(tmp_path / "one")) == names | {"manifest.json"}
    for name, meta in first["files"].items():
        data = (tmp_path / "one" / name).read_bytes()
        assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["bytes"] == len(data)
    assert json.loads((tmp_path / "one" / "manifest.json").read_bytes()) == first
    assert first["files"][f"items.{EXT[fmt]}"]["rows"] == first["totals"]["line_items"] == 36


def test_every_format_carries_the_same_items(november: Path, tmp_path: Path) -> None:
    items, totals, position = line_items(november, "2026-11")
    expected = json.loads(msgspec.json.encode(items))
    for fmt in FORMATS:
        export(november, tmp_path / fmt, "2026-11", fmt)
    with open(tmp_path / "csv" / "items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    as_csv = [{k: (json.loads(v) if k == "price_versions" else v if k in ("ip", "context", "provider", "model", "cost_usd")
                   else int(v)) for k, v in row.items()} for row in rows]
    jsonl = [json.loads(line) for line in (tmp_path / "jsonl" / "items.jsonl").read_text().splitlines()]
    parquet = pq.read_table(tmp_path / "parquet" / "items.parquet").to_pylist()
    events = [json.loads(line) for line in (tmp_path / "cloudevents" / "items.cloudevents.jsonl").read_text().splitlines()]
    assert as_csv == jsonl == parquet == [e["data"] for e in events] == expected
    assert pq.read_table(tmp_path / "parquet" / "totals.parquet").to_pylist()[0]["cost_micros"] == totals.cost_micros
    first = events[0]
    assert {k: v for k, v in first.items() if k not in ("id", "data")} == {
        "specversion": "1.0", "type": "io.hero.aibroker.usage.v1", "source": "aibroker",
        "time": "2026-11-30T23:59:59.999999Z", "subject": items[0].context, "datacontenttype": "application/json"}
    i = items[0]
    assert first["id"] == hashlib.sha256(json.dumps(["2026-11", i.ip, i.context, i.provider, i.model, position],
                                                    separators=(",", ":")).encode()).hexdigest()
    assert len({e["id"] for e in events}) == len(events)
    total = json.loads((tmp_path / "cloudevents" / "totals.cloudevents.jsonl").read_text())
    assert total["type"] == "io.hero.aibroker.usage.totals.v1" and "subject" not in total
    assert total["data"]["cost_micros"] == totals.cost_micros and total["data"]["position"] == position


def test_an_unknown_format_is_refused_before_anything_is_written(november: Path, tmp_path: Path) -> None:
    with pytest.raises(BadFormat, match="format 'xlsx' is not one of csv, jsonl, parquet, cloudevents"):
        export(november, tmp_path / "out", "2026-11", "xlsx")
    assert not (tmp_path / "out").exists()


# ---- closing periods ---------------------------------------------------------------------------------


def test_a_closed_period_keeps_its_export_and_late_usage_is_unbilled(november: Path, tmp_path: Path) -> None:
    mark = mark_event(november, "2026-11", ["A", "B"], actor="ops")
    assert mark is not None and mark.contexts == ["A", "B"] and mark.actor == "ops"
    append_later(november, [mark])
    closed = {fmt: export(november, tmp_path / "closed" / fmt, "2026-11", fmt, contexts=["A", "B"]) for fmt in FORMATS}
    assert closed["csv"]["files"]["items.csv"]["sha256"] == mark.export_sha256
    assert not [item for _, item in unbilled(november) if item.context in ("A", "B") and _ == "2026-11"]

    late = [usage(20_000, NOV_US + 5, context="A", ip="10.9.9.9"), usage(20_001, NOV_US + 6, context="C")]
    append_later(november, late)
    for fmt in FORMATS:
        again = export(november, tmp_path / "again" / fmt, "2026-11", fmt, contexts=["A", "B"])
        assert again == closed[fmt]
        assert read_files(tmp_path / "again" / fmt) == read_files(tmp_path / "closed" / fmt)
    left: Counter[tuple[str, str, str]] = Counter()
    for period, item in unbilled(november):
        left[(period, item.ip, item.context)] += item.requests
    assert left[("2026-11", "10.9.9.9", "A")] == 1  # late for a closed period
    assert not any(ctx == "B" for _, _, ctx in left)
    assert sum(n for (p, _, ctx), n in left.items() if ctx == "C" and p == "2026-11") == 61  # never closed
    assert {p for p, _, _ in left} == {"2026-10", "2026-11", "2026-12"}


def test_marking_twice_is_a_no_op(november: Path) -> None:
    first = mark_event(november, "2026-11", ["A"], actor="ops")
    assert first is not None and first.through_seq > 0 and first.event_id and first.ts_us > NOV_US
    append_later(november, [first])
    assert mark_event(november, "2026-11", ["A"], actor="ops") is None
    assert mark_event(november, "2026-11", ["A", "B"], actor="ops") is not None  # B is still open
    everyone = mark_event(november, "2026-11", None, actor="ops")
    assert everyone is not None and everyone.contexts == []
    append_later(november, [everyone])
    assert mark_event(november, "2026-11", ["D"], actor="ops") is None
    assert [p for p, _ in unbilled(november)] == ["2026-10", "2026-12"]


def test_a_day_mark_closes_that_day_only(november: Path) -> None:
    mark = mark_event(november, "2026-11-30", ["A"], actor="ops")
    assert mark is not None
    append_later(november, [mark])
    last_day = period_bounds("2026-11-30")[0]
    left = [i for p, i in unbilled(november) if p == "2026-11" and i.context == "A"]
    inside = [e for e in month_of_usage() if isinstance(e, UsageRecorded) and e.context == "A"
              and NOV_US <= e.ts_us < DEC_US]
    assert sum(i.requests for i in left) == sum(1 for e in inside if e.ts_us < last_day) < len(inside)
    assert line_items(november, "2026-11")[1].requests == 240  # a day mark does not cut the month's bill


@pytest.mark.parametrize(("period", "bounds"), [
    ("2028-02", ("2028-02-01", "2028-03-01")), ("2026-12", ("2026-12-01", "2027-01-01")),
    ("2026-02-28", ("2026-02-28", "2026-03-01")), ("9999-12", ("9999-12-01", None))])
def test_period_bounds_are_utc_calendar_units(period: str, bounds: tuple[str, str | None]) -> None:
    def us(day: str) -> int:
        return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) * 1_000_000
    start, end = period_bounds(period)
    assert start == us(bounds[0])
    assert end == (us(bounds[1]) if bounds[1] else 253_402_300_800_000_000)


def test_usd_is_exact() -> None:
    assert [usd(m) for m in (0, 1, 999_999, 1_000_000, 123_456_789, 2**63 - 1)] == [
        "0.000000", "0.000001", "0.999999", "1.000000", "123.456789", "9223372036854.775807"]


def test_an_export_up_to_a_position_ignores_what_came_after(november: Path) -> None:
    _, totals, position = line_items(november, "2026-11")
    append_later(november, [usage(30_000, NOV_US + 9, context="A")])
    items, cut, cut_position = line_items(november, "2026-11", through_seq=position)
    assert (cut, cut_position) == (totals, position)
    assert line_items(november, "2026-11")[1].requests == totals.requests + 1


# ---- repricing ---------------------------------------------------------------------------------------


def test_reprice_with_a_doubled_price_doubles_that_model_exactly(tmp_path: Path) -> None:
    # a price of whole USD per 1M tokens makes every event's cost whole micro-USD: doubling is exact
    whole = Prices(2_000_000, 5_000_000)
    events = [UsageRecorded(event_id=f"e{n}", ts_us=NOV_US + n, context="AB"[n % 2], provider="openai",
                            model="gpt-4o" if n % 3 else "gpt-4o-mini", prompt_tokens=17 + n, completion_tokens=3 * n,
                            input_micros_per_mtok=2_000_000, output_micros_per_mtok=5_000_000,
                            cost_micros=cost_micros(17 + n, 3 * n, 0, whole)) for n in range(60)]
    data = write_log(tmp_path, events)
    got = {r.context: r for r in reprice(data, "2026-11", {"openai/gpt-4o-mini": {"input": 4_000_000, "output": 10_000_000}})}
    for context in "AB":
        mine = [e for e in events if e.context == context]
        mini = sum(e.cost_micros or 0 for e in mine if e.model == "gpt-4o-mini")
        rest = sum(e.cost_micros or 0 for e in mine if e.model != "gpt-4o-mini")
        r = got[context]
        assert (r.old_micros, r.new_micros, r.diff_micros) == (mini + rest, 2 * mini + rest, mini)
        assert r.repriced_requests == sum(1 for e in mine if e.model == "gpt-4o-mini") and r.requests == 30


def test_reprice_rounds_each_event_half_up_like_domain_cost(november: Path) -> None:
    corrected = {"gpt-4o-mini": Prices(123_457, 654_321, 1), "groq/llama-3.1-8b": Prices(3, 7)}
    start, end = period_bounds("2026-11")
    expected: Counter[str] = Counter()
    for e in month_of_usage():
        if isinstance(e, UsageRecorded) and start <= e.ts_us < end:
            p = corrected.get(f"{e.provider}/{e.model}") or corrected.get(e.model) or PRICES[e.provider]
            expected[e.context] += cost_micros(e.prompt_tokens, e.completion_tokens, e.cached_tokens, p) or 0
    got = reprice(november, "2026-11", corrected)
    assert {r.context: r.new_micros for r in got} == dict(expected)
    assert {r.context: r.old_unpriced for r in got} == {r.context: r.new_unpriced for r in got}


def test_reprice_refuses_a_price_that_is_not_a_whole_micro_usd(november: Path) -> None:
    with pytest.raises(ValueError, match=r"prices\['m'\]\.output must be an integer >= 0"):
        reprice(november, "2026-11", {"m": {"input": 1, "output": 0.5}})


# ---- the CLI -----------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", "export", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_export_writes_what_the_library_writes(november: Path, tmp_path: Path) -> None:
    for fmt in ("csv", "parquet"):
        done = cli("--period", "2026-11", "--context", "A", "--context", "B", "--ip", "10.0.0.1",
                   "--format", fmt, "--out", str(tmp_path / "cli" / fmt), "--data-dir", str(november))
        assert done.returncode == 0, done.stderr
        assert "2026-11: " in done.stdout and f"items.{fmt}" in done.stdout
        export(november, tmp_path / "lib" / fmt, "2026-11", fmt, contexts=["B", "A"], ips=["10.0.0.1"])
        assert read_files(tmp_path / "cli" / fmt) == read_files(tmp_path / "lib" / fmt)


def test_cli_reprice_prints_old_new_and_difference_per_context(november: Path, tmp_path: Path) -> None:
    prices = tmp_path / "prices.yml"
    prices.write_text('models:\n  "openai/gpt-4o-mini": {input: "0.30", output: "1.20", cached: "0.15"}\n')
    done = cli("--period", "2026-11", "--reprice", str(prices), "--data-dir", str(november))
    assert done.returncode == 0, done.stderr
    want = {r.context: r for r in reprice(november, "2026-11", {"openai/gpt-4o-mini": Prices(300_000, 1_200_000, 150_000)})}
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["context", "requests", "repriced", "old_micros", "new_micros", "diff_micros", "diff_usd"]
    for line in lines[2:-1]:
        context, _, _, old, new, diff, _ = line.split()
        r = want[context]
        assert (int(old), int(new), int(diff)) == (r.old_micros, r.new_micros, r.diff_micros) and r.diff_micros > 0
    assert lines[-1].split()[0] == "(total)" and len(lines) == 2 + 4 + 1


@pytest.mark.parametrize(("args", "message"), [
    (["--period", "2026-13", "--format", "csv", "--out", "OUT"], "period '2026-13' is not a calendar date"),
    (["--period", "11/2026", "--format", "csv", "--out", "OUT"], "must be YYYY-MM (a UTC month) or YYYY-MM-DD"),
    (["--period", "2026-11", "--format", "xlsx", "--out", "OUT"], "argument --format: invalid choice: 'xlsx'"),
    (["--period", "2026-11", "--out", "OUT"], "--format and --out are required (or --reprice PRICES.yml)"),
    (["--period", "2026-11", "--reprice", "NOPE.yml"], "--reprice 'NOPE.yml': no such file"),
    (["--period", "2026-11", "--reprice", "BAD.yml"], "models['m'].input: '0.0000001' must be >= 0 with at most 6"),
    (["--period", "2026-11", "--format", "csv", "--out", "OUT", "--data-dir", "MISSING"], "no such directory"),
])
def test_cli_refuses_bad_input_with_exit_2(november: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "BAD.yml").write_text("models: {m: {input: '0.0000001', output: '1'}}\n")
    swap = {"OUT": str(tmp_path / "out"), "NOPE.yml": "NOPE.yml", "BAD.yml": str(tmp_path / "BAD.yml"),
            "MISSING": str(tmp_path / "missing")}
    argv = [swap.get(a, a) for a in args] + ([] if "--data-dir" in args else ["--data-dir", str(november)])
    done = cli(*argv)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_csv_items_parse_back_to_exact_decimals(november: Path, tmp_path: Path) -> None:
    export(november, tmp_path, "2026-11", "csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "items.csv").read_text())))
    assert all(r["cost_usd"] == usd(int(r["cost_micros"])) for r in rows)
    totals = next(csv.DictReader(io.StringIO((tmp_path / "totals.csv").read_text())))
    assert int(totals["cost_micros"]) == sum(int(r["cost_micros"]) for r in rows)
