"""The embedded amqtt broker of ``icvgw demo``, driven by real paho-mqtt 2.x clients.

Waits are guards (fail after 10 s instead of hanging), never speed assertions. Where a test
must show that something does *not* arrive, it publishes a marker behind it on the same
path: the broker delivers in order, so once the marker is in, the other would have been too.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.broker import EmbeddedBroker, _ReplayingReader
from gateway.errors import BrokerError
from gateway.ingest.client import connect_async, new_client, parse_broker_url

GUARD_S = 10.0


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(connect_timeout=0.5) as running:
        yield running


@dataclass
class Inbox:
    """What one paho client saw: CONNACKs, SUBACKs and messages, with events to wait on."""

    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    connacks: list[tuple[bool, ReasonCode]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int) -> list[mqtt.MQTTMessage]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.messages) >= count, GUARD_S), (
                f"got {len(self.messages)} of {count} messages"
            )
            return list(self.messages)

    def wait_for_topic(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self.changed:
            assert self.changed.wait_for(
                lambda: any(m.topic == topic for m in self.messages), GUARD_S
            ), f"nothing on {topic}"
            return list(self.messages)


def paho_client(
    broker: EmbeddedBroker,
    client_id: str,
    *,
    clean_session: bool = True,
    credentials: tuple[str, str] | None = None,
    protocol: MQTTProtocolVersion = mqtt.MQTTv311,
    manual_ack: bool = False,
) -> tuple[mqtt.Client, Inbox]:
    """A connected, looping paho client (or one whose connect was answered with a failure)."""
    inbox = Inbox()
    if protocol == mqtt.MQTTv5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=clean_session,
            manual_ack=manual_ack,
        )
    user, password = credentials or (broker.username, broker.password)
    if user:
        client.username_pw_set(user, password)

    def on_connect(
        c: mqtt.Client, u: object, flags: mqtt.ConnectFlags, rc: ReasonCode, p: object
    ) -> None:
        inbox.connacks.append((flags.session_present, rc))
        inbox.connected.set()

    def on_message(c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
        with inbox.changed:
            inbox.messages.append(message)
            inbox.changed.notify_all()

    def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: object, p: object) -> None:
        inbox.subscribed.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.reconnect_delay_set(min_delay=5, max_delay=5)  # one answer per test, not a storm
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert inbox.connected.wait(GUARD_S), "no CONNACK"
    return client, inbox


def subscribe(client: mqtt.Client, inbox: Inbox, topic: str) -> None:
    inbox.subscribed.clear()
    client.subscribe(topic, qos=1)
    assert inbox.subscribed.wait(GUARD_S), "no SUBACK"


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the broker closed ``sock``: end of stream, or a reset if it never accepted it."""
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


def publish_all(client: mqtt.Client, topic: str, payloads: list[bytes]) -> None:
    infos = [client.publish(topic, payload, qos=1) for payload in payloads]
    for info in infos:
        info.wait_for_publish(GUARD_S)
        assert info.is_published()


# --- addresses and credentials ------------------------------------------------------------


@pytest.mark.integration
def test_urls_name_the_bound_port_and_only_client_url_carries_the_password(
    broker: EmbeddedBroker,
) -> None:
    assert broker.port > 0
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    assert broker.password not in broker.url
    assert broker.password not in repr(broker)
    spec = parse_broker_url(broker.client_url, protocol="3.1.1")
    assert (spec.host, spec.port) == ("127.0.0.1", broker.port)
    assert (spec.username, spec.password) == (broker.username, broker.password)


def test_credentials_are_generated_per_broker_and_survive_url_encoding() -> None:
    first, second = EmbeddedBroker(), EmbeddedBroker()
    assert first.username != second.username
    assert first.password != second.password
    assert len(first.password) >= 24
    odd = EmbeddedBroker(port=1883, username="demo user", password="p@ss:w/rd%?#")
    parts = urlsplit(odd.client_url)
    assert "p@ss" not in parts.netloc  # encoded, so the host part stays unambiguous
    spec = parse_broker_url(odd.client_url)
    assert (spec.username, spec.password, spec.port) == ("demo user", "p@ss:w/rd%?#", 1883)


# --- MQTT 3.1.1 traffic --------------------------------------------------------------------


@pytest.mark.integration
def test_qos1_publish_reaches_a_qos1_subscriber_in_order(broker: EmbeddedBroker) -> None:
    sub, inbox = paho_client(broker, "sub-1")
    subscribe(sub, inbox, "vehicles/+/telemetry")
    pub, _ = paho_client(broker, "pub-1")
    payloads = [f'{{"n": {i}}}'.encode() for i in range(50)]
    publish_all(pub, "vehicles/v1/telemetry", payloads)
    got = inbox.wait_for(len(payloads))
    close(pub)
    close(sub)
    assert [m.payload for m in got] == payloads
    assert {m.qos for m in got} == {1}
    assert {m.topic for m in got} == {"vehicles/v1/telemetry"}


@pytest.mark.integration
def test_persistent_session_gets_what_was_published_while_it_was_away(
    broker: EmbeddedBroker,
) -> None:
    """The gateway's ingest relies on this: same client id, clean_session=False, QoS 1."""
    spec = parse_broker_url(broker.client_url, protocol="3.1.1")
    received: list[bytes] = []
    retained: list[bool] = []
    arrived = threading.Condition()
    connacks: list[bool] = []
    connected = threading.Event()
    subscribed = threading.Event()

    def gateway_ingest() -> mqtt.Client:
        client = new_client(spec, "icvgw-worker-0", persistent=True, manual_ack=True)

        def on_connect(
            c: mqtt.Client, u: object, f: mqtt.ConnectFlags, rc: object, p: object
        ) -> None:
            connacks.append(f.session_present)
            connected.set()

        def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            with arrived:
                received.append(bytes(m.payload))
                retained.append(m.retain)
                arrived.notify_all()
            c.ack(m.mid, m.qos)

        client.on_connect = on_connect
        client.on_message = on_message
        client.on_subscribe = lambda *_: subscribed.set()
        connected.clear()
        connect_async(client, spec, persistent=True)
        client.loop_start()
        assert connected.wait(GUARD_S)
        return client

    first = gateway_ingest()
    first.subscribe("vehicles/#", qos=1)
    assert subscribed.wait(GUARD_S)
    close(first)

    pub, _ = paho_client(broker, "sim-1")
    away = [f"away-{i}".encode() for i in range(20)]
    publish_all(pub, "vehicles/v7/telemetry", away)

    again = gateway_ingest()
    with arrived:
        assert arrived.wait_for(lambda: len(received) >= len(away), GUARD_S)
    close(again)
    close(pub)
    assert connacks == [False, True]  # the second connect found its session
    assert received == away
    # amqtt delivers a session's queued messages with the RETAIN flag set.
    assert all(retained)


@pytest.mark.integration
@pytest.mark.parametrize(
    "credentials",
    [("", ""), ("nobody", "guess"), (None, "wrong")],
    ids=["anonymous", "unknown-user", "wrong-password"],
)
def test_clients_without_the_run_credentials_are_refused(
    broker: EmbeddedBroker, credentials: tuple[str | None, str]
) -> None:
    user, password = credentials
    client, inbox = paho_client(
        broker, "intruder", credentials=(broker.username if user is None else user, password)
    )
    close(client)
    (session_present, rc), *_ = inbox.connacks
    assert rc.is_failure
    assert str(rc) == "Not authorized"
    assert not session_present


# --- what amqtt does not do ----------------------------------------------------------------


@pytest.mark.integration
def test_mqtt5_connect_is_refused_as_unsupported_protocol(broker: EmbeddedBroker) -> None:
    client, inbox = paho_client(broker, "v5-client", protocol=mqtt.MQTTv5)
    close(client)
    (_, rc), *_ = inbox.connacks
    assert rc.is_failure
    assert str(rc) == "Unsupported protocol version"


# An MQTT 5 CONNECT: protocol level 5, clean start, keep alive 60, no properties, client "v5".
MQTT5_CONNECT = bytes.fromhex("10 0f 0004 4d515454 05 02 003c 00 0002 7635")


@pytest.mark.integration
def test_mqtt5_connect_gets_a_3_1_1_connack_with_return_code_1_then_eof(
    broker: EmbeddedBroker,
) -> None:
    with socket.create_connection((broker.host, broker.port), timeout=GUARD_S) as sock:
        sock.sendall(MQTT5_CONNECT)
        answer = b""
        while chunk := sock.recv(16):
            answer += chunk
    assert answer == bytes.fromhex("20 02 00 01")


@pytest.mark.integration
@pytest.mark.parametrize(
    "first_bytes",
    [b"", bytes.fromhex("30 05 0003 612f62"), b"GET / HTTP/1.1\r\n\r\n"],
    ids=["silent", "publish-before-connect", "http"],
)
def test_a_connection_without_a_connect_is_closed(
    broker: EmbeddedBroker, first_bytes: bytes
) -> None:
    with socket.create_connection((broker.host, broker.port), timeout=GUARD_S) as sock:
        sock.sendall(first_bytes)
        assert sock.recv(16) == b""  # end of stream, not a timeout


@pytest.mark.integration
def test_share_subscriptions_are_granted_but_deliver_nothing(broker: EmbeddedBroker) -> None:
    sub, inbox = paho_client(broker, "worker-a")
    subscribe(sub, inbox, "$share/workers/vehicles/#")
    subscribe(sub, inbox, "marker")
    pub, _ = paho_client(broker, "pub-share")
    publish_all(pub, "vehicles/v1/telemetry", [b"shared"])
    publish_all(pub, "marker", [b"behind it"])
    got = inbox.wait_for_topic("marker")
    close(pub)
    close(sub)
    assert [m.topic for m in got] == ["marker"]


@pytest.mark.integration
def test_unacknowledged_messages_are_not_redelivered_after_a_disconnect(
    broker: EmbeddedBroker,
) -> None:
    """Pins an amqtt 0.12 limit: only messages published while away are queued.

    A message the subscriber received but did not acknowledge before it went away is
    forgotten (Mosquitto would re-send it). A crash of the gateway between receiving and
    acknowledging loses those messages on the embedded broker.
    """
    sub, inbox = paho_client(broker, "slow-gw", clean_session=False, manual_ack=True)
    subscribe(sub, inbox, "vehicles/#")
    pub, _ = paho_client(broker, "pub-unacked")
    publish_all(pub, "vehicles/v1/telemetry", [b"never acked"])
    inbox.wait_for(1)
    close(sub)  # without acknowledging

    back, again = paho_client(broker, "slow-gw", clean_session=False)
    publish_all(pub, "vehicles/marker", [b"after"])
    got = again.wait_for(1)
    close(back)
    close(pub)
    assert again.connacks[0][0] is True  # the session itself survived
    assert [m.payload for m in got] == [b"after"]


# --- lifecycle -------------------------------------------------------------------------------


@pytest.mark.integration
def test_stop_with_clients_attached_is_clean_idempotent_and_restartable() -> None:
    broker = EmbeddedBroker(connect_timeout=30)
    broker.start()
    port = broker.port
    client, inbox = paho_client(broker, "attached", clean_session=False)
    subscribe(client, inbox, "vehicles/#")
    with socket.create_connection((broker.host, port), timeout=GUARD_S) as half_open:
        half_open.sendall(MQTT5_CONNECT[:3])  # a CONNECT that never completes
        with pytest.raises(BrokerError, match="already running"):
            broker.start()

        broker.stop()
        assert not broker.running
        assert closed_by_peer(half_open)
    client.loop_stop()
    broker.stop()  # a second stop does nothing

    broker.start()  # same port, fresh state: the old session is gone
    try:
        assert broker.port == port
        again, fresh = paho_client(broker, "attached", clean_session=False)
        close(again)
        assert fresh.connacks[0][0] is False
    finally:
        broker.stop()
    gc.collect()  # an unclosed socket or transport would warn here, and warnings are errors
    assert not [t for t in threading.enumerate() if t.name.startswith("icvgw-embedded-broker")]


@pytest.mark.integration
def test_start_on_a_busy_port_raises_and_leaves_no_thread() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        broker = EmbeddedBroker(port=busy.getsockname()[1])
        with pytest.raises(BrokerError, match="did not start"):
            broker.start()
    assert not broker.running
    broker.stop()


# --- the reader that replays the CONNECT to amqtt -------------------------------------------


@given(
    data=st.binary(max_size=64),
    cut=st.integers(min_value=0, max_value=64),
    sizes=st.lists(st.integers(min_value=0, max_value=20), max_size=12),
)
def test_replaying_reader_returns_the_stream_as_if_nothing_had_been_read(
    data: bytes, cut: int, sizes: list[int]
) -> None:
    cut = min(cut, len(data))

    async def read_all() -> list[bytes]:
        stream = asyncio.StreamReader()
        stream.feed_data(data[cut:])
        stream.feed_eof()
        reader = _ReplayingReader(stream, data[:cut])
        chunks = []
        left = len(data)
        for size in sizes:
            if size > left:
                break
            chunks.append(await reader.read(size))
            left -= size
        chunks.append(await reader.read(-1))
        return chunks

    chunks = asyncio.run(read_all())
    # Reference: the same reads, as slices of the whole stream.
    expected, at = [], 0
    for size in sizes:
        if size > len(data) - at:
            break
        expected.append(data[at : at + size])
        at += size
    expected.append(data[at:])
    assert chunks == expected
