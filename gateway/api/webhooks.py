"""The webhook sink: the views of subscribers whose delivery channel is ``webhook`` are
POSTed to their https url, signed per Standard Webhooks (:mod:`gateway.deliver.webhook`).

It runs in the API process, on the API's store (the pipeline only commits the views to the
outbox, so a slow receiver costs the pipeline nothing), for the worker's shard.

* **Batches.** A subscriber whose view sets ``delivery.batch_max_views`` above 1 gets up to
  that many of its pending views per POST, as a JSON array of their exact stored bytes
  (:func:`gateway.deliver.batch.encode_batch`), ``webhook-id`` the batch's id
  (:func:`~gateway.deliver.batch.batch_id`) and the signature over that array. A batch not
  full waits at most ``linger_ms`` after its oldest view was committed for more views; one
  left unfilled by a full read of the outbox goes at once with the next pass. Everything
  below about a view holds for a batch of a batched subscriber: its views are retried,
  delivered and given up together. Other subscribers get one view per POST, its message id
  as ``webhook-id``.
* **Order.** Each subscriber's views go in audit order, one POST at a time: a view (batch)
  waiting for its next attempt holds back that subscriber's later views until it is
  delivered or given up, so a platform never sees a vehicle's records out of order.
  Subscribers are served in parallel (up to :data:`LANES` at once): a slow receiver delays
  only its own views.
* **Retries.** A 2xx answer delivers the view. Anything else (a status, a timeout, a TLS or
  connection failure) counts an attempt; the next waits a random time up to
  ``min(backoff_max_s, backoff_initial_s * 2**(attempts-1))`` (full jitter). After
  ``api.webhook.attempts`` attempts the view is given up: ``failed_ms`` is set and a
  ``webhook.failed`` entry (subscriber, attempts, last outcome; for a batch its id, and the
  audit seqs and message ids of its views; never the url, the payload, a VIN or a position)
  goes to the worker's audit shard. A retried batch carries the same views in the same
  order (the same ``webhook-id``): its views share their attempt count and next attempt's
  time in the outbox, which is how it is cut again after a restart.
* **Writes.** Outcomes are kept in memory and written in one transaction at most every
  :data:`MARK_EVERY_S` (the pipeline shares SQLite's one writer). A view delivered but not
  yet marked when the process dies is sent again after a restart under the same
  ``webhook-id`` (a batch's views maybe cut into other batches): delivery is at least once,
  and receivers de-duplicate on the view's ``message_id``.
* **Secrets.** Each subscriber's secret is derived from the key directory's webhook key
  (:meth:`gateway.keys.KeyRing.webhook_secret`); requests carry a signature with the
  newest generation's secret and one with the previous generation's, so after ``icvgw keys
  rotate --only webhook`` a platform keeps verifying until it is given its new secret
  (``icvgw webhook secret``). The key directory is read again when it changes.
* **Metrics** on the API's registry: ``icvgw_webhook_deliveries_total{subscriber,outcome}``
  (views ``delivered``, ``retried``, ``failed``) and ``icvgw_webhook_attempt_seconds`` (one
  per POST).
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import httpx2
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.api.context import ApiContext
from gateway.config import WebhookConfig
from gateway.deliver.batch import batch_id, encode_batch
from gateway.deliver.webhook import retry_delay_s, signed_headers
from gateway.errors import ConfigError, GatewayError, Problem
from gateway.keys import KeyKind, KeyRing, ensure_webhook_key
from gateway.policy.bundle import PolicyBundle
from gateway.policy.schema import Channel, Delivery
from gateway.store import Store
from gateway.store.outbox import (
    WebhookAttempt,
    WebhookRow,
    mark_delivered,
    pending_webhooks,
    record_webhook_attempts,
)
from gateway.tlog.canonical import Json
from gateway.tlog.entries import AdminAction, AdminEntry

__all__ = ["LANES", "MARK_EVERY_S", "Outcome", "WebhookSink", "cut_batches", "start_sink"]

log = logging.getLogger(__name__)

LANES = 8
"""Subscribers whose views are being POSTed at the same time."""
MARK_EVERY_S = 0.5
"""Outcomes are written to the store at most this often (and when the sink stops)."""
_POLL_S = 0.25
"""How often the outbox is looked at for new views when nothing else wakes the sink."""
_BATCH = 200
"""Views read for a subscriber's lane at once (at least one batch)."""
OUTCOMES = ("delivered", "retried", "failed")
_QUIET = ("httpx2", "httpcore2")
"""The HTTP client's loggers, silenced below warnings: httpx2 logs every request's url at
INFO, and a webhook url may carry a token in its query string."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one POST did: delivered, or the failed attempt's record of each view it carried
    (retry or give-up), with ``last`` naming the answer (``HTTP 503``, ``timeout``, ``tls``,
    ``connection``). ``webhook_id`` is the view's message id, or the batch's id."""

    subscriber: str
    webhook_id: str
    seqs: tuple[int, ...]
    message_ids: tuple[str, ...]
    last: str
    failed: tuple[WebhookAttempt, ...] = ()
    batched: bool = False

    @property
    def delivered(self) -> bool:
        """The receiver answered 2xx."""
        return not self.failed

    @property
    def kind(self) -> str:
        """``delivered``, ``retried`` or ``failed`` (given up)."""
        if not self.failed:
            return "delivered"
        return "retried" if self.failed[0].failed_ms is None else "failed"

    def audit_entry(self, at: float, instance: str) -> AdminEntry:
        """The ``webhook.failed`` entry of a POST given up: per view as before batches; a
        batch's names the audit seqs and message ids of every view it gave up on."""
        details: dict[str, Json] = {
            "subscriber": self.subscriber,
            "attempts": self.failed[0].attempts,
            "last": self.last,
        }
        if self.batched:
            details["audit_seqs"] = list(self.seqs)
            details["message_ids"] = list(self.message_ids)
        return AdminEntry(at, instance, AdminAction.WEBHOOK_FAILED, self.webhook_id, details)


@dataclass
class _Lane:
    """One subscriber's queue position, as this process knows it (ahead of the store until
    the next write)."""

    subscriber: str
    after: int = -1
    """Every view up to this seq is delivered or given up."""
    retry: tuple[WebhookAttempt, ...] = ()
    """The views of the POST waiting for its next attempt, if any."""
    busy: bool = False

    def waiting(self, now_ms: int) -> float:
        """Seconds until the POST waiting for a retry is due (0: due, or none)."""
        return max(0.0, (self.retry[0].next_attempt_ms - now_ms) / 1000) if self.retry else 0.0


def cut_batches(rows: Sequence[WebhookRow], max_views: int) -> list[list[WebhookRow]]:
    """``rows`` (pending, in audit order) cut into POSTs of at most ``max_views`` views.
    Views tried together share their attempt count and next attempt's time, so a batch
    that failed is cut again as it was, even after a restart; fresh views (never tried)
    fill the batches after it."""
    out: list[list[WebhookRow]] = []
    for row in rows:
        last = out[-1] if out else None
        if (
            last is not None
            and len(last) < max_views
            and (last[0].attempts, last[0].next_attempt_ms) == (row.attempts, row.next_attempt_ms)
        ):
            last.append(row)
        else:
            out.append([row])
    return out


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "icvgw_webhook_deliveries",
            "Webhook views by outcome: delivered (2xx), retried (an attempt failed, another "
            "follows), failed (given up after the last attempt).",
            ["subscriber", "outcome"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "icvgw_webhook_attempt_seconds",
            "Duration of one webhook POST, answered or not.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_METRICS_LOCK = threading.Lock()


def _metrics(registry: CollectorRegistry) -> _Metrics:
    """The sink's instruments on ``registry`` (registered once: a sink started again on the
    same registry counts on)."""
    with _METRICS_LOCK:
        m = _METRICS.get(registry)
        if m is None:
            m = _METRICS[registry] = _Metrics(registry)
        return m


def _failure(exc: Exception) -> str:
    """A fixed word for why a POST got no answer (exception texts may carry the url)."""
    if isinstance(exc, httpx2.TimeoutException):
        return "timeout"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return "tls"
        cause = cause.__cause__ or cause.__context__
    return "connection" if isinstance(exc, httpx2.NetworkError) else "error"


class WebhookSink:
    """Delivers one shard's ``webhook`` views from a background thread (:meth:`start`,
    :meth:`stop`); :meth:`deliver_due` does one pass in the caller's thread."""

    def __init__(
        self,
        store: Store,
        *,
        shard: str,
        instance: str,
        keys: Path,
        bundle: Callable[[], PolicyBundle],
        config: WebhookConfig,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store, self.shard, self.instance = store, shard, instance
        self.bundle, self.config, self.clock, self.rand = bundle, config, clock, rand
        self.metrics = _metrics(registry)
        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            self.ssl = ssl.create_default_context(cafile=config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            where = config.ca_file or "the system's CA certificates"
            raise ConfigError(
                Problem(where, None, "api.webhook.ca_file", f"not a readable CA bundle: {exc}")
            ) from None
        # No proxy or netrc from the environment: where views go is the policy's url only.
        self.client = httpx2.Client(
            verify=self.ssl, timeout=config.timeout_s, trust_env=False, follow_redirects=False
        )
        self._keys_dir = keys
        self._keys_seen = -1
        self._ring: KeyRing | None = None
        self._lanes: dict[str, _Lane] = {}
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._marked = 0.0
        self._pool = ThreadPoolExecutor(LANES, thread_name_prefix="icvgw-webhook")
        self._running: set[Future[None]] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_context(
        cls, ctx: ApiContext, *, rand: Callable[[], float] = random.random
    ) -> WebhookSink:
        """The sink of the API process ``ctx`` (on its clock)."""
        return cls(
            ctx.store,
            shard=ctx.shard,
            instance=ctx.worker,
            keys=ctx.keys.directory,
            bundle=ctx.bundle,
            config=ctx.config.api.webhook,
            registry=ctx.registry,
            clock=ctx.clock,
            rand=rand,
        )

    # -- the background thread -----------------------------------------------------------
    def start(self) -> None:
        """Start delivering in a background thread."""
        self._thread = threading.Thread(target=self._run, name="icvgw-webhooks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # a lane finishing from here on wakes the wait below
            try:
                pause = self._step()
            except GatewayError as exc:  # a store that does not answer: the views wait
                log.warning("webhooks: %s; trying again in 1 s", exc)
                pause = 1.0
            except Exception:  # a bug here must not end delivery for good
                log.exception("webhooks: unexpected error; trying again in 1 s")
                pause = 1.0
            self._wake.wait(pause)

    def stop(self) -> None:
        """Stop: the POSTs under way finish (each within ``timeout_s``), their outcomes are
        written, the threads are joined."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True)
        try:
            self._mark(force=True)
        except GatewayError as exc:
            log.warning("webhooks: outcomes not written (%s): sent again after a restart", exc)
        self.client.close()

    def deliver_due(self) -> None:
        """One pass in the caller's thread: POST what is due now, wait for the answers, write
        the outcomes."""
        self._step()
        with self._lock:
            running = list(self._running)
        wait(running)
        self._mark(force=True)

    # -- one pass ------------------------------------------------------------------------
    def _targets(self) -> dict[str, Delivery]:
        """Subscriber -> delivery of the policy in force's webhook subscribers."""
        out: dict[str, Delivery] = {}
        for sid, sub in self.bundle().subscribers.items():
            delivery = sub.view.delivery
            if delivery.channel is Channel.WEBHOOK and delivery.url is not None:
                out[sid] = delivery
        return out

    def _step(self) -> float:
        """Write outcomes if due, start each idle subscriber's due POSTs; the seconds until
        the next pass is needed."""
        self._reload_keys()
        self._mark(force=False)
        now_ms = round(self.clock() * 1000)
        pause = _POLL_S
        for sub, delivery in self._targets().items():
            lane = self._lanes.get(sub)
            if lane is None:
                lane = self._lanes[sub] = _Lane(sub)
                for outcome in OUTCOMES:  # every series exists from the start, at 0
                    self.metrics.deliveries.labels(sub, outcome)
            if lane.busy or self._stop.is_set():
                continue
            posts: list[list[WebhookRow]] = []
            wait_s = lane.waiting(now_ms)
            if wait_s == 0:
                posts, wait_s = self._due(lane, delivery, now_ms)
            if posts:
                lane.busy = True
                future = self._pool.submit(self._run_lane, lane, delivery, posts)
                with self._lock:
                    self._running.add(future)
                future.add_done_callback(functools.partial(self._lane_done, lane))
            elif wait_s > 0:
                pause = min(pause, wait_s)
        return pause

    def _due(
        self, lane: _Lane, delivery: Delivery, now_ms: int
    ) -> tuple[list[list[WebhookRow]], float]:
        """The lane's POSTs due now, in order, up to the first that is not; and the seconds
        until the next one is due (0: as soon as these are done, or when views come)."""
        size = delivery.batch_max_views
        with self.store.snapshot() as rd:
            rows = pending_webhooks(
                rd, self.shard, lane.subscriber, after_seq=lane.after, limit=max(_BATCH, size)
            )
        full = len(rows) == max(_BATCH, size)
        newer = {a.seq: a for a in lane.retry}  # newer than the store until marked
        lane.retry = ()
        rows = [
            replace(r, attempts=a.attempts, next_attempt_ms=a.next_attempt_ms)
            if (a := newer.get(r.view.seq)) is not None
            else r
            for r in rows
        ]
        due: list[list[WebhookRow]] = []
        for post in cut_batches(rows, size):
            if post[0].next_attempt_ms > now_ms:
                lane.retry = tuple(
                    WebhookAttempt(r.view.seq, r.attempts, r.next_attempt_ms) for r in post
                )
                return due, lane.waiting(now_ms)
            due.append(post)
        if due and delivery.batched and len(due[-1]) < size and due[-1][0].attempts == 0:
            # A batch not full yet: the next pass reads on (full), or views may still come.
            # A view committed "in the future" (the pipeline's clock ahead of this one, or
            # this one stepped back) goes at once, not skew + linger later.
            created = due[-1][0].view.created_ms
            linger_end = created + delivery.linger_ms
            if full or created <= now_ms < linger_end:
                due.pop()
                return due, 0.0 if full else (linger_end - now_ms) / 1000
        return due, 0.0

    def _lane_done(self, lane: _Lane, future: Future[None]) -> None:
        with self._lock:
            self._running.discard(future)
        lane.busy = False
        if (exc := future.exception()) is not None:
            log.error("webhooks: delivery to %s stopped: %r", lane.subscriber, type(exc))
        self._wake.set()

    def _run_lane(self, lane: _Lane, delivery: Delivery, posts: list[list[WebhookRow]]) -> None:
        """POST each of ``posts`` in order until one fails and waits for its next attempt."""
        assert delivery.url is not None  # a webhook target always has one
        for rows in posts:
            if self._stop.is_set():
                return
            outcome = self.attempt(delivery.url, rows, batched=delivery.batched)
            with self._lock:
                self._outcomes.append(outcome)
            self.metrics.deliveries.labels(lane.subscriber, outcome.kind).inc(len(rows))
            if outcome.kind == "retried":
                lane.retry = outcome.failed
                return
            lane.after, lane.retry = rows[-1].view.seq, ()

    def attempt(self, url: str, rows: Sequence[WebhookRow], *, batched: bool = False) -> Outcome:
        """POST one view (``rows`` is one row) or, ``batched``, the batch of ``rows`` to
        ``url``, signed; what became of it (nothing is written)."""
        head = rows[0].view
        ids = tuple(r.view.message_id for r in rows)
        if batched:
            webhook_id, body = batch_id(ids), encode_batch([r.view.payload for r in rows])
        else:
            webhook_id, body = head.message_id, head.payload
        headers = signed_headers(
            self._secrets(head.subscriber), webhook_id, int(self.clock()), body
        )
        start = time.perf_counter()
        try:
            status = self.client.post(url, content=body, headers=headers).status_code
            last = f"HTTP {status}"
        except (httpx2.HTTPError, httpx2.InvalidURL, OSError) as exc:
            status, last = 0, _failure(exc)
        finally:
            self.metrics.attempt_seconds.observe(time.perf_counter() - start)
        seqs = tuple(r.view.seq for r in rows)
        outcome = Outcome(head.subscriber, webhook_id, seqs, ids, last, batched=batched)
        if 200 <= status < 300:
            return outcome
        return replace(outcome, failed=self._failed(outcome, rows))

    def _failed(self, outcome: Outcome, rows: Sequence[WebhookRow]) -> tuple[WebhookAttempt, ...]:
        """The record of a failed attempt for each of ``rows``: when they are tried again,
        or (after the last attempt) that they are given up."""
        attempts = rows[0].attempts + 1
        now_ms = round(self.clock() * 1000)
        if attempts >= self.config.attempts:
            log.warning(
                "webhook %s %s for %s given up after %d attempts (%s)",
                f"batch of {len(rows)} views" if outcome.batched else "view",
                outcome.webhook_id,
                outcome.subscriber,
                attempts,
                outcome.last,
            )
            return tuple(
                WebhookAttempt(r.view.seq, attempts, r.next_attempt_ms, now_ms) for r in rows
            )
        c = self.config
        wait_s = retry_delay_s(
            attempts, initial_s=c.backoff_initial_s, max_s=c.backoff_max_s, rand=self.rand()
        )
        return tuple(
            WebhookAttempt(r.view.seq, attempts, now_ms + round(wait_s * 1000)) for r in rows
        )

    # -- keys and the store --------------------------------------------------------------
    def _reload_keys(self) -> None:
        """Read the key directory again if it changed (a rotation adds a file)."""
        try:
            seen = self._keys_dir.stat().st_mtime_ns
            if seen != self._keys_seen or self._ring is None:
                self._ring = ensure_webhook_key(self._keys_dir)
                self._keys_seen = seen
        except (OSError, GatewayError) as exc:
            if self._ring is None:
                raise
            log.warning("webhooks: the key directory was not read again: %s", exc)

    def _secrets(self, subscriber: str) -> list[bytes]:
        """``subscriber``'s secrets of the newest webhook key generation and the one before."""
        ring = self._ring
        if ring is None:
            ring = self._ring = ensure_webhook_key(self._keys_dir)
        gens = ring.generations(KeyKind.WEBHOOK)[-2:]
        return [ring.webhook_secret(subscriber, generation=g) for g in reversed(gens)]

    def _mark(self, *, force: bool) -> None:
        """Write the outcomes so far in one transaction (at most every
        :data:`MARK_EVERY_S` unless ``force``); kept for the next time if the store fails."""
        if not force and time.monotonic() - self._marked < MARK_EVERY_S:
            return
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
        if not outcomes:
            return
        self._marked = time.monotonic()
        at = self.clock()
        delivered = [seq for o in outcomes if o.delivered for seq in o.seqs]
        failed = [a for o in outcomes for a in o.failed]
        audit = [o.audit_entry(at, self.instance) for o in outcomes if o.kind == "failed"]
        try:
            with self.store.transaction() as tx:
                mark_delivered(tx, self.shard, delivered, round(at * 1000))
                record_webhook_attempts(tx, self.shard, failed)
                if audit:
                    tx.append_audit(audit, shard=self.shard)
        except GatewayError:
            with self._lock:
                self._outcomes[:0] = outcomes
            raise


def start_sink(ctx: ApiContext) -> Callable[[], None]:
    """Start delivering ``webhook`` views; returns the function that stops it."""
    sink = WebhookSink.from_context(ctx)
    sink.start()
    return sink.stop
