"""Live providers: each one's base URL, key pool and the one shared upstream client it calls with."""

from __future__ import annotations

from dataclasses import dataclass

from functions.config import ProviderConfig
from functions.keypool import KeyPool
from functions.upstream import UpstreamClient


@dataclass
class Provider:
    name: str
    base_url: str
    keys: KeyPool
    client: UpstreamClient
    enabled: bool = True  # an operator switch (providers.set_enabled)

    @classmethod
    def of(cls, config: ProviderConfig, client: UpstreamClient, cooldown_s: float) -> Provider:
        return cls(config.name, config.base_url.rstrip("/"), KeyPool(config.name, config.keys, cooldown_s), client)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def usable(self, now_s: float) -> bool:
        return self.enabled and self.keys.healthy(now_s)


def unhealthy(providers: dict[str, Provider], now_s: float) -> frozenset[str]:
    return frozenset(name for name, p in providers.items() if not p.usable(now_s))
