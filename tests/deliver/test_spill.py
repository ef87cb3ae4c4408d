"""A batch is cut to a byte cap; the drainer does not drop a view from memory: one whose
publish raises goes back.

A real SQLite store and a publisher the test stalls (as paho does with its in-flight bound
reached, the broker slow or away) and releases."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pydantic
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import OutputConfig
from gateway.deliver.batching import Batching
from gateway.deliver.drainer import OutboxDrainer
from gateway.deliver.mqtt import Done
from gateway.errors import DeliveryError
from gateway.keys import init_keys
from gateway.metrics import Metrics
from gateway.store import Store, open_store
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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(
        f"sqlite:///{tmp_path / 'gw.db'}", shard=SHARD, keys=init_keys(tmp_path / "keys")
    )
    yield s
    s.close()


def make_drainer(
    store: Store, pub: StallPublisher, *, batch_max_bytes: int = 262_144
) -> OutboxDrainer:
    return OutboxDrainer(
        store,
        SHARD,
        pub,  # type: ignore[arg-type]
        Metrics(CollectorRegistry()),
        batching=BATCHING.get,
        batch_max_bytes=batch_max_bytes,
    )


def add(store: Store, rows: list[OutboxRow]) -> None:
    with store.transaction() as tx:
        add_outbox(tx, SHARD, rows)


def commit(store: Store, drainer: OutboxDrainer, rows: list[OutboxRow]) -> None:
    add(store, rows)
    drainer.submit(rows)


def pending(store: Store) -> int:
    with store.snapshot() as rd:
        return count_pending(rd, SHARD)


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
