"""MQTT publishing at QoS 1 with a bound on unacknowledged messages.

paho tracks in-flight QoS 1 publishes by a 16-bit packet id: queueing more than ~65k
unacknowledged publishes on one client stalls it for good. :class:`MqttPublisher` blocks the
caller while ``max_inflight`` publishes are unacknowledged, and reports each outcome through
the callback given with it (``True`` on PUBACK with a success code).

paho calls ``on_publish`` while holding its own lock, so this class never holds its lock
while calling into paho: a PUBACK that overtakes the bookkeeping is parked and matched
right after ``publish`` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from gateway.errors import DeliveryError
from gateway.ingest.client import BrokerSpec, connect_async, new_client, watch_connection

log = logging.getLogger(__name__)

Done = Callable[[bool], None]


class MqttPublisher:
    """A persistent MQTT client that publishes QoS 1 with bounded in-flight messages."""

    def __init__(self, spec: BrokerSpec, client_id: str, *, max_inflight: int = 1000) -> None:
        if not 1 <= max_inflight <= 20_000:
            raise ValueError("max_inflight must be within 1..20000")
        self.spec = spec
        self.max_inflight = max_inflight
        self.limit = max_inflight
        self._client = new_client(spec, client_id, persistent=True)
        # paho scans its whole in-flight table on every PUBACK when its own limit is set, so
        # publishing slows as the limit grows (bench/RESULTS.md, End to end); this class
        # bounds in-flight itself.
        self._client.max_inflight_messages_set(0)
        self._client.max_queued_messages_set(0)
        self._client.on_publish = self._on_publish
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self.status = watch_connection(self._client, spec, "publisher")
        self._cond = threading.Condition()
        self._pending: dict[int, Done] = {}
        self._early: dict[int, bool] = {}
        self._connected = threading.Event()
        self.confirmed = 0
        self.refused = 0
        self.max_packet: int | None = None
        """The broker's Maximum Packet Size (MQTT 5 CONNACK), None if it set none: a
        broker disconnects a client that sends a bigger packet, and paho sends it again on
        every reconnect."""

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        # MQTT 5: never more unacknowledged publishes than the broker's Receive Maximum.
        receive_max = getattr(props, "ReceiveMaximum", None) if props else None
        max_packet = getattr(props, "MaximumPacketSize", None) if props else None
        self.max_packet = int(max_packet) if max_packet else None
        with self._cond:
            self.limit = min(self.max_inflight, int(receive_max or self.max_inflight))
            self._cond.notify_all()
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        self._connected.clear()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        ok = not getattr(reason, "is_failure", False)
        with self._cond:
            done = self._pending.pop(mid, None)
            if done is None:
                self._early[mid] = ok
                return
            self._cond.notify_all()
        self._finish(done, ok)

    def _finish(self, done: Done, ok: bool) -> None:
        if ok:
            self.confirmed += 1
        else:
            self.refused += 1
        try:
            done(ok)
        except Exception:
            log.exception("delivery callback failed")

    def start(self) -> None:
        """Connect in the background (paho reconnects with back-off)."""
        connect_async(self._client, self.spec, persistent=True)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """True once connected, False after ``timeout`` seconds."""
        return self._connected.wait(timeout)

    def inflight(self) -> int:
        """Publishes sent and not yet acknowledged."""
        with self._cond:
            return len(self._pending)

    def publish(
        self,
        topic: str,
        payload: bytes,
        done: Done,
        *,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish at QoS 1; ``done(ok)`` runs on PUBACK. Blocks while the in-flight bound is
        reached; raises :class:`~gateway.errors.DeliveryError` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._pending) >= self.limit:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise DeliveryError("in-flight bound reached and nothing was acknowledged")
                self._cond.wait(remaining if remaining is not None else 1.0)
        self._send(topic, payload, done, retain)

    def try_publish(self, topic: str, payload: bytes, done: Done) -> bool:
        """:meth:`publish` if the in-flight bound allows it now; False (nothing sent) if not.
        Never blocks."""
        with self._cond:
            if len(self._pending) >= self.limit:
                return False
        self._send(topic, payload, done, False)
        return True

    def _send(self, topic: str, payload: bytes, done: Done, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise DeliveryError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = done
                return
        self._finish(done, early)

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self) -> None:
        """Disconnect. Unacknowledged publishes stay in the outbox and are sent again."""
        self._client.disconnect()
        self._client.loop_stop()
        # paho closes the socket pair that wakes its loop thread only when the client is
        # garbage-collected (Client.__del__); a stopped publisher should hold no sockets.
        self._client._reset_sockets(sockpair_only=True)
