"""The store at rest (schema 4): keyed vehicle references and sealed values only, a
migration that converts a schema-3 store, re-sealing after a key rotation. SQLite and
PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from gateway.errors import KeyStoreError, StoreError
from gateway.keys import KeyKind, KeyRing, rotate_keys
from gateway.store import dialects, open_store
from gateway.store import schema as store_module
from gateway.store.deadletters import DeadLetterRow, add_deadletters, deadletter
from gateway.store.dedup import add_seen, seen_records
from gateway.store.forget import erase_vehicle
from gateway.store.outbox import OutboxRow, add_outbox, mark_delivered, pending_outbox
from gateway.store.rekey import reseal
from gateway.store.vehicle_states import all_vehicle_state, save_vehicle_state
from tests.audit.conftest import decision

SHARD = "icvgw.test/audit/w1"
VIN = "LSVAU2180N2183294"
LAT, LON = "31.2304412", "121.4737021"
DOC = orjson.dumps({"v": 1, "trip": [1.0, float(LAT), float(LON), 0, 0, 0, 0, False]})
PAYLOAD = f'{{"Vehicle.VehicleIdentification.VIN":"{VIN}","lat":{LAT},"lon":{LON}}}'.encode()
TOPIC = f"vehicles/{VIN}/telemetry"


def _v3_store(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store as schema 3 left it: VIN-keyed state, raw payloads, message ids with VINs."""
    with monkeypatch.context() as m:
        m.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:3])
        m.setattr(store_module, "SCHEMA_VERSION", 3)
        with open_store(url, shard=SHARD) as s, s.transaction() as tx:
            q = tx.sql
            tx.execute(
                q("insert into vehicle_state (vehicle, state, updated_ms) values (?, ?, 5)"),
                (VIN, DOC),
            )
            tx.execute(
                q(
                    "insert into outbox (shard, seq, subscriber, topic, message_id, payload, "
                    "created_ms) values (?, 1, 'mapco', ?, 'm1', ?, 5)"
                ),
                (SHARD, f"share/mapco/{VIN}/telemetry", PAYLOAD),
            )
            tx.execute(
                q(
                    "insert into deadletters (shard, seq, ts_ms, reason, topic, payload) "
                    "values (?, 0, 5, 'bad-value', ?, ?)"
                ),
                (SHARD, TOPIC, PAYLOAD),
            )
            tx.execute(
                q("insert into dedup (vehicle, record, seen_ms) values (?, ?, 5)"),
                ("k1:" + "0" * 32, f"m:{VIN}-17"),
            )


def _schema(url: str) -> int:
    with open_store(url, migrate=False) as s, s.snapshot() as rd:
        row = rd.fetch_one("select value from icvgw_meta where key = 'schema_version'")
    return int(row[0])


def test_a_schema_3_store_is_sealed_by_the_migration(
    store_url: str, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    _v3_store(store_url, monkeypatch)
    # Without the key directory nothing is converted and nothing is lost.
    with pytest.raises(StoreError, match="needs the key directory"):
        open_store(store_url, shard=SHARD)
    assert _schema(store_url) == 3
    with open_store(store_url, shard=SHARD, keys=ring) as s:
        assert s.converted == 4
        with s.transaction() as tx:
            assert all_vehicle_state(tx) == {VIN: DOC}
        with s.snapshot() as rd:
            assert pending_outbox(rd, SHARD) == [
                OutboxRow(1, "mapco", f"share/mapco/{VIN}/telemetry", "m1", PAYLOAD, 5)
            ]
            assert deadletter(rd, SHARD, 0) == DeadLetterRow(0, 5, "bad-value", TOPIC, PAYLOAD)
            key = ("k1:" + "0" * 32, f"m:{VIN}-17")
            assert seen_records(rd, [key]) == {key}  # redelivery is still recognised
            refs = [r[0] for r in rd.fetch_all("select vehicle from vehicle_state")]
            assert refs == [ring.vehicle_ref(VIN)]
    assert _schema(store_url) == store_module.SCHEMA_VERSION
    if store_url.startswith("sqlite:///"):
        path = Path(store_url.removeprefix("sqlite:///"))
        for f in path.parent.glob(path.name + "*"):
            data = f.read_bytes()
            for secret in (VIN, LAT, LON, LAT[:8], LON[:9]):
                assert secret.encode() not in data, (f.name, secret)


def test_rows_are_bound_to_their_keys(store_url: str, ring: KeyRing) -> None:
    with open_store(store_url, shard=SHARD, keys=ring) as s:
        with s.transaction() as tx:
            save_vehicle_state(tx, {VIN: DOC, "LSVAU2180N2183295": b"{}"}, 5)
        with s.transaction() as tx:  # swap the two sealed states
            rows = tx.fetch_all("select vehicle, state from vehicle_state order by vehicle")
            for (ref, _), (_, state) in zip(rows, rows[::-1], strict=True):
                tx.execute(
                    tx.sql("update vehicle_state set state = ? where vehicle = ?"), (state, ref)
                )
        with pytest.raises(KeyStoreError, match="does not authenticate"), s.transaction() as tx:
            all_vehicle_state(tx)


def test_rotation_then_reseal_leaves_nothing_under_the_old_key(
    store_url: str, ring: KeyRing
) -> None:
    with open_store(store_url, shard=SHARD, keys=ring) as s, s.transaction() as tx:
        save_vehicle_state(tx, {VIN: DOC}, 5)
        add_outbox(tx, SHARD, [OutboxRow(1, "s", "share/s/x/telemetry", "m1", PAYLOAD, 5)])
        add_deadletters(tx, SHARD, [DeadLetterRow(2, 5, "bad-value", TOPIC, PAYLOAD)])
    new = rotate_keys(ring.directory, [KeyKind.STORE])
    with open_store(store_url, shard=SHARD, keys=new) as s:
        with s.transaction() as tx:
            assert reseal(tx, 2) == 3
            assert reseal(tx, 2) == 0
        with s.snapshot() as rd:
            blobs = [r[0] for r in rd.fetch_all("select state from vehicle_state")]
            blobs += [r[0] for r in rd.fetch_all("select sealed from outbox")]
            blobs += [r[0] for r in rd.fetch_all("select sealed from deadletters")]
            assert {KeyRing.sealed_generation(bytes(b)) for b in blobs} == {2}
            assert deadletter(rd, SHARD, 2) == DeadLetterRow(2, 5, "bad-value", TOPIC, PAYLOAD)
    with (
        open_store(store_url, shard=SHARD, keys=ring) as s,
        s.snapshot() as rd,
        pytest.raises(KeyStoreError, match="no store generation 2"),
    ):
        deadletter(rd, SHARD, 2)  # the old ring alone cannot read what was re-sealed


def test_erase_vehicle_deletes_its_rows_only(store_url: str, ring: KeyRing) -> None:
    vins = [VIN, "LSVAU2180N2183295"]
    refs = [ring.vehicle_ref(v) for v in vins]
    with open_store(store_url, shard=SHARD, keys=ring) as s:
        with s.transaction() as tx:
            seqs = tx.append_audit(
                [decision(ring, i, vehicle=refs[i % 2]) for i in range(8)], shard=SHARD
            ).seqs
            add_outbox(tx, SHARD, [OutboxRow(q, "s", "t", f"m{q}", b"{}", 5) for q in seqs[:4]])
            add_deadletters(tx, SHARD, [DeadLetterRow(q, 5, "x", "t", b"?") for q in seqs[4:]])
            add_seen(tx, [(r, f"m:{r}-{i}") for r in refs for i in range(3)], 5)
            save_vehicle_state(tx, {v: DOC for v in vins}, 5)
        with s.transaction() as tx:
            erased = erase_vehicle(tx, ring.vehicle_refs(VIN))
        assert erased == {"vehicle_state": 1, "outbox": 2, "deadletters": 2, "dedup": 3}
        with s.transaction() as tx:
            assert all_vehicle_state(tx) == {vins[1]: DOC}
            assert erase_vehicle(tx, [refs[1]]) == {
                "vehicle_state": 1,
                "outbox": 2,
                "deadletters": 2,
                "dedup": 3,
            }
            assert tx.shard_state(SHARD) is not None
            assert tx.audit_head(SHARD).size == 8  # the log stays


def test_erase_finds_dead_letters_the_audit_column_does_not_name(
    store_url: str, ring: KeyRing
) -> None:
    """A dead letter holds the raw VIN even when its audit entry does not name the vehicle:
    its topic had no vehicle level, or named another vehicle than the payload."""
    other = "LSVAU2180N2183295"
    letters = [
        ("fleet/upload", b"\xff" + VIN.encode(), None),  # a topic of another shape
        ("vehicles//telemetry", PAYLOAD, None),  # no vehicle in the topic
        (f"vehicles/{other}/telemetry", PAYLOAD, ring.vehicle_ref(other)),  # mismatch
        (f"vehicles/{other}/telemetry", b"{}", ring.vehicle_ref(other)),  # not this VIN
    ]
    with open_store(store_url, shard=SHARD, keys=ring) as s:
        with s.transaction() as tx:
            entries = [
                decision(ring, i, vehicle=ref, decision="dead-lettered", subscriber=None)
                for i, (_, _, ref) in enumerate(letters)
            ]
            seqs = tx.append_audit(entries, shard=SHARD).seqs
            add_deadletters(
                tx,
                SHARD,
                [
                    DeadLetterRow(q, 5, "bad", t, p)
                    for q, (t, p, _) in zip(seqs, letters, strict=True)
                ],
            )
            # Each dead letter's announcement (with the digest of its payload) goes too.
            add_outbox(tx, SHARD, [OutboxRow(q, "", "dl/bad", f"m{q}", b"{}", 5) for q in seqs])
        with s.transaction() as tx:
            erased = erase_vehicle(tx, ring.vehicle_refs(VIN), vin=VIN.lower())
        assert erased["deadletters"] == 3 and erased["outbox"] == 3
        with s.snapshot() as rd:
            assert [r[0] for r in rd.fetch_all("select seq from deadletters")] == [seqs[3]]
            assert [r[0] for r in rd.fetch_all("select seq from outbox")] == [seqs[3]]


def test_compaction_says_so_when_a_reader_keeps_the_old_pages(
    tmp_path: Path, ring: KeyRing
) -> None:
    """A reader's snapshot stops the WAL from being copied back and truncated, so the file
    keeps the erased rows' pages: compaction must fail then, not report success."""
    db = tmp_path / "s.db"
    with open_store(f"sqlite:///{db}", shard=SHARD, keys=ring) as s:
        with s.transaction() as tx:
            save_vehicle_state(tx, {VIN: DOC}, 5)
        s.compact()
        with s.snapshot() as rd:
            (sealed,) = rd.fetch_one("select state from vehicle_state")
        assert bytes(sealed) in db.read_bytes()
        reader = sqlite3.connect(db)
        try:
            reader.execute("begin")
            reader.execute("select count(*) from vehicle_state").fetchone()
            with s.transaction() as tx:
                erase_vehicle(tx, ring.vehicle_refs(VIN))
            with pytest.raises(StoreError, match="reader"):
                s.compact(wait_s=0.2)
        finally:
            reader.close()
        s.compact()
    for f in tmp_path.glob("s.db*"):
        assert bytes(sealed) not in f.read_bytes(), f.name


def test_an_interrupted_migration_leaves_schema_3_whole_and_runs_again(
    store_url: str, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store import schema_v4 as outbox_module

    _v3_store(store_url, monkeypatch)

    def crash(*args: object) -> int:
        raise StoreError("interrupted")

    with monkeypatch.context() as m:  # the last table to convert fails
        m.setitem(outbox_module._CONVERT, "dedup", crash)
        with pytest.raises(StoreError, match="interrupted"):
            open_store(store_url, shard=SHARD, keys=ring)
    assert _schema(store_url) == 3
    with open_store(store_url, migrate=False) as s, s.snapshot() as rd:
        assert rd.fetch_one("select count(*) from vehicle_state")[0] == 1
        assert rd.fetch_one("select count(*) from dedup where record like ?", ("m:%",))[0] == 1
    with open_store(store_url, shard=SHARD, keys=ring) as s:
        assert s.converted == 4
        with s.transaction() as tx:
            assert all_vehicle_state(tx) == {VIN: DOC}


def test_pruning_entry_bodies_forgets_their_delivered_views_and_dead_letters(
    store_url: str, ring: KeyRing
) -> None:
    """Once an entry's body and vehicle column are pruned, nothing can tell whose its view
    or dead letter is (an erasure would miss it): they go with it. A view not yet
    delivered stays, to be delivered."""
    with open_store(store_url, shard=SHARD, keys=ring) as s:
        with s.transaction() as tx:
            seqs = tx.append_audit([decision(ring, i) for i in range(6)], shard=SHARD).seqs
            add_outbox(tx, SHARD, [OutboxRow(q, "s", "t", f"m{q}", b"{}", 5) for q in seqs[:4]])
            add_deadletters(tx, SHARD, [DeadLetterRow(q, 5, "x", TOPIC, b"?") for q in seqs[4:]])
            mark_delivered(tx, SHARD, [seqs[0], seqs[2]], 6)
        with s.transaction() as tx:
            assert tx.prune_bodies(SHARD, seqs[5]) == 5
        with s.snapshot() as rd:
            assert [r[0] for r in rd.fetch_all("select seq from outbox order by seq")] == [
                seqs[1],
                seqs[3],
            ]
            assert [r[0] for r in rd.fetch_all("select seq from deadletters")] == [seqs[5]]


def test_a_conversion_not_yet_compacted_is_compacted_at_the_next_open(
    tmp_path: Path, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The raw pages of schema 3 stay in the file until a compaction succeeds: while a
    reader prevents it, the store does not open (now or later) as if all were sealed."""
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    _v3_store(url, monkeypatch)
    monkeypatch.setattr(dialects.SqliteStore, "_timeout", 0.2)
    reader = sqlite3.connect(db)
    try:
        reader.execute("begin")
        reader.execute("select count(*) from vehicle_state").fetchone()
        for _ in range(2):
            with pytest.raises(StoreError, match="reader"):
                open_store(url, shard=SHARD, keys=ring)
        assert _schema(url) == store_module.SCHEMA_VERSION  # converted, not compacted
    finally:
        reader.close()
    with open_store(url, shard=SHARD, keys=ring) as s, s.transaction() as tx:
        assert all_vehicle_state(tx) == {VIN: DOC}
    with open_store(url, shard=SHARD, keys=ring):  # nothing left to compact
        for f in tmp_path.glob("s.db*"):
            assert VIN.encode() not in f.read_bytes(), f.name
