"""The gateway's promise under hostile input, through decode -> decide -> commit with the
real SQLite store: anything a vehicle can send gets a clear error or a dead letter, never
fails a batch (a batch that raises is never acknowledged, so the broker would redeliver it,
and every other vehicle in it, for good), never poisons another vehicle's decisions, the
audit log or the state a restarted gateway loads."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.audit.outbox import save_vehicle_state
from gateway.model import Envelope
from gateway.policy.state import TripState
from gateway.service import Gateway
from gateway.vehicle_state import encode as encode_state
from simulators.fleet import Fleet, FleetConfig
from tests.test_commit import NOW, make_config

YEAR_9999 = 253402300799.0


def test_a_far_future_time_stored_before_the_window_does_not_silence_its_vehicle(
    tmp_path: Path,
) -> None:
    """A store written before record times were bounded may remember year 9999 as a
    vehicle's last shared or trip time: loading it must not silence the vehicle."""
    start = datetime.fromtimestamp(NOW, UTC) - timedelta(minutes=10)
    msgs = list(Fleet(FleetConfig(vehicles=1, start=start), seed=5).messages(300, 1.0))
    vin = msgs[0].topic.split("/")[1]
    clean = [Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(msgs)]
    views: list[Counter[str]] = []
    for name, poisoned in (("clean", False), ("poisoned", True)):
        cfg = make_config(tmp_path / name)
        gw = Gateway(cfg, clock=lambda: NOW)
        if poisoned:
            subs = list(gw.holder.current.subscribers)
            trip = TripState(YEAR_9999, 31.2, 121.4, 0.0, YEAR_9999, 31.2, 121.4)
            doc = encode_state(trip, dict.fromkeys(subs, YEAR_9999), ())
            with gw.store.transaction() as tx:
                save_vehicle_state(tx, {vin: doc}, 0)
        gw.store.close()
        gw = Gateway(cfg, clock=lambda: NOW)
        seen: Counter[str] = Counter()
        try:
            for i in range(0, len(clean), 20):
                seen.update(r.subscriber for r in gw.process(clean[i : i + 20]).outbox)
        finally:
            gw.store.close()
        views.append(seen)
    assert views[0]["sh-traffic"] > 0  # down-sampled to one record per 5 s
    assert views[1] == views[0]
