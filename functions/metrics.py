"""Prometheus metrics as one more projection: a fold over the events this process appends.

Counters by (context, provider, model), latency histograms by provider, event-log append latency
and WAL backlog; `render()` writes the text exposition format for `GET /metrics`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from domain.events import (
    EVENT_TYPES,
    Event,
    RequestReceived,
    RequestRejected,
    UpstreamFailed,
    UsageRecorded,
)

_UNSEEN: Any = object()
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
APPEND_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        self.counts[labels][bisect_left(self.buckets, seconds)] += 1
        self.sums[labels] += seconds

    def lines(self, name: str, label_names: tuple[str, ...]) -> Iterable[str]:
        for labels, counts in sorted(self.counts.items()):
            base = _labels(label_names, labels)
            running = 0
            for bound, n in zip((*self.buckets, float("inf")), counts):
                running += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                yield f'{name}_bucket{{{base}{"," if base else ""}le="{le}"}} {running}'
            yield f"{name}_sum{{{base}}} {self.sums[labels]:.6f}"
            yield f"{name}_count{{{base}}} {running}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values))


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (context, endpoint)
        self.rejections: dict[tuple[str, str], int] = defaultdict(int)  # (context, code)
        self.usage: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self.upstream_failures: dict[tuple[str, str], int] = defaultdict(int)  # (provider, error class)
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.ttft = Histogram(LATENCY_BUCKETS_S)
        self.append = Histogram(APPEND_BUCKETS_S)
        # the fold for each event kind (None: no metric counts it), filled in for every known kind
        self._folds: dict[type[Event], Callable[[Any], None] | None] = {t: self._fold_for(t) for t in EVENT_TYPES}

    def apply(self, event: Event) -> None:
        """Fold one event; the kinds no metric counts (most of a request's) cost one dict lookup."""
        self.apply_all((event,))

    def apply_all(self, events: Iterable[Event]) -> None:
        """Fold a batch (an append's events) in one call."""
        folds = self._folds
        for event in events:
            fold = folds.get(type(event), _UNSEEN)
            if fold is None:
                continue
            if fold is _UNSEEN:  # a kind made elsewhere (a subclass): looked up once
                fold = folds[type(event)] = self._fold_for(type(event))
                if fold is None:
                    continue
            fold(event)

    def _fold_for(self, kind: type[Event]) -> Callable[[Any], None] | None:
        for base, fold in ((UsageRecorded, self._usage), (RequestReceived, self._received),
                           (RequestRejected, self._rejected), (UpstreamFailed, self._failed)):
            if issubclass(kind, base):
                return fold
        return None

    def _usage(self, event: UsageRecorded) -> None:
        row = self.usage[(event.context, event.provider, event.model, event.outcome)]
        row[0] += 1
        row[1] += event.prompt_tokens
        row[2] += event.completion_tokens
        row[3] += event.cost_micros or 0
        if event.provider:
            self.latency.observe((event.provider,), event.latency_us / 1e6)
            if event.ttft_us is not None:
                self.ttft.observe((event.provider,), event.ttft_us / 1e6)

    def _received(self, event: RequestReceived) -> None:
        self.requests[(event.context, event.endpoint)] += 1

    def _rejected(self, event: RequestRejected) -> None:
        self.rejections[(event.context, event.code)] += 1

    def _failed(self, event: UpstreamFailed) -> None:
        self.upstream_failures[(event.provider, event.error_class)] += 1

    def render(self, backlog: Callable[[], int]) -> str:
        out: list[str] = []

        def counter(name: str, help_: str, names: tuple[str, ...], rows: dict[tuple[str, ...], int]) -> None:
            out.extend((f"# HELP {name} {help_}", f"# TYPE {name} counter"))
            out.extend(f"{name}{{{_labels(names, k)}}} {v}" for k, v in sorted(rows.items()))

        counter("aibroker_requests_total", "Requests received.", ("context", "endpoint"), self.requests)  # type: ignore[arg-type]
        counter("aibroker_rejections_total", "Requests refused, by code.", ("context", "code"), self.rejections)  # type: ignore[arg-type]
        counter("aibroker_upstream_failures_total", "Failed upstream attempts.", ("provider", "error"),
                self.upstream_failures)  # type: ignore[arg-type]
        usage_names = ("context", "provider", "model", "outcome")
        for i, (name, help_) in enumerate((("aibroker_usage_requests_total", "Settled requests."),
                                           ("aibroker_prompt_tokens_total", "Prompt tokens."),
                                           ("aibroker_completion_tokens_total", "Completion tokens."),
                                           ("aibroker_cost_micros_total", "Cost in micro-USD."))):
            counter(name, help_, usage_names, {k: v[i] for k, v in self.usage.items()})  # type: ignore[misc]
        for name, help_, hist, names in (
            ("aibroker_upstream_latency_seconds", "Request latency through the broker.", self.latency, ("provider",)),
            ("aibroker_time_to_first_token_seconds", "Time to the first streamed byte.", self.ttft, ("provider",)),
            ("aibroker_log_append_seconds", "Durable event-log append latency.", self.append, ()),
        ):
            out.extend((f"# HELP {name} {help_}", f"# TYPE {name} histogram"))
            out.extend(hist.lines(name, names))
        out.extend(("# HELP aibroker_wal_backlog_events Events queued, not yet durable.",
                    "# TYPE aibroker_wal_backlog_events gauge", f"aibroker_wal_backlog_events {backlog()}"))
        return "\n".join(out) + "\n"
