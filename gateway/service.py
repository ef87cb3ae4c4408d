"""The running gateway: ingest -> pipeline -> commit -> ack, and the outbox drained to sinks.

Threads, each with one job:

* paho's network threads (ingest and publisher) only move messages in and out of queues;
* the pipeline thread (:meth:`Gateway.run`) takes a micro-batch, runs it through the
  pipeline (:mod:`gateway.pipeline.run`: decode, batch, classify, geo, decide, shape),
  commits it in one store transaction, only then acknowledges its input messages, and
  hands the committed views to delivery;
* the delivery thread (:class:`~gateway.deliver.drainer.OutboxDrainer`) publishes committed
  views and marks them delivered when the broker confirms them.

A crash at any point loses nothing: unacknowledged input is redelivered by the broker and
de-duplicated against the store; committed but unconfirmed views are sent again under the
same message id. Shutdown (SIGTERM) stops reading, finishes the batch in hand, drains the
outbox, writes a final checkpoint and disconnects.

A store that fails (a full disk, a database that does not answer) is lived through, not
died of (:class:`~gateway.health.StoreHealth`): the batch in hand stays unacknowledged and
is retried with back-off, nothing new is taken meanwhile (the broker keeps it), and the
pipeline resumes by itself once a commit goes through. A retried batch is decided again
from scratch: nothing of a failed commit was kept, in the store or in memory.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from gateway import consents
from gateway.audit.log import AuditLog, CheckpointPolicy
from gateway.commit import Context, Written, commit_batch
from gateway.config import GatewayConfig
from gateway.deliver.batching import bundle_batching
from gateway.deliver.drainer import OutboxDrainer
from gateway.deliver.mqtt import MqttPublisher
from gateway.errors import StaleDecisionError, StoreError
from gateway.health import StoreHealth
from gateway.ingest.client import BrokerSpec, parse_broker_url
from gateway.ingest.source import MqttSource
from gateway.keys import ensure_store_key
from gateway.metrics import Metrics, MetricsServer, serve
from gateway.model import Envelope
from gateway.pipeline.batch import Keying, Pending, prepare
from gateway.pipeline.counts import check_counts, crossborder_counts, lock_crossborder
from gateway.pipeline.decide import sweep
from gateway.pipeline.decide.result import Decisions, Verdict
from gateway.pipeline.decide.rulebits import rule_ids
from gateway.pipeline.dedup import previous_generation_in_window
from gateway.pipeline.run import Decided, decide_pending, decode_envelopes
from gateway.policy.bundle import PolicyBundle
from gateway.policy.child import load_in_child
from gateway.policy.holder import PolicyHolder
from gateway.policy.rules import RuleId
from gateway.state.snapshot import (
    CounterKey,
    CrossBorderCount,
    HeldSet,
    HeldView,
    StateSnapshot,
    TripState,
)
from gateway.store import Reader, Store, Transaction, open_store
from gateway.store.dedup import prune_seen
from gateway.store.forget import prune_expired
from gateway.store.outbox import count_pending
from gateway.store.vehicle_states import all_vehicle_state
from gateway.tlog.entries import AdminAction, AdminEntry
from gateway.vehicle_state import decode as decode_state
from gateway.vehicle_state import documents

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Totals:
    """Running totals since start, for the demo's summary and the API. ``entries`` counts
    decision entries, ``admin`` administrative ones (policy loaded)."""

    messages: int = 0
    records: int = 0
    duplicates: int = 0
    deadletters: int = 0
    entries: int = 0
    admin: int = 0
    views: int = 0
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, written: Written) -> None:
        """Add one commit's figures."""
        self.entries += written.entries
        self.views += written.views
        self.deadletters += written.deadletters
        self.decisions.update(written.decisions)


FORGET_PER_RECORD = 2
"""Expired de-duplication rows each batch forgets per record it remembers (plus
:data:`FORGET_MIN`): forgetting keeps pace with remembering, and catches up after a pause."""
FORGET_MIN = 16
FORGET_PER_TICK = 2_000
"""Expired rows forgotten once a second, so an idle gateway forgets too."""
PRUNE_PER_SWEEP = 5_000
"""Rows of each table past its retention deleted per sweep (once a minute)."""
GC_THRESHOLDS = (10_000, 10, 10)
"""The collector's generation thresholds while the gateway runs (see ``_policy_loaded``)."""
DECIDE_ATTEMPTS = 3
"""Times a batch is decided at most: all but the last against counts read before the
commit's transaction (checked in it), the last under the cross-border locks."""

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""Mosquitto's count of messages it dropped (offline queue or in-flight limits)."""


_VERDICT_DECISION = {Verdict.SHARE: "shared", Verdict.REDACT: "redacted", Verdict.BLOCK: "blocked"}
_HELD_DECISION = {"share": "shared", "redact": "redacted"}


def cited_rules(
    decisions: Decisions | None, released: Sequence[HeldView], discarded: Sequence[HeldView]
) -> Counter[tuple[str, str, str]]:
    """How many decisions cite each rule, by (subscriber, decision, rule), as
    :func:`~gateway.commit.commit_batch` audits them: every pair not held, then held views
    released (their own decision) or discarded (blocked, citing ``pi.trip-trim`` too). One
    ``numpy.unique`` per subscriber and verdict: the rule sets of a batch are few."""
    out: Counter[tuple[str, str, str]] = Counter()
    if decisions is not None:
        for s, view in enumerate(decisions.plan.views):
            verdicts, rules = decisions.verdict[s], decisions.rules[s]
            for verdict, decision in _VERDICT_DECISION.items():
                bits, n = np.unique(rules[verdicts == verdict], return_counts=True)
                for b, k in zip(bits.tolist(), n.tolist(), strict=True):
                    for rule in rule_ids(b):
                        out[(view.id, decision, rule)] += k
    for h in released:
        for rule in dict.fromkeys(h.rules):
            out[(h.subscriber, _HELD_DECISION[h.decision], rule)] += 1
    for h in discarded:
        for rule in dict.fromkeys((*h.rules, RuleId.PI_TRIP_TRIM.value)):
            out[(h.subscriber, "blocked", rule)] += 1
    return out


def origin_of(worker: str) -> str:
    """The audit shard origin of a worker (also its checkpoint key name)."""
    return f"icv-gateway/{worker}"


class Gateway:
    """One gateway worker: one broker connection, one store, one audit shard."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics(registry or CollectorRegistry())
        self.keys = ensure_store_key(config.keys)
        self.holder = PolicyHolder(config.policies)
        self.origin = origin_of(config.worker)
        self.store: Store = open_store(config.store, shard=self.origin, keys=self.keys)
        self.spec: BrokerSpec = parse_broker_url(
            config.broker.url,
            protocol=config.broker.protocol,
            ca_file=config.broker.ca_file,
            cert_file=config.broker.cert_file,
            key_file=config.broker.key_file,
        )
        if config.broker.username or config.broker.password_env:
            self.spec = replace(
                self.spec,
                username=config.broker.username or self.spec.username,
                password=config.broker_password() or self.spec.password,
            )
        self.publisher = MqttPublisher(
            self.spec, f"icvgw-{config.worker}-out", max_inflight=config.output.max_inflight
        )
        self.audit = AuditLog.from_keyring(
            self.store,
            self.keys,
            origin=self.origin,
            instance=config.worker,
            policy=CheckpointPolicy(
                config.checkpoint.every_entries, config.checkpoint.every_seconds
            ),
            publisher=self._publish_checkpoint,
            clock=clock,
        )
        self.source = MqttSource(
            self.spec,
            config.input.topic,
            client_id=f"icvgw-{config.worker}-in",
            group=config.input.group,
            queue_bound=config.input.queue_bound,
            queue_bytes=config.input.queue_bytes,
            watch={DROPPED_TOPIC: self._broker_dropped} if config.broker.sys_stats else None,
        )
        self.drainer = OutboxDrainer(
            self.store, self.origin, self.publisher, self.metrics, clock=clock,
            batching=bundle_batching(lambda: self.holder.current),
            batch_max_bytes=config.output.batch_max_bytes,
        )  # fmt: skip
        self.metrics.watch(
            connected=lambda: bool(self.source.status.up and self.publisher.status.up),
            queue_depth=lambda: self.source.pending(),
            queue_bytes=lambda: self.source.pending_bytes(),
        )
        self._metrics_server: MetricsServer | None = None
        self.totals = Totals()
        started = clock()
        previous_hmac = previous_generation_in_window(self.store.snapshot, self.keys)
        self.keying = Keying(self.keys, self.vehicle_ref, previous_hmac, started)
        """How the batch stage keys vehicles and inputs."""
        self.health = StoreHealth(self.metrics)
        self.clean_shutdown = True
        """False when the last shutdown could not write its final checkpoint."""
        self._policy_unrecorded = False
        self._stop = threading.Event()
        self._refs: dict[str, str] = {}
        self.state = self._load_state()
        self._last_sweep = clock()
        # A bundle loaded by the policy thread, waiting for the pipeline to adopt it.
        self._next_bundle: PolicyBundle | None = None
        self._next_lock = threading.Lock()
        self._policy_thread: threading.Thread | None = None
        self._policy_loaded()

    # -- state ---------------------------------------------------------------------------
    def _load_state(self) -> StateSnapshot:
        trips: dict[str, TripState] = {}
        last_sent: dict[str, dict[str, float]] = {}
        held: list[HeldView] = []
        with self.store.transaction() as tx:
            stored = all_vehicle_state(tx)
        not_after = self.clock() + self.holder.current.rules.ingest.max_future_s
        for vehicle, data in stored.items():
            trip, sent, views = decode_state(vehicle, data, not_after=not_after)
            if trip is not None:
                trips[vehicle] = trip
            for sub, t in sent.items():
                last_sent.setdefault(sub, {})[vehicle] = t
            held.extend(views)
        log.info("loaded decision state of %d vehicles (%d held views)", len(stored), len(held))
        return StateSnapshot(
            now=self.clock(),
            trips=trips,
            last_sent=last_sent,
            held=HeldSet(held),
        )

    def poll_policy(self) -> bool:
        """Put in force the bundle the policy thread loaded, if any (without a policy
        thread: check the files and load now); True if a new version came into force.
        Called by the pipeline once a second."""
        if self._policy_thread is None:
            self._prepare_policy()
        with self._next_lock:
            bundle, self._next_bundle = self._next_bundle, None
        if bundle is not None and self.holder.adopt(bundle):
            self._policy_unrecorded = True  # until its audit entry is committed
            self._policy_loaded()
            return True
        return False

    def _prepare_policy(self, loader: Callable[[Path], PolicyBundle] | None = None) -> None:
        """Load the bundle (with ``loader``, default in this thread) if its files changed
        or SIGHUP asked for it, and build the zone indexes the bundle in force has built,
        ready for the pipeline to adopt."""
        bundle = self.holder.check(loader)
        if bundle is None:
            return
        try:
            bundle.zones.warm(self.holder.current.zones.bands_built())
        except Exception:  # only a head start: the first batch builds what is missing
            log.exception("policy: building the new zone indexes ahead of use failed")
        with self._next_lock:
            self._next_bundle = bundle

    def _watch_policy(self) -> None:
        """The policy thread: it checks the files once a second and has a changed bundle
        loaded in a child process (:mod:`gateway.policy.child`): on the pipeline thread, or
        on this one, a large bundle's load held the pipeline up for seconds
        (``bench/RESULTS.md``, the policy edit under load)."""
        while not self._stop.wait(1.0):
            try:
                self._prepare_policy(load_in_child)
            except Exception:  # a bug here must not end reloading for good
                log.exception("policy thread: unexpected error")

    def _policy_loaded(self) -> None:
        """Audit the bundle version now in force; seed the store with its consents."""
        bundle = self.holder.current
        log.info("policy version %s in force", bundle.short_version)
        self.metrics.policy_in_force(bundle.version)
        now = self.clock()
        self.totals.admin += consents.seed(
            self.store, bundle, self.vehicle_ref, at=now, instance=self.config.worker
        )
        entry = AdminEntry(
            time=self.clock(),
            instance=self.config.worker,
            action=AdminAction.POLICY_LOADED,
            subject=bundle.version,
            details={"directory": str(self.holder.directory.name)},
        )
        with self.store.transaction() as tx:
            tx.append_audit([entry], shard=self.origin)
        self._policy_unrecorded = False
        self.totals.admin += 1
        # The bundle (10,000 zones, the policy) lives until the next reload: keep it out of
        # the collector's generations, whose full passes otherwise walk it every few batches.
        gc.freeze()
        # Fewer, larger collections: a batch allocates tens of thousands of short-lived
        # containers (freed by reference counting; cycles are rare), and at the defaults
        # (700, 10, 10) the collector ran 2,093 times over 50,000 inputs for 1.07 s of CPU,
        # 0.20 s at these (bench_pipeline, 10,000 vehicles).
        gc.set_threshold(*GC_THRESHOLDS)

    def _broker_dropped(self, payload: bytes) -> None:
        try:
            self.metrics.broker_dropped.set(int(payload))
        except ValueError:
            log.warning("unreadable broker drop counter: %r", payload[:40])

    def vehicle_ref(self, vin: str) -> str:
        """The keyed reference of a VIN (cached: the same VINs recur every second)."""
        ref = self._refs.get(vin)
        if ref is None:
            if len(self._refs) > 200_000:
                self._refs.clear()
            ref = self._refs[vin] = self.keys.vehicle_ref(vin)
        return ref

    def _crossborder(
        self, bundle: PolicyBundle, vehicles: Sequence[str], now: float, rd: Reader | None = None
    ) -> dict[CounterKey, CrossBorderCount]:
        """The cross-border counts ``bundle``'s batch of ``vehicles`` is decided on, read in
        ``rd``, else in a snapshot (:func:`~gateway.pipeline.counts.crossborder_counts`)."""
        if rd is None:
            return crossborder_counts(self.store.snapshot, bundle, vehicles, now, self.vehicle_ref)
        given: Reader = rd
        return crossborder_counts(
            lambda: nullcontext(given), bundle, vehicles, now, self.vehicle_ref
        )

    # -- the pipeline --------------------------------------------------------------------
    def process(self, envelopes: Sequence[Envelope]) -> Written:
        """Decide and commit one micro-batch; acknowledges its input after the commit.
        Raises :class:`~gateway.errors.StoreError` if the store fails: then nothing of the
        batch is kept or acknowledged, and it may be processed again."""
        t0 = time.perf_counter()
        if self._policy_unrecorded:  # no decision under a bundle whose loading is not audited
            self._policy_loaded()
        bundle = self.holder.current
        now = self.clock()
        decoded = decode_envelopes(envelopes, bundle, now)
        if decoded.too_wide:  # too many field names for one batch's columns: in two parts
            half = len(envelopes) // 2
            return self.process(envelopes[:half]).merged(self.process(envelopes[half:]))
        with self.store.snapshot() as rd:
            pending = prepare(
                envelopes, decoded, rd, bundle=bundle, state=self.state, now=now, keying=self.keying
            )
        written, decided = self._decide_and_commit(pending)
        committed = time.time()
        self.state = decided.new_state
        for env in envelopes:
            if env.ack is not None:
                env.ack()
        self.drainer.submit(written.outbox)
        self._count(envelopes, pending, decided, written, time.perf_counter() - t0, committed)
        return written

    def _decide(self, p: Pending, counts: dict[CounterKey, CrossBorderCount]) -> Decided:
        """Decide ``p``'s records on the cross-border ``counts`` given (nothing written)."""
        return decide_pending(p, counts, keys=self.keys.pseudonym_key, vehicle_ref=self.vehicle_ref)

    def _decide_and_commit(self, p: Pending) -> tuple[Written, Decided]:
        """Decide and commit ``p``. The decision reads the cross-border counts outside the
        commit's transaction (other workers keep writing meanwhile); the commit checks them
        under the counters' locks and, if another worker changed them, is rolled back and
        the batch decided again on fresh counts. The last attempt decides under the locks."""
        for attempt in range(1, DECIDE_ATTEMPTS):
            counts = self._crossborder(p.bundle, p.work.vehicle.tolist(), p.base.now)
            try:
                return self._commit(p, self._decide(p, counts))
            except StaleDecisionError as exc:
                log.info("batch decided again (attempt %d): %s", attempt, exc)
        return self._commit(p, None)

    def _commit(self, p: Pending, decided: Decided | None) -> tuple[Written, Decided]:
        """One transaction: the decision (``None``: made in it, under the counters' locks)
        with its cross-border counts checked
        (:func:`~gateway.pipeline.counts.check_counts`), the batch written, some expired
        records forgotten."""
        t_commit = time.perf_counter()
        with self.store.transaction() as tx:
            if decided is None:
                lock_crossborder(tx, p.bundle, p.base.now)
                counts = self._crossborder(p.bundle, p.work.vehicle.tolist(), p.base.now, tx)
                decided = self._decide(p, counts)
            check_counts(tx, decided.state, decided.crossborder)
            written = commit_batch(
                tx,
                self._context(p.bundle, p.base.now),
                dead=p.dead,
                decisions=decided.decisions,
                shaped=decided.shaped,
                released=decided.delta.released,
                discarded=decided.delta.discarded,
                seen=p.seen,
                vehicle_states=decided.vehicle_docs,
                crossborder=decided.crossborder,
            )
            prune_seen(
                tx,
                self._dedup_edge_ms(p.bundle, p.base.now),
                FORGET_MIN + FORGET_PER_RECORD * p.rows,
            )
        self.metrics.batch_commit_seconds.observe(time.perf_counter() - t_commit)
        return written, decided

    def _count(
        self,
        envelopes: Sequence[Envelope],
        p: Pending,
        decided: Decided,
        written: Written,
        seconds: float,
        committed: float,
    ) -> None:
        """Count one batch, in the metrics and the totals: the one place that does.
        ``committed``: the wall-clock time of its commit (messages' receipt times are)."""
        m = self.metrics
        received = np.fromiter((e.received_at for e in envelopes), np.float64, len(envelopes))
        m.end_to_end.observe(np.where(received > 0, committed - received, np.nan))
        if decided.decisions is not None:
            for sub_id, n in decided.decisions.crossborder_blocked().items():
                m.crossborder_blocked.labels(sub_id).inc(n)
        m.messages.inc(len(envelopes))
        m.records.inc(p.rows)
        m.duplicates.inc(p.duplicates + p.dead_duplicates)
        m.audit_entries.inc(written.entries)
        for (sub, decision), n in written.decisions.items():
            if sub:
                m.decisions.labels(sub, decision).inc(n)
        m.cite(cited_rules(decided.decisions, decided.delta.released, decided.delta.discarded))
        for d in p.dead:
            m.deadletters.labels(d.reason).inc()
        # Rows only: a payload that yielded no row is counted by ``deadletters`` alone.
        m.observe_stage(
            "pipeline",
            received=p.rows,
            sent=p.rows - p.duplicates - p.rejected,
            discarded=p.duplicates,
            failed=p.rejected,
            seconds=seconds,
        )
        m.stale_acks.set(self.source.stale_acks)
        t = self.totals
        t.messages += len(envelopes)
        t.records += p.rows
        t.duplicates += p.duplicates + p.dead_duplicates
        t.add(written)

    # -- running -------------------------------------------------------------------------
    def _publish_checkpoint(self, origin: str, note: bytes) -> None:
        topic = f"{self.config.output.checkpoint_prefix}/{self.config.worker}"
        self.publisher.publish(topic, note, lambda ok: None, retain=True, timeout=10)
        self.metrics.checkpoint_size.set(int(note.split(b"\n")[1]))

    def start(self, timeout: float = 30.0) -> None:
        """Serve the metrics endpoint (``metrics.*``), connect the publisher and the input,
        start delivering the outbox. Raises :class:`~gateway.errors.IngestError` with the
        reason as soon as retrying cannot help (refused credentials, a certificate that does
        not verify), after ``timeout`` seconds with the latest reason otherwise,
        :class:`~gateway.errors.ConnectInterrupted` as soon as :meth:`stop` is called, and
        :class:`~gateway.errors.ConfigError` if the metrics address cannot be listened on.
        The endpoint is served while connecting (the API's readiness then names the broker),
        and stopped again if the start fails."""
        m = self.config.metrics
        if m.enabled and self._metrics_server is None:
            self._metrics_server = serve(self.metrics.registry, m.host, m.port)
        try:
            self._connect(timeout)
        except BaseException:
            self._stop_serving_metrics()
            raise

    def _connect(self, timeout: float) -> None:
        self.publisher.start()
        self.publisher.status.wait(self.publisher.wait_connected, timeout, self._stop)
        self.drainer.start()
        self._policy_thread = threading.Thread(
            target=self._watch_policy, name="icvgw-policy", daemon=True
        )
        self._policy_thread.start()
        self.source.start()
        self.source.status.wait(self.source.wait_connected, timeout, self._stop)
        log.info(
            "gateway %s running: %s -> %s", self.config.worker, self.config.input.topic, self.spec
        )

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Process micro-batches until :meth:`stop`; then shut down gracefully. While the
        store fails, the batch in hand is retried with back-off and nothing new is taken."""
        cfg = self.config.input
        wait = cfg.batch_wait_ms / 1000
        last_tick = time.monotonic()
        held: list[Envelope] = []  # taken, not committed: never acknowledged
        try:
            while not self._stop.is_set():
                if not held:
                    held = self.source.get_batch(cfg.batch_max, wait)
                if held and self._store_step(functools.partial(self.process, held), len(held)):
                    held = []
                if not held and time.monotonic() - last_tick >= 1.0:
                    last_tick = time.monotonic()
                    self._store_step(self._tick)
                if not self.health.ok:
                    self._stop.wait(self.health.delay)
        finally:
            if held:
                log.info("%d messages in hand left unacknowledged for redelivery", len(held))
            self.shutdown()

    def _store_step(self, step: Callable[[], object], held: int = 0) -> bool:
        """Run one step of the loop; False (recorded in :attr:`health`) if the store failed."""
        try:
            step()
        except StoreError as exc:
            self.health.failed(exc, held=held + self.source.pending())
            return False
        self.health.succeeded()
        return True

    def status(self) -> str:
        """One line for people: running, or why not."""
        if not self.health.ok:
            return f"{self.health.status()} (input not acknowledged, retrying)"
        return "running"

    def _tick(self) -> None:
        """Once a second: reload the policy if it changed, checkpoint if due, forget some
        records seen that left the window; every minute: end quiet trips."""
        self.poll_policy()
        self.audit.checkpoint_if_due()
        with self.store.snapshot() as rd:
            self.metrics.outbox_pending.set(count_pending(rd, self.origin))
        now = self.clock()
        self.forget_seen(now, FORGET_PER_TICK)
        if now - self._last_sweep >= 60:
            self._last_sweep = now
            self.sweep(now)

    def _dedup_edge_ms(self, bundle: PolicyBundle, now: float) -> int:
        return round((now - bundle.rules.ingest.dedup_window_s) * 1000)

    def forget_seen(self, now: float, limit: int | None = None) -> int:
        """Forget up to ``limit`` records (all if ``None``) that left the de-duplication
        window, the oldest first; returns how many. Batches forget some as they commit."""
        with self.store.transaction() as tx:
            return prune_seen(tx, self._dedup_edge_ms(self.holder.current, now), limit)

    def sweep(self, now: float) -> Written:
        """Discard held views of trips that ended by silence (audited as blocked)."""
        bundle = self.holder.current
        delta = sweep(self.state, bundle, now)
        new_state = self.state.apply(delta, now=now)
        touched = {h.vehicle for h in delta.discarded}
        ctx = self._context(bundle, now)
        with self.store.transaction() as tx:
            written = commit_batch(
                tx,
                ctx,
                dead=(),
                decisions=None,
                shaped=None,
                released=(),
                discarded=delta.discarded,
                seen=(),
                vehicle_states=documents(new_state, touched),
                crossborder={},
            )
            self._prune_expired(tx, bundle, now)
        self.state = new_state
        self.drainer.submit(written.outbox)
        self.totals.add(written)
        self.metrics.audit_entries.inc(written.entries)
        for (sub, decision), n in written.decisions.items():
            self.metrics.decisions.labels(sub, decision).inc(n)
        self.metrics.cite(cited_rules(None, (), delta.discarded))
        return written

    def _prune_expired(self, tx: Transaction, bundle: PolicyBundle, now: float) -> None:
        """Delete what the rules keep no longer (retention.*_days; PIPL art. 47), at most
        ``PRUNE_PER_SWEEP`` rows of each table per sweep."""
        kept = bundle.rules.retention

        def edge(days: float) -> int:
            return round((now - days * 86400) * 1000)

        prune_expired(
            tx,
            outbox_ms=edge(kept.outbox_days),
            deadletter_ms=edge(kept.deadletter_days),
            vehicle_state_ms=edge(kept.vehicle_state_days),
            limit=PRUNE_PER_SWEEP,
        )

    def _context(self, bundle: PolicyBundle, now: float) -> Context:
        return Context(
            shard=self.origin,
            instance=self.config.worker,
            now=now,
            bundle=bundle,
            vehicle_ref=self.vehicle_ref,
            digest=self.keys.payload_digest,
            pseudonym_key=self.keys.pseudonym_key,
            deadletter_prefix=self.config.output.deadletter_prefix,
            topic_prefix=self.config.output.topic_prefix,
        )

    def shutdown(self, drain_timeout: float = 10.0) -> None:
        """Stop reading, finish what is queued, drain the outbox, checkpoint, disconnect.
        A failing store does not stop the rest: the final checkpoint is tried until
        ``drain_timeout`` passes (the next start writes it otherwise), and
        :attr:`clean_shutdown` says whether it was written."""
        deadline = time.monotonic() + drain_timeout
        self._stop_serving_metrics()  # a stopping pipeline is not ready
        leftover = self._stop_reading()
        if leftover:
            # Received but not processed: not acknowledged, the broker keeps them.
            log.info("%d received messages left unacknowledged for redelivery", leftover)
        self.drainer.drain(drain_timeout)
        self.drainer.stop()
        if not self._stop.is_set():  # ends the policy thread too
            self._stop.set()
        if self._policy_thread is not None:
            self._policy_thread.join(drain_timeout)
        self.clean_shutdown = self._final_checkpoint(deadline)
        self.publisher.flush(max(0.0, deadline - time.monotonic()))
        self.publisher.stop()
        self.store.close()

    def _stop_serving_metrics(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            server.stop()

    def _stop_reading(self) -> int:
        """Disconnect the input; returns how many received messages were left unprocessed.
        The queue is emptied while the input stops: paho's thread may be waiting to hand
        over a message (the queue fills while a failing store holds the pipeline back), and
        only then can it send DISCONNECT and end."""
        stopper = threading.Thread(target=self.source.stop, name="icvgw-ingest-stop")
        stopper.start()
        left = 0
        while stopper.is_alive():
            left += len(self.source.get_batch(self.config.input.queue_bound, 0.05))
        stopper.join()
        return left + len(self.source.get_batch(self.config.input.queue_bound, 0))

    def _final_checkpoint(self, deadline: float) -> bool:
        """Write the shutdown checkpoint, retrying a failing store until ``deadline``."""
        delay = self.health.min_delay
        while True:
            try:
                self.audit.close()
                return True
            except StoreError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error(
                        "final checkpoint not written: %s; the next start writes it "
                        "(every committed entry is in the store)",
                        exc,
                    )
                    return False
                time.sleep(min(delay, left))
                delay = min(delay * 2, self.health.max_delay)

    def pending_views(self) -> int:
        """Views committed and not yet confirmed by the broker."""
        with self.store.snapshot() as rd:
            return count_pending(rd, self.origin)
