"""Keeps the live catalog: discover each provider's models, merge prices, log `catalog.refreshed`.

A failed discovery keeps that provider's last good listing; the whole catalog is replaced in one
assignment, so a request sees either the old or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from domain.catalog import Catalog, ModelInfo, build_catalog, price_version_of, unmatched_overrides
from domain.events import CatalogRefreshed
from domain.price_registry import REGISTRY, REGISTRY_DATE
from eventlog.base import EventLog
from eventlog.ids import now_us, uuid7
from functions.listing import parse_listing
from functions.providers import Provider

log = logging.getLogger("aibroker.catalog")


class CatalogService:
    def __init__(self, providers: dict[str, Provider], overrides: Mapping[str, Mapping[str, Any]],
                 static_models: Mapping[str, list[dict[str, Any]]], source: str) -> None:
        self.providers = providers
        self.overrides = dict(overrides)
        self.static = static_models
        self.source = source
        self.listings: dict[str, list[ModelInfo]] = {name: [] for name in providers}
        self.catalog = Catalog(price_version_of(REGISTRY_DATE, self.overrides), ())
        self.loaded = False
        self.on_change: list[Callable[[Catalog], None]] = []

    def check_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> None:
        """Raise ValueError (naming the key) if these overrides cannot build a catalog."""
        build_catalog(self.listings, REGISTRY, overrides, price_version_of(REGISTRY_DATE, overrides))

    async def _discover(self, provider: Provider) -> list[ModelInfo]:
        if provider.name in self.static:
            return [ModelInfo(id=m["id"]) for m in self.static[provider.name]]
        picked = provider.keys.acquire(time.monotonic())
        if picked is None:
            raise RuntimeError("no usable key")
        index, key = picked
        try:
            status, body = await provider.client.get(provider.url("models"), {"Authorization": f"Bearer {key}"})
        finally:
            provider.keys.release(index)
        if status != 200:
            raise RuntimeError(f"GET /models answered {status}")
        return parse_listing(body)

    async def refresh(self, log_: EventLog) -> Catalog:
        names = list(self.providers)
        results = await asyncio.gather(*(self._discover(self.providers[n]) for n in names), return_exceptions=True)
        failed: dict[str, str] = {}
        for name, result in zip(names, results):
            if isinstance(result, BaseException):
                failed[name] = f"{type(result).__name__}: {result}"
                log.warning("model discovery failed for %s: %s (keeping the last listing)", name, failed[name])
            else:
                self.listings[name] = result
        version = price_version_of(REGISTRY_DATE, self.overrides)
        catalog = build_catalog(self.listings, REGISTRY, self.overrides, version)
        unmatched = unmatched_overrides(catalog, self.overrides)
        if unmatched:
            log.warning("modelsconfig.yml overrides that match no offer (typo, or provider not enabled): %s",
                        ", ".join(unmatched))
        self.catalog = catalog
        self.loaded = True
        for hook in self.on_change:
            hook(catalog)
        await log_.append([CatalogRefreshed(
            event_id=uuid7(), ts_us=now_us(), source=self.source, price_version=version,
            offers=len(catalog), providers=sorted(self.listings), failed_providers=sorted(failed),
            error="; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))[:500],
        )])
        return catalog

    async def run_periodic(self, log_: EventLog, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.refresh(log_)
            except Exception:
                log.exception("catalog refresh failed; keeping the last good catalog")
