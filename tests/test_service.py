"""The service's batch path in process, against a real SQLite store (no broker needed):
commit-then-ack, de-duplication across batches and restarts, dead letters, counts."""

from __future__ import annotations

import logging
import queue
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig, load_config
from gateway.errors import IngestError
from gateway.keys import KeyRing, init_keys, rotate_keys
from gateway.model import Consent, Envelope
from gateway.pipeline.decode import decode_records
from gateway.pipeline.shape import message_ids
from gateway.policy.child import load_in_child
from gateway.policy.schema import ExportDataClass, counting_year
from gateway.service import Gateway, origin_of
from gateway.store.sealing import row_aad
from gateway.testing import offline_config
from gateway.vss import TIMESTAMP as TIMESTAMP_PATH
from gateway.vss import VIN as VIN_PATH
from simulators.fleet import Fleet, FleetConfig

VIN_RE = re.compile(rb"[A-HJ-NPR-Z0-9]{17}")
# The fleet drives shortly before the gateway's clock: records older than the policy's
# rules.ingest.max_age_s are dead-lettered.
START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    return offline_config(tmp_path)


def fleet_envelopes(
    n_vehicles: int = 8, seconds: float = 20, start: datetime = START
) -> list[Envelope]:
    msgs = Fleet(FleetConfig(vehicles=n_vehicles, start=start), seed=3).messages(seconds, 1.0)
    return [Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(msgs)]


def db(config: GatewayConfig) -> sqlite3.Connection:
    return sqlite3.connect(config.store.removeprefix("sqlite:///"))


def opened(config: GatewayConfig, table: str) -> list[tuple[str, bytes]]:
    """The sealed (topic, payload) values of the outbox or the dead letters, opened."""
    ring = KeyRing.load(config.keys)
    shard = origin_of(config.worker)
    out = []
    for seq, sealed in db(config).execute(f"select seq, sealed from {table} order by seq"):
        topic, _, payload = ring.unseal(sealed, row_aad(table, shard, seq)).partition(b"\0")
        out.append((topic.decode(), payload))
    return out


def held_per_subscriber(config: GatewayConfig) -> Counter[str]:
    ring = KeyRing.load(config.keys)
    held: Counter[str] = Counter()
    for ref, sealed in db(config).execute("select vehicle, state from vehicle_state"):
        doc = ring.unseal(sealed, row_aad("vehicle_state", ref)).partition(b"\0")[2]
        for view in orjson.loads(doc)["held"]:
            held[view[0]] += 1
    return held


def test_start_without_a_broker_raises_the_gateways_error(config: GatewayConfig) -> None:
    gw = Gateway(config)  # mqtt://127.0.0.1:9: nothing listens
    try:
        with pytest.raises(IngestError, match=r"not ready at .* within 0.5s"):
            gw.start(timeout=0.5)
    finally:
        gw.shutdown(drain_timeout=0)


def test_every_record_is_audited_once_per_subscriber(config: GatewayConfig) -> None:
    envelopes = fleet_envelopes()
    gw = Gateway(config)
    try:
        for i in range(0, len(envelopes), 50):
            gw.process(envelopes[i : i + 50])
    finally:
        gw.store.close()
    subscribers = list(gw.holder.current.subscribers)
    con = db(config)
    entries = Counter(
        sub for (sub,) in con.execute("select subscriber from audit_entries where kind='decision'")
    )
    held = held_per_subscriber(config)
    for sub in subscribers:
        assert entries[sub] + held[sub] == len(envelopes), sub
    views = con.execute("select count(*) from outbox where subscriber != ''").fetchone()[0]
    shared = con.execute(
        "select count(*) from audit_entries where decision in ('shared', 'redacted')"
    ).fetchone()[0]
    assert views == shared == gw.totals.views
    assert gw.totals.entries == sum(entries.values())


def test_no_view_for_a_non_qualified_subscriber_holds_wgs84_or_a_vin(
    config: GatewayConfig,
) -> None:
    # 60 s: the fleet has no consents, so mapco-nav's views are per-trip and trimmed by
    # rules.trips.pseudonym_trim_m; in 20 s no vehicle has left that far behind its start.
    envelopes = fleet_envelopes(8, 60)
    vins = {e.topic.split("/")[1].encode() for e in envelopes}
    gw = Gateway(config)
    try:
        gw.process(envelopes)
    finally:
        gw.store.close()
    subs = [sub for (sub,) in db(config).execute("select subscriber from outbox order by seq")]
    seen: Counter[str] = Counter()
    for sub, (_, payload) in zip(subs, opened(config, "outbox"), strict=True):
        if not sub:
            continue
        seen[sub] += 1
        assert not set(VIN_RE.findall(payload)) & vins, sub
        if sub != "mapco-nav":
            assert b"wgs84" not in payload.lower(), sub
    assert seen["mapco-nav"] > 0


def test_redelivered_messages_are_not_decided_twice_even_after_a_restart(
    config: GatewayConfig,
) -> None:
    envelopes = fleet_envelopes(4, 10)
    gw = Gateway(config)
    gw.process(envelopes)
    first = gw.totals.entries
    gw.process(envelopes[:10])  # a redelivery within the same run
    assert gw.totals.duplicates == 10
    assert gw.totals.entries == first
    gw.store.close()

    again = Gateway(config)  # a restarted worker: state and dedup window from the store
    try:
        assert len(again.state.held) == len(gw.state.held)
        again.process(envelopes)
        assert again.totals.duplicates == len(envelopes)
        assert again.totals.entries == 0
    finally:
        again.store.close()


def trip_envelopes(start: datetime, first: int) -> list[Envelope]:
    """One vehicle's drive from ``start``: the same VIN and the same ``msg_id``\\ s
    (``<VIN>-0``, ``<VIN>-1``, ...) whenever it is generated again, as from a TCU whose
    counter restarts after a reboot; envelope ids from ``first``."""
    msgs = Fleet(FleetConfig(vehicles=1, start=start), seed=5).messages(120, 1.0)
    return [Envelope(m.topic, m.payload, 0.0, first + i) for i, m in enumerate(msgs)]


def delivered(config: GatewayConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """(subscriber, message_id, view) of every view in the outbox, in commit order."""
    ring = KeyRing.load(config.keys)
    shard = origin_of(config.worker)
    query = (
        "select seq, subscriber, message_id, sealed from outbox where subscriber != '' order by seq"
    )
    out = []
    for seq, sub, mid, sealed in db(config).execute(query):
        payload = ring.unseal(sealed, row_aad("outbox", shard, seq)).partition(b"\0")[2]
        out.append((sub, mid, orjson.loads(payload)))
    return out


def decided_per_subscriber(config: GatewayConfig) -> Counter[str]:
    """Decision entries plus views still held, per subscriber: one per record decided."""
    query = "select subscriber from audit_entries where kind='decision'"
    return Counter(sub for (sub,) in db(config).execute(query)) + held_per_subscriber(config)


def msg_ids_of(envelopes: list[Envelope]) -> list[str]:
    return [orjson.loads(e.payload)["msg_id"] for e in envelopes]


def test_a_vehicle_reusing_msg_ids_in_a_later_trip_loses_nothing_and_links_nothing(
    config: GatewayConfig,
) -> None:
    # Two trips of a vehicle without consent, a dedup window and an hour apart; the second
    # sends the first one's msg_ids again. Its records must all be decided, and its views
    # carry ids that appear in no view of the first trip (mapco-nav's views are per-trip).
    t = [0.0]
    gw = Gateway(config, clock=lambda: t[0])
    later = START
    earlier = later - timedelta(seconds=gw.holder.current.rules.ingest.dedup_window_s + 3600)
    first, second = trip_envelopes(earlier, 1), trip_envelopes(later, 10_000)
    assert msg_ids_of(first) == msg_ids_of(second)
    try:
        t[0] = earlier.timestamp() + 600
        gw.process(first)
        views_first = delivered(config)
        t[0] = later.timestamp() + 600
        gw.forget_seen(t[0])  # what the service does as the window passes
        gw.process(second)
        assert gw.totals.duplicates == 0
    finally:
        gw.store.close()
    views_second = delivered(config)[len(views_first) :]
    nav = [view["vehicle"] for sub, _, view in views_second if sub == "mapco-nav"]
    assert nav and all(p.startswith("pt-") for p in nav)  # the vehicle must stay unlinkable
    ids_first = {mid for _, mid, _ in views_first}
    assert ids_first and ids_first.isdisjoint(mid for _, mid, _ in views_second)
    for sub, n in decided_per_subscriber(config).items():
        assert n == len(first) + len(second), sub


def test_a_reused_msg_id_is_a_new_record_and_a_redelivery_a_duplicate(
    config: GatewayConfig,
) -> None:
    # Within the dedup window: the vehicle's counter restarted (same msg_ids, new times).
    first, second = trip_envelopes(START - timedelta(minutes=40), 1), trip_envelopes(START, 500)
    assert msg_ids_of(first) == msg_ids_of(second)
    gw = Gateway(config)
    try:
        gw.process(first)
        gw.process(second)
        assert gw.totals.duplicates == 0
        before = delivered(config)
        gw.process(second[:10])  # a redelivery: the same bytes
        assert gw.totals.duplicates == 10
        assert delivered(config) == before
    finally:
        gw.store.close()
    for sub, n in decided_per_subscriber(config).items():
        assert n == len(first) + len(second), sub
    # Every view went out under the id its record's bytes give (a redelivery's too), and
    # the two drives' ids are disjoint although their msg_ids are the same.
    ring = KeyRing.load(config.keys)
    for sub in gw.holder.current.subscribers:
        key = ring.pseudonym_key(sub)
        first_ids, second_ids = (
            set(message_ids(key, sub, b.vehicle.tolist(), b.msg_id.tolist(), b.time.tolist()))
            for b in (decode_records([orjson.loads(e.payload) for e in d]) for d in (first, second))
        )
        sent = {mid for s, mid, _ in before if s == sub}
        assert first_ids.isdisjoint(second_ids)
        assert sent & second_ids and sent <= first_ids | second_ids, sub


def test_keys_rotated_across_a_restart_neither_lose_state_nor_decide_twice(
    config: GatewayConfig,
) -> None:
    """``icvgw keys rotate`` (every kind) while the worker is stopped: the new HMAC key
    changes vehicle references and record keys, the new store key sealing; redelivered
    messages are still recognised, and the vehicles' state is found again."""
    envelopes = fleet_envelopes(4, 60)
    gw = Gateway(config)
    gw.process(envelopes)
    trips, held = dict(gw.state.trips), len(gw.state.held)
    gw.store.close()
    rotate_keys(config.keys)
    again = Gateway(config)
    try:
        assert again.state.trips == trips and len(again.state.held) == held
        again.process(envelopes[:50])
        assert again.totals.duplicates == 50
        assert again.totals.entries == 0
    finally:
        again.store.close()
    refs = {r for (r,) in db(config).execute("select vehicle from vehicle_state")}
    assert refs and all(r.startswith("k2:") for r in refs)


def test_dead_input_redelivered_after_a_key_rotation_is_not_dead_lettered_twice(
    config: GatewayConfig,
) -> None:
    """A dead input's key is a keyed digest, which ``icvgw keys rotate`` changes: redelivered
    within the window after a rotation, it is still recognised (not audited again)."""
    good = fleet_envelopes(1, 1)[0]
    record = orjson.loads(good.payload)
    two = orjson.dumps({"records": [record, {**record, "ts": "not a time"}]})
    dead = [
        Envelope(good.topic, b'{"secret": 31.2', 0.0, 1),  # not JSON: the whole payload
        Envelope(good.topic, two, 0.0, 2),  # one good record, one bad: ``id:1``
    ]
    gw = Gateway(config)
    gw.process(dead)
    letters = gw.totals.deadletters
    assert letters == 2
    gw.store.close()
    rotate_keys(config.keys)
    again = Gateway(config)
    try:
        again.process(dead)
        assert again.totals.deadletters == 0
        assert again.totals.entries == 0
    finally:
        again.store.close()
    assert len(opened(config, "deadletters")) == letters


def test_input_is_acknowledged_only_after_its_entries_are_committed(
    config: GatewayConfig,
) -> None:
    gw = Gateway(config)
    counts: list[int] = []

    def ack() -> None:
        with db(config) as con:
            counts.append(
                con.execute(
                    "select count(*) from audit_entries where kind = 'decision'"
                ).fetchone()[0]
            )

    env = fleet_envelopes(1, 1)[0]
    try:
        gw.process([Envelope(env.topic, env.payload, 0.0, 1, ack)])
    finally:
        gw.store.close()
    assert counts == [len(gw.holder.current.subscribers)]


def test_unusable_input_is_dead_lettered_audited_and_announced_without_its_content(
    config: GatewayConfig,
) -> None:
    good = fleet_envelopes(1, 1)[0]
    vin = good.topic.split("/")[1]
    spoofed = Envelope("vehicles/LSVAU218XN2183294/telemetry", good.payload, 0.0, 2)
    broken = Envelope(f"vehicles/{vin}/telemetry", b'{"secret": 31.2', 0.0, 3)
    gw = Gateway(config)
    try:
        gw.process([good, spoofed, broken])
    finally:
        gw.store.close()
    con = db(config)
    reasons = sorted(r for (r,) in con.execute("select reason from deadletters"))
    assert reasons == ["not-json", "vehicle-id-mismatch"]
    stored = {p for _, p in opened(config, "deadletters")}
    assert stored == {spoofed.payload, broken.payload}
    audited = con.execute(
        "select count(*) from audit_entries where decision = 'dead-lettered'"
    ).fetchone()[0]
    assert audited == 2
    notices = [n for n in opened(config, "outbox") if n[0].startswith("gateway/deadletter/")]
    assert sorted(t for t, _ in notices) == [
        "gateway/deadletter/not-json",
        "gateway/deadletter/vehicle-id-mismatch",
    ]
    for _, payload in notices:
        # No vehicle reference: a stable one would link the trips of a vehicle whose views
        # carry per-trip pseudonyms (the audit entry at audit_seq keeps it for the operator).
        assert set(orjson.loads(payload)) == {"reason", "digest", "audit_seq"}
        assert b"secret" not in payload
        assert vin.encode() not in payload
    assert gw.totals.deadletters == 2


def test_sweep_ends_quiet_trips_and_old_records_are_forgotten(config: GatewayConfig) -> None:
    envelopes = fleet_envelopes(4, 120)
    t = [START.timestamp()]
    gw = Gateway(config, clock=lambda: t[0])
    try:
        gw.process(envelopes)
        held = len(gw.state.held)
        assert held > 0  # trip-end trimming holds the latest records back
        t[0] += 120 + gw.holder.current.rules.trips.split_gap_s + 1  # past the last record
        before = gw.metrics.registry.get_sample_value("icvgw_audit_entries_total") or 0
        written = gw.sweep(t[0])
        assert written.entries == held
        after = gw.metrics.registry.get_sample_value("icvgw_audit_entries_total")
        assert after == before + held
        assert len(gw.state.held) == 0
        t[0] += gw.holder.current.rules.ingest.dedup_window_s + 1
        assert gw.forget_seen(t[0]) == len(envelopes)
    finally:
        gw.store.close()
    con = db(config)
    entries = Counter(
        sub for (sub,) in con.execute("select subscriber from audit_entries where kind='decision'")
    )
    for sub in gw.holder.current.subscribers:
        assert entries[sub] == len(envelopes), sub
    assert held_per_subscriber(config) == Counter()
    trimmed = con.execute(
        "select count(*) from audit_entries "
        "where decision='blocked' and rules like '%|pi.trip-trim|%'"
    ).fetchone()[0]
    assert trimmed >= held
    assert con.execute("select count(*) from dedup").fetchone()[0] == 0


def test_policy_reload_is_audited_and_a_broken_bundle_keeps_the_last_good(
    config: GatewayConfig, tmp_path: Path
) -> None:
    import shutil

    from gateway.resources import default_policy_dir

    bundle_dir = tmp_path / "policy"
    shutil.copytree(default_policy_dir(), bundle_dir)
    cfg = config.model_copy(update={"policies": str(bundle_dir)})
    gw = Gateway(cfg)
    try:
        first = gw.holder.current.version
        rules = bundle_dir / "rules.yaml"
        rules.write_text(rules.read_text().replace("split_gap_s: 600", "split_gap_s: 900"))
        assert gw.poll_policy()
        gw.process(fleet_envelopes(1, 1))
        second = gw.holder.current.version
        assert second != first
        rules.write_text("geo: [unclosed\n")
        assert not gw.poll_policy()
        gw.process(fleet_envelopes(1, 2)[1:])
        assert gw.holder.current.version == second
        assert gw.holder.last_error is not None
    finally:
        gw.store.close()
    bodies = [
        orjson.loads(body)
        for (body,) in db(cfg).execute(
            "select body from audit_entries where kind = 'admin' order by seq"
        )
    ]
    loaded = [b["subject"] for b in bodies if b["action"] == "policy.loaded"]
    assert loaded == [first, second]


def test_the_policy_thread_loads_and_the_pipeline_only_adopts(
    config: GatewayConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running gateway loads an edited bundle on its policy thread, with the zone
    indexes in use already built; the pipeline's once-a-second poll only swaps it in."""
    import shutil
    import threading
    import time

    from gateway.resources import default_policy_dir

    bundle_dir = tmp_path / "policy"
    shutil.copytree(default_policy_dir(), bundle_dir)
    cfg = config.model_copy(update={"policies": str(bundle_dir)})
    gw = Gateway(cfg)
    loaders: list[tuple[str, object]] = []
    check = gw.holder.check

    def recording_check(loader: object = None) -> object:
        loaders.append((threading.current_thread().name, loader))
        return check(loader)  # type: ignore[arg-type]

    monkeypatch.setattr(gw.holder, "check", recording_check)
    thread = threading.Thread(target=gw._watch_policy, name="icvgw-policy", daemon=True)
    gw._policy_thread = thread
    try:
        gw.process(fleet_envelopes(2, 2))  # builds the band index of the fleet's area
        bands = gw.holder.current.zones.bands_built()
        assert bands
        first = gw.holder.current.version
        thread.start()
        rules = bundle_dir / "rules.yaml"
        rules.write_text(rules.read_text().replace("split_gap_s: 600", "split_gap_s: 900"))
        deadline = time.monotonic() + 30
        while not gw.poll_policy():
            assert time.monotonic() < deadline, "the edited bundle never came into force"
            time.sleep(0.05)
        assert gw.holder.current.version != first
        assert gw.holder.current.zones.bands_built() == bands  # warmed before adoption
        gw.process(fleet_envelopes(2, 3)[2:])
    finally:
        gw.stop()
        thread.join(5)
        gw.store.close()
    # The pipeline never loaded; the policy thread had a child process load.
    assert set(loaders) == {("icvgw-policy", load_in_child)}
    loaded = [
        orjson.loads(body)["subject"]
        for (body,) in db(cfg).execute(
            "select body from audit_entries where kind = 'admin' order by seq"
        )
        if orjson.loads(body)["action"] == "policy.loaded"
    ]
    assert loaded == [first, gw.holder.current.version]


def test_a_failed_head_start_on_zone_indexes_does_not_lose_the_edit(
    config: GatewayConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the new zone indexes ahead of use is only a head start: if it fails, the
    edited bundle still comes into force (it was already counted as loaded)."""
    import shutil

    from gateway.geo.zones import ZoneSet
    from gateway.resources import default_policy_dir

    bundle_dir = tmp_path / "policy"
    shutil.copytree(default_policy_dir(), bundle_dir)
    gw = Gateway(config.model_copy(update={"policies": str(bundle_dir)}))
    try:
        gw.process(fleet_envelopes(2, 2))
        first = gw.holder.current.version

        def broken(self: ZoneSet, bands: object = None) -> tuple[int, ...]:
            raise MemoryError("no room for an index")

        monkeypatch.setattr(ZoneSet, "warm", broken)
        rules = bundle_dir / "rules.yaml"
        rules.write_text(rules.read_text().replace("split_gap_s: 600", "split_gap_s: 900"))
        assert gw.poll_policy()
        assert gw.holder.current.version != first
        gw.process(fleet_envelopes(2, 3)[2:])  # the first batch builds what it needs
    finally:
        gw.store.close()


def test_a_redelivered_unusable_input_is_dead_lettered_once(config: GatewayConfig) -> None:
    good = fleet_envelopes(1, 1)[0]
    vin = good.topic.split("/")[1]
    broken = Envelope(f"vehicles/{vin}/telemetry", b"{not json", 0.0, 7)
    bad_row = Envelope(good.topic, b'[{"Vehicle.VehicleIdentification.VIN": "%s"}]' % vin.encode(),
                       0.0, 8)  # fmt: skip
    gw = Gateway(config)
    try:
        gw.process([broken, bad_row])
        # the bad record now sits at another row of the batch: still the same input
        gw.process([good, Envelope(broken.topic, broken.payload, 0.0, 99), bad_row])
    finally:
        gw.store.close()
    again = Gateway(config)  # and after a restart
    try:
        again.process([broken, bad_row])
    finally:
        again.store.close()
    con = db(config)
    assert sorted(r for (r,) in con.execute("select reason from deadletters")) == [
        "missing-timestamp",
        "not-json",
    ]
    ids = [
        orjson.loads(b)["msg"]
        for (b,) in con.execute(
            "select body from audit_entries where decision = 'dead-lettered' order by seq"
        )
    ]
    assert len(ids) == 2
    assert all(i.startswith("dl:") for i in ids)
    assert gw.totals.duplicates == 2
    assert again.totals.duplicates == 2


def test_cross_border_counts_persist_and_stay_consistent_with_the_store(
    config: GatewayConfig,
) -> None:
    envelopes = fleet_envelopes(6, 30)
    gw = Gateway(config)
    try:
        gw.process(envelopes[:60])
        gw.process(envelopes[60:])
    finally:
        gw.store.close()
    con = db(config)
    counted = con.execute(
        "select recipient, year, category, count(*) from crossborder_subjects "
        "group by recipient, year, category order by 1, 2, 3"
    ).fetchall()
    assert counted, "nothing was counted for the cross-border subscriber"
    assert {r for r, *_ in counted} == {"oem-hq-de"}
    counters = con.execute("select * from crossborder_counts order by 1, 2, 3").fetchall()
    assert counters == counted
    subjects = [s for (s,) in con.execute("select subject from crossborder_subjects")]
    assert all(s.startswith("k") and ":" in s for s in subjects)  # keyed refs, never VINs


def test_each_batch_forgets_a_bounded_number_of_expired_records(config: GatewayConfig) -> None:
    """Forgetting is spread over the batches (a few rows each), never one long delete."""
    from gateway.service import FORGET_MIN, FORGET_PER_RECORD

    old = fleet_envelopes(10, 30)  # 300 records
    msgs = Fleet(FleetConfig(vehicles=2, start=START), seed=11).messages(2, 1.0)
    new = [Envelope(m.topic, m.payload, 0.0, 1_000 + i) for i, m in enumerate(msgs)]
    t = [START.timestamp()]
    gw = Gateway(config, clock=lambda: t[0])
    try:
        gw.process(old)
        t[0] += gw.holder.current.rules.ingest.dedup_window_s + 1
        gw.process(new)
    finally:
        gw.store.close()
    budget = FORGET_MIN + FORGET_PER_RECORD * len(new)
    con = db(config)
    seen = Counter(ms for (ms,) in con.execute("select seen_ms from dedup"))
    assert seen[round(t[0] * 1000)] == len(new)
    assert sum(seen.values()) == len(old) - budget + len(new)


def _policy_copy(tmp_path: Path, old: str, new: str) -> str:
    import shutil

    from gateway.resources import default_policy_dir

    bundle_dir = tmp_path / "policy"
    shutil.copytree(default_policy_dir(), bundle_dir)
    rules = bundle_dir / "rules.yaml"
    text = rules.read_text()
    assert text.count(old) == 1
    rules.write_text(text.replace(old, new))
    return str(bundle_dir)


def test_a_cross_border_block_fires_the_alert_metric(config: GatewayConfig, tmp_path: Path) -> None:
    # as a CIIO every export needs a security assessment: oem-hq-de holds none
    cfg = config.model_copy(
        update={"policies": _policy_copy(tmp_path, "ciio: false", "ciio: true")}
    )
    gw = Gateway(cfg)
    try:
        gw.process(fleet_envelopes(3, 5))
        blocked = gw.metrics.registry.get_sample_value(
            "icvgw_crossborder_blocked_total", {"subscriber": "oem-hq-de"}
        )
    finally:
        gw.store.close()
    assert blocked is not None and blocked > 0


def test_counts_are_read_in_the_year_the_rules_count_in(
    config: GatewayConfig, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from gateway.policy.schema import ExportDataClass, counting_year

    # 20:00 UTC on 31 December: already next year in Beijing, still this year in UTC
    now = datetime(2026, 12, 31, 20, 0, tzinfo=UTC).timestamp()
    policies = _policy_copy(tmp_path, "year_utc_offset_hours: 8", "year_utc_offset_hours: 0")
    gw = Gateway(config.model_copy(update={"policies": policies}), clock=lambda: now)
    try:
        # records of the gateway's clock, not of today (they would be dead letters)
        gw.process(fleet_envelopes(3, 5, datetime.fromtimestamp(now - 600, UTC)))
        bundle = gw.holder.current
        vehicles = list(gw.state.trips)
        counts = gw._crossborder(bundle, vehicles, now)
    finally:
        gw.store.close()
    year = counting_year(0, now)
    assert year == 2026
    key = ("oem-hq-de", year, ExportDataClass.PERSONAL_INFORMATION)
    assert key in counts and counts[key].known == set(vehicles)


def test_the_sweep_deletes_views_dead_letters_and_vehicle_state_past_their_retention(
    config: GatewayConfig,
) -> None:
    t0 = 1_780_000_000.0
    clock = [t0]
    gw = Gateway(config, clock=lambda: clock[0])
    broken = Envelope("vehicles/LSVAU2181P2100001/telemetry", b'{"secret": 31.2', 0.0, 99)
    try:
        gw.process([*fleet_envelopes(2, 5, datetime.fromtimestamp(t0 - 600, UTC)), broken])
        con = db(config)
        tables = ("outbox", "deadletters", "vehicle_state")
        before = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}
        assert all(before.values()), before
        kept = gw.holder.current.rules.retention
        clock[0] = t0 + (kept.outbox_days - 1) * 86400  # within every limit: all stay
        gw.sweep(clock[0])
        within = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}
        clock[0] = t0 + (max(kept.deadletter_days, kept.vehicle_state_days) + 1) * 86400
        gw.sweep(clock[0])
        after = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}
    finally:
        gw.store.close()
    assert within["deadletters"] == before["deadletters"]
    assert within["vehicle_state"] == before["vehicle_state"]
    assert within["outbox"] >= before["outbox"]
    # what the last sweep itself wrote (its own audit notices) is new; everything older went
    assert after == {"outbox": 0, "deadletters": 0, "vehicle_state": 0}


class ConfirmingPublisher:
    """Stands in for the broker on the output side: every publish is confirmed at once."""

    limit = 1000
    max_packet: int | None = None  # no MQTT 5 packet limit announced

    def __init__(self) -> None:
        self.topics: list[str] = []

    def try_publish(self, topic: str, payload: bytes, done: Callable[[bool], None]) -> bool:
        self.publish(topic, payload, done)
        return True

    def publish(self, topic: str, _p: bytes, done: Callable[[bool], None], **_k: object) -> None:
        self.topics.append(topic)
        done(True)

    def flush(self, _timeout: float) -> bool:
        return True

    def stop(self) -> None:
        pass


class QueueSource:
    """Stands in for the broker on the input side: envelopes put here are taken in batches;
    ``acked`` holds the message ids acknowledged."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Envelope] = queue.Queue()
        self.acked: list[int] = []
        self.stale_acks = 0

    def put(self, envelopes: list[Envelope]) -> None:
        for e in envelopes:
            mid = e.message_id
            self.queue.put(replace(e, ack=lambda mid=mid: self.acked.append(mid)))

    def get_batch(self, max_size: int, max_wait: float) -> list[Envelope]:
        out: list[Envelope] = []
        try:
            out.append(self.queue.get(timeout=max_wait))
            while len(out) < max_size:
                out.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        return out

    def pending(self) -> int:
        return self.queue.qsize()

    def stop(self) -> None:
        pass


def running(config: GatewayConfig) -> tuple[Gateway, QueueSource, threading.Thread]:
    """A gateway whose run loop reads ``QueueSource`` and publishes to a confirming fake."""
    registry = CollectorRegistry()
    gw = Gateway(config, registry=registry)
    gw.health.min_delay, gw.health.max_delay = 0.05, 0.2
    src = QueueSource()
    pub = ConfirmingPublisher()
    gw.source = src  # type: ignore[assignment]
    gw.publisher = gw.drainer.publisher = pub  # type: ignore[assignment]
    gw.drainer.start()
    thread = threading.Thread(target=gw.run, daemon=True)
    thread.start()
    return gw, src, thread


def fill(gw: Gateway, pages: int | None = None) -> None:
    """Let the store's database grow by ``pages`` pages at most (None: no bound)."""
    con = gw.store._conn  # type: ignore[attr-defined]
    if pages is None:
        con.execute("pragma max_page_count = 1073741823")
        return
    (count,) = con.execute("pragma page_count").fetchone()
    con.execute(f"pragma max_page_count = {count + pages}")


def refuse_writes(gw: Gateway, refuse: bool) -> None:
    """Make every write of the store fail (a store that does not take writes at all)."""
    gw.store._conn.execute(f"pragma query_only = {int(refuse)}")  # type: ignore[attr-defined]


def until(what: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_store_holds_input_unacknowledged_and_the_gateway_resumes_by_itself(
    config: GatewayConfig, caplog: pytest.LogCaptureFixture
) -> None:
    envelopes = fleet_envelopes(6, 20)
    first, rest = envelopes[:40], envelopes[40:]
    gw, src, thread = running(config)

    def store_ok() -> float | None:
        return gw.metrics.registry.get_sample_value("icvgw_store_ok")

    try:
        src.put(first)
        until(lambda: len(src.acked) == len(first))
        assert store_ok() == 1
        fill(gw, 0)
        caplog.clear()
        src.put(rest)
        until(lambda: store_ok() == 0)
        time.sleep(1.0)  # retrying: nothing further acknowledged, the loop still alive
        assert len(src.acked) == len(first)
        assert thread.is_alive()
        assert gw.status().startswith("store failing for ")
        assert "database or disk is full" in gw.status()
        fill(gw, None)  # space returns
        until(lambda: len(src.acked) == len(envelopes) and store_ok() == 1)
        assert gw.status() == "running"
        assert (gw.metrics.registry.get_sample_value("icvgw_store_failures_total") or 0) >= 2
    finally:
        gw.stop()
        thread.join(30)
    assert not thread.is_alive() and gw.clean_shutdown
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["gateway.health"], [r.getMessage() for r in errors]
    assert "store failing: sqlite store: database or disk is full" in errors[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert sorted(src.acked) == sorted(e.message_id for e in envelopes)
    con = db(config)
    subs = list(gw.holder.current.subscribers)
    entries = Counter(
        s for (s,) in con.execute("select subscriber from audit_entries where kind='decision'")
    )
    held = held_per_subscriber(config)
    for sub in subs:  # each record decided once for each subscriber: none lost, none twice
        assert entries[sub] + held[sub] == len(envelopes), sub
    (size,) = con.execute("select max(seq) + 1 from audit_entries").fetchone()
    (covered,) = con.execute("select max(size) from audit_checkpoints").fetchone()
    assert covered == size  # the final checkpoint covers everything


def test_shutdown_with_a_failing_store_retries_the_final_checkpoint(
    config: GatewayConfig, caplog: pytest.LogCaptureFixture
) -> None:
    envelopes = fleet_envelopes(3, 10)
    gw, src, thread = running(config)
    try:
        src.put(envelopes)
        until(lambda: len(src.acked) == len(envelopes))
        refuse_writes(gw, True)
        threading.Timer(1.5, refuse_writes, (gw, False)).start()  # back during the shutdown
    finally:
        gw.stop()
        thread.join(30)
    assert gw.clean_shutdown
    assert not any(r.exc_info for r in caplog.records)
    con = db(config)
    (size,) = con.execute("select max(seq) + 1 from audit_entries").fetchone()
    (covered,) = con.execute("select max(size) from audit_checkpoints").fetchone()
    assert covered == size


def test_shutdown_with_a_store_that_stays_failing_says_so_in_one_line(
    config: GatewayConfig, caplog: pytest.LogCaptureFixture
) -> None:
    envelopes = fleet_envelopes(3, 10)
    gw, src, thread = running(config)
    try:
        src.put(envelopes[:20])
        until(lambda: len(src.acked) == 20)
        refuse_writes(gw, True)
        caplog.clear()
        src.put(envelopes[20:])  # not committed: stays unacknowledged
        until(lambda: not gw.health.ok)
    finally:
        t0 = time.monotonic()
        gw.stop()
        thread.join(30)
    assert time.monotonic() - t0 < 15
    assert len(src.acked) == 20
    assert not gw.clean_shutdown
    assert not any(r.exc_info for r in caplog.records)
    final = [r.getMessage() for r in caplog.records if r.getMessage().startswith("final")]
    assert len(final) == 1 and "the next start writes it" in final[0]


def test_shutdown_empties_the_input_queue_while_the_input_stops(config: GatewayConfig) -> None:
    gw = Gateway(config)
    src = QueueSource()
    src.put(fleet_envelopes(1, 3))
    stopped: list[bool] = []

    def stop() -> None:  # like paho's thread: it hands over a message before it disconnects
        until(src.queue.empty, 5)
        stopped.append(True)

    src.stop = stop  # type: ignore[method-assign]
    gw.source = src  # type: ignore[assignment]
    gw.publisher = gw.drainer.publisher = ConfirmingPublisher()  # type: ignore[assignment]
    gw.shutdown(drain_timeout=1)
    assert stopped == [True]
    assert src.acked == []  # left for the broker to deliver again


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.mark.parametrize("races", [1, 2])
def test_two_workers_cannot_cross_a_threshold_together(
    tmp_path: Path, shared_store: str, monkeypatch: pytest.MonkeyPatch, races: int
) -> None:
    """Two workers share one store; the overseas OEM is just below 100,000 people this year
    and has no security assessment (needed beyond). The first worker commits a batch with a
    new vehicle between the second's read of the counts and its commit, ``races`` times:
    the second's commit finds the count changed, so it decides again (the last time under
    the counters' locks), and blocks its new vehicle."""
    init_keys(tmp_path / "keys")
    now = float(round(datetime.now(UTC).timestamp()))

    def worker(name: str) -> Gateway:
        overrides = {
            ("broker", "url"): "mqtt://127.0.0.1:9",
            ("broker", "protocol"): "5",
            ("store",): shared_store,
            ("keys",): str(tmp_path / "keys"),
            ("worker",): name,
        }
        return Gateway(load_config(None, overrides=overrides, environ={}), clock=lambda: now)

    def record(vin: str) -> Envelope:
        stamp = datetime.fromtimestamp(now - 1, UTC).isoformat().replace("+00:00", "Z")
        payload = {VIN_PATH: vin, TIMESTAMP_PATH: stamp, "Vehicle.Speed": 30.0}
        return Envelope(f"vehicles/{vin}/telemetry", orjson.dumps(payload), 0.0, 1)

    *firsts, second = sorted({e.topic.split("/")[1] for e in fleet_envelopes(races + 1, 1)})
    a, b = worker("w1"), worker("w2")
    try:
        year = counting_year(a.holder.current.rules.crossborder.year_utc_offset_hours, now)
        pi = ExportDataClass.PERSONAL_INFORMATION.value
        with a.store.transaction() as tx:
            seeded = [f"k0:seed{i}" for i in range(100_000 - races)]
            tx.add_crossborder_subjects("oem-hq-de", year, seeded, category=pi, at=now)
        read = b._crossborder
        reads: list[object] = []

        def racing(*args: Any) -> Any:
            counts = read(*args)
            if len(reads) < races:  # the first worker commits between this read and b's commit
                a.process([record(firsts[len(reads)])])
            reads.append(counts)
            return counts

        monkeypatch.setattr(b, "_crossborder", racing)
        b.process([record(second)])
        with b.store.snapshot() as rd:
            rows = rd.fetch_all(
                "select shard, vehicle, decision, rules from audit_entries "
                "where kind = 'decision' and subscriber = 'oem-hq-de'"
            )
            counted = rd.crossborder_count("oem-hq-de", year, pi)
            subjects = rd.fetch_one(
                "select count(*) from crossborder_subjects where recipient = 'oem-hq-de' "
                "and year = ? and category = ?",
                (year, pi),
            )[0]
        blocked = b.metrics.crossborder_blocked.labels("oem-hq-de")._value.get()
    finally:
        a.store.close()
        b.store.close()
    verdicts = {(shard, vehicle): (decision, rules) for shard, vehicle, decision, rules in rows}
    shared = {(a.origin, a.vehicle_ref(first)) for first in firsts}
    assert set(verdicts) == {*shared, (b.origin, b.vehicle_ref(second))}
    assert all(verdicts[key][0] == "shared" for key in shared)
    decision, rules = verdicts[(b.origin, b.vehicle_ref(second))]
    assert decision == "blocked"
    assert "xborder.basis-missing" in rules
    assert counted == subjects == 100_000
    assert len(reads) == races + 1  # decided again on fresh counts
    assert blocked == 1


def test_a_consent_recorded_before_an_hmac_rotation_still_counts(config: GatewayConfig) -> None:
    """A consent granted at run time is stored under the vehicle reference of its day; after
    ``icvgw keys rotate`` the vehicle's references change, and the consent must still be
    found (else the vehicle would silently fall back to no consent: per-trip pseudonyms)."""
    envelopes = fleet_envelopes(3, 60)
    vin = envelopes[0].topic.split("/")[1]
    gw = Gateway(config)
    purpose = "navigation-map"  # mapco-nav: a stable pseudonym with consent, else per trip
    assert not any(c.vin == vin and c.purpose == purpose for c in gw.holder.current.consents)
    now = time.time()
    with gw.store.transaction() as tx:
        consent = Consent("c-run-time", gw.vehicle_ref(vin), purpose, now - 3600, now + 86400)
        tx.put_consents([consent], at=now, instance="test")
    gw.store.close()
    rotate_keys(config.keys)
    again = Gateway(config)
    try:
        again.process(envelopes)
        stable = again.keys.vehicle_ref(vin)  # the current generation's reference
    finally:
        again.store.close()
    ids = Counter(
        orjson.loads(payload)["vehicle"][:3]
        for topic, payload in opened(config, "outbox")
        if topic.startswith("share/mapco-nav/")
    )
    assert stable.startswith("k2:")
    assert ids["pk-"] > 0, ids  # the consenting vehicle's stable pseudonym
    assert ids["pt-"] > 0, ids  # the two others: per trip


def test_numeric_msg_ids_of_one_millisecond_are_different_records(config: GatewayConfig) -> None:
    # A TCU that writes its counter as a JSON float (2.0, as many encoders do) and sends two
    # records stamped in the same millisecond: they are two records, not a redelivery, and
    # both must be decided; 2.0 is the same msg_id as 2 (equal JSON numbers).
    good = fleet_envelopes(1, 1)[0]
    vin = orjson.loads(good.payload)[VIN_PATH]
    stamp = START.isoformat()
    recs = [{VIN_PATH: vin, TIMESTAMP_PATH: stamp, "msg_id": m} for m in (1.0, 2.0, 2)]
    gw = Gateway(config)
    try:
        gw.process([Envelope(good.topic, orjson.dumps(recs[:2]), 0.0, 1)])
        assert gw.totals.duplicates == 0
        gw.process([Envelope(good.topic, orjson.dumps(recs[2:]), 0.0, 2)])
        assert gw.totals.duplicates == 1
    finally:
        gw.store.close()


def test_state_moved_to_a_rotated_key_keeps_its_age_for_retention(config: GatewayConfig) -> None:
    # Restarting after ``icvgw keys rotate`` moves each vehicle's state to its new reference;
    # the move is not an update of the vehicle: the row must keep its last-updated time, or
    # the next retention sweep takes it for years old and deletes the state of a vehicle
    # that is still driving (its trip, its held views).
    gw = Gateway(config)
    gw.process(fleet_envelopes(4, 60))
    gw.store.close()
    before = sorted(ms for (ms,) in db(config).execute("select updated_ms from vehicle_state"))
    rotate_keys(config.keys)
    again = Gateway(config)
    try:
        after = sorted(ms for (ms,) in db(config).execute("select updated_ms from vehicle_state"))
        assert after == before
        again.sweep(again.clock())
    finally:
        again.store.close()
    assert len(list(db(config).execute("select vehicle from vehicle_state"))) == len(before)
