"""Batched delivery against a real Mosquitto and a real gateway: subscribers whose views set
``batch_max_views`` receive JSON arrays on ``<topic>/batch``, each valid under the
subscriber's batch schema and made of exactly the stored bytes of views the audit log shared,
under their own message ids, in order per vehicle; and across a SIGKILL of the gateway every
shared view still arrives at least once, a repeat only of a view in flight at the kill, with
the same bytes.

``jsonschema`` is not installed (not in the ``test`` extra), so batches are checked with the
validator the view-schema tests use (:func:`tests.pipeline.test_shape.validate`), applied
to the batch schema's array keywords and its ``$defs`` view by :func:`validate_batch`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.config import load_config
from gateway.deliver.batch import encode_batch
from gateway.policy.bundle import PolicyBundle
from gateway.policy.loader import load_bundle
from gateway.policy.view_schema import batch_schema
from gateway.service import Gateway
from gateway.testing import MosquittoBroker
from simulators.fleet import Fleet
from tests.integration.harness import (
    Collector,
    Copy,
    Deployment,
    Expected,
    GatewayProcess,
    StoreState,
    broker_counter,
    check_audit,
    check_no_leaks,
    deploy,
    publish,
    read_store,
    settled,
    verify_audit,
)
from tests.integration.test_faults import ALL, mid_stream, traffic
from tests.pipeline.test_shape import validate

pytestmark = pytest.mark.integration

BATCHED = {"mapco-nav": (20, 50), "insureco-ubi": (20, 50), "sh-traffic": (20, 50)}
"""Subscriber -> (batch_max_views, linger_ms); oem-hq-de keeps one view per message."""

_BATCH_KEYWORDS = {"$schema", "$id", "title", "description", "type", "minItems", "maxItems"}


def validate_batch(value: Any, schema: dict[str, Any]) -> list[str]:
    """Errors of ``value`` against a batch schema: its array keywords here, each item
    against ``$defs/view`` with the view-schema validator (which fails on keywords it does
    not implement, as this does)."""
    unknown = set(schema) - _BATCH_KEYWORDS - {"items", "$defs"}
    assert not unknown, f"validator does not implement {unknown}"
    assert schema["type"] == "array" and schema["items"] == {"$ref": "#/$defs/view"}
    if not isinstance(value, list):
        return ["$: not an array"]
    errors = []
    if not schema["minItems"] <= len(value) <= schema["maxItems"]:
        errors.append(f"$: {len(value)} items, not {schema['minItems']}..{schema['maxItems']}")
    for i, item in enumerate(value):
        errors += validate(item, schema["$defs"]["view"], f"$[{i}]")
    return errors


def batch_deployment(root: Path, broker: MosquittoBroker, fleet: Fleet) -> Deployment:
    """:func:`deploy`, with :data:`BATCHED` set in the bundle's subscriber views."""
    root.mkdir()
    dep = deploy(root, broker, fleet)
    path = dep.policies / "subscribers.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for sub in doc["subscribers"]:
        if sub["id"] in BATCHED:
            views, linger = BATCHED[sub["id"]]
            sub["view"]["delivery"].update(batch_max_views=views, linger_ms=linger)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return dep


@dataclass(frozen=True)
class Received:
    """One MQTT message on a batch topic as a subscriber received it."""

    topic: str
    payload: bytes
    docs: list[dict[str, Any]]


class BatchCollector(Collector):
    """The harness's subscriber, also taking batches: each batch is kept whole (for the
    byte-for-byte and schema checks) and each of its views is filed under its message id,
    so that :func:`settled` and :func:`check_no_leaks` see every view."""

    def __init__(self, broker: MosquittoBroker, name: str, topics: Sequence[str]) -> None:
        self.batches: list[Received] = []
        super().__init__(broker, name, topics)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.topic.endswith("/batch"):
            super()._on_message(client, userdata, msg)
            return
        payload = bytes(msg.payload)
        docs = orjson.loads(payload)
        with self._lock:
            self.batches.append(Received(msg.topic, payload, docs))
            for doc in docs:
                copy = Copy(msg.topic, payload, doc)
                self.views.setdefault(str(doc["message_id"]), []).append(copy)

    def received(self) -> list[Received]:
        """The batches so far, in arrival order."""
        with self._lock:
            return list(self.batches)


@pytest.fixture
def batch_collector(
    broker: MosquittoBroker,
) -> Iterator[Callable[[str, Sequence[str]], BatchCollector]]:
    made: list[BatchCollector] = []

    def make(name: str, topics: Sequence[str]) -> BatchCollector:
        c = BatchCollector(broker, name, topics)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def check_batches(
    state: StoreState,
    bundle: PolicyBundle,
    out: BatchCollector,
    *,
    may_repeat: Collection[int] = (),
) -> dict[str, int]:
    """Every message the subscriber received is checked against the store and the audit
    log: batches valid under their schema and byte for byte the views' stored bytes; single
    views only from unbatched subscribers; every view the audit log shared received, nothing
    else; the first copies of each vehicle's views in audit order; a view repeated only if
    its ``seq`` is in ``may_repeat``. Returns the views received per subscriber."""
    rows = {r.message_id: r for r in state.outbox if r.subscriber}
    shared = {
        e.message_id for e in state.entries if e.decision in ("shared", "redacted") and e.subscriber
    }
    assert set(rows) == shared, "outbox and audit log disagree on what was shared"
    schemas = {s: batch_schema(bundle, s) for s in BATCHED}
    arrivals: list[tuple[str, dict[str, Any]]] = []  # (subscriber, view) in arrival order
    for b in out.received():
        sub = b.topic.split("/")[1]
        assert b.topic == f"share/{sub}/batch" and sub in BATCHED, b.topic
        assert validate_batch(b.docs, schemas[sub]) == [], (
            sub,
            validate_batch(b.docs, schemas[sub]),
        )
        mids = [d["message_id"] for d in b.docs]
        assert set(mids) <= shared, f"{sub}: a batch carries a view the audit log did not share"
        assert all(rows[m].subscriber == sub for m in mids), f"another's view in {sub}'s batch"
        # The stored bytes of exactly these views, in audit order: ids equal the outbox's.
        assert b.payload == encode_batch([rows[m].payload for m in mids]), "batch altered"
        assert [rows[m].seq for m in mids] == sorted(rows[m].seq for m in mids)
        arrivals += [(sub, d) for d in b.docs]
    views, _ = out.snapshot()
    singles = [c for copies in views.values() for c in copies if not c.topic.endswith("/batch")]
    for c in singles:
        row = rows[c.doc["message_id"]]
        assert row.subscriber not in BATCHED, f"{row.subscriber} got a view outside a batch"
        assert (c.topic, c.payload) == (row.topic, row.payload), "view altered"
    assert set(views) == shared, (
        f"{len(shared - set(views))} shared views never received, "
        f"{len(set(views) - shared)} received that the audit log does not have"
    )
    for mid, copies in views.items():
        assert len(copies) == 1 or rows[mid].seq in may_repeat, f"view {mid} repeated"
    first: dict[tuple[str, str], list[int]] = {}
    seen: set[str] = set()
    for sub, doc in arrivals:
        if doc["message_id"] not in seen:
            seen.add(doc["message_id"])
            first.setdefault((sub, doc["vehicle"]), []).append(doc["audit_seq"])
    for key, seqs in first.items():
        assert seqs == sorted(seqs), f"{key}: views out of audit order"
    per_sub: dict[str, int] = {}
    for mid in views:
        per_sub[rows[mid].subscriber] = per_sub.get(rows[mid].subscriber, 0) + 1
    return per_sub


def test_batched_subscribers_get_valid_batches_of_their_shared_views(
    broker: MosquittoBroker, tmp_path: Path, batch_collector: Callable[..., BatchCollector]
) -> None:
    fleet, messages = traffic(seed=21)
    expected = Expected.of(messages)
    dep = batch_deployment(tmp_path / "gw", broker, fleet)
    out = batch_collector("it-batches", ALL)
    registry = CollectorRegistry()
    gw = Gateway(load_config(dep.config), registry=registry)
    gw.start()
    runner = threading.Thread(target=gw.run, name="it-gateway")
    runner.start()
    try:
        publish(broker, messages)
        settled(dep.store, expected, [out])
    finally:
        gw.stop()
        runner.join(60)
    assert not runner.is_alive()
    state = read_store(dep.store)
    ring = dep.ring()
    fig = check_audit(state, expected, ring)
    bundle = load_bundle(dep.policies)
    got = check_batches(state, bundle, out)
    assert got == {s: n for s, n in fig.views.items() if n}
    assert got["mapco-nav"] > 40, "too few views for batches to mean anything"
    sizes = [len(b.docs) for b in out.received() if b.topic == "share/mapco-nav/batch"]
    assert max(sizes) > 1 and len(sizes) < got["mapco-nav"], "views were not batched"
    views, notices = out.snapshot()
    check_no_leaks(views, notices, expected, ring)
    # The delivered counter counts views, not batches.
    for sub, n in got.items():
        labels = {"channel": "mqtt", "subscriber": sub}
        assert registry.get_sample_value("icvgw_views_delivered_total", labels) == n


def test_batched_delivery_is_at_least_once_across_a_gateway_kill(
    broker: MosquittoBroker,
    tmp_path: Path,
    gateway_process: Callable[[Deployment], GatewayProcess],
    batch_collector: Callable[..., BatchCollector],
) -> None:
    def deployment(fleet: Fleet) -> Deployment:
        return batch_deployment(tmp_path / "gw", broker, fleet)

    run = mid_stream(23, broker, deployment, gateway_process, batch_collector)
    run.gw.kill()
    at_kill = read_store(run.dep.store)
    in_flight = {r.seq for r in at_kill.pending}  # the only views that may arrive twice
    assert 0 < at_kill.seen < len(run.expected.accepted)
    run.publisher.join()
    publish(broker, run.rest)  # while the gateway is dead: queued in its session
    run.gw.start()
    out = run.out
    assert isinstance(out, BatchCollector)
    settled(run.dep.store, run.expected, [out])
    assert run.gw.terminate() == 0, run.gw.tail()
    state = read_store(run.dep.store)
    ring = run.dep.ring()
    check_audit(state, run.expected, ring)
    got = check_batches(state, load_bundle(run.dep.policies), out, may_repeat=in_flight)
    assert got.get("mapco-nav", 0) > 0
    views, notices = out.snapshot()
    check_no_leaks(views, notices, run.expected, ring)
    assert _notices_intact(state, notices)
    verify_audit(run.dep)
    assert broker_counter(run.dep.broker, "publish/messages/dropped") == 0


def _notices_intact(state: StoreState, notices: Mapping[int, list[Copy]]) -> bool:
    """Every dead-letter notice (one per message, never batched) arrived as committed."""
    letters = {r.seq: r for r in state.outbox if not r.subscriber}
    assert set(notices) == set(letters), "dead-letter notices missing or unknown"
    for seq, copies in notices.items():
        for c in copies:
            assert (c.topic, c.payload) == (letters[seq].topic, letters[seq].payload)
    return True
