"""The outbox drainer: committed views go to their sink; confirmed ones are marked delivered.

Rows are read in audit order after a cursor, published, and marked delivered in batches when
the broker confirms them (PUBACK). After a restart the cursor starts from the beginning, so
every view that was committed but not confirmed is sent again under its own message id;
subscribers de-duplicate on that id. A refused publish moves the cursor back so the row is
tried again.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

from gateway.audit.outbox import count_pending, mark_delivered, pending_outbox
from gateway.audit.store import Store
from gateway.deliver.mqtt import MqttPublisher
from gateway.errors import DeliveryError
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


class OutboxDrainer:
    """Publishes one shard's outbox from a background thread."""

    def __init__(
        self,
        store: Store,
        shard: str,
        publisher: MqttPublisher,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        batch: int = 500,
    ) -> None:
        self.store = store
        self.shard = shard
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.batch = batch
        self._cursor = -1
        self._lock = threading.Lock()
        self._confirmed: list[int] = []
        self._refused: list[int] = []
        self._inflight = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered: dict[str, int] = {}

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._run, name="icvgw-outbox", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New rows were committed: look now rather than at the next poll."""
        self._wake.set()

    def _done(self, seq: int, subscriber: str, ok: bool) -> None:
        with self._lock:
            self._inflight -= 1
            (self._confirmed if ok else self._refused).append(seq)
            if ok:
                self.delivered[subscriber] = self.delivered.get(subscriber, 0) + 1
        if ok and subscriber:
            self.metrics.delivered.labels(subscriber).inc()

    def _flush_confirmed(self) -> None:
        with self._lock:
            confirmed, self._confirmed = self._confirmed, []
            refused, self._refused = self._refused, []
            if refused:
                self._cursor = min(self._cursor, min(refused) - 1)
        if refused:
            log.warning("%d publishes refused by the broker; retrying", len(refused))
        if confirmed:
            with self.store.transaction() as tx:
                mark_delivered(tx, self.shard, confirmed, round(self.clock() * 1000))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._flush_confirmed()
                with self.store.snapshot() as rd:
                    rows = pending_outbox(rd, self.shard, after_seq=self._cursor, limit=self.batch)
                if not rows:
                    self._wake.wait(0.2)
                    self._wake.clear()
                    continue
                for row in rows:
                    self._publish(row.seq, row.subscriber, row.topic, row.payload)
                    if self._stop.is_set():
                        break
            except Exception:
                log.exception("outbox delivery failed; retrying in 1 s")
                time.sleep(1.0)

    def _publish(self, seq: int, subscriber: str, topic: str, payload: bytes) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._inflight += 1
            try:
                self.publisher.publish(
                    topic, payload, functools.partial(self._done, seq, subscriber), timeout=1.0
                )
            except DeliveryError:
                with self._lock:
                    self._inflight -= 1
                self._flush_confirmed()
                continue
            with self._lock:
                self._cursor = max(self._cursor, seq)
            return

    def drain(self, timeout: float) -> bool:
        """Wait until every committed view is confirmed (or ``timeout``); True if drained."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._flush_confirmed()
            with self.store.snapshot() as rd:
                pending = count_pending(rd, self.shard)
            if pending == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the thread after recording the confirmations received so far."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self._flush_confirmed()
