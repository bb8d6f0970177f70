"""e2e fixtures: one healthy broker per session, extra brokers per module, clients that get closed.

Fault tests and bad-input tests start their own brokers through `broker_factory` (a 5xx backs an
offer off for 5 s and a 429 cools a key for 1 s: either would skew the routing tests' choices).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import openai
import pytest

from tests.e2e.broker import CLIENT_TIMEOUT_S, Broker, make_client, start_broker

BrokerFactory = Callable[..., Broker]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The healthy shared broker: no fault model is ever called on it, and it never logs a traceback."""
    with start_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b
        log = b.stderr()
        assert "Traceback" not in log and "unhandled error" not in log, log


@pytest.fixture(scope="module")
def broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFactory]:
    """Start brokers for one module (`broker_factory(MAX_BODY_BYTES="2048")`); all stop at its end."""
    with ExitStack() as stack:

        def make(**env: str) -> Broker:
            return stack.enter_context(start_broker(tmp_path_factory.mktemp("broker"), env))

        yield make


@pytest.fixture
def client(broker: Broker) -> Iterator[openai.OpenAI]:
    with make_client(broker) as c:
        yield c


@pytest.fixture
def raw(broker: Broker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=broker.base_url, timeout=CLIENT_TIMEOUT_S) as c:
        yield c
