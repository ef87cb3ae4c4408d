"""The outbox drainer against a real Mosquitto and a SQLite store: committed rows go out in
order, from the committing thread while nothing older waits, else from the drainer thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.deliver.drainer import OutboxDrainer
from gateway.deliver.mqtt import Done, MqttPublisher
from gateway.errors import DeliveryError
from gateway.ingest import parse_broker_url
from gateway.keys import init_keys
from gateway.metrics import Metrics
from gateway.store import open_store
from gateway.store.outbox import OutboxRow, add_outbox, count_pending
from gateway.testing import MosquittoBroker
from tests.deliver.test_mqtt import persistent_subscriber

pytestmark = pytest.mark.integration

SHARD = "test/outbox"


def rows(first: int, n: int) -> list[OutboxRow]:
    return [
        OutboxRow(seq, "s1", "share/s1/v/telemetry", f"m{seq}", b"%d" % seq, 1000)
        for seq in range(first, first + n)
    ]


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


class RecordingPublisher(MqttPublisher):
    """The real publisher, noting which thread sent each payload."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.senders: list[tuple[bytes, str]] = []

    def _send(self, topic: str, payload: bytes, done: Done, retain: bool) -> None:
        self.senders.append((payload, threading.current_thread().name))
        super()._send(topic, payload, done, retain)


def test_rows_go_out_from_the_caller_then_from_the_thread_in_commit_order(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    got: list[bytes] = []
    sub = persistent_subscriber(mosquitto, got)
    store = open_store(
        f"sqlite:///{tmp_path / 'gw.db'}", shard=SHARD, keys=init_keys(tmp_path / "keys")
    )
    pub = RecordingPublisher(parse_broker_url(mosquitto.url), "gw-drain", max_inflight=5)
    drainer = OutboxDrainer(store, SHARD, pub, Metrics(CollectorRegistry()))
    drainer.start()
    batch = rows(1, 12)

    def commit(part: list[OutboxRow]) -> None:
        with store.transaction() as tx:
            add_outbox(tx, SHARD, part)
        drainer.submit(part)

    me = threading.current_thread().name
    try:
        # Not connected yet, so nothing is acknowledged: five fit under the bound and go
        # out from this thread; the rest, and a later batch behind them, wait in order.
        commit(batch[:3])
        commit(batch[3:8])
        commit(batch[8:])
        assert [(int(p), t) for p, t in pub.senders] == [(i, me) for i in range(1, 6)]
        pub.start()
        assert wait_for(lambda: len(got) >= 12)
        assert drainer.drain(10)
    finally:
        drainer.stop()
        pub.stop()
        sub.disconnect()
        sub.loop_stop()
    assert [int(p) for p in got] == list(range(1, 13))
    assert {t for p, t in pub.senders if int(p) > 5} == {"icvgw-outbox"}
    with store.snapshot() as rd:
        assert count_pending(rd, SHARD) == 0
    store.close()


class FailingPublisher:
    """Accepts the first ``ok`` publishes, then fails as paho does on a full queue."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.sent: list[bytes] = []

    def try_publish(self, topic: str, payload: bytes, done: Done) -> bool:
        if len(self.sent) >= self.ok:
            raise DeliveryError(f"publish to {topic} failed: message queue full")
        self.sent.append(payload)
        return True


def test_a_publish_error_in_the_committing_thread_leaves_the_rows_to_the_drainer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(
        f"sqlite:///{tmp_path / 'gw.db'}", shard=SHARD, keys=init_keys(tmp_path / "keys")
    )
    pub = FailingPublisher(ok=1)
    drainer = OutboxDrainer(store, SHARD, pub, Metrics(CollectorRegistry()))  # type: ignore[arg-type]
    batch = rows(1, 4)
    drainer.submit(batch)  # must not raise into the pipeline
    assert pub.sent == [b"1"]
    assert list(drainer._queue) == batch[1:]
    assert "drainer retries them" in caplog.text
    store.close()


def test_deliveries_and_refusals_are_counted_by_channel(
    tmp_path: Path,
) -> None:
    """A topic the broker's ACL denies gets a PUBACK with a failure reason (MQTT 5): each
    refusal is counted (and retried); a confirmed view is counted with its decision-to-PUBACK
    time."""
    (tmp_path / "acl").write_text("topic write share/s1/#\n")
    broker = MosquittoBroker(workdir=tmp_path / "broker", extra_config=f"acl_file {tmp_path}/acl")
    broker.start()
    store = open_store(
        f"sqlite:///{tmp_path / 'gw.db'}", shard=SHARD, keys=init_keys(tmp_path / "keys")
    )
    registry = CollectorRegistry()
    pub = MqttPublisher(parse_broker_url(broker.url), "gw-drain", max_inflight=5)
    drainer = OutboxDrainer(store, SHARD, pub, Metrics(registry), clock=lambda: 3.5)
    allowed = OutboxRow(1, "s1", "share/s1/v/telemetry", "m1", b"1", 1000)
    denied = OutboxRow(2, "s2", "share/s2/v/telemetry", "m2", b"2", 1000)
    value = registry.get_sample_value
    try:
        with store.transaction() as tx:
            add_outbox(tx, SHARD, [allowed, denied])
        pub.start()
        assert pub.wait_connected(10)
        drainer.start()  # loads both from the store
        labels = {"channel": "mqtt", "subscriber": "s2"}
        assert wait_for(lambda: (value("icvgw_delivery_failures_total", labels) or 0) >= 2)
    finally:
        drainer.stop()
        pub.stop()
        store.close()
        broker.close()
    assert value("icvgw_views_delivered_total", {"channel": "mqtt", "subscriber": "s1"}) == 1
    assert value("icvgw_views_delivered_total", {"channel": "mqtt", "subscriber": "s2"}) is None
    assert value("icvgw_delivery_failures_total", {"channel": "mqtt", "subscriber": "s1"}) is None
    assert value("icvgw_delivery_seconds_count", {"channel": "mqtt"}) == 1
    assert value("icvgw_delivery_seconds_sum", {"channel": "mqtt"}) == 2.5  # 3.5 s - 1000 ms
