"""Publishing simulated messages to a broker: QoS 1, bounded in flight, every PUBACK counted.

paho keys unacknowledged QoS 1 publishes by a 16-bit packet id; with more than ~65k of
them outstanding a client stalls for good (DESIGN.md). :class:`Publisher` therefore never
has more than ``max_inflight`` publishes without a PUBACK (and never more than the
broker's Receive Maximum, for MQTT 5): :meth:`Publisher.publish` blocks until there is
room. A message counts as sent only once its PUBACK arrived with a success reason code;
:meth:`Publisher.flush` waits for the last ones and raises
:class:`~gateway.errors.PublishError` if the broker stops confirming.

:func:`publish_messages` paces a message stream (each message's ``at``, divided by the
speed-up) and reports progress.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from gateway.errors import GatewayError, PublishError
from gateway.ingest.client import Protocol as MqttVersion
from gateway.ingest.client import connect_async, new_client, parse_broker_url
from simulators.fleet import Kind, Message

__all__ = ["MessageSink", "PublishStats", "Publisher", "publish_messages"]


@dataclass
class PublishStats:
    """What the broker confirmed: messages and samples by kind, payload bytes; and what it
    refused (a PUBACK with a failure reason code)."""

    confirmed: Counter[Kind] = field(default_factory=Counter)
    samples: int = 0
    bytes: int = 0
    refused: int = 0

    @property
    def messages(self) -> int:
        """Messages confirmed, all kinds."""
        return sum(self.confirmed.values())


class MessageSink(Protocol):
    """What :func:`publish_messages` needs: :class:`Publisher`, or a stand-in in tests."""

    stats: PublishStats

    def publish(self, msg: Message) -> None:
        """Send one message (may block for back-pressure)."""

    def flush(self) -> None:
        """Return once everything sent is confirmed."""


class Publisher:
    """A QoS 1 publisher with at most ``max_inflight`` unacknowledged messages.

    ``url`` is ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…``; ``protocol`` is
    ``"5"`` or ``"3.1.1"``. Use as a context manager, or call :meth:`connect` and
    :meth:`close`. The session is clean: the simulator keeps nothing between runs.
    """

    def __init__(
        self,
        url: str,
        *,
        protocol: MqttVersion = "5",
        max_inflight: int = 1000,
        client_id: str | None = None,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not 1 <= max_inflight <= 20_000:
            raise ValueError("max_inflight must be between 1 and 20000")
        try:
            self.spec = parse_broker_url(url, protocol=protocol, ca_file=ca_file)
        except GatewayError as exc:
            raise PublishError(str(exc)) from exc
        self.max_inflight = max_inflight
        self.timeout = timeout
        self.client_id = client_id or f"icvgw-sim-{os.getpid()}-{os.urandom(4).hex()}"
        self.stats = PublishStats()
        self._cond = threading.Condition()
        self._pending: dict[int, Message] = {}
        self._early: dict[int, bool] = {}  # PUBACKs that beat publish() returning the mid
        self._connected = False
        self._connect_error: str | None = None
        self._limit = max_inflight
        self._client = new_client(self.spec, self.client_id, persistent=False)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        # This class bounds what is outstanding itself (publish waits below _limit). paho's
        # own limit stays 0: set, paho scans its in-flight table on every PUBACK, and it
        # cannot be changed on an open connection.
        self._client.max_inflight_messages_set(0)

    # -- paho callbacks (network thread) ------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        with self._cond:
            if reason.is_failure:
                self._connect_error = str(reason)
            else:
                self._connected = True
                receive_max = getattr(props, "ReceiveMaximum", None) if props else None
                if receive_max:
                    self._limit = min(self.max_inflight, int(receive_max))
            self._cond.notify_all()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        ok = not reason.is_failure
        with self._cond:
            msg = self._pending.pop(mid, None)
            if msg is None:
                self._early[mid] = ok
            else:
                self._account(msg, ok)
            self._cond.notify_all()

    def _fewer_pending(self, than: int) -> bool:
        return len(self._pending) < than

    def _account(self, msg: Message, ok: bool) -> None:
        if ok:
            self.stats.confirmed[msg.kind] += 1
            self.stats.samples += msg.samples
            self.stats.bytes += len(msg.payload)
        else:
            self.stats.refused += 1

    # -- public API -------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Messages published and not yet acknowledged."""
        with self._cond:
            return len(self._pending)

    def connect(self) -> None:
        """Connect and wait for the CONNACK; raises :class:`PublishError` on refusal or
        when the broker does not answer within ``timeout`` seconds."""
        try:
            connect_async(self._client, self.spec, persistent=False)
        except (OSError, ValueError) as exc:
            raise PublishError(f"{self.spec}: {exc}") from exc
        self._client.loop_start()
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._connected or self._connect_error is not None, self.timeout
            )
            error = self._connect_error
        if error is not None or not done:
            self.close()
            why = f"refused: {error}" if error else f"no answer within {self.timeout:g} s"
            raise PublishError(f"cannot connect to {self.spec}: {why}")

    def publish(self, msg: Message) -> None:
        """Publish ``msg`` at QoS 1, first waiting (up to ``timeout`` seconds without any
        PUBACK) until fewer than the in-flight bound are unacknowledged."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._pending) < self._limit, self.timeout):
                raise PublishError(
                    f"{self.spec}: no PUBACK for {self.timeout:g} s "
                    f"({len(self._pending)} messages unconfirmed)"
                )
        info = self._client.publish(msg.topic, msg.payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise PublishError(f"{self.spec}: publish failed: {mqtt.error_string(info.rc)}")
        # MQTT_ERR_NO_CONN: paho keeps the message and sends it after reconnecting.
        with self._cond:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = msg
            else:
                self._account(msg, early)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every published message is acknowledged; raises
        :class:`PublishError` naming how many are not, after ``timeout`` seconds (default:
        the publisher's) without progress."""
        limit = self.timeout if timeout is None else timeout
        with self._cond:
            while self._pending:
                before = len(self._pending)
                progressed = self._cond.wait_for(partial(self._fewer_pending, before), limit)
                if not progressed:
                    raise PublishError(
                        f"{self.spec}: {len(self._pending)} messages not confirmed "
                        f"after {limit:g} s without progress"
                    )

    def close(self) -> None:
        """Disconnect and stop the network thread (unconfirmed messages are abandoned)."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Publisher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish_messages(
    messages: Iterable[Message],
    publisher: MessageSink,
    *,
    speedup: float = 1.0,
    progress: Callable[[Message], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PublishStats:
    """Publish every message, each no earlier than ``at / speedup`` seconds after the
    start (``speedup`` 0: as fast as the broker confirms), then wait for every PUBACK.

    Returns the publisher's stats: what the broker confirmed. ``progress`` is called after
    each publish.
    """
    if speedup < 0:
        raise ValueError("speedup must be >= 0")
    start = clock()
    for msg in messages:
        if speedup > 0:
            wait = start + msg.at / speedup - clock()
            if wait > 0:
                sleep(wait)
        publisher.publish(msg)
        if progress is not None:
            progress(msg)
    publisher.flush()
    return publisher.stats
