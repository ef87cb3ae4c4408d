"""Outbox, dead letters, de-duplication window and vehicle state: SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.keys import KeyRing
from gateway.store import Store, open_store
from gateway.store.deadletters import DeadLetterRow, add_deadletters, deadletter, deadletters
from gateway.store.dedup import add_seen, prune_seen, seen_query, seen_records, seen_under
from gateway.store.outbox import (
    OutboxRow,
    WebhookAttempt,
    add_outbox,
    count_pending,
    mark_delivered,
    pending_outbox,
    pending_webhooks,
    record_webhook_attempts,
)
from gateway.store.vehicle_states import all_vehicle_state, load_vehicle_state, save_vehicle_state

SHARD = "test/shard"


def row(seq: int, sub: str = "s1") -> OutboxRow:
    return OutboxRow(seq, sub, f"share/{sub}/v/telemetry", f"m{seq}", b"{}" * seq, 1000 + seq)


def test_outbox_pending_until_delivered_in_audit_order(store: Store) -> None:
    with store.transaction() as tx:
        add_outbox(tx, SHARD, [row(3), row(1), row(2, "s2")])
    with store.snapshot() as rd:
        assert [r.seq for r in pending_outbox(rd, SHARD)] == [1, 2, 3]
        assert pending_outbox(rd, SHARD, after_seq=1, limit=1) == [row(2, "s2")]
        assert count_pending(rd, SHARD) == 3
        assert pending_outbox(rd, "other") == []
    with store.transaction() as tx:
        mark_delivered(tx, SHARD, [1, 3], 5000)
    with store.snapshot() as rd:
        assert [r.seq for r in pending_outbox(rd, SHARD)] == [2]
        assert count_pending(rd, SHARD) == 1


def test_marking_many_views_marks_exactly_those(store: Store) -> None:
    """Marks go out 400 to a statement: across chunks, with repeats, none left over."""
    with store.transaction() as tx:
        add_outbox(tx, SHARD, [row(i) for i in range(1, 1001)])
    confirmed = [i for i in range(1, 1001) if i % 7]  # 858 views, more than two chunks
    with store.transaction() as tx:
        mark_delivered(tx, SHARD, [*confirmed, 5, 5], 6000)
        mark_delivered(tx, SHARD, [], 6000)
    with store.snapshot() as rd:
        assert [r.seq for r in pending_outbox(rd, SHARD, limit=1000)] == list(range(7, 1001, 7))


def test_marks_find_their_rows_through_the_primary_key(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 's.db'}", shard=SHARD) as s:
        conn = s._conn  # type: ignore[attr-defined]
        plan = conn.execute(
            "explain query plan update outbox set delivered_ms = ? "
            "where shard = ? and seq in (?,?,?)",
            (1, SHARD, 1, 2, 3),
        ).fetchall()
    assert any("USING INDEX sqlite_autoindex_outbox_1 (shard=? AND seq=?)" in r[3] for r in plan)


def test_a_rolled_back_batch_leaves_no_outbox_rows(store: Store) -> None:
    def crash() -> None:
        with store.transaction() as tx:
            add_outbox(tx, SHARD, [row(1)])
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        crash()
    with store.snapshot() as rd:
        assert pending_outbox(rd, SHARD) == []


def test_one_view_per_audit_entry(store: Store) -> None:
    with store.transaction() as tx:
        add_outbox(tx, SHARD, [row(1)])

    def again() -> None:
        with store.transaction() as tx:
            add_outbox(tx, SHARD, [row(1)])

    with pytest.raises(StoreError):
        again()


def test_dedup_window_remembers_and_forgets(store: Store) -> None:
    keys = [(f"k1:{i:032x}", f"r{i}") for i in range(1000)]
    with store.transaction() as tx:
        add_seen(tx, keys[:600], 1000)
        add_seen(tx, keys[:10], 9999)  # already seen: kept with its first time
    with store.snapshot() as rd:
        assert seen_records(rd, keys) == set(keys[:600])
    with store.transaction() as tx:
        add_seen(tx, keys[600:], 2000)
        assert prune_seen(tx, 1500) == 600
    with store.snapshot() as rd:
        assert seen_records(rd, keys) == set(keys[600:])


def test_dedup_lookup_probes_the_key_instead_of_scanning_the_table(tmp_path: Path) -> None:
    # The lookup runs once per micro-batch against a table that holds every record of the
    # retention window: a plan that scans it makes each batch slower than the one before.
    db = sqlite3.connect(tmp_path / "plan.db")
    db.execute(
        "create table dedup (vehicle text not null, record text not null, "
        "seen_ms bigint not null, primary key (vehicle, record))"
    )
    plan = db.execute(f"explain query plan {seen_query(3)}", ["a", "b"] * 3).fetchall()
    details = [row[3] for row in plan]
    assert any(d.startswith("SEARCH d USING") and "vehicle=? AND record=?" in d for d in details)
    assert not any(d.startswith("SCAN d") or d.startswith("SCAN dedup") for d in details)


def test_pending_views_are_found_through_the_pending_index(tmp_path: Path) -> None:
    # Asked once a second (the pending gauge) and at start-up: reading through the primary
    # key instead would visit every view the shard ever delivered.
    with open_store(f"sqlite:///{tmp_path / 's.db'}", shard=SHARD) as s:
        conn = s._conn  # type: ignore[attr-defined]
        for sql, params in (
            ("select count(*) from outbox where shard = ? and delivered_ms is null", (SHARD,)),
            (
                "select seq from outbox where shard = ? and delivered_ms is null and seq > ? "
                "order by seq limit ?",
                (SHARD, -1, 10),
            ),
        ):
            details = [r[3] for r in conn.execute(f"explain query plan {sql}", params)]
            assert any(
                "USING COVERING INDEX outbox_pending" in d or "USING INDEX outbox_pending" in d
                for d in details
            ), details


def test_dedup_lookup_matches_pairs_not_their_parts(store: Store) -> None:
    with store.transaction() as tx:
        add_seen(tx, [("v1", "r1"), ("v2", "r2")], 1000)
    with store.snapshot() as rd:
        assert seen_records(rd, [("v1", "r2"), ("v2", "r1"), ("v2", "r2")]) == {("v2", "r2")}
        assert seen_records(rd, []) == set()


def test_vehicle_state_upserts(store: Store) -> None:
    with store.transaction() as tx:
        save_vehicle_state(tx, {"a": b"1", "b": b"2"}, 10)
        save_vehicle_state(tx, {"a": b"3"}, 11)
    with store.snapshot() as rd:
        assert load_vehicle_state(rd, ["a", "c"]) == {"a": b"3"}
    with store.transaction() as tx:
        assert all_vehicle_state(tx) == {"a": b"3", "b": b"2"}


def test_deadletters_keep_payload_and_reason(store: Store) -> None:
    rows = [DeadLetterRow(i, 100 + i, "not-json", "vehicles/x/telemetry", b"{bad") for i in (0, 1)]
    with store.transaction() as tx:
        assert add_deadletters(tx, SHARD, rows) == 2
    with store.snapshot() as rd:
        assert [(d.seq, d.reason, d.size) for d in deadletters(rd, SHARD)] == [
            (1, "not-json", 4),
            (0, "not-json", 4),
        ]
        assert [deadletter(rd, SHARD, i) for i in (0, 1, 2)] == [*rows, None]


def test_forgetting_a_bounded_number_takes_the_oldest_first(store: Store) -> None:
    keys = [(f"k1:{i:032x}", f"r{i}") for i in range(100)]
    with store.transaction() as tx:
        for i, key in enumerate(keys):
            add_seen(tx, [key], 1000 + i)
    with store.transaction() as tx:
        assert prune_seen(tx, 1050, limit=30) == 30  # 50 expired: the 30 oldest go
    with store.snapshot() as rd:
        assert seen_records(rd, keys) == set(keys[30:])
    with store.transaction() as tx:
        assert prune_seen(tx, 1050, limit=30) == 20  # only the expired ones
        assert prune_seen(tx, 1050, limit=30) == 0
    with store.snapshot() as rd:
        assert seen_records(rd, keys) == set(keys[50:])


def test_workers_forgetting_at_once_skip_each_others_rows(postgres_url: str, ring: KeyRing) -> None:
    """Two workers sharing a PostgreSQL store forget the same oldest rows: the second
    skips what the first has locked instead of waiting for it (or deadlocking)."""
    keys = [(f"k1:{i:032x}", f"r{i}") for i in range(100)]
    with (
        open_store(postgres_url, shard="w1", keys=ring) as one,
        open_store(postgres_url, shard="w2", keys=ring) as two,
    ):
        with one.transaction() as tx:
            add_seen(tx, keys, 1000)
        with one.transaction() as tx1:
            assert prune_seen(tx1, 2000, limit=30) == 30
            done = threading.Event()
            taken: list[int] = []

            def other() -> None:
                with two.transaction() as tx2:
                    taken.append(prune_seen(tx2, 2000, limit=30))
                done.set()

            worker = threading.Thread(target=other)
            worker.start()
            assert done.wait(10), "the second worker waited for the first one's rows"
            worker.join()
        assert taken == [30]
        with one.snapshot() as rd:
            assert len(seen_records(rd, keys)) == 40


def test_forgetting_works_whatever_isolation_the_server_defaults_to(
    postgres_url: str, ring: KeyRing
) -> None:
    """A server (or role) whose default is repeatable read must not make a batch fail
    because another worker forgot the same records after the batch began."""
    strict = postgres_url + "%20-cdefault_transaction_isolation%3Drepeatable%5C%20read"
    keys = [(f"k1:{i:032x}", f"r{i}") for i in range(100)]
    with (
        open_store(strict, shard="w1", keys=ring) as one,
        open_store(strict, shard="w2", keys=ring) as two,
    ):
        with one.transaction() as tx:
            add_seen(tx, keys, 1000)
        with two.transaction() as tx2:
            add_seen(tx2, [("k2", "fresh")], 5000)
            with one.transaction() as tx1:
                assert prune_seen(tx1, 2000, limit=30) == 30
            assert prune_seen(tx2, 2000, limit=30) == 30  # the next 30, no error
        with one.snapshot() as rd:
            assert len(seen_records(rd, keys)) == 40


def test_records_of_a_key_generation_are_found_by_prefix(store: Store) -> None:
    with store.transaction() as tx:
        add_seen(tx, [("k10:" + "a" * 32, "m:1"), ("k2:" + "b" * 32, "m:2")], 1000)
    with store.snapshot() as rd:
        assert seen_under(rd, "k2:") and seen_under(rd, "k10:")
        assert not seen_under(rd, "k1:") and not seen_under(rd, "k3:")


def test_webhook_views_pending_per_subscriber_until_delivered_or_given_up(store: Store) -> None:
    hook = [
        OutboxRow(i, "s1" if i % 3 else "s2", "share/s", f"m{i}", b"{}", 1000 + i, "webhook")
        for i in range(1, 10)
    ]
    with store.transaction() as tx:
        add_outbox(tx, SHARD, [*hook, row(10, "s1")])  # an mqtt view is no webhook's
    with store.snapshot() as rd:
        first = pending_webhooks(rd, SHARD, "s1")
        assert [w.view.seq for w in first] == [1, 2, 4, 5, 7, 8]
        assert first[0].view == hook[0] and (first[0].attempts, first[0].next_attempt_ms) == (0, 0)
        assert [w.view.seq for w in pending_webhooks(rd, SHARD, "s1", after_seq=4, limit=2)] == [
            5,
            7,
        ]
        assert [w.view.seq for w in pending_webhooks(rd, SHARD, "s2")] == [3, 6, 9]
        assert pending_webhooks(rd, "other", "s1") == []
    with store.transaction() as tx:
        mark_delivered(tx, SHARD, [2], 5000)
        record_webhook_attempts(
            tx, SHARD, [WebhookAttempt(1, 2, 7000), WebhookAttempt(4, 8, 0, failed_ms=6000)]
        )
        record_webhook_attempts(tx, SHARD, [])
    with store.snapshot() as rd:
        left = pending_webhooks(rd, SHARD, "s1")
        assert [(w.view.seq, w.attempts, w.next_attempt_ms) for w in left] == [
            (1, 2, 7000),
            (5, 0, 0),
            (7, 0, 0),
            (8, 0, 0),
        ]
        assert count_pending(rd, SHARD, "webhook") == 8  # given up is not delivered
