"""The running gateway: ingest -> pipeline -> commit -> ack, and the outbox drained to sinks.

Threads, each with one job:

* paho's network threads (ingest and publisher) only move messages in and out of queues;
* the pipeline thread (:meth:`Gateway.run`) takes a micro-batch, decodes, de-duplicates,
  decides and shapes it, commits it in one store transaction, and only then acknowledges
  its input messages;
* the delivery thread (:class:`~gateway.deliver.outbox.OutboxDrainer`) publishes committed
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from gateway import consents
from gateway.audit.entries import AdminAction, AdminEntry
from gateway.audit.log import AuditLog, CheckpointPolicy
from gateway.audit.outbox import (
    all_vehicle_state,
    count_pending,
    prune_expired,
    prune_seen,
    seen_records,
    seen_under,
)
from gateway.audit.store import Reader, Store, Transaction, open_store
from gateway.commit import Context, DeadInput, Written, commit_batch
from gateway.config import GatewayConfig
from gateway.deliver.mqtt import MqttPublisher
from gateway.deliver.outbox import OutboxDrainer
from gateway.errors import StaleDecisionError, StoreError
from gateway.health import StoreHealth
from gateway.ingest.client import BrokerSpec, parse_broker_url
from gateway.ingest.source import MqttSource
from gateway.keys import KeyKind, ensure_store_key
from gateway.metrics import Metrics
from gateway.model import Batch, Envelope, ErrorCode
from gateway.pipeline.decide import Decisions, sweep
from gateway.pipeline.decode import MAX_CELLS, decode, topic_vehicle
from gateway.pipeline.shape import Shaped, evaluate
from gateway.policy.bundle import PolicyBundle
from gateway.policy.child import load_in_child
from gateway.policy.holder import PolicyHolder
from gateway.policy.schema import ExportDataClass, counting_year
from gateway.state.snapshot import (
    CounterKey,
    CrossBorderCount,
    HeldSet,
    HeldView,
    StateDelta,
    StateSnapshot,
    TripState,
)
from gateway.vehicle_state import decode as decode_state
from gateway.vehicle_state import encode as encode_state

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
DECIDE_ATTEMPTS = 3
"""Times a batch is decided at most: all but the last against counts read before the
commit's transaction (checked in it), the last under the cross-border locks."""

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""Mosquitto's count of messages it dropped (offline queue or in-flight limits)."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A batch ready to decide: its fresh records (``work``), the state before it (``base``,
    without cross-border counts), its dead inputs, the record keys it marks seen, and its
    number of rows."""

    bundle: PolicyBundle
    work: Batch
    base: StateSnapshot
    dead: list[DeadInput]
    seen: list[tuple[str, str]]
    rows: int


@dataclass(frozen=True, slots=True)
class Decided:
    """One decision of a batch: the ``state`` it was decided on (with the cross-border
    counts read), the engine's output, the state after it, the vehicle documents to store
    and the subjects it counts per (recipient, year, category)."""

    state: StateSnapshot
    decisions: Decisions | None
    shaped: Shaped | None
    delta: StateDelta
    new_state: StateSnapshot
    vehicle_docs: dict[str, bytes]
    crossborder: dict[tuple[str, int, str], list[str]]


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
            self.store, self.origin, self.publisher, self.metrics, clock=clock
        )
        self.totals = Totals()
        self._started = clock()
        self._previous_hmac = self._previous_hmac_in_window()
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

    def _broker_dropped(self, payload: bytes) -> None:
        try:
            self.metrics.broker_dropped.set(int(payload))
        except ValueError:
            log.warning("unreadable broker drop counter: %r", payload[:40])

    def _dead_id(self, env: Envelope) -> str:
        """A stable id for an unusable input: a keyed digest of its topic and bytes, so a
        redelivery gets the same id (and is recognised) and the id reveals nothing."""
        digest = self.keys.payload_digest(env.topic.encode() + b"\0" + env.payload)
        return "dl:" + digest.rsplit(":", 1)[-1][:32]

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
        """Counts for every cross-border subscriber of ``bundle`` (the batch's) this year,
        with the batch's vehicles that are already counted (what the engine needs; the
        store holds keyed refs), read from the store (in ``rd``, else a snapshot): the one
        source of truth, which every worker's commits keep."""
        year = counting_year(bundle.rules.crossborder.year_utc_offset_hours, now)
        subs = sorted(s.id for s in bundle.subscribers.values() if s.cross_border)
        if not subs or not vehicles:
            return {}
        if rd is None:
            with self.store.snapshot() as snap:
                return self._counts_in(snap, subs, year, vehicles)
        return self._counts_in(rd, subs, year, vehicles)

    def _counts_in(
        self, rd: Reader, subs: list[str], year: int, vehicles: Sequence[str]
    ) -> dict[CounterKey, CrossBorderCount]:
        out: dict[CounterKey, CrossBorderCount] = {}
        unique = list(dict.fromkeys(vehicles))
        refs = [self.vehicle_ref(v) for v in unique]
        for sub in subs:
            for data_class in ExportDataClass:
                count = rd.crossborder_count(sub, year, data_class.value)
                if count == 0:
                    continue
                new = set(rd.crossborder_new(sub, year, refs, data_class.value))
                known = frozenset(v for v, r in zip(unique, refs, strict=True) if r not in new)
                out[(sub, year, data_class)] = CrossBorderCount(count, known)
        return out

    def _lock_crossborder(self, tx: Transaction, bundle: PolicyBundle, now: float) -> None:
        """Take the counters' locks of every cross-border subscriber of ``bundle`` this year
        (in one order, as every commit takes them)."""
        year = counting_year(bundle.rules.crossborder.year_utc_offset_hours, now)
        for sub_id in sorted(s.id for s in bundle.subscribers.values() if s.cross_border):
            tx.lock_crossborder(sub_id, year)

    @staticmethod
    def _check_counts(tx: Transaction, decided: Decided) -> None:
        """Under the counters' locks, the counts of every (recipient, year) the batch adds
        subjects to must be those it was decided on; else raise :class:`StaleDecisionError`.
        Every class is compared, not only those added to: a tier may depend on any."""
        pairs = sorted({(recipient, year) for recipient, year, _ in decided.crossborder})
        for recipient, year in pairs:
            tx.lock_crossborder(recipient, year)
        stale = [
            (recipient, year, c.value)
            for recipient, year in pairs
            for c in ExportDataClass
            if tx.crossborder_count(recipient, year, c.value)
            != decided.state.count((recipient, year, c)).count
        ]
        if stale:
            raise StaleDecisionError(stale)

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
        decoded = decode(
            envelopes,
            aliases=bundle.aliases,
            max_payload=bundle.rules.ingest.max_payload_bytes,
            max_records=bundle.rules.ingest.max_records_per_payload,
            check_digit=bundle.rules.ingest.verify_vin_check_digit,
            window=(now - bundle.rules.ingest.max_age_s, now + bundle.rules.ingest.max_future_s),
            max_cells=MAX_CELLS,
        )
        if decoded.too_wide:  # too many field names for one batch's columns: in two parts
            half = len(envelopes) // 2
            return self.process(envelopes[:half]).merged(self.process(envelopes[half:]))
        batch = decoded.batch
        dead: list[DeadInput] = []
        for d in decoded.dead:
            env = envelopes[d.source]
            vin = topic_vehicle(env.topic)
            dead.append(
                DeadInput(
                    now,
                    d.reason,
                    env.topic,
                    env.payload,
                    self.vehicle_ref(vin) if vin else None,
                    self._dead_id(env),
                )
            )
        ok = batch.ok
        # A record's place in its own payload (rows of one payload are contiguous).
        first_row = np.searchsorted(batch.source, batch.source, side="left")
        dead_ids: dict[int, str] = {}  # one digest per payload, not one per bad record
        for row in np.flatnonzero(~ok).tolist():
            env = envelopes[int(batch.source[row])]
            index = row - int(first_row[row])
            vin = topic_vehicle(env.topic)
            if int(batch.source[row]) not in dead_ids:
                dead_ids[int(batch.source[row])] = self._dead_id(env)
            dead.append(
                DeadInput(
                    now,
                    ErrorCode(int(batch.error[row])).reason,
                    env.topic,
                    env.payload,
                    self.vehicle_ref(vin) if vin else None,
                    f"{dead_ids[int(batch.source[row])]}:{index}",
                )
            )
        # De-duplication: the same record (vehicle, msg_id or timestamp) is decided once.
        rows = np.flatnonzero(ok)
        keys: list[tuple[str, str]] = []
        vehicles = batch.vehicle.tolist()
        msg_ids = batch.msg_id.tolist() if batch.msg_id is not None else [None] * len(batch)
        times = batch.time.tolist()
        for row in rows.tolist():
            mid = msg_ids[row]
            record = f"m:{mid}" if mid is not None else f"t:{round(times[row] * 1000)}"
            keys.append((self.vehicle_ref(vehicles[row]), record))
        batch_vins = {vehicles[row] for row in rows.tolist()}
        vin_of = {self.vehicle_ref(v): v for v in batch_vins}
        dead_keys = [(d.vehicle_ref or "-", d.message_id) for d in dead]
        with self.store.snapshot() as rd:
            seen = self._seen(rd, keys + dead_keys, vin_of, now)
            consent_of = self._consent_refs(vin_of)
            book = consents.book(consents.of_vehicles(rd, list(consent_of)), consent_of)
        # A redelivered unusable input is not dead-lettered (and audited) twice either.
        first = {k: i for i, k in reversed(list(enumerate(dead_keys)))}  # linear, not i²
        unseen = [k not in seen and first[k] == i for i, k in enumerate(dead_keys)]
        dead_dups = unseen.count(False)
        dead = [d for d, keep in zip(dead, unseen, strict=True) if keep]
        dead_keys = [k for k, keep in zip(dead_keys, unseen, strict=True) if keep]
        fresh: list[int] = []
        fresh_keys: list[tuple[str, str]] = []
        taken: set[tuple[str, str]] = set()
        for row, key in zip(rows.tolist(), keys, strict=True):
            if key in seen or key in taken:
                continue
            taken.add(key)
            fresh.append(row)
            fresh_keys.append(key)
        duplicates = len(rows) - len(fresh)
        work = batch.take(np.asarray(fresh, dtype=np.intp))
        base = replace(self.state, now=now, consents=book)
        pending = Pending(bundle, work, base, dead, fresh_keys + dead_keys, len(batch))
        written, decided = self._decide_and_commit(pending)
        if decided.decisions is not None:
            for sub_id, n in decided.decisions.crossborder_blocked().items():
                self.metrics.crossborder_blocked.labels(sub_id).inc(n)
        self.state = decided.new_state
        for env in envelopes:
            if env.ack is not None:
                env.ack()
        self.drainer.submit(written.outbox)
        self._count(
            envelopes,
            len(batch),
            duplicates,
            dead_dups,
            len(batch) - len(rows),
            written,
            [d.reason for d in dead],
            time.perf_counter() - t0,
        )
        return written

    def _decide(self, p: Pending, counts: dict[CounterKey, CrossBorderCount]) -> Decided:
        """Decide ``p``'s records on the cross-border ``counts`` given (nothing written)."""
        now = p.base.now
        state = replace(p.base, crossborder=counts)
        decisions = shaped = None
        if len(p.work):
            decisions, shaped = evaluate(p.work, p.bundle, state, self.keys.pseudonym_key)
            delta = decisions.delta
            new_state = state.apply(delta, shaped.held, now=now)
        else:
            delta = StateDelta()
            new_state = replace(state, now=now)
        touched = set(p.work.vehicle.tolist())
        touched.update(h.vehicle for h in delta.released)
        touched.update(h.vehicle for h in delta.discarded)
        crossborder: dict[tuple[str, int, str], list[str]] = {}
        for sub, year, data_class, vin in delta.counted:
            crossborder.setdefault((sub, year, data_class.value), []).append(self.vehicle_ref(vin))
        docs = self._vehicle_docs(new_state, touched)
        return Decided(state, decisions, shaped, delta, new_state, docs, crossborder)

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
        with its cross-border counts checked (:meth:`_check_counts`), the batch written,
        some expired records forgotten."""
        t_commit = time.perf_counter()
        with self.store.transaction() as tx:
            if decided is None:
                self._lock_crossborder(tx, p.bundle, p.base.now)
                counts = self._crossborder(p.bundle, p.work.vehicle.tolist(), p.base.now, tx)
                decided = self._decide(p, counts)
            self._check_counts(tx, decided)
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

    def _seen(
        self, rd: Reader, keys: list[tuple[str, str]], vin_of: dict[str, str], now: float
    ) -> set[tuple[str, str]]:
        """Which of ``keys`` were decided before. While records of an older HMAC key
        generation can still be in the window (the key was rotated before this start),
        their keys under that generation are looked up too."""
        seen = seen_records(rd, keys)
        old = self._previous_hmac
        window = self.holder.current.rules.ingest.dedup_window_s
        if old is None or now - self._started > window:
            return seen
        earlier = {
            (self.keys.vehicle_ref(vin_of[ref], generation=old), record): (ref, record)
            for ref, record in keys
            if ref in vin_of and not record.startswith("dl:")
        }
        found = seen_records(rd, list(earlier), generation=old)
        return seen | {earlier[k] for k in found}

    def _consent_refs(self, vin_of: dict[str, str]) -> dict[str, str]:
        """``vin_of`` (current references to VINs) with the references of every older HMAC
        key generation added: a consent keeps the reference it was recorded under, so one
        granted before ``icvgw keys rotate`` is found under the older one."""
        older = self.keys.generations(KeyKind.HMAC)[:-1]
        if not older:
            return vin_of
        out = dict(vin_of)
        for vin in vin_of.values():
            for gen in older:
                out[self.keys.vehicle_ref(vin, generation=gen)] = vin
        return out

    def _previous_hmac_in_window(self) -> int | None:
        """The previous HMAC key generation, if the de-duplication window holds records
        keyed with it (the key was rotated while the worker was stopped)."""
        gens = self.keys.generations(KeyKind.HMAC)
        if len(gens) < 2:
            return None
        with self.store.snapshot() as rd:
            return gens[-2] if seen_under(rd, f"k{gens[-2]}:") else None

    def _vehicle_docs(self, state: StateSnapshot, vehicles: set[str]) -> dict[str, bytes]:
        held: dict[str, list[HeldView]] = {}
        for view in state.held:
            if view.vehicle in vehicles:
                held.setdefault(view.vehicle, []).append(view)
        vins = list(vehicles)
        return {
            vin: encode_state(trip, sent, held.get(vin, ()))
            for vin, (trip, sent) in zip(vins, state.vehicle_rows(vins), strict=True)
        }

    def _count(
        self,
        envelopes: Sequence[Envelope],
        rows: int,
        duplicates: int,
        dead_duplicates: int,
        rejected: int,
        written: Written,
        dead_reasons: list[str],
        seconds: float,
    ) -> None:
        m = self.metrics
        m.messages.inc(len(envelopes))
        m.duplicates.inc(duplicates + dead_duplicates)
        m.audit_entries.inc(written.entries)
        for (sub, decision), n in written.decisions.items():
            if sub:
                m.decisions.labels(sub, decision).inc(n)
        for reason in dead_reasons:
            m.deadletters.labels(reason).inc()
        # Rows only: a payload that yielded no row is counted by ``deadletters`` alone.
        m.observe_stage(
            "pipeline",
            received=rows,
            sent=rows - duplicates - rejected,
            discarded=duplicates,
            failed=rejected,
            seconds=seconds,
        )
        m.stale_acks.set(self.source.stale_acks)
        t = self.totals
        t.messages += len(envelopes)
        t.records += rows
        t.duplicates += duplicates + dead_duplicates
        t.add(written)

    # -- running -------------------------------------------------------------------------
    def _publish_checkpoint(self, origin: str, note: bytes) -> None:
        topic = f"{self.config.output.checkpoint_prefix}/{self.config.worker}"
        self.publisher.publish(topic, note, lambda ok: None, retain=True, timeout=10)
        self.metrics.checkpoint_size.set(int(note.split(b"\n")[1]))

    def start(self, timeout: float = 30.0) -> None:
        """Connect the publisher and the input, start delivering the outbox. Raises
        :class:`~gateway.errors.IngestError` with the reason as soon as retrying cannot help
        (refused credentials, a certificate that does not verify), after ``timeout`` seconds
        with the latest reason otherwise, and :class:`~gateway.errors.ConnectInterrupted` as
        soon as :meth:`stop` is called."""
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
                vehicle_states=self._vehicle_docs(new_state, touched),
                crossborder={},
            )
            self._prune_expired(tx, bundle, now)
        self.state = new_state
        self.drainer.submit(written.outbox)
        self.totals.add(written)
        self.metrics.audit_entries.inc(written.entries)
        for (sub, decision), n in written.decisions.items():
            self.metrics.decisions.labels(sub, decision).inc(n)
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
