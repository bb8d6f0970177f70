"""`LeanLitestar`: a Litestar app without the pydantic plugins it adds whenever pydantic is installed.

The broker's surfaces speak msgspec only. Litestar imports its pydantic plugins (and pydantic, ~9 MiB
resident) as soon as pydantic is importable — e.g. pulled in by the `openai` client in a dev venv —
so each surface is built from this subclass, which keeps just the msgspec plugin.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.plugins import PluginProtocol
from litestar.plugins.core import MsgspecDIPlugin


class LeanLitestar(Litestar):
    @staticmethod
    def _get_default_plugins(plugins: list[PluginProtocol]) -> list[PluginProtocol]:
        plugins.append(MsgspecDIPlugin())
        return plugins
