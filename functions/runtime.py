"""The broker's runtime: one event-log writer, projections and catalog, shared by every surface.

`open_runtime(config)` is the single place that opens the data directory, restores projections from
the log, loads the catalog and starts its refresh; closing stops taking requests, waits for pending
appends, closes upstream clients and seals the log. Each surface's app either owns a runtime (run on
its own) or is handed the process's one (`aibroker serve`: one process, one ledger).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from domain.limits import settings_from_config
from eventlog.base import EventLog
from eventlog.filelog import FileEventLog
from eventlog.ids import now_us
from eventlog.projections import operator_facts, rebuild_policy, rebuild_switches, rebuild_ttft, rebuild_usage
from eventlog.reader import take_snapshot
from functions.config import BrokerConfig
from functions.state import BrokerState


def _restore(state: BrokerState, config: BrokerConfig, data_dir: Path | None) -> None:
    """Limits policy (config, then `limits.changed` events) and usage projections, from the log."""
    book = state.admission.book
    for scope, settings in settings_from_config(config.limits):
        book.set(scope, settings, none_means_unlimited=True)
    if data_dir is not None:
        snap = take_snapshot(data_dir)  # one snapshot for every projection
        facts = operator_facts(data_dir, snap)
        rebuild_policy(data_dir, book, snap, facts)
        rebuild_usage(data_dir, now_us(), state.admission.usage, snap)
        state.ttft_us.update(rebuild_ttft(data_dir, now_us(), snap=snap))
        switches = rebuild_switches(data_dir, snap, facts)
        for name, enabled in switches.items():
            if name in state.providers:
                state.providers[name].enabled = enabled


@contextlib.asynccontextmanager
async def open_runtime(config: BrokerConfig, event_log: EventLog | None = None) -> AsyncIterator[BrokerState]:
    """`event_log` lets tests pass an in-memory log; else the data directory's file log."""
    owned = event_log is None
    the_log = event_log or await FileEventLog.open(config.data_dir)
    state = BrokerState(config, the_log)
    refresher = None
    try:
        await asyncio.to_thread(_restore, state, config, config.data_dir if owned else None)
        await state.catalog.refresh(state.log)
        refresher = asyncio.get_running_loop().create_task(state.catalog.run_periodic(state.log, config.catalog_refresh_s))
        yield state
    finally:
        state.accepting = False
        if refresher is not None:
            refresher.cancel()
        await state.aclose()
        if owned:
            await the_log.close()


class DeferredApp:
    """An ASGI app built on first use from the process environment, for `uvicorn functions.chat:app`.

    Reading settings is deploy/'s job, so this names it by module (`deploy.settings.load_config`) —
    the one place functions/ reaches up, and only when an ASGI server runs a function on its own.
    """

    def __init__(self, build: Callable[[BrokerConfig], Any]) -> None:
        self._build = build
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            settings = importlib.import_module("deploy.settings")
            self._app = self._build(settings.load_config())
        await self._app(scope, receive, send)


def runtime_lifespan(config: BrokerConfig, runtime: BrokerState | None, event_log: EventLog | None = None):  # type: ignore[no-untyped-def]
    """A Litestar lifespan: use the given runtime, or open (and later close) one of its own."""

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.broker = runtime  # type: ignore[attr-defined]
            yield
            return
        async with open_runtime(config, event_log) as state:
            app.state.broker = state  # type: ignore[attr-defined]
            yield

    return lifespan
