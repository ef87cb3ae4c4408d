"""The outbox drainer: committed MQTT views are published; confirmed ones are marked delivered.

Only rows of the ``mqtt`` channel: views for ``http_stream`` subscribers are read through the
HTTP API's feed and pull routes, those for ``webhook`` subscribers POSTed by the API
process's webhook sink (:mod:`gateway.api`), so neither costs the pipeline anything.

After each commit the service hands the drainer the rows it just wrote (no re-read from the
store on the hot path); at start-up the drainer loads every row still pending, so a view
that was committed but never confirmed — the gateway died first — is sent again under its
own message id, and subscribers de-duplicate on that id. Confirmations (PUBACK) are marked
in the store in batches; a refused publish is queued again.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable

from gateway.deliver.mqtt import MqttPublisher
from gateway.errors import DeliveryError, StoreError
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.store.outbox import OutboxRow, count_pending, mark_delivered, pending_outbox

log = logging.getLogger(__name__)

_MARK_EVERY_S = 0.2


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
    ) -> None:
        self.store = store
        self.shard = shard
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self._queue: collections.deque[OutboxRow] = collections.deque()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._confirmed: list[int] = []
        self._waited: list[float] = []  # seconds from decision to PUBACK, observed in batches
        self._refused: list[OutboxRow] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered: dict[str, int] = {}

    def start(self) -> None:
        """Load what is still pending from the store, then start the background thread."""
        self._queue.clear()  # the store is the truth: anything submitted is in it
        after = -1
        while True:
            with self.store.snapshot() as rd:
                rows = pending_outbox(rd, self.shard, after_seq=after, limit=5000)
            if not rows:
                break
            self._queue.extend(rows)
            after = rows[-1].seq
        if self._queue:
            log.info("%d committed views not yet confirmed: sending them again", len(self._queue))
        self._thread = threading.Thread(target=self._run, name="icvgw-outbox", daemon=True)
        self._thread.start()

    def submit(self, rows: Iterable[OutboxRow]) -> None:
        """Rows just committed: send them (in this order).

        While nothing older waits, they are published right here, in the caller's thread,
        as far as the in-flight bound allows: handing them to the background thread cost a
        wake-up and, with the pipeline thread busy on the next batch, a wait for the
        interpreter lock before every publish. The rest goes to the background thread.
        """
        rows = [r for r in rows if r.channel == "mqtt"]  # the API's sinks take the rest
        if rows and self._send_lock.acquire(blocking=False):
            sent = 0
            try:
                if not self._queue:
                    for row in rows:
                        done = functools.partial(self._done, row)
                        if not self.publisher.try_publish(row.topic, row.payload, done):
                            break
                        sent += 1
            except Exception:  # the committing thread must not fail: the thread retries
                log.exception("publishing committed views failed; the drainer retries them")
            finally:
                self._send_lock.release()
            rows = rows[sent:]
        if rows:
            self._queue.extend(rows)
            self._wake.set()

    def _done(self, row: OutboxRow, ok: bool) -> None:
        with self._lock:
            if ok:
                self._confirmed.append(row.seq)
                self._waited.append(self.clock() - row.created_ms / 1000)
                self.delivered[row.subscriber] = self.delivered.get(row.subscriber, 0) + 1
            else:
                self._refused.append(row)
        if row.subscriber:
            counter = self.metrics.delivered if ok else self.metrics.delivery_failures
            counter.labels(row.channel, row.subscriber).inc()

    def _flush_confirmed(self) -> None:
        with self._lock:
            confirmed, self._confirmed = self._confirmed, []
            refused, self._refused = self._refused, []
            waited, self._waited = self._waited, []
        if waited:
            self.metrics.delivery_seconds.observe(waited, "mqtt")
        if refused:
            log.warning("%d publishes refused by the broker; retrying", len(refused))
            self._queue.extendleft(reversed(refused))
        if confirmed:
            try:
                with self.store.transaction() as tx:
                    mark_delivered(tx, self.shard, confirmed, round(self.clock() * 1000))
            except StoreError:
                with self._lock:  # marked at the next attempt: a confirmation is not lost
                    self._confirmed[:0] = confirmed
                raise

    def _run(self) -> None:
        last_mark = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_mark >= _MARK_EVERY_S:
                    last_mark = time.monotonic()
                    self._flush_confirmed()
                with self._send_lock:  # rows leave the queue in order, one sender at a time
                    row = self._queue.popleft() if self._queue else None
                    if row is not None:
                        self._publish(row)
                if row is None:
                    self._wake.wait(_MARK_EVERY_S)
                    self._wake.clear()
            except StoreError as exc:  # the pipeline reports a failing store
                log.debug("outbox: confirmations not marked yet: %s", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("outbox delivery failed; retrying in 1 s")
                time.sleep(1.0)

    def _publish(self, row: OutboxRow) -> None:
        while not self._stop.is_set():
            try:
                self.publisher.publish(
                    row.topic, row.payload, functools.partial(self._done, row), timeout=1.0
                )
                return
            except DeliveryError:
                self._flush_confirmed()
        self._queue.appendleft(row)

    def drain(self, timeout: float) -> bool:
        """Wait until every committed view is confirmed (or ``timeout``); True if drained."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._flush_confirmed()
                with self.store.snapshot() as rd:
                    pending = count_pending(rd, self.shard)
            except StoreError:  # not marked: sent again after a restart, same message id
                pending = -1
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
        try:
            self._flush_confirmed()
        except StoreError as exc:
            log.warning(
                "outbox: %d confirmations not marked (%s): sent again after a restart "
                "under the same message id",
                len(self._confirmed),
                exc,
            )
