"""The outbox drainer: committed MQTT views are published; confirmed ones are marked delivered.

Only rows of the ``mqtt`` channel: views for ``http_stream`` subscribers are read through the
HTTP API's feed and pull routes, those for ``webhook`` subscribers POSTed by the API
process's webhook sink (:mod:`gateway.api`), so neither costs the pipeline anything.

After each commit the service hands the drainer the rows it just wrote (no re-read from the
store on the hot path); at start-up the drainer loads the rows still pending, so a view
that was committed but never confirmed — the gateway died first — is sent again under its
own message id, and subscribers de-duplicate on that id. Confirmations (PUBACK) are marked
in the store in batches; a refused publish is queued again.

Memory holds at most :data:`MAX_HELD_VIEWS` waiting views (those queued one per message
and those in the batcher); the store holds them all, pending until marked delivered. When a
commit would go beyond the bound (the broker slower than the pipeline, or away) the drainer
*spills*: it keeps the ``seq`` of the last view it holds (the cursor) and leaves every newer
one to the store. Once memory is down to half, its thread reads the views beyond the cursor
back (:func:`~gateway.store.outbox.pending_outbox`, in ``seq`` order) and routes them as at
start-up; when the store has none left beyond it, it holds commits again. That last read
and the switch are made under ``_hold_lock``, which :meth:`OutboxDrainer.submit` takes too:
a commit either is in that read or is submitted after the switch, and a row the read took
already is not held twice (its ``seq`` is not beyond the cursor). Views in flight or put
back after a refusal are never beyond the cursor, so no view is read back while it is held;
put-backs may take memory past the bound by at most what was in flight. Start-up is a
refill: it loads at most the bound and spills the rest. A batched subscriber the broker
refused in the last :data:`_REFUSED_WINDOW_S` seconds does not count towards the bound:
views of one that the broker refuses for good (an ACL without ``<topic>/batch``) would
otherwise fill memory and leave every other subscriber's views in the store; its own
views wait in memory meanwhile, as many as are committed (``icvgw_delivery_failures_total``
says so).

A subscriber whose view opts into batches (``delivery.batch_max_views`` above 1) gets its
views as batches instead (:mod:`gateway.deliver.batching` groups them, by subscriber in
``seq`` order): one QoS 1 PUBLISH per batch on ``<topic>/batch``, every view of it marked
delivered on that one PUBACK, a refused batch put back at the front of its subscriber's
queue. Those batches leave from the background thread only; the in-flight bound counts
messages, so a batch is one. Views of other subscribers (and dead-letter notices) go one per
message exactly as before. A policy reload that turns batching off for a subscriber keeps
its waiting views in the batcher until they are sent; one that turns it on may let the
subscriber's first batch overtake views of it still queued one per message. A batch is cut
to the broker's Maximum Packet Size and to ``batch_max_bytes`` (``output.batch_max_bytes``),
so what the client holds in flight is bounded too: ``max_inflight`` × that.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable

from gateway.deliver.batch import encode_batch
from gateway.deliver.batching import Batch, Batcher, BatchingLookup
from gateway.deliver.mqtt import Done, MqttPublisher
from gateway.errors import DeliveryError, StoreError
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.store.outbox import OutboxRow, count_pending, mark_delivered, pending_outbox

log = logging.getLogger(__name__)

MAX_HELD_VIEWS = 20_000
"""At most this many committed views wait in the drainer's memory (about 10 MB at 0.5 KB a
view); the rest wait in the store until there is room (see the module docstring)."""
_READ_ROWS = 5000
"""Views read from the store at a time (start-up and refills)."""

_MARK_EVERY_S = 0.2
_REFUSED_WINDOW_S = 5.0
"""How long after a refusal a batched subscriber's views stay outside the memory bound."""
_RETRY_BATCH_S = _MARK_EVERY_S
"""A subscriber's refused batch waits this long before it is sent again, as views one per
message wait for the next marking: a broker refusing for good (an ACL without
``<topic>/batch``) must not be answered by publishes as fast as it can refuse them."""


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
        batching: BatchingLookup | None = None,
        batch_max_bytes: int = 262_144,
        max_held: int = MAX_HELD_VIEWS,
    ) -> None:
        """``batching`` says which subscribers get batches (:func:`~gateway.deliver.batching.
        bundle_batching`); without it every view goes one per message. A batch's PUBLISH
        is at most ``batch_max_bytes`` (and the broker's limit); at most ``max_held`` views
        wait in memory."""
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
        self._batching = batching
        self._batcher = Batcher()
        self._batch_lock = threading.Lock()
        self._refused_batched = 0  # views of refused batches, for the log
        self._held: dict[str, float] = {}  # subscriber -> monotonic time its retry may go
        self._in_hand: str | None = None  # whose batch is taken and not yet published
        self._hurry = threading.Event()  # shutdown: send partial batches without lingering
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered: dict[str, int] = {}
        self.batch_max_bytes = batch_max_bytes
        self.max_held = max_held
        self._refill_below = max(max_held // 2, 1)  # the thread reads back below this
        self._hold_lock = threading.Lock()  # submit against the refill's last read and switch
        self._spilling = False  # newer views than the cursor wait in the store only
        self._cursor = -1  # seq of the last view taken into memory (or sent from submit)
        self._refused_at: dict[str, float] = {}  # batched subscriber -> last refusal (monotonic)
        metrics.outbox_held.set_function(lambda: float(self.held))
        metrics.outbox_spilling.set_function(lambda: 1.0 if self._spilling else 0.0)

    @property
    def held(self) -> int:
        """Views waiting in memory: queued one per message, or in the batcher."""
        with self._batch_lock:
            return len(self._queue) + len(self._batcher)

    def _movable(self) -> int:
        """Views in memory that count towards the bound: all but those of batched
        subscribers the broker refused in the last :data:`_REFUSED_WINDOW_S` seconds."""
        now = time.monotonic()
        with self._batch_lock:
            refused = {s for s, t in self._refused_at.items() if now - t < _REFUSED_WINDOW_S}
            return len(self._queue) + self._batcher.count_except(refused)

    @property
    def spilling(self) -> bool:
        """True while newer committed views wait in the store only (memory was full)."""
        return self._spilling

    def start(self) -> None:
        """Load what is still pending from the store (at most ``max_held`` views: the rest
        are read when there is room), then start the background thread."""
        self._queue.clear()  # the store is the truth: anything submitted is in it
        self._batcher = Batcher()
        with self._hold_lock:
            self._spilling, self._cursor = True, -1
        self._refill()
        if self.held:
            log.info(
                "%d committed views not yet confirmed: sending them again%s",
                self.held,
                " (and more from the store as they go)" if self._spilling else "",
            )
        self._thread = threading.Thread(target=self._run, name="icvgw-outbox", daemon=True)
        self._thread.start()

    def submit(self, rows: Iterable[OutboxRow]) -> None:
        """Rows just committed, in ``seq`` order: send them (in this order). While the
        drainer spills (memory full) they are left to the store, which it reads them back
        from in order.

        While nothing older waits, they are published right here, in the caller's thread,
        as far as the in-flight bound allows: handing them to the background thread cost a
        wake-up and, with the pipeline thread busy on the next batch, a wait for the
        interpreter lock before every publish. The rest goes to the background thread.
        """
        rows = [r for r in rows if r.channel == "mqtt"]  # the API's sinks take the rest
        with self._hold_lock:
            rows = self._admit(rows)
            if rows and self._batching is not None:
                rows = self._route(rows, queue=False)
            if rows:
                rows = self._send_now(rows)
            if rows:
                self._queue.extend(rows)
                self._wake.set()

    def _admit(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """The rows (in ``seq`` order) memory takes, ``_hold_lock`` held: none while
        spilling (the refill reads them from the store), none the refill took already,
        and no more than ``max_held`` waiting in all — beyond that, spilling starts."""
        if self._spilling or not rows:
            return []
        if rows[0].seq <= self._cursor:
            rows = [r for r in rows if r.seq > self._cursor]
        room = self.max_held - self.held
        if len(rows) > room:
            rows = rows[: max(room, 0)]
            self._spilling = True
            log.warning(
                "outbox: %d views wait in memory; newer ones wait in the store until the "
                "broker takes them",
                self.max_held,
            )
        if rows:
            self._cursor = rows[-1].seq
        return rows

    def _send_now(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Publish ``rows`` from the caller's thread while nothing older waits, as far as
        the in-flight bound allows; returns those not sent."""
        if not self._send_lock.acquire(blocking=False):
            return rows
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
        return rows[sent:]

    def _refill(self) -> None:
        """While spilling: read the views beyond the cursor from the store, in ``seq``
        order, until memory is full; stop spilling once the store has none left there.

        Reads are made without ``_hold_lock`` (commits meanwhile are left to the store,
        beyond the cursor) but for the one that may end spilling, so that no commit falls
        between it and the switch."""
        while self._spilling:
            limit = min(self.max_held - self._movable(), _READ_ROWS)
            if limit <= 0:
                return
            rows = self._read_beyond(limit)
            with self._hold_lock:
                self._hold(rows)
                if len(rows) < limit:
                    self._end_spilling()

    def _end_spilling(self) -> None:
        """Read what was committed since the last read and stop spilling if that is all
        (``_hold_lock`` held: no submit comes in between)."""
        limit = min(self.max_held - self._movable(), _READ_ROWS)
        if limit <= 0:
            return
        rows = self._read_beyond(limit)
        self._hold(rows)
        if len(rows) < limit:
            self._spilling = False
            log.info("outbox: the views left in the store are all in memory again")

    def _read_beyond(self, limit: int) -> list[OutboxRow]:
        """At most ``limit`` pending MQTT views beyond the cursor, in ``seq`` order."""
        with self.store.snapshot() as rd:
            return pending_outbox(rd, self.shard, after_seq=self._cursor, limit=limit)

    def _hold(self, rows: list[OutboxRow]) -> None:
        """Take ``rows`` read from the store into memory and move the cursor past them."""
        if rows:
            self._route(rows)
            self._cursor = rows[-1].seq
            self._wake.set()

    def _route(self, rows: list[OutboxRow], *, queue: bool = True) -> list[OutboxRow]:
        """Hand the views of batched subscribers to the batcher (and wake the thread);
        return the others, which go one per message (queued here too if ``queue``).

        A subscriber whose batching was just turned off keeps going through the batcher
        while views of it wait there or a batch of it is taken and not yet published, so
        that none overtakes them."""
        single = rows
        if self._batching is not None:
            lookup, single, batched = self._batching, [], 0
            with self._batch_lock:
                for row in rows:
                    settings = lookup(row.subscriber)
                    sub = row.subscriber
                    if settings is not None or self._batcher.waiting(sub) or sub == self._in_hand:
                        self._batcher.add(row, settings)
                        batched += 1
                    else:
                        single.append(row)
            if batched:
                self._wake.set()
        if queue:
            self._queue.extend(single)
        return single

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

    def _batch_done(self, batch: Batch, ok: bool) -> None:
        """One PUBACK for a batch: every view of it delivered, or every one refused — then
        put back at once at the front of its subscriber's queue, so that it goes out again
        before any batch not yet taken (one already waiting for the in-flight bound may
        go first, as a per-view publish may overtake a refused one)."""
        n = len(batch.rows)
        if not ok:
            with self._batch_lock:
                self._batcher.put_back(batch.rows)
                self._held[batch.subscriber] = time.monotonic() + _RETRY_BATCH_S
                self._refused_at[batch.subscriber] = time.monotonic()
            self._wake.set()
        elif batch.subscriber in self._refused_at:  # taken again: counts towards the bound
            with self._batch_lock:
                self._refused_at.pop(batch.subscriber, None)
        with self._lock:
            if ok:
                now = self.clock()
                self._confirmed.extend(r.seq for r in batch.rows)
                self._waited.extend(now - r.created_ms / 1000 for r in batch.rows)
                self.delivered[batch.subscriber] = self.delivered.get(batch.subscriber, 0) + n
            else:
                self._refused_batched += n
        counter = self.metrics.delivered if ok else self.metrics.delivery_failures
        counter.labels("mqtt", batch.subscriber).inc(n)

    def _flush_confirmed(self) -> None:
        with self._lock:
            confirmed, self._confirmed = self._confirmed, []
            refused, self._refused = self._refused, []
            refused_batched, self._refused_batched = self._refused_batched, 0
            waited, self._waited = self._waited, []
        if waited:
            self.metrics.delivery_seconds.observe(waited, "mqtt")
        if refused:
            log.warning("%d publishes refused by the broker; retrying", len(refused))
            self._queue.extendleft(reversed(refused))
        if refused_batched:
            log.warning("%d batched views refused by the broker; retrying", refused_batched)
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
                if self._spilling and self._movable() < self._refill_below:
                    self._refill()
                self._wake.clear()  # before looking: a submit from now on wakes the wait
                with self._send_lock:  # rows leave the queue in order, one sender at a time
                    row = self._queue.popleft() if self._queue else None
                    if row is not None:
                        self._publish(row)
                sent_batch = self._send_batch()
                if row is None and not sent_batch:
                    self._wake.wait(self._idle_wait())
            except StoreError as exc:  # the pipeline reports a failing store
                log.debug("outbox: confirmations not marked yet: %s", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("outbox delivery failed; retrying in 1 s")
                time.sleep(1.0)

    def _publish(self, row: OutboxRow) -> None:
        """Publish ``row``, just taken from the queue; if it is not sent (stopped, or an
        error raised) it goes back to the front, neither lost from memory until a restart
        nor overtaken by the views behind it."""
        sent = False
        try:
            sent = self._publish_message(row.topic, row.payload, functools.partial(self._done, row))
        finally:
            if not sent:
                self._queue.appendleft(row)

    def _send_batch(self) -> bool:
        """Publish the next due batch, if any (only this thread sends batches, so each
        subscriber's batches leave in order); True if there was one."""
        with self._batch_lock:
            held = self._holding()
            batch = self._batcher.take(
                self.clock(),
                hurry=self._hurry.is_set(),
                skip=held,
                max_packet=self._packet_limit(),
            )
            if batch is None:
                return False
            self._in_hand = batch.subscriber
        sent = False
        try:
            payload = encode_batch([r.payload for r in batch.rows])
            done = functools.partial(self._batch_done, batch)
            sent = self._publish_message(batch.topic, payload, done)
        finally:  # not sent (stopped, or an error): the views wait again, ahead of the rest
            with self._batch_lock:
                self._in_hand = None
                if not sent:
                    self._batcher.put_back(batch.rows)
        return True

    def _packet_limit(self) -> int:
        """The most bytes a batch's PUBLISH may take: ``batch_max_bytes``, or the broker's
        Maximum Packet Size if smaller."""
        broker = self.publisher.max_packet
        return self.batch_max_bytes if broker is None else min(broker, self.batch_max_bytes)

    def _holding(self) -> set[str]:
        """Subscribers whose refused batch waits before it is sent again (``_batch_lock``
        held)."""
        now = time.monotonic()
        for sub in [s for s, until in self._held.items() if until <= now]:
            del self._held[sub]
        return set(self._held)

    def _idle_wait(self) -> float:
        """How long the thread may sleep: until the next batch is due, at most the marking
        period."""
        with self._batch_lock:
            due = self._batcher.next_due(self.clock(), self._holding())
        return _MARK_EVERY_S if due is None else min(_MARK_EVERY_S, due)

    def _publish_message(self, topic: str, payload: bytes, done: Done) -> bool:
        """Publish, waiting while the in-flight bound is reached (recording confirmations
        meanwhile); False if the drainer stopped first (nothing sent)."""
        while not self._stop.is_set():
            try:
                self.publisher.publish(topic, payload, done, timeout=1.0)
                return True
            except DeliveryError:
                self._flush_confirmed()
        return False

    def drain(self, timeout: float) -> bool:
        """Wait until every committed view is confirmed (or ``timeout``); True if drained.
        Batches waiting to fill are sent at once meanwhile."""
        self._hurry.set()
        try:
            return self._wait_drained(timeout)
        finally:
            self._hurry.clear()

    def _wait_drained(self, timeout: float) -> bool:
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
