"""Grouping a subscriber's pending views into batches (:mod:`gateway.deliver.batch`).

Pure bookkeeping, no I/O: the drainer (:mod:`gateway.deliver.drainer`) adds committed rows,
takes the batches that are due and publishes them, and puts a refused batch back. Each
batched subscriber has its own queue in audit (``seq``) order; a batch is the head of that
queue, so each subscriber's views — hence each vehicle's — leave in order.

A batch is due when it is full (``max_views`` rows wait) or when its oldest view has waited
``linger`` seconds since it was decided (the row's ``created_ms``; a clock that went back
makes it due at once rather than holding it). Linger 0 sends what waits now: a commit's
micro-batch already holds many views. ``hurry`` (shutdown) makes every batch due.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field

from gateway.deliver.batch import batch_topic
from gateway.policy.bundle import PolicyBundle
from gateway.policy.schema import Channel
from gateway.store.outbox import OutboxRow

__all__ = ["Batch", "Batcher", "Batching", "BatchingLookup", "bundle_batching"]


@dataclass(frozen=True, slots=True)
class Batching:
    """How one subscriber's views travel: at most ``max_views`` per message on ``topic``,
    the oldest waiting at most ``linger_s`` seconds for the batch to fill."""

    max_views: int
    linger_s: float
    topic: str


BatchingLookup = Callable[[str], Batching | None]
"""A subscriber's batching settings, None if its views travel one per message."""


def bundle_batching(current: Callable[[], PolicyBundle]) -> BatchingLookup:
    """The lookup over the bundle in force (``current()``, asked on every call, so a reload
    applies to views committed after it). Only MQTT subscribers with ``batch_max_views``
    above 1 are batched; unknown subscribers (dead-letter notices) are not."""
    cache: dict[str, Batching | None] = {}
    seen: list[PolicyBundle] = []

    def lookup(subscriber: str) -> Batching | None:
        bundle = current()
        if not seen or seen[0] is not bundle:
            seen[:] = [bundle]
            cache.clear()
        if subscriber not in cache:
            cache[subscriber] = _settings(bundle, subscriber)
        return cache[subscriber]

    return lookup


def _settings(bundle: PolicyBundle, subscriber: str) -> Batching | None:
    sub = bundle.subscribers.get(subscriber)
    if sub is None:
        return None
    delivery = sub.view.delivery
    if not delivery.batched or delivery.topic is None or delivery.channel is not Channel.MQTT:
        return None
    topic = batch_topic(delivery.topic)
    return Batching(delivery.batch_max_views, delivery.linger_ms / 1000, topic)


@dataclass(frozen=True, slots=True)
class Batch:
    """Views of one subscriber to send as one message, in ``seq`` order."""

    subscriber: str
    topic: str
    rows: tuple[OutboxRow, ...]


@dataclass(slots=True)
class _Queue:
    settings: Batching
    rows: collections.deque[OutboxRow] = field(default_factory=collections.deque)


class Batcher:
    """Per-subscriber queues of views waiting to be batched. Not thread-safe: the drainer
    holds a lock around every call."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}

    def __len__(self) -> int:
        return sum(len(q.rows) for q in self._queues.values())

    def count_except(self, subscribers: set[str]) -> int:
        """Views waiting here of every subscriber but ``subscribers``."""
        return sum(len(q.rows) for s, q in self._queues.items() if s not in subscribers)

    def waiting(self, subscriber: str) -> bool:
        """True if views of ``subscriber`` wait here (newer ones must queue behind them)."""
        q = self._queues.get(subscriber)
        return q is not None and bool(q.rows)

    def add(self, row: OutboxRow, settings: Batching | None) -> None:
        """Queue ``row`` behind its subscriber's earlier views. ``settings`` None keeps the
        subscriber's last settings (its batching was turned off while views still wait)."""
        q = self._queues.get(row.subscriber)
        if q is None:
            assert settings is not None, "a subscriber's first view needs its settings"
            q = self._queues[row.subscriber] = _Queue(settings)
        elif settings is not None:
            q.settings = settings
        q.rows.append(row)

    def extend(self, rows: Iterable[tuple[OutboxRow, Batching | None]]) -> None:
        """:meth:`add` each of ``rows`` in order."""
        for row, settings in rows:
            self.add(row, settings)

    def take(
        self,
        now: float,
        *,
        hurry: bool = False,
        skip: Container[str] = (),
        max_packet: int | None = None,
    ) -> Batch | None:
        """The next due batch (the subscriber whose oldest view is oldest first), removed
        from its queue; None if no batch is due at ``now`` (seconds, the rows' clock).
        Subscribers in ``skip`` (held after a refusal) give none. With ``max_packet`` (the
        most bytes a PUBLISH may take: the broker's limit, or the drainer's byte cap if
        smaller) the batch is cut so that its PUBLISH fits, one view at least."""
        best: _Queue | None = None
        subscriber = ""
        for sub, q in self._queues.items():
            due = q.rows and sub not in skip and (hurry or _wait(q, now) <= 0)
            if due and (best is None or q.rows[0].seq < best.rows[0].seq):
                best, subscriber = q, sub
        if best is None:
            return None
        n = min(best.settings.max_views, len(best.rows))
        if max_packet is not None:
            n = _fitting(best, n, max_packet - _PUBLISH_OVERHEAD - len(best.settings.topic) * 4)
        rows = tuple(best.rows.popleft() for _ in range(n))
        return Batch(subscriber, best.settings.topic, rows)

    def next_due(self, now: float, skip: Container[str] = ()) -> float | None:
        """Seconds until the next batch is due (0: one is due now); None if nothing waits
        (but what ``skip``'s subscribers hold)."""
        waits = [_wait(q, now) for s, q in self._queues.items() if q.rows and s not in skip]
        return max(0.0, min(waits)) if waits else None

    def put_back(self, rows: Iterable[OutboxRow]) -> None:
        """Refused views go back to the front of their queues, in ``seq`` order: they were
        taken before anything still queued, so they go out again before it. Views put back
        earlier and not yet taken again may be newer (refusals come one PUBACK at a time):
        those are merged in, so a queue stays in ``seq`` order."""
        by_sub: dict[str, list[OutboxRow]] = {}
        for row in rows:
            by_sub.setdefault(row.subscriber, []).append(row)
        for sub, back in by_sub.items():
            q = self._queues[sub].rows
            back.sort(key=_seq)
            ahead = []  # only views put back before and newer than some of these
            while q and q[0].seq < back[-1].seq:
                ahead.append(q.popleft())
            q.extendleft(reversed(list(heapq.merge(back, ahead, key=_seq))))


_PUBLISH_OVERHEAD = 16
"""Bytes of a QoS 1 PUBLISH besides its topic and payload: fixed header (5 at most),
topic length (2), packet id (2), MQTT 5 properties length (4 at most), rounded up."""


def _fitting(q: _Queue, n: int, budget: int) -> int:
    """How many of the first ``n`` views of ``q`` fit ``budget`` bytes as one array; 1 at
    least (a view too big alone fails as it would one per message)."""
    size = 1  # "["
    for i in range(n):
        size += len(q.rows[i].payload) + 1  # "," or "]"
        if size > budget:
            return max(i, 1)
    return n


def _seq(row: OutboxRow) -> int:
    return row.seq


def _wait(q: _Queue, now: float) -> float:
    """Seconds until ``q``'s head batch is due: 0 if full, else its linger left."""
    if len(q.rows) >= q.settings.max_views:
        return 0.0
    age = now - q.rows[0].created_ms / 1000
    if age < 0:  # the clock went back: do not hold the views until it catches up
        return 0.0
    return q.settings.linger_s - age
