"""Making paho clients the way "nothing lost" needs them.

* The MQTT protocol version is stated per broker (``"5"`` or ``"3.1.1"``); nothing guesses.
* Every connect of a persistent client uses ``clean_start=False`` (v5) or
  ``clean_session=False`` (3.1.1) with a stable client id and, for v5, a session expiry
  interval: paho's default cleans the first connection of each process, so a restarted
  gateway would lose the messages queued for it.
* For v5, Receive Maximum is set to the ingest bound so the broker does the back-pressure.
  For 3.1.1 there is no such property: raise the broker's ``max_inflight_messages``.
* :class:`ConnectionStatus` says why a connection does not come up as soon as the reason is
  known (CONNACK reason code, TLS error, refused, unknown host) instead of a bare time-out.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.errors import ConnectInterrupted, IngestError

log = logging.getLogger(__name__)

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

    Raises :class:`~gateway.errors.IngestError` for another scheme, a missing host or a port
    that is not 1-65535; its message shows the URL without its password.
    """
    parts = urlsplit(url)
    shown = repr(_without_password(url))
    if parts.scheme not in ("mqtt", "mqtts"):
        raise IngestError(f"broker URL must start with mqtt:// or mqtts://, got {shown}")
    if not parts.hostname:
        raise IngestError(f"broker URL has no host: {shown}")
    try:
        port = parts.port  # urlsplit checks the port only when asked for it
    except ValueError:
        port = 0
    if port == 0:
        bad = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise IngestError(f"broker URL has a bad port {bad!r} (give 1-65535): {shown}")
    if protocol not in ("5", "3.1.1"):
        raise IngestError(f"MQTT protocol must be '5' or '3.1.1', got {protocol!r}")
    secure = parts.scheme == "mqtts"
    return BrokerSpec(
        host=parts.hostname,
        port=port or (8883 if secure else 1883),
        protocol=protocol,
        tls=secure,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ca_file=tls.get("ca_file"),
        cert_file=tls.get("cert_file"),
        key_file=tls.get("key_file"),
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


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


def describe_connect_error(exc: BaseException | None, spec: BrokerSpec) -> str:
    """A person's explanation of why a TCP/TLS connection to ``spec`` failed."""
    where = f"{spec.host}:{spec.port}"
    if isinstance(exc, socket.gaierror):
        return f"unknown host {spec.host!r} ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}: nothing listens there"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return f"TLS: the broker's certificate was not accepted: {detail} (broker.ca_file)"
    if isinstance(exc, ssl.SSLError):
        hint = ""
        if exc.reason == "WRONG_VERSION_NUMBER":
            hint = " (is this a plain MQTT port? use mqtt://)"
        return f"TLS handshake with {where} failed: {exc.reason or exc}{hint}"
    if isinstance(exc, ConnectionResetError) and spec.tls:
        return (
            f"TLS handshake with {where} failed: the connection was reset "
            "(is this a plain MQTT port? use mqtt://)"
        )
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} (timed out)"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return f"cannot connect to {where}: {exc}"


def _close_sockets_of(exc: BaseException | None) -> None:
    # paho leaves the socket of a failed TLS handshake open for the garbage collector
    # (Client._ssl_wrap_socket): close it here, where the failure is known.
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next


_FATAL_CONNACK = frozenset(
    {
        "Unsupported protocol version",
        "Client identifier not valid",
        "Bad user name or password",
        "Not authorized",
        "Banned",
        "Bad authentication method",
    }
)
"""CONNACK reasons that another attempt will not change: stop at once."""


class ConnectionStatus:
    """Why a client's connection is not up, known as soon as paho knows it.

    :func:`watch_connection` wraps a client's callbacks. ``problem`` is the latest reason
    (logged once per distinct reason); ``fatal`` is set when retrying cannot help (refused
    credentials or authorisation, a certificate that does not verify)."""

    def __init__(self, spec: BrokerSpec, name: str) -> None:
        self.spec = spec
        self.name = name
        self.problem: str | None = None
        self.fatal = False
        self.up = False
        self._ever_up = False
        self._changed = threading.Condition()

    def _report(self, problem: str, *, fatal: bool) -> None:
        with self._changed:
            repeated = problem == self.problem
            self.problem, self.fatal, self.up = problem, fatal, False
            self._changed.notify_all()
        if not repeated:
            log.error("%s: broker %s: %s", self.name, self.spec, problem)

    def connect_failed(self) -> None:
        """paho's ``on_connect_fail``: called inside paho's ``except OSError`` block."""
        exc = sys.exc_info()[1]
        _close_sockets_of(exc)
        fatal = isinstance(exc, ssl.SSLCertVerificationError)
        self._report(describe_connect_error(exc, self.spec), fatal=fatal)

    def connack(self, reason: Any) -> None:
        """The broker answered CONNECT with ``reason``."""
        if not reason.is_failure:
            with self._changed:
                self.up, self._ever_up, self.problem, self.fatal = True, True, None, False
                self._changed.notify_all()
            return
        name = str(reason)
        self._report(
            f"the broker refused the connection: {name} (CONNACK {reason.value})",
            fatal=name in _FATAL_CONNACK,
        )

    def disconnected(self, reason: Any) -> None:
        """The connection ended; before any CONNACK that says the broker is not an MQTT
        listener we can speak to (most often: a TLS port spoken to without TLS)."""
        with self._changed:
            was_up = self.up
            self.up = False
        if not was_up and not self._ever_up and self.problem is None:
            hint = " (a TLS port? use mqtts://)" if not self.spec.tls else ""
            self._report(
                f"the broker closed the connection before answering CONNECT: {reason}{hint}",
                fatal=False,
            )

    def wait(self, ready: Callable[[float], bool], timeout: float, stop: threading.Event) -> None:
        """Return once ``ready(seconds)`` says so. Raise
        :class:`~gateway.errors.IngestError` at once on a fatal problem and after ``timeout``
        seconds with the latest problem; :class:`~gateway.errors.ConnectInterrupted` as soon
        as ``stop`` is set."""
        deadline = time.monotonic() + timeout
        while not ready(0.05):
            if stop.is_set():
                raise ConnectInterrupted(f"{self.name}: stopped while connecting to {self.spec}")
            with self._changed:
                problem, fatal, up = self.problem, self.fatal, self.up
            if fatal:
                raise IngestError(f"{self.name}: cannot connect to {self.spec}: {problem}")
            if time.monotonic() >= deadline:
                why = f": {problem}" if problem else " (no answer)"
                if up:
                    why = " (connected, but the subscription was not confirmed)"
                raise IngestError(f"{self.name}: not ready at {self.spec} within {timeout}s{why}")


def watch_connection(client: mqtt.Client, spec: BrokerSpec, name: str) -> ConnectionStatus:
    """Wrap ``client``'s connect and disconnect callbacks (set them first) to keep a
    :class:`ConnectionStatus`."""
    status = ConnectionStatus(spec, name)
    on_connect: Callable[..., None] | None = client.on_connect
    on_disconnect: Callable[..., None] | None = client.on_disconnect

    def connected(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        status.connack(reason)
        if on_connect is not None:
            on_connect(c, u, flags, reason, props)

    def disconnected(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        status.disconnected(reason)
        if on_disconnect is not None:
            on_disconnect(c, u, flags, reason, props)

    client.on_connect = connected
    client.on_disconnect = disconnected
    client.on_connect_fail = lambda _c, _u: status.connect_failed()
    return status
