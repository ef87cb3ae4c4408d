"""Outbox, dead letters, de-duplication window and vehicle state: SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from gateway.audit.outbox import (
    DeadLetterRow,
    OutboxRow,
    add_deadletters,
    add_outbox,
    add_seen,
    all_vehicle_state,
    count_pending,
    deadletters,
    load_vehicle_state,
    mark_delivered,
    pending_outbox,
    prune_seen,
    save_vehicle_state,
    seen_records,
)
from gateway.audit.store import Store
from gateway.errors import StoreError

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


def test_vehicle_state_upserts(store: Store) -> None:
    with store.transaction() as tx:
        save_vehicle_state(tx, {"a": b"1", "b": b"2"}, 10)
        save_vehicle_state(tx, {"a": b"3"}, 11)
    with store.snapshot() as rd:
        assert load_vehicle_state(rd, ["a", "c"]) == {"a": b"3"}
        assert all_vehicle_state(rd) == {"a": b"3", "b": b"2"}


def test_deadletters_keep_payload_and_reason(store: Store) -> None:
    rows = [DeadLetterRow(i, 100 + i, "not-json", "vehicles/x/telemetry", b"{bad") for i in (0, 1)]
    with store.transaction() as tx:
        assert add_deadletters(tx, SHARD, rows) == 2
    with store.snapshot() as rd:
        assert deadletters(rd, SHARD) == rows[::-1]
