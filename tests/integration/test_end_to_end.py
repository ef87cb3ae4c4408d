"""End to end: simulated fleet -> Mosquitto -> gateway -> Mosquitto -> subscriber clients.

Each subscriber's client, subscribed only to its own topic, receives exactly the views the
gateway committed for it (byte for byte, none missing, none extra, none twice); every view
traces back to the record it stands for; no subscriber without a qualification ever
receives a WGS-84 coordinate, and nobody receives a VIN. The gateway runs in-process here
(a thread), so its metrics registry can be read; the fault tests run it as a process.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import load_config
from gateway.geo.datum import wgs84_to_gcj02
from gateway.policy.loader import load_bundle
from gateway.service import Gateway
from gateway.testing import MosquittoBroker
from simulators.fleet import Fleet
from tests.integration.conftest import make_fleet
from tests.integration.harness import (
    QUALIFIED,
    SUBSCRIBERS,
    WORKER,
    Collector,
    Deployment,
    Expected,
    check_audit,
    check_delivery,
    check_no_leaks,
    first_message,
    merged,
    publish,
    read_store,
    settled,
    verify_audit,
)

pytestmark = pytest.mark.integration

VEHICLES, RATE, DURATION = 20, 0.5, 240.0
"""Four minutes of driving: long enough for trip trimming (200 m, 500 m) to release views
and for the coarse subscribers' minimum intervals (30 s, 600 s) to let some through."""


def _metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(a))


def _retained(broker: MosquittoBroker, topic: str, out: Path) -> Path:
    """Save the retained message of ``topic`` to ``out``."""
    out.write_bytes(first_message(broker, topic))
    return out


def test_each_subscriber_gets_exactly_its_views(
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    collector: Callable[[str, Sequence[str]], Collector],
) -> None:
    fleet = make_fleet(VEHICLES, seed=5)
    messages = list(fleet.messages(DURATION, RATE))
    expected = Expected.of(messages)
    dep = deployment(fleet)
    per_sub = {s: collector(f"it-{s}", [f"share/{s}/#"]) for s in SUBSCRIBERS}
    letters = collector("it-operator", ["gateway/deadletter/#"])
    registry = CollectorRegistry()
    gw = Gateway(load_config(dep.config), registry=registry)
    gw.start()
    runner = threading.Thread(target=gw.run, name="it-gateway")
    runner.start()
    try:
        publish(broker, messages)
        settled(dep.store, expected, [*per_sub.values(), letters])
    finally:
        gw.stop()
        runner.join(60)
    assert not runner.is_alive()

    state = read_store(dep.store)
    ring = dep.ring()
    fig = check_audit(state, expected, ring)
    views, notices = merged([*per_sub.values(), letters])
    assert check_delivery(state, views, notices) == 0
    check_no_leaks(views, notices, expected, ring)

    # Each client received exactly its own subscriber's views, and every subscriber some.
    for sub, client in per_sub.items():
        got, none = client.snapshot()
        assert not none
        committed = {r.message_id for r in state.outbox if r.subscriber == sub}
        assert set(got) == committed, sub
        assert all(c.doc["subscriber"] == sub for copies in got.values() for c in copies)
        assert committed, f"{sub} received nothing: the run is too short to mean anything"
    assert fig.dead > 0 and set(letters.snapshot()[1]) == {
        r.seq for r in state.outbox if not r.subscriber
    }

    # Every view is the view of the record it names: time truncated to the view's step, a
    # coarse position no further from the record's (GCJ-02) position than its grid allows.
    bundle = load_bundle(dep.policies)
    ids = expected.ids(ring)
    pseudonyms: dict[str, set[str]] = {s: set() for s in SUBSCRIBERS}
    for mid, copies in views.items():
        doc = copies[0].doc
        sub = doc["subscriber"]
        rec = ids[sub][mid]
        view = bundle.subscribers[sub].view
        shown = datetime.fromisoformat(doc["time"]).timestamp()
        assert 0 <= rec.time - shown < view.time_precision_s + 1e-3, (sub, doc["time"], rec)
        pseudonyms[sub].add(doc["vehicle"])
        loc = doc.get("location")
        if sub in QUALIFIED or not loc or loc.get("lat_gcj02") is None:
            continue
        assert rec.lat is not None and rec.lon is not None
        glat, glon = wgs84_to_gcj02(rec.lat, rec.lon)
        off = _metres(float(glat), float(glon), loc["lat_gcj02"], loc["lon_gcj02"])
        assert loc["precision_m"] >= view.location_precision_m
        assert off <= 0.71 * loc["precision_m"] + 1.0, (sub, off, loc)
    # Two subscribers' feeds cannot be joined on the vehicle identifier.
    for i, a in enumerate(SUBSCRIBERS):
        for b in SUBSCRIBERS[i + 1 :]:
            assert not pseudonyms[a] & pseudonyms[b], (a, b)

    # The service's own counters agree with what the subscribers saw.
    for sub in SUBSCRIBERS:
        delivered = registry.get_sample_value(
            "icvgw_views_delivered_total", {"channel": "mqtt", "subscriber": sub}
        )
        assert (delivered or 0) == fig.views[sub], sub
    dead_metric = sum(
        s.value
        for m in registry.collect()
        if m.name == "icvgw_deadletters"
        for s in m.samples
        if s.name == "icvgw_deadletters_total"
    )
    assert dead_metric == fig.dead

    # The checkpoint the gateway published (retained) is one the log still extends.
    kept = _retained(broker, f"gateway/checkpoint/{WORKER}", dep.root / "kept.checkpoint")
    report = verify_audit(dep, trusted=[kept])
    assert "extends trusted checkpoint" in report
