"""The broker's per-process state, built in the app's lifespan (never at import time).

Handlers stay stateless: everything they share — the event log, the catalog, providers and their
clients, background appends — hangs off one `BrokerState` on the application.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from domain.catalog import Offer
from domain.events import Event, UsageRecorded
from domain.identity import Network, client_ip, parse_networks
from domain.limits import PolicyBook
from domain.routing import AutoTable, NoRoute, RouteDecision, RouteRequest, auto_table, route, route_auto
from domain.usage_projection import UsageProjection
from functions.admission import Admission
from eventlog.base import EventLog
from functions.catalog_service import CatalogService
from functions.config import BrokerConfig
from functions.keypool import Backoff
from functions.metrics import Metrics
from functions.providers import Provider, unhealthy
from functions.upstream import Timeouts, UpstreamClient, make_client

log = logging.getLogger("aibroker")
CLIENT_IPS_REMEMBERED = 16_384
ROUTE_HEADERS_REMEMBERED = 4096  # offers (a catalog holds a few hundred)
AUTO_TABLES_KEPT = 256  # (kind, needs, policy, health) combinations per catalog version (a 300-offer table: tens of kB)
RECORDED_CANDIDATES = 32  # a 300-model catalog must not put 300 candidates in every request's event


class TappedLog:
    """The event log, with every appended event also folded into the metrics projection."""

    def __init__(self, inner: EventLog, metrics: Metrics) -> None:
        self.inner, self.metrics = inner, metrics

    async def append(self, events: Sequence[Event]) -> list[Event]:
        started = time.perf_counter()
        out = await self.inner.append(events)
        self.metrics.append.observe((), time.perf_counter() - started)
        self.metrics.apply_all(events)
        return out

    def submit(self, events: Sequence[Event]) -> tuple[list[Event], asyncio.Future[None]]:
        out, fut = self.inner.submit(events)
        self.metrics.apply_all(events)
        return out, fut

    @property
    def backlog(self) -> int:
        return int(getattr(self.inner, "backlog", 0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class BrokerState:
    def __init__(self, config: BrokerConfig, event_log: EventLog,
                 clients: dict[str, UpstreamClient] | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.log = TappedLog(event_log, self.metrics)
        timeouts = Timeouts(config.connect_timeout_s, config.first_byte_timeout_s, config.idle_timeout_s)
        self.clients = clients or {p.name: make_client(config.upstream_client, timeouts) for p in config.providers}
        self.providers = {p.name: Provider.of(p, self.clients[p.name], config.key_cooldown_s) for p in config.providers}
        self.catalog = CatalogService(self.providers, config.model_overrides, config.static_models, config.source)
        self.trusted: tuple[Network, ...] = parse_networks(config.trusted_proxies)
        self._client_ips: dict[tuple[str | None, str | None, str | None], str] = {}
        self.admission = Admission(PolicyBook(), UsageProjection())
        self.accepting = True
        self.billing_lock = asyncio.Lock()
        self.backoff = Backoff()
        self._down: frozenset[str] = frozenset()
        self._down_at = -1.0
        self.ttft_us: dict[tuple[str, str], int] = {}  # moving average per (provider, model)
        self._route_headers: dict[tuple[str, str], tuple[tuple[bytes, bytes], ...]] = {}
        self._tables: dict[tuple[object, ...], AutoTable] = {}  # auto routing, per catalog version
        self._tables_of: object = None  # the catalog `_tables` were built from

    def route_headers(self, offer: Offer) -> tuple[tuple[bytes, bytes], ...]:
        """`x-aibroker-provider` and `-model` of an offer as ASGI pairs, made once per offer."""
        named = (offer.provider, offer.model)  # (not `offer.key`: "a/b" + "c" and "a" + "b/c" share one)
        pairs = self._route_headers.get(named)
        if pairs is None:
            if len(self._route_headers) >= ROUTE_HEADERS_REMEMBERED:
                self._route_headers.clear()
            pairs = self._route_headers[named] = (
                (b"x-aibroker-provider", offer.provider.encode("latin-1", "replace")),
                (b"x-aibroker-model", offer.model.encode("latin-1", "replace")))
        return pairs

    def client_ip(self, peer: str | None, forwarded_for: str | None, real_ip: str | None) -> str:
        """The bucket ip for (peer, X-Forwarded-For, X-Real-IP), remembered: a busy broker sees the
        same few peers and proxy chains over and over, and parsing them is slow Python."""
        key = (peer, forwarded_for, real_ip)
        ip = self._client_ips.get(key)
        if ip is None:
            if len(self._client_ips) >= CLIENT_IPS_REMEMBERED:
                self._client_ips.clear()
            ip = self._client_ips[key] = client_ip(peer, forwarded_for, real_ip, trusted=self.trusted,
                                                   via_unix_socket=not peer, v6_prefix=self.config.ipv6_bucket_prefix)
        return ip

    def route(self, request: RouteRequest, key: tuple[str, str],
              complete: bool = False) -> tuple[RouteDecision | NoRoute, str]:
        """The decision for `request` from bucket `key`. `auto` by cost routes from a table kept per
        catalog version and rules, keeping the first 32 candidates; `complete` lists every one."""
        policy = self.admission.policy(key)
        strategy = policy.strategy or self.config.routing_strategy
        now_s = time.monotonic()
        if now_s - self._down_at > 0.05:  # health changes on a scale of seconds: recompute ≤ 20×/s
            self._down, self._down_at = unhealthy(self.providers, now_s) | self.backoff.resting(now_s), now_s
        down = self._down
        catalog = self.catalog.catalog
        if strategy == "cheapest" and request.auto and policy.pinned_model is None and not complete:
            if self._tables_of is not catalog or len(self._tables) >= AUTO_TABLES_KEPT:
                self._tables, self._tables_of = {}, catalog
            rules = (request.kind, request.needs, policy, down)
            table = self._tables.get(rules)
            if table is None:
                table = self._tables[rules] = auto_table(catalog, request.kind, policy, down, request.needs)
            decided = route_auto(table, request, keep=max(RECORDED_CANDIDATES, self.config.max_attempts),
                                 expected_output_tokens=self.config.expected_output_tokens)
            if decided is not None:
                return decided, strategy
        decision = route(catalog, request, unhealthy=down, policy=policy, strategy=strategy,
                         expected_output_tokens=self.config.expected_output_tokens, observed_ttft_us=self.ttft_us)
        return decision, strategy

    def health_changed(self) -> None:
        """A key or offer just failed: the next routing decision must see it."""
        self._down_at = -1.0

    def observe(self, usage: UsageRecorded) -> None:
        """Settle the reservation and keep time-to-first-token current (a 1/8 moving average)."""
        self.admission.settle(usage)
        if usage.ttft_us is not None and usage.outcome == "ok" and usage.provider:
            key = (usage.provider, usage.model)
            old = self.ttft_us.get(key)
            self.ttft_us[key] = usage.ttft_us if old is None else old + (usage.ttft_us - old) // 8

    def submit(self, events: Sequence[Event]) -> None:
        """Queue events that ride along a request; durability is awaited by `settle`'s append."""
        _, fut = self.log.submit(events)
        fut.add_done_callback(_log_failure)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("an event append failed: %s", fut.exception())
