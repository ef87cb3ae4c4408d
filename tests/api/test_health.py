"""``/healthz`` and ``/readyz`` beside a real pipeline: ready while it runs; 503 naming the
broker when the broker stops, the store while the pipeline's store fails, the pipeline when
its endpoint does not answer; ready again once each comes back."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gateway.api import create_app
from gateway.api.context import open_context
from gateway.api.health import READY_TTL_S
from gateway.config import GatewayConfig
from gateway.metrics import serve
from gateway.service import Gateway
from gateway.testing import MosquittoBroker
from tests.api.conftest import Api, api_config
from tests.api.live import live_config, pipeline, until


@contextmanager
def api_client(config: GatewayConfig) -> Iterator[TestClient]:
    """The API in-process on ``config`` (the pipeline's store, keys and metrics address)."""
    ctx = open_context(config)
    try:
        with TestClient(create_app(ctx, sinks=False)) as client:
            yield client
    finally:
        ctx.close()


def failing(client: TestClient) -> dict[str, Any] | None:
    """The failing parts of a 503, None while ready."""
    r = client.get("/readyz")
    if r.status_code == 200:
        assert r.json() == {"ready": True, "failing": {}}
        return None
    assert r.status_code == 503, r.text
    body: dict[str, Any] = r.json()
    assert body["ready"] is False
    return dict(body["failing"])


def ready(client: TestClient) -> bool:
    return failing(client) is None


def refuse_writes(gw: Gateway, refuse: bool) -> None:
    """Make every write of the pipeline's store connection fail (the API's own still works:
    the failure is the pipeline's, as with a full disk only it fills)."""
    gw.store._conn.execute(f"pragma query_only = {int(refuse)}")  # type: ignore[attr-defined]


def test_healthz_answers_without_a_key(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}


def test_without_a_pipeline_readiness_names_the_pipeline(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    parts = failing(api.client)
    assert parts is not None and list(parts) == ["pipeline"]
    # Anyone may ask: the address and the error go to the log, not to the caller.
    assert parts["pipeline"] == "the pipeline's metrics endpoint does not answer"
    assert "does not answer at http://127.0.0.1:9/metrics" in caplog.text


@pytest.mark.integration
def test_ready_beside_a_running_pipeline_and_the_broker_named_when_it_stops(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    cfg = live_config(tmp_path, mosquitto)
    with pipeline(cfg), api_client(cfg) as client:
        until(lambda: ready(client))
        mosquitto.stop()
        parts = until(lambda: failing(client))
        assert list(parts) == ["broker"], parts
        assert parts["broker"] == "the pipeline is not connected to its broker"
        mosquitto.start()
        until(lambda: ready(client), timeout=60)  # paho reconnects with back-off


@pytest.mark.integration
def test_the_store_named_while_the_pipelines_store_fails(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    cfg = live_config(tmp_path, mosquitto)
    with pipeline(cfg) as gw, api_client(cfg) as client:
        until(lambda: ready(client))
        refuse_writes(gw, True)
        try:
            parts = until(lambda: failing(client))
            assert list(parts) == ["store"], parts
            assert "store commits fail" in parts["store"]
        finally:
            refuse_writes(gw, False)
        until(lambda: ready(client))


@pytest.mark.integration
def test_the_pipeline_named_once_it_stops(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    cfg = live_config(tmp_path, mosquitto)
    with api_client(cfg) as client:
        with pipeline(cfg):
            until(lambda: ready(client))
        parts = until(lambda: failing(client))
        assert list(parts) == ["pipeline"], parts
        assert parts["pipeline"] == "the pipeline's metrics endpoint does not answer"


class _Scrapes(Collector):
    """Counts the scrapes of the endpoint it is registered on."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterator[Metric]:
        self.count += 1
        return iter(())


def test_callers_within_a_second_share_one_answer(tmp_path: Path) -> None:
    """The probe is public: within :data:`READY_TTL_S`, callers share one computation (one
    scrape of the pipeline, one store write), however many they are."""
    registry = CollectorRegistry()
    scrapes = _Scrapes()
    registry.register(scrapes)
    server = serve(registry, "127.0.0.1", 0)
    try:
        with api_client(api_config(tmp_path, metrics__port=server.port)) as client:
            t0 = time.monotonic()
            answers = [client.get("/readyz").json() for _ in range(20)]
            elapsed = time.monotonic() - t0
    finally:
        server.stop()
    assert answers[0]["ready"] is False  # an empty registry: no broker, no store gauge
    assert all(a == answers[0] for a in answers)
    assert 1 <= scrapes.count <= 1 + math.ceil(elapsed / READY_TTL_S)
