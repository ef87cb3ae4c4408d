"""The drainer's memory is bounded: views beyond the bound wait in the store and are read
back in ``seq`` order, each published once, every one in the end; a batch is cut to a byte
cap; a view whose publish raises is not dropped from memory.

A real SQLite store and a publisher the test stalls (as paho does with its in-flight bound
reached, the broker slow or away) and releases."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import orjson
import pydantic
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import OutputConfig
from gateway.deliver.batching import Batching
from gateway.deliver.drainer import MAX_HELD_VIEWS, OutboxDrainer
from gateway.deliver.mqtt import Done
from gateway.errors import DeliveryError
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.store.outbox import OutboxRow, add_outbox, count_pending

SHARD = "test/spill"
BATCHING = {"a": Batching(50, 0.0, "share/a/batch"), "b": Batching(7, 0.01, "share/b/batch")}


def row(seq: int, sub: str) -> OutboxRow:
    return OutboxRow(seq, sub, f"share/{sub}/v/telemetry", f"m{seq}", b"%d" % seq, 1000)


def spread(first: int, last: int) -> list[OutboxRow]:
    """Rows ``first..last`` over batched ``a`` and ``b`` and unbatched ``u``."""
    return [row(s, "abu"[s % 3]) for s in range(first, last + 1)]


class StallPublisher:
    """Stalled until ``released``: nothing fits the in-flight bound (as paho's full queue).
    Released, it acknowledges each publish at once."""

    def __init__(self) -> None:
        self.max_packet: int | None = None
        self.released = threading.Event()
        self.sent: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def try_publish(self, topic: str, payload: bytes, done: Done) -> bool:
        if not self.released.is_set():
            return False
        self._send(topic, payload, done)
        return True

    def publish(self, topic: str, payload: bytes, done: Done, *, timeout: float = 1.0) -> None:
        if not self.released.wait(min(timeout, 0.05)):
            raise DeliveryError("in-flight bound reached")
        self._send(topic, payload, done)

    def _send(self, topic: str, payload: bytes, done: Done) -> None:
        with self.lock:
            self.sent.append((topic, payload))
        done(True)

    def views(self) -> dict[str, list[int]]:
        """Each subscriber's views as published, batches unpacked, in publishing order."""
        got: dict[str, list[int]] = {}
        with self.lock:
            for topic, payload in self.sent:
                sub = topic.split("/")[1]
                seqs = orjson.loads(payload) if topic.endswith("/batch") else [int(payload)]
                got.setdefault(sub, []).extend(seqs)
        return got


def expected(rows: list[OutboxRow]) -> dict[str, list[int]]:
    want: dict[str, list[int]] = {}
    for r in rows:
        want.setdefault(r.subscriber, []).append(r.seq)
    return want


def make_drainer(
    store: Store,
    pub: StallPublisher,
    registry: CollectorRegistry | None = None,
    *,
    batch_max_bytes: int = 262_144,
    max_held: int = MAX_HELD_VIEWS,
) -> OutboxDrainer:
    return OutboxDrainer(
        store,
        SHARD,
        pub,  # type: ignore[arg-type]
        Metrics(registry or CollectorRegistry()),
        batching=BATCHING.get,
        batch_max_bytes=batch_max_bytes,
        max_held=max_held,
    )


def watch_memory(drainer: OutboxDrainer) -> list[int]:
    """What the drainer holds after every routing (where memory grows: submits, start-up
    and refills), appended to the list returned."""
    seen: list[int] = []
    route = drainer._route

    def counted(rows: list[OutboxRow], *, queue: bool = True) -> list[OutboxRow]:
        single = route(rows, queue=queue)
        seen.append(drainer.held)
        return single

    drainer._route = counted  # type: ignore[method-assign]
    return seen


def add(store: Store, rows: list[OutboxRow]) -> None:
    with store.transaction() as tx:
        add_outbox(tx, SHARD, rows)


def commit(store: Store, drainer: OutboxDrainer, rows: list[OutboxRow]) -> None:
    add(store, rows)
    drainer.submit(rows)


def pending(store: Store) -> int:
    with store.snapshot() as rd:
        return count_pending(rd, SHARD)


# -- the bound ------------------------------------------------------------------------------


def test_a_stalled_broker_spills_to_the_store_and_every_view_goes_once_in_order(
    store: Store,
) -> None:
    """100,000 views committed while the broker takes nothing: memory never holds more
    than the bound; released, each view is published exactly once, in ``seq`` order per
    subscriber, batched or not, and spilling ends."""
    registry = CollectorRegistry()
    pub = StallPublisher()
    drainer = make_drainer(store, pub, registry)
    seen = watch_memory(drainer)
    drainer.start()
    rows = spread(1, 100_000)
    try:
        for i in range(0, len(rows), 2000):
            commit(store, drainer, rows[i : i + 2000])
            seen.append(drainer.held)
        assert max(seen) == MAX_HELD_VIEWS and drainer.spilling
        value = registry.get_sample_value
        assert value("icvgw_outbox_held_views") == drainer.held > MAX_HELD_VIEWS - 100
        assert value("icvgw_outbox_spilling") == 1
        assert pub.sent == []
        pub.released.set()
        assert drainer.drain(30)
    finally:
        drainer.stop()
    assert max(seen) <= MAX_HELD_VIEWS
    assert pub.views() == expected(rows)
    assert pending(store) == 0
    assert not drainer.spilling and drainer.held == 0
    assert value("icvgw_outbox_spilling") == 0


def test_start_up_loads_at_most_the_bound_and_sends_the_rest_from_the_store(
    store: Store,
) -> None:
    """After a long outage 100,000 views are pending: start-up holds the bound of them,
    reads the rest as memory frees, and every one goes once, in order."""
    rows = spread(1, 100_000)
    for i in range(0, len(rows), 10_000):
        add(store, rows[i : i + 10_000])
    pub = StallPublisher()
    drainer = make_drainer(store, pub)
    seen = watch_memory(drainer)
    try:
        drainer.start()
        assert seen[-1] == MAX_HELD_VIEWS and drainer.spilling  # the thread may hold one
        pub.released.set()
        later = spread(100_001, 100_500)  # the pipeline goes on committing meanwhile
        for i in range(0, len(later), 50):
            commit(store, drainer, later[i : i + 50])
        assert drainer.drain(30)
    finally:
        drainer.stop()
    assert max(seen) <= MAX_HELD_VIEWS
    assert pub.views() == expected(rows + later)
    assert pending(store) == 0


# -- the hand-over from spilling back to holding commits ------------------------------------


ReadBeyond = Callable[[int], list[OutboxRow]]


def spilled(store: Store, pub: StallPublisher) -> OutboxDrainer:
    """A started drainer that holds 10 views at most, holding 1..10 with 11..15 left to
    the store."""
    drainer = make_drainer(store, pub, max_held=10)
    drainer.start()
    commit(store, drainer, [row(s, "u") for s in range(1, 16)])
    assert drainer.held == 10 and drainer.spilling
    return drainer


def test_a_commit_between_the_refills_read_and_the_switch_is_not_left_behind(
    store: Store,
) -> None:
    """The refill reads 11..15 — fewer than it asked, so the store has no more — and the
    pipeline commits 16 and submits it before the refill stops spilling: 16 is left to
    the store by that submit, and must still go out without a restart."""
    pub = StallPublisher()
    drainer = spilled(store, pub)
    real: ReadBeyond = drainer._read_beyond
    window: list[list[int]] = []

    def read_then_commit(limit: int) -> list[OutboxRow]:
        got = real(limit)
        if not window and not drainer._hold_lock.locked() and len(got) < limit:
            window.append([r.seq for r in got])
            commit(store, drainer, [row(16, "u")])  # the pipeline's, in the window
        return got

    drainer._read_beyond = read_then_commit  # type: ignore[method-assign]
    try:
        pub.released.set()
        assert drainer.drain(5), "the view committed in the window waits for a restart"
    finally:
        drainer.stop()
    assert window == [[11, 12, 13, 14, 15]]
    assert pub.views() == {"u": list(range(1, 17))}
    assert not drainer.spilling


def test_a_commit_the_refill_read_is_not_held_twice_when_its_submit_comes_after(
    store: Store,
) -> None:
    """16 is committed just before the refill's last read, which takes it; its submit
    comes after spilling has ended: it must not be published a second time."""
    pub = StallPublisher()
    drainer = spilled(store, pub)
    real: ReadBeyond = drainer._read_beyond
    late = row(16, "u")
    committed = threading.Event()

    def commit_then_read(limit: int) -> list[OutboxRow]:
        if not committed.is_set() and drainer._hold_lock.locked():
            add(store, [late])  # committed, its submit not yet made
            committed.set()
        return real(limit)

    drainer._read_beyond = commit_then_read  # type: ignore[method-assign]
    try:
        pub.released.set()
        assert committed.wait(5)
        assert drainer.drain(5)
        assert not drainer.spilling
        drainer.submit([late])
        assert drainer.drain(5)
    finally:
        drainer.stop()
    assert pub.views() == {"u": list(range(1, 17))}


def test_a_submit_during_the_refills_last_read_waits_for_the_switch(store: Store) -> None:
    """The other side of the lock: a submit made while the refill's last read runs (the
    read has not seen its row) does not return before spilling has ended, and its row is
    then held, not left to the store."""
    pub = StallPublisher()
    drainer = spilled(store, pub)
    real: ReadBeyond = drainer._read_beyond
    late = row(16, "u")
    submitter: list[threading.Thread] = []
    waited: list[bool] = []

    def read_while_submitting(limit: int) -> list[OutboxRow]:
        got = real(limit)
        if not submitter and drainer._hold_lock.locked():
            add(store, [late])  # after the read: only the submit can bring it
            t = threading.Thread(target=drainer.submit, args=([late],))
            submitter.append(t)
            t.start()
            t.join(0.2)  # a submit not held back by the lock is done long before this
            waited.append(t.is_alive())
        return got

    drainer._read_beyond = read_while_submitting  # type: ignore[method-assign]
    try:
        pub.released.set()
        assert drainer.drain(5)
    finally:
        drainer.stop()
    assert waited == [True], "the submit went ahead of the refill's switch"
    submitter[0].join(5)
    assert pub.views() == {"u": list(range(1, 17))}


# -- bytes per batch ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "broker", "fits"),
    [(1024, None, 9), (1024, 512, 4), (262_144, 2048, 19)],
    ids=["cap", "broker-smaller", "default-cap-broker-smaller"],
)
def test_a_batch_is_cut_to_the_byte_cap_or_the_brokers_limit_if_smaller(
    store: Store, cap: int, broker: int | None, fits: int
) -> None:
    """Views of 100 bytes, 100 per batch allowed: a batch's PUBLISH (array, topic, header)
    stays within ``min(cap, broker)``, and carries as many views as fit."""
    limit = cap if broker is None else min(cap, broker)
    rows = [dataclasses.replace(row(s, "a"), payload=b"%100d" % s) for s in range(1, 61)]
    add(store, rows)
    pub = StallPublisher()
    pub.max_packet = broker
    pub.released.set()
    drainer = make_drainer(store, pub, batch_max_bytes=cap)
    drainer.start()
    try:
        assert drainer.drain(5)
    finally:
        drainer.stop()
    sizes = [len(p) + 16 + 4 * len(t) for t, p in pub.sent]
    assert max(sizes) <= limit
    whole, rest = divmod(60, fits)
    assert [len(orjson.loads(p)) for _, p in pub.sent] == [fits] * whole + [rest] * (rest > 0)
    assert pub.views() == {"a": list(range(1, 61))}


def test_the_byte_cap_setting_is_bounded() -> None:
    assert OutputConfig().batch_max_bytes == 262_144
    assert OutputConfig(batch_max_bytes=1024).batch_max_bytes == 1024
    for bad in (1023, 16 * 1024 * 1024 + 1):
        with pytest.raises(pydantic.ValidationError):
            OutputConfig(batch_max_bytes=bad)


# -- a publish that raises ------------------------------------------------------------------


class RaisingOncePublisher(StallPublisher):
    """Nothing fits from the committing thread; the drainer thread's first publish raises
    (a bug or an unexpected error inside the client) without sending."""

    def __init__(self) -> None:
        super().__init__()
        self.released.set()
        self.raised = False

    def try_publish(self, topic: str, payload: bytes, done: Done) -> bool:
        return False

    def publish(self, topic: str, payload: bytes, done: Done, *, timeout: float = 1.0) -> None:
        if not self.raised:
            self.raised = True
            raise RuntimeError("boom")
        super().publish(topic, payload, done, timeout=timeout)


def test_a_view_whose_publish_raises_goes_back_to_the_front(store: Store) -> None:
    """The view was taken from the queue when publish raised: it must go out (before the
    views behind it), not wait in the store for a restart."""
    pub = RaisingOncePublisher()
    drainer = make_drainer(store, pub)
    drainer.start()
    try:
        commit(store, drainer, [row(s, "u") for s in range(1, 6)])
        assert drainer.drain(5)
    finally:
        drainer.stop()
    assert pub.raised
    assert pub.views() == {"u": [1, 2, 3, 4, 5]}
    assert pending(store) == 0


# -- a subscriber the broker refuses for good -----------------------------------------------


class RefusingPublisher(StallPublisher):
    """Released; refuses every publish whose topic starts with ``refused`` (a subscriber
    the broker's ACL denies, as a PUBACK with a failure code) and acknowledges the rest."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.released.set()
        self.refused = refused

    def _send(self, topic: str, payload: bytes, done: Done) -> None:
        if topic.startswith(self.refused):
            done(False)
        else:
            super()._send(topic, payload, done)


@pytest.mark.parametrize("max_held", [10, MAX_HELD_VIEWS], ids=["spilling", "unbounded"])
def test_a_subscriber_refused_for_good_does_not_stop_the_others(
    store: Store, max_held: int
) -> None:
    """The broker refuses every batch of ``a`` (its ACL lacks ``<topic>/batch``): ``a``'s
    views stay in memory, put back after every refusal. ``u``'s views, committed after
    them, must still go out, as they do while memory is not full — not wait in the store
    behind views that cannot leave."""
    pub = RefusingPublisher("share/a/")
    drainer = make_drainer(store, pub, max_held=max_held)
    drainer.start()
    later = [row(s, "u") for s in range(31, 36)]
    try:
        commit(store, drainer, [row(s, "a") for s in range(1, 31)])
        commit(store, drainer, later)
        deadline = time.monotonic() + 5
        while pub.views().get("u") != [31, 32, 33, 34, 35] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        drainer.stop()
    assert pub.views().get("u") == [31, 32, 33, 34, 35], "u waits behind a refused subscriber"
