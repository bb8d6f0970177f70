"""What the broker is told at start (built once by deploy/settings from env and modelsconfig.yml).

Plain frozen values: functions never read the environment themselves. Keys are held here and
only here; `repr` masks them so a config never prints a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "groq": "https://api.groq.com/openai/v1",
    "sambanova": "https://api.sambanova.ai/v1",
    "alibaba": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
}


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    base_url: str
    keys: tuple[str, ...] = field(default=(), repr=False)
    key_env: str = ""

    def __repr__(self) -> str:
        return f"ProviderConfig(name={self.name!r}, base_url={self.base_url!r}, keys=<{len(self.keys)} masked>)"


@dataclass(frozen=True)
class BrokerConfig:
    data_dir: Path
    providers: tuple[ProviderConfig, ...] = ()
    routing_strategy: str = "cheapest"
    max_attempts: int = 3
    catalog_refresh_s: float = 3600.0
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    max_body_bytes: int = 4 * 1024 * 1024
    default_context: str = "0"
    allowed_contexts: frozenset[str] | None = None
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    ipv6_bucket_prefix: int | None = None
    expected_output_tokens: int = 256
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    static_models: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    upstream_client: str = "aiohttp"
    source: str = "aibroker"
    key_cooldown_s: float = 60.0
    limits: dict[str, Any] = field(default_factory=dict)
    admin_token: str = field(default="", repr=False)
    models_config_path: str | None = None
    log_level: str = "warning"
    log_format: str = "json"
    socket_mode: int = 0o660
    shutdown_grace_s: float = 30.0
    socket_dir: Path = Path("~/hero/var/sockets/hero_aibroker").expanduser()
