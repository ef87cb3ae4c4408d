"""The webhook sink: the views of subscribers whose delivery channel is ``webhook`` are
POSTed to their https url, signed per Standard Webhooks (:mod:`gateway.deliver.webhook`).

It runs in the API process, on the API's store (the pipeline only commits the views to the
outbox, so a slow receiver costs the pipeline nothing), for the worker's shard.

* **Order.** Each subscriber's views go in audit order, one at a time: a view waiting for
  its next attempt holds back that subscriber's later views until it is delivered or given
  up, so a platform never sees a vehicle's records out of order. Subscribers are served in
  parallel (up to :data:`LANES` at once): a slow receiver delays only its own views.
* **Retries.** A 2xx answer delivers the view. Anything else (a status, a timeout, a TLS or
  connection failure) counts an attempt; the next waits a random time up to
  ``min(backoff_max_s, backoff_initial_s * 2**(attempts-1))`` (full jitter). After
  ``api.webhook.attempts`` attempts the view is given up: ``failed_ms`` is set and a
  ``webhook.failed`` entry (subscriber, attempts, last outcome; never the url, the payload, a
  VIN or a position) goes to the worker's audit shard.
* **Writes.** Outcomes are kept in memory and written in one transaction at most every
  :data:`MARK_EVERY_S` (the pipeline shares SQLite's one writer). A view delivered but not
  yet marked when the process dies is sent again after a restart under the same
  ``webhook-id``: delivery is at least once, and receivers de-duplicate on that id.
* **Secrets.** Each subscriber's secret is derived from the key directory's webhook key
  (:meth:`gateway.keys.KeyRing.webhook_secret`); requests carry a signature with the
  newest generation's secret and one with the previous generation's, so after ``icvgw keys
  rotate --only webhook`` a platform keeps verifying until it is given its new secret
  (``icvgw webhook secret``). The key directory is read again when it changes.
* **Metrics** on the API's registry: ``icvgw_webhook_deliveries_total{subscriber,outcome}``
  (``delivered``, ``retried``, ``failed``) and ``icvgw_webhook_attempt_seconds``.
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import httpx2
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.api.context import ApiContext
from gateway.config import WebhookConfig
from gateway.deliver.webhook import retry_delay_s, signed_headers
from gateway.errors import ConfigError, GatewayError, Problem
from gateway.keys import KeyKind, KeyRing, ensure_webhook_key
from gateway.policy.bundle import PolicyBundle
from gateway.policy.schema import Channel
from gateway.store import Store
from gateway.store.outbox import (
    WebhookAttempt,
    WebhookRow,
    mark_delivered,
    pending_webhooks,
    record_webhook_attempts,
)
from gateway.tlog.entries import AdminAction, AdminEntry

__all__ = ["LANES", "MARK_EVERY_S", "Outcome", "WebhookSink", "start_sink"]

log = logging.getLogger(__name__)

LANES = 8
"""Subscribers whose views are being POSTed at the same time."""
MARK_EVERY_S = 0.5
"""Outcomes are written to the store at most this often (and when the sink stops)."""
_POLL_S = 0.25
"""How often the outbox is looked at for new views when nothing else wakes the sink."""
_BATCH = 200
"""Views handed to a subscriber's lane at once."""
OUTCOMES = ("delivered", "retried", "failed")
_QUIET = ("httpx2", "httpcore2")
"""The HTTP client's loggers, silenced below warnings: httpx2 logs every request's url at
INFO, and a webhook url may carry a token in its query string."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did: delivered, or the failed attempt's record (retry or give-up),
    with ``last`` naming the answer (``HTTP 503``, ``timeout``, ``tls``, ``connection``)."""

    subscriber: str
    message_id: str
    seq: int
    last: str
    failed: WebhookAttempt | None = None

    @property
    def delivered(self) -> bool:
        """The receiver answered 2xx."""
        return self.failed is None

    @property
    def kind(self) -> str:
        """``delivered``, ``retried`` or ``failed`` (given up)."""
        if self.failed is None:
            return "delivered"
        return "retried" if self.failed.failed_ms is None else "failed"


@dataclass
class _Lane:
    """One subscriber's queue position, as this process knows it (ahead of the store until
    the next write)."""

    subscriber: str
    after: int = -1
    """Every view up to this seq is delivered or given up."""
    retry: WebhookAttempt | None = None
    """The view waiting for its next attempt, if any."""
    busy: bool = False


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
    def _targets(self) -> dict[str, str]:
        """Subscriber -> url of the policy in force's webhook subscribers."""
        out: dict[str, str] = {}
        for sid, sub in self.bundle().subscribers.items():
            delivery = sub.view.delivery
            if delivery.channel is Channel.WEBHOOK and delivery.url is not None:
                out[sid] = delivery.url
        return out

    def _step(self) -> float:
        """Write outcomes if due, start each idle subscriber's due views; the seconds until
        the next pass is needed."""
        self._reload_keys()
        self._mark(force=False)
        now_ms = round(self.clock() * 1000)
        pause = _POLL_S
        for sub, url in self._targets().items():
            lane = self._lanes.get(sub)
            if lane is None:
                lane = self._lanes[sub] = _Lane(sub)
                for outcome in OUTCOMES:  # every series exists from the start, at 0
                    self.metrics.deliveries.labels(sub, outcome)
            if lane.busy or self._stop.is_set():
                continue
            rows = self._due(lane, now_ms) if self._waiting(lane, now_ms) == 0 else []
            if rows:
                lane.busy = True
                future = self._pool.submit(self._run_lane, lane, url, rows)
                with self._lock:
                    self._running.add(future)
                future.add_done_callback(functools.partial(self._lane_done, lane))
            else:
                pause = min(pause, self._waiting(lane, now_ms) or pause)
        return pause

    @staticmethod
    def _waiting(lane: _Lane, now_ms: int) -> float:
        """Seconds until the lane's view waiting for a retry is due (0: due, or none)."""
        return 0.0 if lane.retry is None else max(0.0, (lane.retry.next_attempt_ms - now_ms) / 1000)

    def _due(self, lane: _Lane, now_ms: int) -> list[WebhookRow]:
        """The lane's views due now, in order, up to the first that is not."""
        with self.store.snapshot() as rd:
            rows = pending_webhooks(rd, self.shard, lane.subscriber, after_seq=lane.after)
        due: list[WebhookRow] = []
        r, lane.retry = lane.retry, None
        for row in rows:
            if r is not None and r.seq == row.view.seq:  # newer than the store until marked
                row = replace(row, attempts=r.attempts, next_attempt_ms=r.next_attempt_ms)
            if row.next_attempt_ms > now_ms:
                lane.retry = WebhookAttempt(row.view.seq, row.attempts, row.next_attempt_ms)
                break
            due.append(row)
        return due

    def _lane_done(self, lane: _Lane, future: Future[None]) -> None:
        with self._lock:
            self._running.discard(future)
        lane.busy = False
        if (exc := future.exception()) is not None:
            log.error("webhooks: delivery to %s stopped: %r", lane.subscriber, type(exc))
        self._wake.set()

    def _run_lane(self, lane: _Lane, url: str, rows: list[WebhookRow]) -> None:
        """POST ``rows`` in order until one fails and waits for its next attempt."""
        for row in rows:
            if self._stop.is_set():
                return
            outcome = self.attempt(url, row)
            with self._lock:
                self._outcomes.append(outcome)
            self.metrics.deliveries.labels(lane.subscriber, outcome.kind).inc()
            if outcome.kind == "retried":
                lane.retry = outcome.failed
                return
            lane.after, lane.retry = row.view.seq, None

    def attempt(self, url: str, row: WebhookRow) -> Outcome:
        """POST one view to ``url``, signed; what became of it (nothing is written)."""
        view = row.view
        headers = signed_headers(
            self._secrets(view.subscriber), view.message_id, int(self.clock()), view.payload
        )
        start = time.perf_counter()
        try:
            status = self.client.post(url, content=view.payload, headers=headers).status_code
            last = f"HTTP {status}"
        except (httpx2.HTTPError, httpx2.InvalidURL, OSError) as exc:
            status, last = 0, _failure(exc)
        finally:
            self.metrics.attempt_seconds.observe(time.perf_counter() - start)
        if 200 <= status < 300:
            return Outcome(view.subscriber, view.message_id, view.seq, last)
        attempts = row.attempts + 1
        now_ms = round(self.clock() * 1000)
        if attempts >= self.config.attempts:
            failed = WebhookAttempt(view.seq, attempts, row.next_attempt_ms, now_ms)
            log.warning(
                "webhook view %s for %s given up after %d attempts (%s)",
                view.message_id,
                view.subscriber,
                attempts,
                last,
            )
        else:
            c = self.config
            wait_s = retry_delay_s(
                attempts, initial_s=c.backoff_initial_s, max_s=c.backoff_max_s, rand=self.rand()
            )
            failed = WebhookAttempt(view.seq, attempts, now_ms + round(wait_s * 1000))
        return Outcome(view.subscriber, view.message_id, view.seq, last, failed)

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
        delivered = [o.seq for o in outcomes if o.delivered]
        failed = [o.failed for o in outcomes if o.failed is not None]
        audit = [
            AdminEntry(
                at,
                self.instance,
                AdminAction.WEBHOOK_FAILED,
                o.message_id,
                {"subscriber": o.subscriber, "attempts": o.failed.attempts, "last": o.last},
            )
            for o in outcomes
            if o.failed is not None and o.failed.failed_ms is not None
        ]
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
