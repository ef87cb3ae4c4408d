"""Making paho clients the way "nothing lost" needs them.

* The MQTT protocol version is stated per broker (``"5"`` or ``"3.1.1"``); nothing guesses.
* Every connect of a persistent client uses ``clean_start=False`` (v5) or
  ``clean_session=False`` (3.1.1) with a stable client id and, for v5, a session expiry
  interval: paho's default cleans the first connection of each process, so a restarted
  gateway would lose the messages queued for it.
* For v5, Receive Maximum is set to the ingest bound so the broker does the back-pressure.
  For 3.1.1 there is no such property: raise the broker's ``max_inflight_messages``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.errors import IngestError

Protocol = Literal["5", "3.1.1"]


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    """Where and how to connect. ``password`` is never logged or put in a repr."""

    host: str
    port: int
    protocol: Protocol = "5"
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    session_expiry_s: int = 7 * 24 * 3600

    def __repr__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"BrokerSpec({scheme}://{user}{self.host}:{self.port}, MQTT {self.protocol})"

    __str__ = __repr__


def parse_broker_url(url: str, *, protocol: Protocol = "5", **tls: str | None) -> BrokerSpec:
    """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…`` into a spec.

    Raises :class:`~gateway.errors.IngestError` for another scheme or a missing host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise IngestError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
    if not parts.hostname:
        raise IngestError(f"broker URL has no host: {url!r}")
    if protocol not in ("5", "3.1.1"):
        raise IngestError(f"MQTT protocol must be '5' or '3.1.1', got {protocol!r}")
    secure = parts.scheme == "mqtts"
    return BrokerSpec(
        host=parts.hostname,
        port=parts.port or (8883 if secure else 1883),
        protocol=protocol,
        tls=secure,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ca_file=tls.get("ca_file"),
        cert_file=tls.get("cert_file"),
        key_file=tls.get("key_file"),
    )


def new_client(
    spec: BrokerSpec, client_id: str, *, persistent: bool = True, manual_ack: bool = False
) -> mqtt.Client:
    """A paho client configured for ``spec`` (protocol, TLS, credentials, back-off)."""
    if spec.protocol == "5":
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
            manual_ack=manual_ack,
        )
    if spec.username:
        client.username_pw_set(spec.username, spec.password)
    if spec.tls:
        client.tls_set(
            ca_certs=spec.ca_file,
            certfile=spec.cert_file,
            keyfile=spec.key_file,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def connect_async(
    client: mqtt.Client,
    spec: BrokerSpec,
    *,
    persistent: bool = True,
    receive_maximum: int | None = None,
) -> None:
    """Start connecting in the background (paho's loop retries with back-off).

    A persistent v5 connection always sends ``clean_start=False`` and a session expiry.
    """
    if spec.protocol == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if persistent:
            props.SessionExpiryInterval = spec.session_expiry_s
        if receive_maximum is not None:
            props.ReceiveMaximum = max(1, min(receive_maximum, 65535))
        client.connect_async(
            spec.host,
            spec.port,
            keepalive=spec.keepalive,
            clean_start=not persistent,
            properties=props,
        )
    else:
        client.connect_async(spec.host, spec.port, keepalive=spec.keepalive)
