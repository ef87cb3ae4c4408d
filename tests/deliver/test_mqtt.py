"""MQTT publishing against a real Mosquitto: every publish confirmed, in-flight bounded."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.deliver.mqtt import MqttPublisher
from gateway.ingest import parse_broker_url
from gateway.testing import MosquittoBroker

pytestmark = pytest.mark.integration


def subscriber(broker: MosquittoBroker, topic: str) -> tuple[mqtt.Client, list[bytes]]:
    got: list[bytes] = []
    ready = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.on_subscribe = lambda *a: ready.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert ready.wait(5)
    return client, got


def test_every_publish_is_confirmed_and_inflight_stays_bounded(
    mosquitto: MosquittoBroker,
) -> None:
    sub, got = subscriber(mosquitto, "share/#")
    pub = MqttPublisher(parse_broker_url(mosquitto.url), "gw-out", max_inflight=50)
    pub.start()
    assert pub.wait_connected(5)
    results: list[bool] = []
    peak = 0
    n = 3000
    try:
        for i in range(n):
            pub.publish(f"share/s{i % 4}/v/telemetry", b"%d" % i, results.append)
            peak = max(peak, pub.inflight())
        assert pub.flush(20)
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pub.stop()
        sub.disconnect()
        sub.loop_stop()
    assert results == [True] * n
    assert pub.confirmed == n
    assert peak <= 50
    assert sorted(int(p) for p in got) == list(range(n))


def persistent_subscriber(broker: MosquittoBroker, got: list[bytes]) -> mqtt.Client:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    ready = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform", protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.on_subscribe = lambda *a: ready.set()
    client.on_connect = lambda c, u, f, r, p: c.subscribe("share/#", qos=1)
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    assert ready.wait(5)
    return client


def test_publishes_while_broker_is_down_are_sent_after_it_returns(
    mosquitto: MosquittoBroker,
) -> None:
    got: list[bytes] = []
    pub = MqttPublisher(parse_broker_url(mosquitto.url), "gw-out-2", max_inflight=100)
    pub.start()
    assert pub.wait_connected(5)
    sub = persistent_subscriber(mosquitto, got)
    sub.disconnect()
    sub.loop_stop()
    mosquitto.stop()
    results: list[bool] = []
    for i in range(20):
        pub.publish("share/s/v/telemetry", b"%d" % i, results.append)
    mosquitto.start()
    try:
        assert pub.flush(30), f"{pub.inflight()} still unacknowledged"
    finally:
        pub.stop()
    assert results == [True] * 20
    sub = persistent_subscriber(mosquitto, got)
    deadline = time.monotonic() + 10
    while len(got) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.disconnect()
    sub.loop_stop()
    assert sorted(int(p) for p in got) == list(range(20))


def test_the_broker_receive_maximum_caps_inflight() -> None:
    # Mosquitto announces its max_inflight_messages as Receive Maximum in CONNACK.
    with MosquittoBroker(extra_config="max_inflight_messages 20") as broker:
        sub, got = subscriber(broker, "share/#")
        pub = MqttPublisher(parse_broker_url(broker.url), "gw-out-3", max_inflight=500)
        pub.start()
        assert pub.wait_connected(5)
        results: list[bool] = []
        peak = 0
        try:
            assert pub.limit == 20
            for i in range(500):
                pub.publish("share/s/v/telemetry", b"%d" % i, results.append)
                peak = max(peak, pub.inflight())
            assert pub.flush(20)
            deadline = time.monotonic() + 10
            while len(got) < 500 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            pub.stop()
            sub.disconnect()
            sub.loop_stop()
        assert results == [True] * 500
        assert peak <= 20
        assert sorted(int(p) for p in got) == list(range(500))


def test_try_publish_refuses_at_the_bound_without_blocking_and_sends_otherwise(
    mosquitto: MosquittoBroker,
) -> None:
    got: list[bytes] = []
    sub = persistent_subscriber(mosquitto, got)
    pub = MqttPublisher(parse_broker_url(mosquitto.url), "gw-out-try", max_inflight=3)
    results: list[bool] = []
    # Not connected yet: nothing can be acknowledged, so the bound is reached after three.
    accepted = [pub.try_publish("share/s/v/telemetry", b"%d" % i, results.append) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert pub.inflight() == 3
    pub.start()
    try:
        assert pub.flush(10)
        assert pub.try_publish("share/s/v/telemetry", b"3", results.append)
        assert pub.flush(10)
    finally:
        pub.stop()
    deadline = time.monotonic() + 10
    while len(got) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.disconnect()
    sub.loop_stop()
    assert results == [True] * 4
    assert sorted(int(p) for p in got) == [0, 1, 2, 3]
