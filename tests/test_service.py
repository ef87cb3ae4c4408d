"""The service's batch path in process, against a real SQLite store (no broker needed):
commit-then-ack, de-duplication across batches and restarts, dead letters, counts."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from pathlib import Path

import orjson
import pytest

from gateway.config import GatewayConfig, load_config
from gateway.keys import init_keys
from gateway.model import Envelope
from gateway.policy.child import load_in_child
from gateway.service import Gateway
from simulators.fleet import Fleet, FleetConfig

VIN_RE = re.compile(rb"[A-HJ-NPR-Z0-9]{17}")


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    init_keys(tmp_path / "keys")
    return load_config(
        None,
        overrides={
            ("broker", "url"): "mqtt://127.0.0.1:9",  # never connected in these tests
            ("broker", "protocol"): "5",
            ("store",): f"sqlite:///{tmp_path / 'gw.sqlite'}",
            ("keys",): str(tmp_path / "keys"),
        },
        environ={},
    )


def fleet_envelopes(n_vehicles: int = 8, seconds: float = 20) -> list[Envelope]:
    msgs = Fleet(FleetConfig(vehicles=n_vehicles), seed=3).messages(seconds, 1.0)
    return [Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(msgs)]


def db(config: GatewayConfig) -> sqlite3.Connection:
    return sqlite3.connect(config.store.removeprefix("sqlite:///"))


def held_per_subscriber(con: sqlite3.Connection) -> Counter[str]:
    held: Counter[str] = Counter()
    for (doc,) in con.execute("select state from vehicle_state"):
        for view in orjson.loads(doc)["held"]:
            held[view[0]] += 1
    return held


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
    held = held_per_subscriber(con)
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
    rows = db(config).execute("select subscriber, payload from outbox where subscriber != ''")
    seen = Counter()
    for sub, payload in rows:
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
    spoofed = Envelope("vehicles/LSVAU2180N2183294/telemetry", good.payload, 0.0, 2)
    broken = Envelope(f"vehicles/{vin}/telemetry", b'{"secret": 31.2', 0.0, 3)
    gw = Gateway(config)
    try:
        gw.process([good, spoofed, broken])
    finally:
        gw.store.close()
    con = db(config)
    reasons = sorted(r for (r,) in con.execute("select reason from deadletters"))
    assert reasons == ["not-json", "vehicle-id-mismatch"]
    stored = {p for (p,) in con.execute("select payload from deadletters")}
    assert stored == {spoofed.payload, broken.payload}
    audited = con.execute(
        "select count(*) from audit_entries where decision = 'dead-lettered'"
    ).fetchone()[0]
    assert audited == 2
    notices = list(con.execute("select topic, payload from outbox where subscriber = ''"))
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
    t = [1_795_867_200.0]
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
    assert held_per_subscriber(con) == Counter()
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
        with gw.store.snapshot() as rd:
            stored = {
                key: rd.crossborder_count(*key) for key in gw._xb_counts if gw._xb_counts[key]
            }
        cached = {k: v for k, v in gw._xb_counts.items() if v}
    finally:
        gw.store.close()
    con = db(config)
    counted = con.execute(
        "select recipient, count(*) from crossborder_subjects group by recipient"
    ).fetchall()
    assert counted, "nothing was counted for the cross-border subscriber"
    assert {r for r, _ in counted} == {"oem-hq-de"}
    assert cached == stored
    subjects = [s for (s,) in con.execute("select subject from crossborder_subjects")]
    assert all(s.startswith("k") and ":" in s for s in subjects)  # keyed refs, never VINs


def test_each_batch_forgets_a_bounded_number_of_expired_records(config: GatewayConfig) -> None:
    """Forgetting is spread over the batches (a few rows each), never one long delete."""
    from gateway.service import FORGET_MIN, FORGET_PER_RECORD

    old = fleet_envelopes(10, 30)  # 300 records
    msgs = Fleet(FleetConfig(vehicles=2), seed=11).messages(2, 1.0)
    new = [Envelope(m.topic, m.payload, 0.0, 1_000 + i) for i, m in enumerate(msgs)]
    t = [1_795_867_200.0]
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
