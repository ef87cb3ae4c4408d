"""Batched delivery against a real Mosquitto: a batch must fit the broker's packet limit.

The test broker (:class:`gateway.testing.MosquittoBroker`) sets ``max_packet_size 1048576``
— a limit brokers commonly have (cloud brokers: 128-256 KB). Twenty views of 100 KB each
are 2 MB as one batch: a broker that disconnects a client sending a packet beyond its limit
does so again after every reconnect (paho re-sends what is in flight), so nothing of that
publisher is ever confirmed again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.deliver.batching import Batching
from gateway.deliver.drainer import OutboxDrainer
from gateway.deliver.mqtt import MqttPublisher
from gateway.ingest import parse_broker_url
from gateway.keys import init_keys
from gateway.metrics import Metrics
from gateway.store import open_store
from gateway.store.outbox import OutboxRow, add_outbox, count_pending
from gateway.testing import MosquittoBroker

pytestmark = pytest.mark.integration

SHARD = "test/batch-size"


def test_batches_of_big_views_are_cut_to_the_brokers_packet_limit(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    store = open_store(
        f"sqlite:///{tmp_path / 'gw.db'}", shard=SHARD, keys=init_keys(tmp_path / "keys")
    )
    pub = MqttPublisher(parse_broker_url(mosquitto.url), "gw-batch-size", max_inflight=10)
    drainer = OutboxDrainer(
        store,
        SHARD,
        pub,
        Metrics(CollectorRegistry()),
        batching={"a": Batching(20, 0.0, "share/a/batch")}.get,
    )
    now = round(time.time() * 1000)
    view = b'{"pad":"' + b"x" * 100_000 + b'"}'
    rows = [OutboxRow(s, "a", "share/a/v/telemetry", f"m{s}", view, now) for s in range(1, 21)]
    try:
        with store.transaction() as tx:
            add_outbox(tx, SHARD, rows)
        pub.start()
        assert pub.wait_connected(10)
        drainer.start()
        assert drainer.drain(10), "the batch never fit the broker"
        with store.snapshot() as rd:
            assert count_pending(rd, SHARD) == 0
    finally:
        drainer.stop()
        pub.stop()
        store.close()
