"""The Mosquitto fixture itself: a real broker that keeps queued messages across restarts."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.testing import MosquittoBroker

pytestmark = pytest.mark.integration


def _client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def _connect_persistent(client: mqtt.Client, broker: MosquittoBroker) -> None:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect(broker.host, broker.port, clean_start=False, properties=props)


def test_offline_queue_survives_graceful_restart(mosquitto: MosquittoBroker) -> None:
    got: list[bytes] = []
    done = threading.Event()

    sub = _client("fixture-sub")
    sub.on_message = lambda c, u, m: (got.append(m.payload), done.set())
    _connect_persistent(sub, mosquitto)
    sub.loop_start()
    sub.subscribe("t/x", qos=1)
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()

    pub = _client("fixture-pub")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    pub.publish("t/x", b"queued", qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()

    mosquitto.stop()
    mosquitto.start()

    sub2 = _client("fixture-sub")
    sub2.on_message = lambda c, u, m: (got.append(m.payload), done.set())
    _connect_persistent(sub2, mosquitto)
    sub2.loop_start()
    try:
        assert done.wait(10), "queued message lost across a graceful broker restart"
    finally:
        sub2.disconnect()
        sub2.loop_stop()
    assert got == [b"queued"]
