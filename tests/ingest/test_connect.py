"""A connection that does not come up says why as soon as that is known — refused
credentials, an unknown CA, a host name mismatch, plain MQTT on a TLS port, a refused port,
an unknown host — against a real Mosquitto with its own password file and TLS listener; and
a stop asked for while connecting ends the wait at once."""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.deliver.mqtt import MqttPublisher
from gateway.errors import ConnectInterrupted, IngestError
from gateway.ingest.client import BrokerSpec, parse_broker_url
from gateway.testing import MosquittoBroker, free_port
from tests.ingest.tls_files import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration

USER, PASSWORD = "icvgw", "right-password"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    # Issued for broker.example and 127.0.0.1: connecting to "localhost" is a mismatch.
    return make_tls_files(tmp_path_factory.mktemp("tls"), host="broker.example")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[MosquittoBroker]:
    """Mosquitto: a plain listener and a TLS listener, both with a password file."""
    work = tmp_path_factory.mktemp("broker")
    passwords = work / "passwd"
    passwords.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), USER, PASSWORD], check=True)
    tls_port = free_port()
    broker = MosquittoBroker(
        workdir=work,
        extra_config="\n".join(
            [
                f"password_file {passwords}",
                f"listener {tls_port} 127.0.0.1",
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
            ]
        ),
    )
    broker.tls_port = tls_port  # type: ignore[attr-defined]
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def attempt(spec: BrokerSpec, timeout: float) -> tuple[BaseException | None, float]:
    """Connect a publisher to ``spec``; the error raised (None: connected) and when."""
    pub = MqttPublisher(spec, f"icvgw-test-{time.monotonic_ns()}")
    t0 = time.monotonic()
    try:
        pub.start()
        pub.status.wait(pub.wait_connected, timeout, threading.Event())
        return None, time.monotonic() - t0
    except IngestError as exc:
        return exc, time.monotonic() - t0
    finally:
        pub.stop()


def spec_of(url: str, **changes: object) -> BrokerSpec:
    return replace(parse_broker_url(url), **changes)  # type: ignore[arg-type]


def tls_url(broker: MosquittoBroker) -> str:
    return f"mqtts://127.0.0.1:{broker.tls_port}"  # type: ignore[attr-defined]


def test_right_credentials_connect(secured: MosquittoBroker) -> None:
    err, _ = attempt(spec_of(secured.url, username=USER, password=PASSWORD), 10)
    assert err is None


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_wrong_password_is_said_at_once(secured: MosquittoBroker, protocol: str) -> None:
    spec = spec_of(secured.url, username=USER, password="wrong", protocol=protocol)
    err, took = attempt(spec, 30)
    assert isinstance(err, IngestError)
    # Mosquitto 2.0 answers "Not authorized" (135) where MQTT 5 also has 134.
    assert re.search(
        r"the broker refused the connection: (Bad user name or password|Not authorized) "
        r"\(CONNACK \d+\)",
        str(err),
    ), err
    assert took < 5
    assert "wrong" not in str(err)


def test_an_unknown_ca_is_said_at_once(secured: MosquittoBroker, tmp_path: Path) -> None:
    other = make_tls_files(tmp_path / "other", ca_name="another CA")
    err, took = attempt(spec_of(tls_url(secured), ca_file=str(other.ca)), 30)
    assert isinstance(err, IngestError)
    # OpenSSL's words for a root that is not trusted (the broker sends its CA in the chain).
    assert re.search(
        r"certificate was not accepted: (self-signed certificate in certificate chain|"
        r"unable to get local issuer certificate)",
        str(err),
    ), err
    assert took < 5


def test_a_host_name_mismatch_is_said_at_once(secured: MosquittoBroker, tls: TlsFiles) -> None:
    url = f"mqtts://localhost:{secured.tls_port}"  # type: ignore[attr-defined]
    err, took = attempt(spec_of(url, ca_file=str(tls.ca)), 30)
    assert isinstance(err, IngestError)
    assert "certificate was not accepted: Hostname mismatch" in str(err)
    assert took < 5


def test_the_right_ca_and_name_connect(secured: MosquittoBroker, tls: TlsFiles) -> None:
    spec = spec_of(tls_url(secured), ca_file=str(tls.ca), username=USER, password=PASSWORD)
    err, _ = attempt(spec, 10)
    assert err is None


def reason_logged(
    caplog: pytest.LogCaptureFixture, spec: BrokerSpec, timeout: float
) -> tuple[str, float, str]:
    """Connect with ``timeout``; the error, how long it took, and the first reason logged
    and when (seconds after the start)."""
    caplog.set_level(logging.ERROR, logger="gateway.ingest.client")
    t0 = time.time()
    err, took = attempt(spec, timeout)
    assert isinstance(err, IngestError)
    assert took >= timeout  # worth retrying: the wait goes on
    first = caplog.records[0]
    return str(err), first.created - t0, first.getMessage()


def test_plain_mqtt_on_a_tls_port_is_said_while_retrying(
    secured: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"mqtt://127.0.0.1:{secured.tls_port}"  # type: ignore[attr-defined]
    err, logged_at, message = reason_logged(caplog, spec_of(url), 2)
    assert "closed the connection before answering CONNECT" in message
    assert "use mqtts://" in message
    assert logged_at < 1.5
    assert "within 2s: the broker closed the connection before answering CONNECT" in err


def test_a_refused_port_is_said_while_retrying(caplog: pytest.LogCaptureFixture) -> None:
    spec = spec_of(f"mqtt://127.0.0.1:{free_port()}")
    err, logged_at, message = reason_logged(caplog, spec, 2)
    assert "connection refused by 127.0.0.1" in message
    assert logged_at < 1.0
    assert "connection refused" in err


def test_an_unknown_host_is_said_while_retrying(caplog: pytest.LogCaptureFixture) -> None:
    spec = spec_of("mqtt://no-such-host.invalid:1883")
    err, logged_at, message = reason_logged(caplog, spec, 2)
    assert "unknown host 'no-such-host.invalid'" in message
    assert logged_at < 1.5
    assert "unknown host" in err


def test_a_stop_ends_the_wait_at_once() -> None:
    pub = MqttPublisher(spec_of(f"mqtt://127.0.0.1:{free_port()}"), "icvgw-test-stop")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    try:
        pub.start()
        with pytest.raises(ConnectInterrupted):
            pub.status.wait(pub.wait_connected, 30, stop)
    finally:
        pub.stop()
    assert time.monotonic() - t0 < 1.5


def test_tls_on_a_plain_port_is_said_while_retrying(
    secured: MosquittoBroker, tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    spec = spec_of(f"mqtts://127.0.0.1:{secured.port}", ca_file=str(tls.ca))
    err, logged_at, message = reason_logged(caplog, spec, 2)
    assert "TLS handshake with 127.0.0.1" in message
    assert "plain MQTT port? use mqtt://" in message
    assert logged_at < 1.5
    assert "TLS handshake" in err
