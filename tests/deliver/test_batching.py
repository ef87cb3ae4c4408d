"""Grouping views into batches: full batches go at once, partial ones after their linger,
each subscriber's views in ``seq`` order; and the drainer sends batched subscribers' views
as batches (one PUBACK marks them all, a refusal sends them again in order) while the
others keep going one per message."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.deliver.batch import encode_batch
from gateway.deliver.batching import Batcher, Batching, bundle_batching
from gateway.deliver.drainer import OutboxDrainer
from gateway.deliver.mqtt import Done
from gateway.errors import DeliveryError
from gateway.metrics import Metrics
from gateway.policy.bundle import PolicyBundle
from gateway.policy.loader import load_bundle
from gateway.resources import default_policy_dir
from gateway.store import Store
from gateway.store.outbox import OutboxRow, add_outbox, count_pending

SHARD = "test/batching"
A = Batching(3, 0.05, "share/a/batch")
B = Batching(2, 0.0, "share/b/batch")


def row(seq: int, sub: str = "a", created_ms: int = 10_000) -> OutboxRow:
    return OutboxRow(
        seq, sub, f"share/{sub}/v{seq % 3}/telemetry", f"m{seq}", b"%d" % seq, created_ms
    )


def seqs(rows: tuple[OutboxRow, ...]) -> list[int]:
    return [r.seq for r in rows]


# -- the grouping alone --------------------------------------------------------------------


def test_a_full_batch_is_due_at_once_and_a_partial_one_after_its_linger() -> None:
    b = Batcher()
    b.extend((row(s), A) for s in range(1, 6))  # decided at 10.000 s
    first = b.take(10.0)
    assert first is not None and seqs(first.rows) == [1, 2, 3]
    assert (first.subscriber, first.topic) == ("a", "share/a/batch")
    assert b.take(10.049) is None  # two views, lingering until 10.05
    assert b.next_due(10.02) == pytest.approx(0.03)
    rest = b.take(10.05)
    assert rest is not None and seqs(rest.rows) == [4, 5]
    assert b.take(20.0) is None and b.next_due(20.0) is None


def test_linger_zero_sends_what_waits_now() -> None:
    b = Batcher()
    b.add(row(1, "b"), B)
    got = b.take(10.0)
    assert got is not None and seqs(got.rows) == [1]


def test_hurry_sends_partial_batches_and_a_clock_gone_back_holds_nothing() -> None:
    b = Batcher()
    b.add(row(1), A)
    assert b.take(10.0) is None
    got = b.take(10.0, hurry=True)
    assert got is not None and seqs(got.rows) == [1]
    b.add(row(2, created_ms=50_000), A)  # decided "after" now: the clock went back
    assert b.next_due(10.0) == 0.0
    assert b.take(10.0) is not None


def test_each_subscriber_is_batched_apart_in_seq_order_oldest_first() -> None:
    b = Batcher()
    b.extend((row(s, "a" if s % 2 else "b"), A if s % 2 else B) for s in range(1, 12))
    out: dict[str, list[int]] = {"a": [], "b": []}
    order = []
    while (batch := b.take(11.0)) is not None:
        assert len(batch.rows) <= (3 if batch.subscriber == "a" else 2)
        assert {r.subscriber for r in batch.rows} == {batch.subscriber}
        out[batch.subscriber] += seqs(batch.rows)
        order.append(batch.rows[0].seq)
    assert out == {"a": [1, 3, 5, 7, 9, 11], "b": [2, 4, 6, 8, 10]}
    assert order == sorted(order)  # the subscriber whose oldest view is oldest goes first


def test_refused_views_go_back_before_everything_still_queued() -> None:
    b = Batcher()
    b.extend((row(s), A) for s in range(1, 10))
    one, two = b.take(10.0), b.take(10.0)
    assert one is not None and two is not None
    b.put_back([*two.rows, *one.rows])  # refusals may come back in any order
    again = [seqs(x.rows) for x in iter(lambda: b.take(10.0), None)]
    assert again == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_batching_turned_off_keeps_the_last_settings_for_views_still_waiting() -> None:
    b = Batcher()
    b.add(row(1), A)
    b.add(row(2), None)
    assert b.waiting("a") and not b.waiting("b")
    got = b.take(11.0)
    assert got is not None and (got.topic, seqs(got.rows)) == ("share/a/batch", [1, 2])


def test_the_bundle_lookup_batches_only_opted_in_mqtt_subscribers(tmp_path: Path) -> None:
    bundle = load_bundle(default_policy_dir())
    lookup = bundle_batching(lambda: bundle)
    assert lookup("mapco-nav") is None  # the shipped views travel one per message
    assert lookup("") is None and lookup("nobody") is None
    batched = batched_bundle(tmp_path, {"sh-traffic": (20, 50)})
    current: list[PolicyBundle] = [bundle]
    lookup = bundle_batching(lambda: current[0])
    assert lookup("sh-traffic") is None
    current[0] = batched  # a reload applies to the next lookup
    assert lookup("sh-traffic") == Batching(20, 0.05, "share/sh-traffic/batch")
    assert lookup("mapco-nav") is None


def batched_bundle(root: Path, settings: dict[str, tuple[int, int]]) -> PolicyBundle:
    """The default bundle with ``subscriber: (batch_max_views, linger_ms)`` applied."""
    policies = root / "policies"
    shutil.copytree(default_policy_dir(), policies)
    path = policies / "subscribers.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for sub in doc["subscribers"]:
        if sub["id"] in settings:
            views, linger = settings[sub["id"]]
            sub["view"]["delivery"].update(batch_max_views=views, linger_ms=linger)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return load_bundle(policies)


# -- the drainer with a publisher whose acknowledgements the test gives ---------------------


class HandPublisher:
    """Records each publish; the test acknowledges (or refuses) them by hand."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.max_packet: int | None = None
        self.sent: list[tuple[str, bytes, Done]] = []
        self.inflight = 0
        self.cond = threading.Condition()

    def try_publish(self, topic: str, payload: bytes, done: Done) -> bool:
        with self.cond:
            if self.inflight >= self.limit:
                return False
            self._send(topic, payload, done)
            return True

    def publish(self, topic: str, payload: bytes, done: Done, *, timeout: float = 1.0) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.inflight < self.limit, timeout)
            if self.inflight >= self.limit:
                raise DeliveryError("in-flight bound reached")
            self._send(topic, payload, done)

    def _send(self, topic: str, payload: bytes, done: Done) -> None:
        self.sent.append((topic, payload, done))
        self.inflight += 1
        self.cond.notify_all()

    def ack(self, index: int, ok: bool = True) -> None:
        """The outcome first, then the slot freed (paho may do either first)."""
        self.sent[index][2](ok)
        with self.cond:
            self.inflight -= 1
            self.cond.notify_all()

    def wait_sent(self, n: int, timeout: float = 5.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.sent) >= n, timeout), (
                f"{len(self.sent)} of {n} publishes"
            )


def wait_until(probe: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def drainer_for(
    store: Store, pub: HandPublisher, settings: dict[str, Batching], registry: CollectorRegistry
) -> OutboxDrainer:
    return OutboxDrainer(
        store,
        SHARD,
        pub,  # type: ignore[arg-type]
        Metrics(registry),
        batching=settings.get,
    )


def commit(store: Store, drainer: OutboxDrainer, rows: list[OutboxRow]) -> None:
    with store.transaction() as tx:
        add_outbox(tx, SHARD, rows)
    drainer.submit(rows)


def pending(store: Store) -> int:
    with store.snapshot() as rd:
        return count_pending(rd, SHARD)


def test_batched_and_unbatched_subscribers_side_by_side(store: Store) -> None:
    """Subscriber ``a`` (3 per batch) gets arrays on its batch topic; ``u`` keeps one view
    per message from the committing thread; one PUBACK marks a whole batch delivered."""
    now = round(time.time() * 1000)
    rows = [row(s, "a" if s % 3 else "u", now) for s in range(1, 10)]
    registry = CollectorRegistry()
    pub = HandPublisher()
    drainer = drainer_for(store, pub, {"a": Batching(3, 5.0, "share/a/batch")}, registry)
    drainer.start()
    try:
        commit(store, drainer, rows)
        single = [p for t, p, _ in pub.sent]
        assert single == [b"3", b"6", b"9"]  # sent right away, in this thread
        pub.wait_sent(5)  # two full batches of a's six views, from the drainer thread
        topics = [t for t, _, _ in pub.sent[3:]]
        payloads = [orjson.loads(p) for _, p, _ in pub.sent[3:]]
        assert topics == ["share/a/batch"] * 2
        assert payloads == [[1, 2, 4], [5, 7, 8]]
        assert pub.sent[3][1] == encode_batch([b"1", b"2", b"4"])
        for i in range(5):
            pub.ack(i)
        assert drainer.drain(5)
    finally:
        drainer.stop()
    assert pending(store) == 0
    value = registry.get_sample_value
    assert value("icvgw_views_delivered_total", {"channel": "mqtt", "subscriber": "a"}) == 6
    assert value("icvgw_views_delivered_total", {"channel": "mqtt", "subscriber": "u"}) == 3
    assert value("icvgw_delivery_seconds_count", {"channel": "mqtt"}) == 9
    assert drainer.delivered == {"a": 6, "u": 3}


def test_a_partial_batch_waits_for_its_linger(store: Store) -> None:
    pub = HandPublisher()
    drainer = drainer_for(store, pub, {"a": Batching(10, 0.3, "t/batch")}, CollectorRegistry())
    drainer.start()
    try:
        started = time.monotonic()
        commit(store, drainer, [row(1, "a", round(time.time() * 1000))])
        pub.wait_sent(1)
        waited = time.monotonic() - started
        assert 0.25 <= waited < 2.0, waited
        assert orjson.loads(pub.sent[0][1]) == [1]
    finally:
        drainer.stop()


def test_a_refused_batch_is_sent_again_in_order_and_counted_per_view(store: Store) -> None:
    """A refused batch goes back before every batch not yet taken; only the one already
    waiting for the in-flight bound overtakes it."""
    now = round(time.time() * 1000)
    registry = CollectorRegistry()
    pub = HandPublisher(limit=2)
    drainer = drainer_for(store, pub, {"a": Batching(2, 0.0, "t/batch")}, registry)
    drainer.start()
    try:
        commit(store, drainer, [row(s, "a", now) for s in range(1, 9)])
        pub.wait_sent(2)  # [1,2] and [3,4] in flight, [5,6] waits for the bound, [7,8] queued
        pub.ack(0, ok=False)
        pub.wait_sent(3)
        pub.ack(1)
        pub.wait_sent(4)
        pub.ack(2)
        pub.wait_sent(5)
        pub.ack(3)
        pub.ack(4)
        assert drainer.drain(5)
    finally:
        drainer.stop()
    sent = [orjson.loads(p) for _, p, _ in pub.sent]
    assert sent == [[1, 2], [3, 4], [5, 6], [1, 2], [7, 8]]
    assert pending(store) == 0
    value = registry.get_sample_value
    assert value("icvgw_delivery_failures_total", {"channel": "mqtt", "subscriber": "a"}) == 2
    assert value("icvgw_views_delivered_total", {"channel": "mqtt", "subscriber": "a"}) == 8


def test_views_pending_at_start_up_go_out_in_batches_and_drain_does_not_linger(
    store: Store,
) -> None:
    """After a crash: the pending rows load at start and are cut into full batches; drain
    sends the last partial batch without waiting for its (long) linger."""
    with store.transaction() as tx:
        add_outbox(tx, SHARD, [row(s, "a" if s % 2 else "u") for s in range(1, 12)])
    pub = HandPublisher()
    drainer = drainer_for(store, pub, {"a": Batching(4, 5.0, "t/batch")}, CollectorRegistry())
    drainer.start()
    try:
        pub.wait_sent(5 + 1)  # u's five views one by one, a's first full batch
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(drainer.drain(5)))
        t.start()
        pub.wait_sent(5 + 2)  # the partial batch, without its 5 s linger
        for i in range(len(pub.sent)):
            pub.ack(i)
        t.join(10)
        assert result == [True]
    finally:
        drainer.stop()
    batches = [orjson.loads(p) for topic, p, _ in pub.sent if topic == "t/batch"]
    singles = [int(p) for topic, p, _ in pub.sent if topic != "t/batch"]
    assert batches == [[1, 3, 5, 7], [9, 11]]
    assert singles == [2, 4, 6, 8, 10]
    assert pending(store) == 0


# -- review findings -------------------------------------------------------------------------


def test_batches_refused_one_after_the_other_go_back_in_seq_order() -> None:
    """PUBACKs come one by one: two refused batches are put back in two calls, the older
    one first; the newer must not land in front of it."""
    b = Batcher()
    b.extend((row(s), A) for s in range(1, 10))
    one, two = b.take(10.0), b.take(10.0)
    assert one is not None and two is not None
    b.put_back(one.rows)
    b.put_back(two.rows)
    again = [seqs(x.rows) for x in iter(lambda: b.take(10.0), None)]
    assert again == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_two_refusals_before_the_thread_takes_again_keep_the_order(store: Store) -> None:
    """[1,2] and [3,4] in flight, [5,6] waiting for the bound: both are refused (the
    outcomes before the slots free, so the drainer thread cannot take in between). They
    must go out again as [1,2] then [3,4]."""
    now = round(time.time() * 1000)
    pub = HandPublisher(limit=2)
    drainer = drainer_for(store, pub, {"a": Batching(2, 0.0, "t/batch")}, CollectorRegistry())
    drainer.start()
    try:
        commit(store, drainer, [row(s, "a", now) for s in range(1, 9)])
        pub.wait_sent(2)
        pub.sent[0][2](False)
        pub.sent[1][2](False)
        with pub.cond:
            pub.inflight -= 2
            pub.cond.notify_all()
        pub.wait_sent(4)
        for i in range(2, 4):
            pub.ack(i)
        pub.wait_sent(6)
        for i in range(4, 6):
            pub.ack(i)
        assert drainer.drain(5)
    finally:
        drainer.stop()
    sent = [orjson.loads(p) for _, p, _ in pub.sent]
    assert sent == [[1, 2], [3, 4], [5, 6], [1, 2], [3, 4], [7, 8]]
    assert pending(store) == 0


class RaisingPublisher(HandPublisher):
    """Acknowledges every publish at once; the first batch publish raises (a bug or an
    unexpected error inside the client) without sending."""

    def __init__(self) -> None:
        super().__init__()
        self.raised = False

    def publish(self, topic: str, payload: bytes, done: Done, *, timeout: float = 1.0) -> None:
        if not self.raised:
            self.raised = True
            raise RuntimeError("boom")
        super().publish(topic, payload, done, timeout=timeout)
        self.ack(len(self.sent) - 1)


def test_a_batch_whose_publish_raises_is_not_dropped(store: Store) -> None:
    """The batch was taken from the batcher when publish raised: its views must still go
    out (before the subscriber's later views), not wait in the store for a restart."""
    now = round(time.time() * 1000)
    pub = RaisingPublisher()
    drainer = drainer_for(store, pub, {"a": Batching(2, 0.0, "t/batch")}, CollectorRegistry())
    drainer.start()
    try:
        commit(store, drainer, [row(s, "a", now) for s in range(1, 5)])
        assert drainer.drain(5)
    finally:
        drainer.stop()
    assert [orjson.loads(p) for _, p, _ in pub.sent] == [[1, 2], [3, 4]]
    assert pending(store) == 0


class RefusingPublisher(HandPublisher):
    """Refuses every publish at once (an ACL that does not allow ``<topic>/batch``)."""

    def publish(self, topic: str, payload: bytes, done: Done, *, timeout: float = 1.0) -> None:
        super().publish(topic, payload, done, timeout=timeout)
        self.ack(len(self.sent) - 1, ok=False)


def test_a_batch_refused_for_good_is_retried_with_a_pause_not_in_a_tight_loop(
    store: Store,
) -> None:
    """Views one per message refused are retried at the next marking (every 0.2 s); a
    refused batch must not be re-sent as fast as the broker answers."""
    now = round(time.time() * 1000)
    pub = RefusingPublisher()
    drainer = drainer_for(store, pub, {"a": Batching(2, 0.0, "t/batch")}, CollectorRegistry())
    drainer.start()
    try:
        commit(store, drainer, [row(s, "a", now) for s in range(1, 3)])
        time.sleep(1.0)  # measuring a rate over a fixed time: nothing to wait for
    finally:
        drainer.stop()
    assert 2 <= len(pub.sent) <= 10, len(pub.sent)


def test_a_batch_is_cut_to_the_brokers_packet_limit() -> None:
    """Five views of 100 bytes, five per batch: under a 300-byte packet limit (its topic
    and PUBLISH header take some) a batch carries two; one view too big alone still goes."""
    b = Batcher()
    big = [dataclasses.replace(row(s), payload=b"x" * 100) for s in range(1, 6)]
    b.extend((r, Batching(5, 0.0, "t")) for r in big)
    got = b.take(11.0, max_packet=300)
    assert got is not None and seqs(got.rows) == [1, 2]
    assert len(encode_batch([r.payload for r in got.rows])) + 16 + 4 <= 300
    got = b.take(11.0, max_packet=50)
    assert got is not None and seqs(got.rows) == [3]
    got = b.take(11.0)
    assert got is not None and seqs(got.rows) == [4, 5]


class GatedPublisher(HandPublisher):
    """The drainer thread's publishes wait for ``gate`` (the thread descheduled between
    taking a batch and handing it to the client); the committing thread's do not."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def publish(self, topic: str, payload: bytes, done: Done, *, timeout: float = 1.0) -> None:
        self.waiting.set()
        assert self.gate.wait(5)
        super().publish(topic, payload, done, timeout=timeout)


def test_batching_turned_off_while_a_batch_is_in_hand_keeps_the_order(store: Store) -> None:
    """A reload turns ``a``'s batching off while the drainer holds its last batch, taken
    but not yet published: ``a``'s next view must not go out before that batch (it follows
    it through the batcher, as views behind a waiting batch do)."""
    now = round(time.time() * 1000)
    settings = {"a": Batching(2, 0.0, "t/batch")}
    pub = GatedPublisher()
    drainer = drainer_for(store, pub, settings, CollectorRegistry())
    drainer.start()
    try:
        commit(store, drainer, [row(s, "a", now) for s in (1, 2)])
        assert pub.waiting.wait(5)  # [1,2] taken, its publish not yet through
        del settings["a"]  # the reload
        commit(store, drainer, [row(3, "a", now)])
        pub.gate.set()
        pub.wait_sent(2)
    finally:
        drainer.stop()
    assert [p for _, p, _ in pub.sent] == [b"[1,2]", b"[3]"]
