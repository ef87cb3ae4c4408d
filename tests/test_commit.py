"""What a commit keeps of hostile input, over the real SQLite store: one copy of a dead
payload per message, a bounded summary of an oversize one, a bounded topic; and no record
time, however absurd, makes the audit log unverifiable or silences a vehicle."""

from __future__ import annotations

import base64
import sqlite3
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.verify import verify_store
from gateway.config import GatewayConfig
from gateway.model import Envelope
from gateway.service import Gateway
from gateway.store.deadletters import DeadLetterRow, deadletter, deadletters
from gateway.store.outbox import OutboxRow, outbox_rows
from gateway.testing import make_vin, offline_config
from gateway.tlog.entries import parse_time
from gateway.vss import LATITUDE, LONGITUDE, TIMESTAMP, VIN
from simulators.fleet import Fleet, FleetConfig

V1 = make_vin(1)
NOW = 1795867260.0  # the gateway's clock: a minute after the records' time


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    return make_config(tmp_path)


def make_config(tmp_path: Path) -> GatewayConfig:
    return offline_config(tmp_path)


def db(config: GatewayConfig) -> sqlite3.Connection:
    return sqlite3.connect(config.store.removeprefix("sqlite:///"))


def record(vin: str = V1, **extra: object) -> dict[str, object]:
    return {VIN: vin, TIMESTAMP: 1795867200.0, LATITUDE: 31.23, LONGITUDE: 121.47, **extra}


@dataclass
class Kept:
    """What the store holds after a run, opened: dead letters and outbox rows in audit
    order, decision entries' bodies."""

    letters: list[DeadLetterRow]
    outbox: list[OutboxRow]
    bodies: list[bytes]


def run(config: GatewayConfig, envelopes: list[Envelope]) -> Kept:
    gw = Gateway(config, clock=lambda: NOW)
    try:
        gw.process(envelopes)
        with gw.store.snapshot() as rd:
            infos = sorted(deadletters(rd, gw.origin, 1_000_000), key=lambda d: d.seq)
            letters = [deadletter(rd, gw.origin, d.seq) for d in infos]
            outbox = [row for row, _ in outbox_rows(rd, gw.origin)]
            bodies = [e.body for e in rd.iter_entries(gw.origin) if e.body is not None]
    finally:
        gw.store.close()
    kept = [d for d in letters if d is not None]
    decisions = [b for b in bodies if orjson.loads(b)["kind"] == "decision"]
    return Kept(kept, outbox, decisions)


def test_a_hostile_topic_is_dead_lettered_once_and_never_echoed(config: GatewayConfig) -> None:
    hostile = "<b>" + "x" * 30_000 + "</b>"
    topic = f"vehicles/{hostile}/telemetry"
    payload = orjson.dumps([record(hostile)] * 3)
    kept = run(config, [Envelope(topic, payload, 0.0, 1)])
    rows = [(d.reason, d.topic) for d in kept.letters]
    assert [r for r, _ in rows] == ["invalid-topic-vin"]
    assert len(rows[0][1]) <= 128 and rows[0][1].startswith("vehicles/<b>xxx")
    notices = [(r.topic, r.payload) for r in kept.outbox]
    assert [t for t, _ in notices] == ["gateway/deadletter/invalid-topic-vin"]
    assert len(notices[0][1]) < 300 and b"xxx" not in notices[0][1]
    assert "vehicle" not in orjson.loads(notices[0][1])  # no vehicle reference in a notice
    assert len(kept.bodies) == 1 and b"xxx" not in kept.bodies[0]


def test_a_payload_of_many_bad_records_is_kept_once(config: GatewayConfig) -> None:
    bad = [record(**{LATITUDE: "31.2", "pad": "y" * 50}) for _ in range(1000)]
    payload = orjson.dumps(bad)
    kept = run(config, [Envelope(f"vehicles/{V1}/telemetry", payload, 0.0, 1)])
    rows = [(d.reason, len(d.payload)) for d in kept.letters]
    assert len(rows) == 1000  # every bad record has its own dead letter and audit entry
    assert {r for r, _ in rows} == {"non-numeric-coordinate"}
    assert sum(n for _, n in rows) == len(payload)  # ... and the payload is kept once
    digests = {orjson.loads(b)["digest"] for b in kept.bodies}
    assert len(digests) == 1  # every entry names the one payload kept


def test_an_oversize_payload_keeps_its_size_digest_and_a_prefix(config: GatewayConfig) -> None:
    payload = orjson.dumps(record(pad="z" * 10_000_000))
    kept = run(config, [Envelope(f"vehicles/{V1}/telemetry", payload, 0.0, 1)])
    [letter] = kept.letters
    assert letter.reason == "oversize"
    assert len(letter.payload) < 6000  # 4096 bytes of prefix, base64, and the size and digest
    summary = orjson.loads(letter.payload)
    assert summary["size"] == len(payload)
    assert base64.b64decode(summary["prefix_base64"]) == payload[:4096]
    [body] = kept.bodies
    assert orjson.loads(body)["digest"] == summary["digest"]


offsets = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
stamps = st.one_of(
    st.datetimes(timezones=offsets).map(datetime.isoformat),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.floats(),
    st.floats(NOW - 1e6, NOW + 1e6),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=30),
    st.sampled_from(["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59-23:59"]),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(stamps, min_size=1, max_size=12))
def test_no_record_time_makes_the_log_unverifiable(times: list[Any]) -> None:
    records = [record(**{TIMESTAMP: t, "msg_id": f"m{i}"}) for i, t in enumerate(times)]
    envelopes = [Envelope(f"vehicles/{V1}/telemetry", orjson.dumps(records), 0.0, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(make_config(Path(tmp)), clock=lambda: NOW)
        try:
            gw.process(envelopes)
            gw.audit.checkpoint(force=True)
            reports = verify_store(gw.store, gw.keys.verifiers(gw.origin))
            with gw.store.snapshot() as rd:
                bodies = [e.body for e in rd.iter_entries(gw.origin) if e.body is not None]
        finally:
            gw.store.close()
    assert [r.error for r in reports] == [None]
    assert reports[0].entries > 0
    for body in bodies:
        when = parse_time(orjson.loads(body)["time"]) / 1000
        assert NOW - 604800 <= when <= NOW + 300  # the record's time, or the gateway's


def test_a_record_from_year_9999_does_not_silence_its_vehicle(tmp_path: Path) -> None:
    start = datetime.fromtimestamp(NOW, UTC) - timedelta(minutes=10)
    msgs = list(Fleet(FleetConfig(vehicles=1, start=start), seed=5).messages(300, 1.0))
    vin = msgs[0].topic.split("/")[1]
    poison = orjson.dumps(record(vin, **{TIMESTAMP: "9999-12-31T23:59:59Z", "msg_id": "x"}))
    clean = [Envelope(m.topic, m.payload, 0.0, i + 2) for i, m in enumerate(msgs)]
    views: list[Counter[str]] = []
    for name, first in (("clean", []), ("poisoned", [Envelope(msgs[0].topic, poison, 0.0, 1)])):
        cfg = make_config(tmp_path / name)
        gw = Gateway(cfg, clock=lambda: NOW)
        try:
            gw.process(first)
            for i in range(0, len(clean), 20):
                gw.process(clean[i : i + 20])
        finally:
            gw.store.close()
        con = db(cfg)
        views.append(Counter(s for (s,) in con.execute("select subscriber from outbox")))
    assert views[1] == views[0] + Counter({"": 1})  # the same views, and one dead letter
    assert views[0]["sh-traffic"] > 0  # down-sampled to one record per 5 s


def stored_bytes(con: sqlite3.Connection) -> int:
    """Bytes of content the store holds: entries, views and notices, dead letters (the
    last two sealed with their topics)."""
    return sum(
        con.execute(q).fetchone()[0] or 0
        for q in (
            "select sum(length(body)) from audit_entries",
            "select sum(length(sealed)) from outbox",
            "select sum(length(sealed)) from deadletters",
        )
    )


def test_a_flood_of_hostile_messages_grows_the_store_within_bounds(tmp_path: Path) -> None:
    start = datetime.fromtimestamp(NOW, UTC) - timedelta(minutes=5)
    msgs = list(Fleet(FleetConfig(vehicles=4, start=start), seed=7).messages(120, 1.0))
    good = [Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(msgs)]
    topic = good[0].topic
    arrays = [orjson.dumps([record(**{LATITUDE: "x", "n": i})] * 300) for i in range(5)]
    oversize = [bytes([i]) * 10_000_000 for i in range(5)]
    hostile = [f"vehicles/{'<x>' * 10_000}{i}/telemetry" for i in range(5)]
    flood = [Envelope(topic, p, 0.0, 0) for p in arrays + oversize]
    flood += [Envelope(t, orjson.dumps(record()), 0.0, 0) for t in hostile]
    stored: list[int] = []
    views: list[Counter[str]] = []
    peaks: list[int] = []
    for name, extra in (("clean", []), ("flood", flood)):
        cfg = make_config(tmp_path / name)
        gw = Gateway(cfg, clock=lambda: NOW)
        tracemalloc.start()
        try:
            for i in range(0, len(good), 32):
                gw.process(good[i : i + 32] + extra[i // 32 : i // 32 + 1])
            gw.process(extra[len(good) // 32 + 1 :])
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            gw.store.close()
        con = db(cfg)
        stored.append(stored_bytes(con))
        views.append(Counter(s for (s,) in con.execute("select subscriber from outbox")))
    dead = 5 * 300 + 5 + 5
    assert views[1] == views[0] + Counter({"": dead})  # the well-formed traffic, all decided
    kept = sum(len(p) for p in arrays) + 5 * 6_000 + 5 * 128
    growth = stored[1] - stored[0]
    print(f"store growth {growth:,} bytes for {dead} dead letters, payloads kept {kept:,}")
    print(f"peak memory {peaks[0]:,} clean, {peaks[1]:,} with the flood")
    assert growth <= kept + dead * 1_000  # each payload once, about 1 KB per dead letter
    assert peaks[1] < peaks[0] + 3 * 10_000_000  # a few copies' worth of the largest message


def test_a_batch_of_many_dead_records_is_committed_in_linear_time(tmp_path: Path) -> None:
    """Payloads of 1,000 bad records, 2 in a batch and then 20: the redelivery check compared
    each dead record with all before it (20,000² / 2 comparisons) and each bad record hashed
    its whole payload again; ten times the input must cost about ten times the time."""
    elapsed: list[float] = []
    for n in (2, 20):
        arrays = [orjson.dumps([record(**{LATITUDE: "x", "n": i})] * 1000) for i in range(n)]
        envelopes = [Envelope(f"vehicles/{V1}/telemetry", p, 0.0, i) for i, p in enumerate(arrays)]
        cfg = make_config(tmp_path / str(n))
        gw = Gateway(cfg, clock=lambda: NOW)
        try:
            started = time.perf_counter()
            gw.process(envelopes)
            elapsed.append(time.perf_counter() - started)
        finally:
            gw.store.close()
        [(letters,)] = list(db(cfg).execute("select count(*) from deadletters"))
        assert letters == n * 1000
    assert elapsed[1] < 20 * elapsed[0], [f"{t:.2f} s" for t in elapsed]


def test_every_view_and_notice_names_the_audit_entry_that_decided_it(
    config: GatewayConfig,
) -> None:
    # One batch of shared views and a dead letter, after the policy's own entry: the seq of
    # each outbox row, the audit_seq inside its bytes and the entry stored at that seq are
    # one number, and that entry's digest is of those very bytes.
    good = [record(make_vin(i), **{TIMESTAMP: 1795867200.0 + i}) for i in range(1, 6)]
    bad = record(**{LATITUDE: "31.2"})
    gw = Gateway(config, clock=lambda: NOW)
    try:
        gw.process(
            [
                Envelope(f"vehicles/{r[VIN]}/telemetry", orjson.dumps(r), 0.0, i)
                for i, r in enumerate([*good, bad])
            ]
        )
        with gw.store.snapshot() as rd:
            rows = [row for row, _ in outbox_rows(rd, gw.origin)]
            entries = {e.seq: e for e in rd.iter_entries(gw.origin)}
    finally:
        gw.store.close()
    assert min(entries) == 0 and min(r.seq for r in rows) > 0  # numbered after the policy's
    assert len([r for r in rows if r.subscriber]) >= 5
    assert len([r for r in rows if not r.subscriber]) == 1
    for row in rows:
        body = orjson.loads(entries[row.seq].body or b"")
        assert orjson.loads(row.payload)["audit_seq"] == row.seq
        assert body["msg"] == row.message_id and body["seq"] == row.seq
        if row.subscriber:
            assert body["digest"] == gw.keys.payload_digest(row.payload)
        else:
            assert body["decision"] == "dead-lettered"
            assert body["digest"] == orjson.loads(row.payload)["digest"]
