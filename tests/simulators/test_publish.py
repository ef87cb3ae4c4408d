"""Publishing to a real Mosquitto: every message confirmed and received, in-flight bounded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gateway.errors import PublishError
from gateway.ingest.client import Protocol as MqttVersion
from gateway.testing import MosquittoBroker, free_port
from simulators.fleet import Fleet, FleetConfig, Kind, Message
from simulators.publish import Publisher, PublishStats, publish_messages
from simulators.scenario import load_scenario
from tests.simulators.subscriber import Subscriber

MIXED = Path(__file__).parents[2] / "simulators" / "scenarios" / "mixed.yaml"


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_subscriber_receives_every_message(
    mosquitto: MosquittoBroker, protocol: MqttVersion
) -> None:
    config = FleetConfig(vehicles=30, scenario=load_scenario(MIXED))
    messages = list(Fleet(config, seed=7).messages(40, 2))
    sub = Subscriber(mosquitto)
    peak = 0
    try:
        with Publisher(mosquitto.url, protocol=protocol, max_inflight=50) as pub:

            def watch(msg: Message) -> None:
                nonlocal peak
                peak = max(peak, pub.inflight)

            stats = publish_messages(messages, pub, speedup=0, progress=watch)
            assert pub.inflight == 0
        got = sub.wait_for(len(messages))
    finally:
        sub.close()
    assert Counter(got) == Counter((m.topic, m.payload) for m in messages)
    assert stats.confirmed == Counter(m.kind for m in messages)
    assert stats.messages == len(messages)
    assert stats.bytes == sum(len(m.payload) for m in messages)
    assert stats.samples == sum(m.samples for m in messages)
    assert stats.refused == 0
    assert stats.confirmed[Kind.MALFORMED] > 0 and stats.confirmed[Kind.DUPLICATE] > 0
    assert 0 < peak <= 50


@pytest.mark.integration
def test_messages_published_while_the_broker_is_down_are_confirmed_after_it_returns(
    mosquitto: MosquittoBroker,
) -> None:
    messages = list(Fleet(FleetConfig(vehicles=5), seed=1).messages(4, 1))
    with Publisher(mosquitto.url, timeout=20) as pub:
        publish_messages(messages[:5], pub, speedup=0)
        mosquitto.stop()
        for msg in messages[5:]:
            pub.publish(msg)
        assert pub.inflight > 0
        mosquitto.start()
        pub.flush()
        assert pub.stats.messages == len(messages)


@pytest.mark.integration
def test_flush_raises_when_the_broker_stops_confirming(mosquitto: MosquittoBroker) -> None:
    messages = list(Fleet(FleetConfig(vehicles=3), seed=1).messages(2, 1))
    with Publisher(mosquitto.url, timeout=1) as pub:
        mosquitto.kill()
        for msg in messages:
            pub.publish(msg)
        with pytest.raises(PublishError, match=r"6 messages not confirmed"):
            pub.flush()
        assert pub.stats.messages == 0


@pytest.mark.integration
def test_publish_blocks_at_the_bound_and_gives_up_without_pubacks(
    mosquitto: MosquittoBroker,
) -> None:
    messages = list(Fleet(FleetConfig(vehicles=3), seed=1).messages(2, 1))
    with Publisher(mosquitto.url, max_inflight=2, timeout=1) as pub:
        mosquitto.kill()
        pub.publish(messages[0])
        pub.publish(messages[1])
        with pytest.raises(PublishError, match=r"no PUBACK for 1 s \(2 messages unconfirmed\)"):
            pub.publish(messages[2])


def test_connect_errors() -> None:
    with pytest.raises(PublishError, match="no answer within 1 s"):
        Publisher(f"mqtt://127.0.0.1:{free_port()}", timeout=1).connect()
    with pytest.raises(PublishError, match="mqtt:// or mqtts://"):
        Publisher("http://127.0.0.1:1883")


@pytest.mark.integration
def test_connect_refused_by_broker_names_the_reason(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("", encoding="utf-8")
    mosquitto.stop()
    mosquitto.extra_config = f"password_file {passwords}\n"
    mosquitto.start()
    url = f"mqtt://nobody:wrong@{mosquitto.host}:{mosquitto.port}"
    with pytest.raises(PublishError, match=r"refused: (Not authorized|Bad user name)"):
        Publisher(url, timeout=5).connect()


class FakePublisher:
    """Records when (on a fake clock) each message was handed over."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, Message]] = []
        self.now = 0.0
        self.flushed = False
        self.stats = PublishStats()

    def publish(self, msg: Message) -> None:
        self.sent.append((self.now, msg))

    def flush(self) -> None:
        self.flushed = True


@pytest.mark.parametrize(
    ("speedup", "expected"), [(1.0, [0, 1.5, 3]), (3.0, [0, 0.5, 1]), (0.0, [0, 0, 0])]
)
def test_pacing_follows_at_over_speedup(speedup: float, expected: list[float]) -> None:
    fake = FakePublisher()

    def sleep(seconds: float) -> None:
        fake.now += seconds

    messages = [Message("t", b"", Kind.VALID, at, 1) for at in (0.0, 1.5, 3.0)]
    publish_messages(messages, fake, speedup=speedup, clock=lambda: fake.now, sleep=sleep)
    assert [t for t, _ in fake.sent] == pytest.approx(expected)
    assert fake.flushed


@pytest.mark.integration
def test_broker_receive_maximum_lowers_the_in_flight_bound() -> None:
    # Mosquitto announces max_inflight_messages as Receive Maximum in its CONNACK. The
    # publisher must stay under it on an open connection (paho refuses to change its own
    # limit while connected, which once killed the network thread here).
    messages = list(Fleet(FleetConfig(vehicles=10), seed=2).messages(30, 1))
    with MosquittoBroker(extra_config="max_inflight_messages 20") as broker:
        sub = Subscriber(broker)
        peak = 0
        try:
            with Publisher(broker.url, max_inflight=1000) as pub:
                assert pub._limit == 20

                def watch(msg: Message) -> None:
                    nonlocal peak
                    peak = max(peak, pub.inflight)

                stats = publish_messages(messages, pub, speedup=0, progress=watch)
            got = sub.wait_for(len(messages))
        finally:
            sub.close()
    assert stats.messages == len(messages)
    assert len(got) == len(messages)
    assert 0 < peak <= 20
