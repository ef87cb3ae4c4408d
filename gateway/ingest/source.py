"""The MQTT input: a persistent QoS 1 subscription with manual acknowledgement.

Threads meet here: paho's network thread only wraps each message in an
:class:`~gateway.model.Envelope` and puts it on a bounded queue; the pipeline thread takes
micro-batches with :meth:`MqttSource.get_batch` and calls each envelope's ``ack`` after the
batch is committed. The queue bound equals the MQTT 5 Receive Maximum, so the broker never
has more unacknowledged messages out to us than the queue holds. The queue is bounded in
bytes of payload too (``queue_bytes``): a message that would take it past the bound waits in
paho's thread until the pipeline has taken enough, so paho stops reading the socket and the
broker keeps the rest. A message alone in the queue is always admitted (one oversize message
cannot stall the input), so the queue holds at most ``max(queue_bytes, one payload)``.

An acknowledgement is only sent on the connection the message arrived on: after a
reconnect the broker redelivers the message anyway, and a PUBACK with an old packet id on
the new connection would acknowledge some other message (paho does not check).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt

from gateway.ingest.client import BrokerSpec, connect_async, new_client, watch_connection
from gateway.model import Envelope

log = logging.getLogger(__name__)

DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
"""Payload bytes the ingest queue holds at most (beside its bound in messages)."""


class MqttSource:
    """Subscribe to ``topic`` (optionally in shared group ``group``) and queue envelopes."""

    def __init__(
        self,
        spec: BrokerSpec,
        topic: str,
        *,
        client_id: str,
        group: str | None = None,
        queue_bound: int = 1000,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        watch: Mapping[str, Callable[[bytes], None]] | None = None,
    ) -> None:
        self.spec = spec
        self.topic = f"$share/{group}/{topic}" if group else topic
        self.client_id = client_id
        self.queue_bound = queue_bound
        self.queue_bytes = queue_bytes
        self._queue: queue.Queue[Envelope] = queue.Queue(maxsize=queue_bound)
        self._bytes = 0  # payload bytes queued (guarded by _room)
        self._room = threading.Condition()
        self._stopping = threading.Event()
        self.full_waits = 0  # messages that waited for room: back-pressure, counted
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = threading.Event()
        self.stale_acks = 0
        self.received = 0
        self._client = new_client(spec, client_id, persistent=True, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self.status = watch_connection(self._client, spec, "ingest")
        # Broker statistics ($SYS topics) go to their handler, never into the pipeline.
        self._watch = dict(watch or {})
        self._sub_mid: int | None = None
        for topic, handler in self._watch.items():
            self._client.message_callback_add(topic, self._watcher(handler))

    # -- paho thread -------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("ingest connect to %s refused: %s", self.spec, reason)
            return
        with self._lock:
            self._generation += 1
        for topic in self._watch:
            client.subscribe(topic, qos=0)
        if flags.session_present:
            self._connected.set()
        else:  # ready once the broker confirms the subscription (on_subscribe)
            self._sub_mid = client.subscribe(self.topic, qos=1)[1]
        log.info("ingest connected to %s (session present: %s)", self.spec, flags.session_present)

    @staticmethod
    def _watcher(handler: Callable[[bytes], None]) -> Callable[..., None]:
        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                handler(bytes(msg.payload))
            except Exception:
                log.exception("handler for %s failed", msg.topic)

        return on_message

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        if mid != self._sub_mid:
            return  # a statistics subscription: optional, a refusal is fine
        if any(code.is_failure for code in codes):
            log.error("broker refused the subscription to %s: %s", self.topic, codes)
            return
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._lock:
            self._generation += 1
        self._connected.clear()
        # A disconnection we asked for (a normal stop) is not a warning; a lost one is.
        failed = getattr(reason, "is_failure", True)
        level = logging.WARNING if failed else logging.INFO
        log.log(level, "ingest disconnected from %s: %s", self.spec, reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            generation = self._generation
        self.received += 1
        qos = msg.qos
        mid = msg.mid

        def ack() -> None:
            self._ack(generation, mid, qos)

        envelope = Envelope(
            topic=msg.topic,
            payload=bytes(msg.payload),
            received_at=time.time(),
            message_id=mid,
            ack=ack,
        )
        self._admit(envelope)

    def _admit(self, envelope: Envelope) -> None:
        """Queue ``envelope`` once there is room in messages and bytes. Blocking here is the
        back-pressure (3.1.1 brokers ignore our Receive Maximum; bytes have no MQTT bound).
        On :meth:`stop` a waiting message is dropped unacknowledged: the broker redelivers."""
        size = len(envelope.payload)
        with self._room:
            if self._bytes and self._bytes + size > self.queue_bytes:
                self.full_waits += 1
            while self._bytes and self._bytes + size > self.queue_bytes:
                if self._stopping.is_set():
                    return
                self._room.wait(0.2)
            self._bytes += size
        while not self._stopping.is_set():
            try:
                self._queue.put(envelope, timeout=0.2)
                return
            except queue.Full:
                continue
        self._taken([envelope])

    def _taken(self, envelopes: list[Envelope]) -> None:
        if not envelopes:
            return
        with self._room:
            self._bytes -= sum(len(e.payload) for e in envelopes)
            self._room.notify_all()

    def _ack(self, generation: int, mid: int, qos: int) -> None:
        with self._lock:
            stale = generation != self._generation
            if stale:
                self.stale_acks += 1
        if not stale and qos > 0:
            self._client.ack(mid, qos)

    # -- pipeline thread ---------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; messages start arriving once connected."""
        self._stopping.clear()
        connect_async(self._client, self.spec, persistent=True, receive_maximum=self.queue_bound)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected and subscribed (or ``timeout``); True when ready."""
        return self._connected.wait(timeout)

    def get_batch(self, max_size: int, max_wait: float) -> list[Envelope]:
        """Up to ``max_size`` envelopes: waits up to ``max_wait`` s for the first, then takes
        whatever else arrives within that window."""
        deadline = time.monotonic() + max_wait
        out: list[Envelope] = []
        while len(out) < max_size:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    out.append(self._queue.get_nowait())
                else:
                    out.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        self._taken(out)
        return out

    def pending(self) -> int:
        """Envelopes queued and not yet taken."""
        return self._queue.qsize()

    def pending_bytes(self) -> int:
        """Payload bytes queued and not yet taken."""
        with self._room:
            return self._bytes

    def stop(self) -> None:
        """Stop reading: disconnect cleanly (the broker keeps the session and its queue)."""
        self._stopping.set()
        self._client.disconnect()
        self._client.loop_stop()
