"""The transactional store, SQLite and PostgreSQL alike (the ``store`` fixture runs both)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from gateway.audit.verify import verify_store
from gateway.errors import AuditError, StoreError
from gateway.keys import KeyRing
from gateway.model import Consent
from gateway.store import Store, open_store
from gateway.store.audit import AuditQuery
from gateway.store.cursor import insert_rows
from gateway.store.schema import SCHEMA_VERSION
from gateway.tlog.entries import GENESIS_PREV, AdminAction, Decision, DecisionEntry
from gateway.tlog.merkle import perfect_from_leaves
from tests.audit.conftest import ORIGIN, T0, admin, decision, tamper
from tests.tlog.test_merkle import ref_mth


def _bodies(store: Store) -> list[bytes]:
    with store.snapshot() as r:
        return [e.body for e in r.iter_entries(ORIGIN) if e.body is not None]


def test_append_assigns_seq_and_prev_and_hashes_the_stored_bytes(
    store: Store, ring: KeyRing
) -> None:
    with store.transaction() as tx:
        result = tx.append_audit([decision(ring, 0), decision(ring, 1), admin(2)])
    assert result.seqs == range(0, 3)
    with store.snapshot() as r:
        entries = list(r.iter_entries(ORIGIN))
        state = r.shard_state(ORIGIN)
    prev = GENESIS_PREV
    for i, e in enumerate(entries):
        assert e.body is not None
        body = orjson.loads(e.body)
        assert (e.seq, body["seq"], body["prev"]) == (i, i, prev)
        assert e.leaf_hash == hashlib.sha256(b"\x00" + e.body).digest()
        prev = e.leaf_hash.hex()
    assert [e.kind for e in entries] == ["decision", "decision", "admin"]
    assert entries[2].decision == AdminAction.POLICY_LOADED
    assert state is not None and state.size == 3
    assert state.root() == ref_mth([e.body for e in entries if e.body])


def test_a_batch_numbers_its_entries_as_the_shard_then_stores_them(
    store: Store, ring: KeyRing
) -> None:
    with store.transaction() as tx:
        tx.append_audit([admin(0)])
    with store.transaction() as tx:
        batch = tx.audit_batch()
        assert [batch.add(decision(ring, i)) for i in range(1, 4)] == [1, 2, 3]
        assert batch.next_seq == 4
        result = tx.append_batch(batch)
    assert result.seqs == range(1, 4)
    with store.snapshot() as r:
        assert [orjson.loads(e.body or b"")["seq"] for e in r.iter_entries(ORIGIN)] == [0, 1, 2, 3]


def test_a_batch_numbered_before_another_append_is_refused(store: Store, ring: KeyRing) -> None:
    # The numbers a batch handed out (and a caller wrote into view bytes) must be the ones
    # the entries get: an append in between would shift them, so nothing is appended.
    def interleaved() -> None:
        with store.transaction() as tx:
            batch = tx.audit_batch()
            batch.add(decision(ring, 0))
            tx.append_audit([admin(1)])
            tx.append_batch(batch)

    with pytest.raises(AuditError, match="numbered from 0, but the next is 1"):
        interleaved()
    with store.snapshot() as r:
        state = r.shard_state(ORIGIN)
    assert state is None or state.size == 0  # rolled back: not even the admin entry


def test_many_transactions_extend_one_tree_and_store_tiles(store: Store, ring: KeyRing) -> None:
    for b in range(0, 300, 100):
        with store.transaction() as tx:
            tx.append_audit([decision(ring, i) for i in range(b, b + 100)])
    bodies = _bodies(store)
    assert len(bodies) == 300
    leaves = [hashlib.sha256(b"\x00" + b).digest() for b in bodies]
    with store.snapshot() as r:
        state = r.shard_state(ORIGIN)
        assert r.tiles(ORIGIN) == {(8, 0): perfect_from_leaves(leaves)(8, 0)}
        ref = perfect_from_leaves(leaves)
        for level, index in ((0, 299), (3, 17), (8, 0), (5, 8), (7, 1)):
            assert r.perfect_hash(ORIGIN, level, index) == ref(level, index)
        with pytest.raises(StoreError, match="not stored"):
            r.perfect_hash(ORIGIN, 9, 0)
    assert state is not None and state.root() == ref_mth(bodies)


def test_a_failed_transaction_leaves_nothing_behind(store: Store, ring: KeyRing) -> None:
    def crash() -> None:
        with store.transaction() as tx:
            tx.append_audit([decision(ring, i) for i in range(5)])
            consent = Consent("c-1", "k1:" + "0" * 32, "navigation", T0, T0 + 10)
            tx.put_consents([consent], at=T0, instance="w1")
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        crash()
    with store.snapshot() as r:
        state = r.shard_state(ORIGIN)
        assert state is None or state.size == 0
        assert r.consent("c-1") is None
    with store.transaction() as tx:
        tx.append_audit([decision(ring, 0)])
    (body,) = _bodies(store)
    assert orjson.loads(body)["prev"] == GENESIS_PREV


def test_entries_refuse_a_vin_a_float_and_bad_types(store: Store, ring: KeyRing) -> None:
    bad = [
        decision(ring, 0, vehicle="LSVAU2180N2183294"),
        decision(ring, 0, transforms={"lat": 31.2304}),
        decision(ring, 0, precision_m=50.0),
        decision(ring, 0, message_id=1.5),
        decision(ring, 0, decision="maybe"),
        decision(ring, 0, rules=("ok", 3)),
    ]
    for entry in bad:
        with pytest.raises(AuditError), store.transaction() as tx:
            tx.append_audit([decision(ring, 1), entry])
    with store.snapshot() as r:
        assert r.shard_state(ORIGIN) is None or r.shard_state(ORIGIN).size == 0  # type: ignore[union-attr]


def test_dead_lettered_input_is_recorded_without_subscriber(store: Store, ring: KeyRing) -> None:
    entry = DecisionEntry(
        time=T0,
        instance="w1",
        message_id=17,
        decision=Decision.DEAD_LETTERED,
        policy="sha256:" + "ab" * 32,
        reason="non-finite-coordinate",
        digest=ring.payload_digest(b"{bad"),
    )
    with store.transaction() as tx:
        tx.append_audit([entry])
    body = orjson.loads(_bodies(store)[0])
    assert body["decision"] == "dead-lettered"
    assert body["subscriber"] is None
    assert body["reason"] == "non-finite-coordinate"


def test_database_errors_surface_as_store_error(store: Store) -> None:
    with pytest.raises(StoreError):
        tamper(store, "select * from no_such_table")


def test_urls_and_migrations(tmp_path: Path, store_url: str) -> None:
    with pytest.raises(StoreError, match="unsupported store URL"):
        open_store("mysql://x")
    with pytest.raises(StoreError, match="no file"):
        open_store("sqlite:///")
    with open_store(store_url) as s1, open_store(store_url) as s2:
        with s2.snapshot() as r:
            assert r.shards() == []
        tamper(
            s1,
            "update icvgw_meta set value = ? where key = ?",
            (str(SCHEMA_VERSION + 1), "schema_version"),
        )
    with pytest.raises(StoreError, match="newer than this gateway"):
        open_store(store_url)


def test_append_without_a_shard_is_refused(store_url: str, ring: KeyRing) -> None:
    with (
        open_store(store_url) as s,
        pytest.raises(AuditError, match="without an audit shard"),
        s.transaction() as tx,
    ):
        tx.append_audit([decision(ring, 0)])


def test_consents_expire_and_withdrawal_is_final_and_audited(store: Store) -> None:
    vehicle = "k1:" + "1" * 32
    with store.transaction() as tx:
        n = tx.put_consents(
            [
                Consent("c-1", vehicle, "navigation", T0, T0 + 100),
                Consent("c-2", vehicle, "insurance", T0, T0 + 50),
            ],
            at=T0,
            instance="w1",
        )
    assert n == 2
    with store.snapshot() as r:
        assert r.active_consent(vehicle, "navigation", T0 - 1) is None
        active = r.active_consent(vehicle, "navigation", T0 + 10)
        assert active is not None and active.id == "c-1" and active.active_at(T0 + 10)
        assert r.active_consent(vehicle, "navigation", T0 + 100) is None
        assert r.active_consent(vehicle, "insurance", T0 + 60) is None
        assert r.active_consent("k1:" + "2" * 32, "navigation", T0 + 10) is None
    with store.transaction() as tx:
        assert tx.withdraw_consent("c-1", at=T0 + 20, instance="w1")
        assert not tx.withdraw_consent("c-1", at=T0 + 30, instance="w1")
        assert not tx.withdraw_consent("nope", at=T0 + 30, instance="w1")
    with store.snapshot() as r:
        assert r.active_consent(vehicle, "navigation", T0 + 19.999) is not None
        assert r.active_consent(vehicle, "navigation", T0 + 20) is None
        c = r.consent("c-1")
        assert c is not None and c.revoked == T0 + 20 and not c.active_at(T0 + 21)
    entries = [orjson.loads(b) for b in _bodies(store)]
    assert [(e["action"], e["subject"]) for e in entries] == [
        ("consent.changed", "c-1"),
        ("consent.changed", "c-2"),
        ("consent.changed", "c-1"),
    ]
    assert entries[2]["details"]["withdrawn_ms"] == round((T0 + 20) * 1000)
    with pytest.raises(StoreError, match="expiry"), store.transaction() as tx:
        tx.put_consents([Consent("c-3", vehicle, "x", T0, T0)], at=T0, instance="w1")


def test_crossborder_subjects_count_once_per_recipient_year_category(store: Store) -> None:
    with store.transaction() as tx:
        tx.lock_crossborder("overseas-x", 2025)
        assert tx.crossborder_new("overseas-x", 2025, ["a", "b", "a"]) == ["a", "b"]
        assert tx.add_crossborder_subjects("overseas-x", 2025, ["a", "b", "a"], at=T0) == 2
        assert tx.add_crossborder_subjects("overseas-x", 2025, ["b", "c"], at=T0) == 1
        assert tx.add_crossborder_subjects("overseas-x", 2026, ["a"], at=T0) == 1
        assert (
            tx.add_crossborder_subjects("overseas-x", 2025, ["a"], category="sensitive", at=T0) == 1
        )
    with store.snapshot() as r:
        assert r.crossborder_count("overseas-x", 2025) == 3
        assert r.crossborder_count("overseas-x", 2026) == 1
        assert r.crossborder_count("overseas-x", 2025, "sensitive") == 1
        assert r.crossborder_count("other", 2025) == 0
        assert r.crossborder_new("overseas-x", 2025, ["c", "d"]) == ["d"]
        many = [f"s{i}" for i in range(1200)]
        assert len(r.crossborder_new("overseas-x", 2025, many)) == 1200


def test_a_schema_4_store_gets_counters_equal_to_its_subjects(
    store_url: str, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 5 backfills one counter row per (recipient, year, category) from the
    subjects already counted; counting goes on from there."""
    import gateway.store.schema as store_module

    subjects = [("overseas-x", 2025, "pi", f"s{i}") for i in range(7)]
    subjects += [("overseas-x", 2025, "spi", "s1"), ("overseas-x", 2026, "pi", "s1")]
    subjects += [("other", 2025, "pi", f"s{i}") for i in range(3)]
    with monkeypatch.context() as m:
        m.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:4])
        m.setattr(store_module, "SCHEMA_VERSION", 4)
        with open_store(store_url, shard=ORIGIN, keys=ring) as s, s.transaction() as tx:
            tx.insert_rows(
                "insert into crossborder_subjects (recipient, year, category, subject, first_ms)",
                [(*row, 5) for row in subjects],
            )
    with open_store(store_url, shard=ORIGIN, keys=ring) as s:
        with s.snapshot() as r:
            counted = r.fetch_all(
                "select recipient, year, category, count(*) from crossborder_subjects "
                "group by recipient, year, category order by 1, 2, 3"
            )
            counters = r.fetch_all(
                "select recipient, year, category, subjects from crossborder_counts "
                "order by 1, 2, 3"
            )
            assert len(counted) == 4
            assert [tuple(c) for c in counters] == [tuple(c) for c in counted]
            for recipient, year, category, n in counted:
                assert r.crossborder_count(recipient, year, category) == n
        with s.transaction() as tx:
            assert tx.add_crossborder_subjects("overseas-x", 2025, ["s6", "s7"], at=T0) == 1
        with s.snapshot() as r:
            assert r.crossborder_count("overseas-x", 2025) == 8


def test_query_filters(store: Store, ring: KeyRing) -> None:
    with store.transaction() as tx:
        tx.append_audit([decision(ring, i) for i in range(12)] + [admin(12)])
        tx.append_audit([decision(ring, 13, rules=("50%_off",))])
    with store.snapshot() as r:

        def seqs(**kw: object) -> list[int]:
            return [e.seq for e in r.query(AuditQuery(**kw))]  # type: ignore[arg-type]

        assert seqs(subscriber="platform-0") == [0, 2, 4, 6, 8, 10]
        assert seqs(decision="blocked") == [2, 5, 8, 11]
        assert seqs(rule="rule-1") == [1, 5, 9]
        assert seqs(rule="50%_off") == [13]
        assert seqs(rule="50%") == []
        assert seqs(kind="admin") == [12]
        assert seqs(vehicles=ring.vehicle_refs("LSVTEST0000000003")) == [3, 8, 13]
        assert seqs(vehicles=[]) == []
        assert seqs(since_ms=round((T0 + 10) * 1000), until_ms=round((T0 + 12) * 1000)) == [10, 11]
        assert seqs(shard="other") == []
        assert seqs(limit=2) == [0, 1]


def test_two_writers_on_one_shard_keep_one_chain(store_url: str, ring: KeyRing) -> None:
    with open_store(store_url, shard=ORIGIN) as a, open_store(store_url, shard=ORIGIN) as b:
        for i in range(0, 40, 2):
            with a.transaction() as tx:
                tx.append_audit([decision(ring, i)])
            with b.transaction() as tx:
                tx.append_audit([decision(ring, i + 1)])
        (report,) = verify_store(a, [])
        assert report.entries == 40
        assert report.error is None
        with a.snapshot() as r:
            state = r.shard_state(ORIGIN)
            bodies = [e.body for e in r.iter_entries(ORIGIN) if e.body is not None]
        assert state is not None
        assert [orjson.loads(x)["msg"] for x in bodies] == [f"m-{i}" for i in range(40)]
        assert state.root() == ref_mth(bodies)


def test_sqlite_is_wal_and_durable_at_commit(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as s:
        conn = s._conn  # type: ignore[attr-defined]
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        assert conn.execute("pragma synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(StoreError, match="no such file"):
        open_store(f"sqlite:///{tmp_path / 'absent.db'}", migrate=False)
    assert not (tmp_path / "absent.db").exists()


def test_postgres_url_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StoreError, match=r"icv-gateway\[postgres\]"):
        open_store("postgresql://nobody@127.0.0.1:1/none")


def test_insert_rows_uses_few_statements_within_the_parameter_limit() -> None:
    """Rows go in as multi-row statements of at most 999 parameters and a power of two
    rows each (few distinct statements, all cached): 250 rows of 10 columns are
    64 + 64 + 64 + 32 + 16 + 8 + 2, with the values in row order."""
    calls: list[tuple[str, list[object]]] = []

    class Recording:
        def execute(self, sql: str, params: list[object]) -> None:
            calls.append((sql, params))

    rows = [tuple(range(i * 10, i * 10 + 10)) for i in range(250)]
    insert_rows(Recording(), str.upper, "insert into t (a)", rows, " on conflict do nothing")  # type: ignore[arg-type]
    assert [len(p) // 10 for _, p in calls] == [64, 64, 64, 32, 16, 8, 2]
    assert [v for _, p in calls for v in p] == list(range(2500))
    assert all(sql.startswith("INSERT INTO T (A) VALUES (?,?,?") for sql, _ in calls)
    assert all(sql.endswith(") ON CONFLICT DO NOTHING") for sql, _ in calls)
    assert [sql.count("(?") for sql, _ in calls] == [64, 64, 64, 32, 16, 8, 2]
    insert_rows(Recording(), str.upper, "insert into t (a)", [])
    assert len(calls) == 7


def test_many_rows_in_one_transaction_all_arrive(store: Store) -> None:
    keys = [(f"k1:{i:032x}", f"r{i}") for i in range(2500)]  # 3 columns: 8 statements
    with store.transaction() as tx:
        tx.insert_rows("insert into dedup (vehicle, record, seen_ms)", [(*k, 7) for k in keys])
    with store.snapshot() as rd:
        assert rd.fetch_one("select count(*), min(seen_ms), max(seen_ms) from dedup") == (
            2500,
            7,
            7,
        )
