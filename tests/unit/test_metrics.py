"""`functions.metrics.Metrics`: a fold over events into Prometheus counters and histograms.

The counters add up what the events say; histograms are cumulative, monotone and end in +Inf ==
count; label values are escaped; and `render()` is valid Prometheus text (parsed here line by line).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

import pytest

from domain.events import (
    CatalogRefreshed, Event, RequestAdmitted, RequestReceived, RequestRejected, UpstreamFailed, UsageRecorded,
)
from functions.metrics import APPEND_BUCKETS_S, LATENCY_BUCKETS_S, Metrics

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
LABELS = rf"\{{(?:[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE}(?:,[a-zA-Z_][a-zA-Z0-9_]*={LABEL_VALUE})*)?\}}"
VALUE = r"(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?Inf|NaN)"
SAMPLE = re.compile(rf"^({NAME})({LABELS})? ({VALUE})$")
ONE_LABEL = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({LABEL_VALUE})")

_seq = iter(range(1, 10**9))


def ev(cls: type[Event], **fields: Any) -> Any:
    envelope = {"event_id": f"e{next(_seq)}", "ts_us": 1_700_000_000_000_000, "request_id": "r", "ip": "1.2.3.4",
                "context": "ctx"}
    return cls(**{**envelope, **fields})


def usage(**fields: Any) -> UsageRecorded:
    base = {"provider": "fakeai", "model": "fake-small", "prompt_tokens": 10, "completion_tokens": 5,
            "cost_micros": 7, "latency_us": 120_000, "ttft_us": 40_000, "outcome": "ok"}
    return ev(UsageRecorded, **{**base, **fields})


def unescape(quoted: str) -> str:
    body = quoted[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m[1]], body)


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """Prometheus text format → ({family: type}, [(name, labels, value)]); fails on any bad line."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helped: set[str] = set()
    samples = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name) and name not in helped, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helped and name not in types, line  # one TYPE per family, after its HELP
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a Prometheus sample line: {line!r}"
            name, labels, value = m[1], m[2] or "{}", m[3]
            pairs = ONE_LABEL.findall(labels)
            assert "{" + ",".join(f"{k}={v}" for k, v in pairs) + "}" == labels, line  # nothing else in the braces
            parsed = {k: unescape(v) for k, v in pairs}
            assert len(parsed) == len(pairs), f"a label twice: {line!r}"
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
            assert family in types, f"sample before its # TYPE: {line!r}"
            samples.append((name, parsed, float(value.replace("Inf", "inf"))))
    return types, samples


def values(samples: list[tuple[str, dict[str, str], float]], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): v for n, labels, v in samples if n == name}


def test_an_empty_fold_renders_only_declarations_and_the_backlog() -> None:
    types, samples = parse(Metrics().render(lambda: 3))
    assert types["aibroker_requests_total"] == "counter"
    assert types["aibroker_upstream_latency_seconds"] == "histogram"
    assert types["aibroker_wal_backlog_events"] == "gauge"
    assert samples == [("aibroker_wal_backlog_events", {}, 3.0)]


def test_requests_rejections_and_failures_are_counted_by_their_labels() -> None:
    m = Metrics()
    for event in (
        ev(RequestReceived, endpoint="chat/completions"), ev(RequestReceived, endpoint="chat/completions"),
        ev(RequestReceived, endpoint="embeddings", context="other"),
        ev(RequestRejected, code="rate_limit_requests", status=429),
        ev(RequestRejected, code="rate_limit_requests", status=429),
        ev(RequestRejected, code="invalid_json", status=400),
        ev(UpstreamFailed, attempt=1, provider="fakeai", model="m", error_class="HTTP500"),
        ev(RequestAdmitted, provider="fakeai", model="m"),  # not a metric: ignored
        ev(CatalogRefreshed, price_version="v"),
    ):
        m.apply(event)
    _, samples = parse(m.render(lambda: 0))
    assert values(samples, "aibroker_requests_total") == {
        (("context", "ctx"), ("endpoint", "chat/completions")): 2,
        (("context", "other"), ("endpoint", "embeddings")): 1,
    }
    assert values(samples, "aibroker_rejections_total") == {
        (("code", "invalid_json"), ("context", "ctx")): 1, (("code", "rate_limit_requests"), ("context", "ctx")): 2,
    }
    assert values(samples, "aibroker_upstream_failures_total") == {(("error", "HTTP500"), ("provider", "fakeai")): 1}


def test_usage_counters_add_up_tokens_and_cost_by_outcome() -> None:
    m = Metrics()
    events = [usage(), usage(prompt_tokens=3, completion_tokens=0, cost_micros=None),
              usage(outcome="client_disconnect", completion_tokens=2, cost_micros=1),
              usage(model="fake-large", prompt_tokens=100, completion_tokens=50, cost_micros=900)]
    for e in events:
        m.apply(e)
    _, samples = parse(m.render(lambda: 0))
    expected: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for e in events:
        row = expected[(e.context, e.provider, e.model, e.outcome)]
        for i, v in enumerate((1, e.prompt_tokens, e.completion_tokens, e.cost_micros or 0)):
            row[i] += v
    for i, name in enumerate(("aibroker_usage_requests_total", "aibroker_prompt_tokens_total",
                              "aibroker_completion_tokens_total", "aibroker_cost_micros_total")):
        got = values(samples, name)
        want = {(("context", c), ("model", mo), ("outcome", o), ("provider", p)): float(v[i])
                for (c, p, mo, o), v in expected.items()}
        assert got == want, name
    assert sum(values(samples, "aibroker_cost_micros_total").values()) == 7 + 0 + 1 + 900


def _histogram(samples: list[tuple[str, dict[str, str], float]], name: str, labels: dict[str, str]
               ) -> tuple[list[tuple[float, float]], float, float]:
    buckets = [(float(lb["le"].replace("Inf", "inf")), v) for n, lb, v in samples
               if n == f"{name}_bucket" and {k: x for k, x in lb.items() if k != "le"} == labels]
    [total] = [v for n, lb, v in samples if n == f"{name}_sum" and lb == labels]
    [count] = [v for n, lb, v in samples if n == f"{name}_count" and lb == labels]
    return buckets, total, count


@pytest.mark.parametrize("seconds", [[0.0], [0.005], [0.0051, 0.3, 0.3, 2.5, 61.0], [1e-9] * 7 + [1e6]])
def test_latency_histograms_are_cumulative_monotone_and_end_at_the_count(seconds: list[float]) -> None:
    m = Metrics()
    for s in seconds:
        m.apply(usage(latency_us=round(s * 1e6), ttft_us=None))
    m.apply(usage(provider="", latency_us=5_000_000))  # no provider (refused before routing): no latency sample
    _, samples = parse(m.render(lambda: 0))
    buckets, total, count = _histogram(samples, "aibroker_upstream_latency_seconds", {"provider": "fakeai"})
    bounds = [b for b, _ in buckets]
    assert bounds == [*LATENCY_BUCKETS_S, math.inf]
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), "cumulative counts never go down"
    assert counts[-1] == count == len(seconds)
    for bound, n in buckets:  # `le` is inclusive: each bucket holds every observation <= its bound
        assert n == sum(1 for s in seconds if round(s * 1e6) / 1e6 <= bound), bound
    assert total == pytest.approx(sum(round(s * 1e6) / 1e6 for s in seconds), abs=1e-5)
    assert not [lb for n, lb, _ in samples if n.startswith("aibroker_upstream_latency") and lb.get("provider") == ""]
    assert not [n for n, _, _ in samples if n.startswith("aibroker_time_to_first_token")]  # every ttft was None


def test_time_to_first_token_and_append_latency_are_observed() -> None:
    m = Metrics()
    m.apply(usage(ttft_us=30_000))
    m.apply(usage(ttft_us=30_000, provider="fakecloud"))
    m.append.observe((), 0.0004)
    m.append.observe((), 2.0)
    _, samples = parse(m.render(lambda: 0))
    buckets, _, count = _histogram(samples, "aibroker_time_to_first_token_seconds", {"provider": "fakeai"})
    assert count == 1 and dict(buckets)[0.025] == 0 and dict(buckets)[0.05] == 1
    buckets, total, count = _histogram(samples, "aibroker_log_append_seconds", {})
    assert [b for b, _ in buckets] == [*APPEND_BUCKETS_S, math.inf]
    assert dict(buckets)[0.0005] == 1 and dict(buckets)[1.0] == 1 and dict(buckets)[math.inf] == 2 == count
    assert total == pytest.approx(2.0004, abs=1e-6)


@pytest.mark.parametrize("raw", ['say "hi"', "two\nlines", "back\\slash", 'all three: "\\\n', "ünïcode ✓", ""])
def test_label_values_are_escaped_and_read_back(raw: str) -> None:
    m = Metrics()
    m.apply(usage(model=raw, provider=f"p-{raw}"))
    m.apply(ev(RequestRejected, code=raw, status=400))
    m.apply(ev(RequestReceived, endpoint=raw))
    m.apply(ev(UpstreamFailed, attempt=1, provider="p", model="m", error_class=raw))
    text = m.render(lambda: 0)
    _, samples = parse(text)  # every line still parses: no raw newline or quote broke one
    assert {lb["model"] for n, lb, _ in samples if n == "aibroker_usage_requests_total"} == {raw}
    assert {lb["provider"] for n, lb, _ in samples if n == "aibroker_upstream_latency_seconds_count"} == {f"p-{raw}"}
    assert {lb["code"] for n, lb, _ in samples if n == "aibroker_rejections_total"} == {raw}
    assert {lb["endpoint"] for n, lb, _ in samples if n == "aibroker_requests_total"} == {raw}
    assert {lb["error"] for n, lb, _ in samples if n == "aibroker_upstream_failures_total"} == {raw}


def test_folding_in_any_grouping_gives_the_same_text() -> None:
    events = [usage(), ev(RequestReceived, endpoint="e"), usage(outcome="upstream_cut", latency_us=9_000_000),
              ev(RequestRejected, code="c", status=429), ev(UpstreamFailed, attempt=2, provider="p", model="m")]
    one = Metrics()
    for e in events:
        one.apply(e)
    again = Metrics()
    for e in events[:2]:
        again.apply(e)
    rendered_between = again.render(lambda: 0)  # rendering is a read: it must not change the state
    for e in events[2:]:
        again.apply(e)
    assert again.render(lambda: 0) == one.render(lambda: 0)
    assert rendered_between != one.render(lambda: 0)
