"""A real pipeline beside the API under test: a :class:`~gateway.service.Gateway` started
against a Mosquitto fixture, serving its metrics endpoint on a free port, in a thread of the
test process (so the test can make its store fail); and traffic for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig
from gateway.service import Gateway
from gateway.testing import MosquittoBroker, free_port
from simulators.fleet import Fleet, FleetConfig, Message
from simulators.publish import Publisher, publish_messages
from tests.api.conftest import api_config

T = TypeVar("T")


def live_config(tmp_path: Path, broker: MosquittoBroker) -> GatewayConfig:
    """The API's test config (fresh store and keys) reading ``broker``, with the pipeline's
    metrics endpoint on a free port."""
    return api_config(tmp_path, broker__url=broker.url, metrics__port=free_port())


@contextmanager
def pipeline(config: GatewayConfig) -> Iterator[Gateway]:
    """A started gateway running in a thread; stopped (gracefully) on exit."""
    gw = Gateway(config, registry=CollectorRegistry())
    gw.start()
    runner = threading.Thread(target=gw.run, name="test-pipeline", daemon=True)
    runner.start()
    try:
        yield gw
    finally:
        gw.stop()
        runner.join(60)
        assert not runner.is_alive()


def traffic(vehicles: int = 4, seconds: float = 20) -> list[Message]:
    """A fleet's messages at 1 Hz, from ten minutes ago."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    return list(Fleet(FleetConfig(vehicles=vehicles, start=start), seed=7).messages(seconds, 1))


def send(broker: MosquittoBroker, gw: Gateway, messages: list[Message]) -> None:
    """Publish ``messages`` and wait until the pipeline has committed them all."""
    before = gw.totals.messages
    with Publisher(broker.url, max_inflight=200, timeout=30) as pub:
        stats = publish_messages(messages, pub, speedup=0)
    assert stats.messages == len(messages)
    until(lambda: gw.totals.messages >= before + len(messages) or None)


def until(what: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll ``what`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got is not None and got is not False:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
