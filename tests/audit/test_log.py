"""Checkpoints: when they are written, how they are published, key rotation, retention."""

from __future__ import annotations

import orjson
import pytest

from gateway.audit.log import RETENTION_MINIMUM_DAYS, AuditLog, CheckpointPolicy
from gateway.audit.verify import verify_store
from gateway.crypto import NoteSigner
from gateway.errors import AuditError
from gateway.keys import KeyKind, KeyRing, rotate_keys
from gateway.store import Store
from gateway.tlog.checkpoint import Checkpoint, open_checkpoint
from gateway.tlog.merkle import CompactRange, leaf_hash
from tests.audit.conftest import ORIGIN, Clock, decision, fill, make_log


def _checkpoints(store: Store) -> list[Checkpoint]:
    with store.snapshot() as r:
        notes = [c.note for c in r.checkpoints(ORIGIN)]
    return [Checkpoint.parse(n.decode().split("\n\n")[0] + "\n") for n in notes]


def test_checkpoint_every_n_entries_and_at_close(store: Store, ring: KeyRing) -> None:
    log = make_log(store, ring, policy=CheckpointPolicy(every_entries=25, every_seconds=1e9))
    fill(log, ring, 60, batch=10)
    assert [c.size for c in _checkpoints(store)] == [10, 40]  # first batch, then >= 25 later
    log.close()
    assert [c.size for c in _checkpoints(store)] == [10, 40, 60]
    assert log.close() is None  # nothing new: no duplicate checkpoint
    with store.snapshot() as r:
        leaves = [leaf_hash(e.body) for e in r.iter_entries(ORIGIN) if e.body]
    cr = CompactRange()
    cr.extend(leaves)
    assert _checkpoints(store)[-1].root == cr.root()


def test_checkpoint_after_t_seconds(store: Store, ring: KeyRing) -> None:
    clock = Clock()
    log = make_log(
        store, ring, clock, policy=CheckpointPolicy(every_entries=10**6, every_seconds=30)
    )
    fill(log, ring, 5, batch=5)
    assert [c.size for c in _checkpoints(store)] == [5]
    clock.now += 10
    fill(log, ring, 5, start=5, batch=5)
    assert log.checkpoint_if_due() is None
    assert [c.size for c in _checkpoints(store)] == [5]
    clock.now += 25
    assert log.checkpoint_if_due() is not None
    assert [c.size for c in _checkpoints(store)] == [5, 10]
    clock.now += 100
    assert log.checkpoint_if_due() is None  # idle: nothing to cover


def test_publisher_gets_every_checkpoint_and_its_failure_is_contained(
    store: Store, ring: KeyRing
) -> None:
    published: list[tuple[str, bytes]] = []
    failing = {"on": False}

    def publish(origin: str, note: bytes) -> None:
        if failing["on"]:
            raise ConnectionError("broker down")
        published.append((origin, note))

    log = make_log(store, ring, publisher=publish)
    fill(log, ring, 10)
    assert len(published) == 1
    origin, note = published[0]
    assert origin == ORIGIN
    opened = open_checkpoint(note, ring.verifiers(ORIGIN), origin=ORIGIN)
    assert opened.checkpoint.size == 10
    failing["on"] = True
    fill(log, ring, 30, start=10)
    assert log.publish_failures == 1
    assert [c.size for c in _checkpoints(store)] == [10, 40]  # stored all the same


def test_signers_must_be_named_after_the_origin(store: Store, ring: KeyRing) -> None:
    with pytest.raises(AuditError, match="cannot sign"):
        AuditLog(store, [ring.note_signer("another/origin")])
    with pytest.raises(AuditError, match="signing key"):
        AuditLog(store, [])


def test_key_rotation_switch_checkpoint_is_signed_by_both(store: Store, ring: KeyRing) -> None:
    old_verifier = ring.verifiers(ORIGIN)[0]
    fill(make_log(store, ring), ring, 30)
    ring2 = rotate_keys(ring.directory, [KeyKind.SIGNING])
    log2 = make_log(store, ring2)
    note = log2.checkpoint_if_due()  # the switch is due even with nothing new appended
    assert note is not None
    new_verifier = ring2.verifiers(ORIGIN)[1]
    both = open_checkpoint(note, [old_verifier, new_verifier])
    assert set(both.signed_by) == {old_verifier.key_id, new_verifier.key_id}
    with store.snapshot() as r:
        last = list(r.iter_entries(ORIGIN))[-1]
    assert last.body is not None
    rotated = orjson.loads(last.body)
    assert rotated["action"] == "key.rotated"
    assert rotated["subject"] == new_verifier.key_id
    assert rotated["details"]["previous"] == [old_verifier.key_id]
    assert both.checkpoint.size == last.seq + 1
    fill(log2, ring2, 30, start=30)
    log2.close()

    (ok,) = verify_store(store, [old_verifier, new_verifier])
    assert ok.error is None and ok.verified_size == ok.entries == 61
    (old_only,) = verify_store(store, [old_verifier])
    assert old_only.error is not None and "not signed by a trusted key" in str(old_only.error)
    assert old_only.error.seq == 31  # everything up to the switch checkpoint verified


def test_a_key_switch_without_handover_fails(store: Store, ring: KeyRing) -> None:
    fill(make_log(store, ring), ring, 30)
    stranger = NoteSigner.from_seed(ORIGIN, bytes(32))
    log = AuditLog(store, [stranger], clock=Clock())
    fill(log, ring, 10, start=30)
    log.close()
    (report,) = verify_store(store, [*ring.verifiers(ORIGIN), stranger.verifier()])
    assert report.error is not None
    assert "key switch needs a checkpoint signed by both" in str(report.error)


def test_prune_keeps_hashes_and_still_verifies(store: Store, ring: KeyRing) -> None:
    clock = Clock()
    log = make_log(store, ring, clock)
    fill(log, ring, 40)  # times T0 + 0..39
    log.close()
    clock.now += (RETENTION_MINIMUM_DAYS + 10) * 86400
    with log.transaction() as tx:
        tx.append_audit([decision(ring, i, time=clock.now) for i in range(40, 50)])
    pruned = log.prune(retention_days=RETENTION_MINIMUM_DAYS + 5)
    assert pruned == 40
    with store.snapshot() as r:
        entries = list(r.iter_entries(ORIGIN))
        state = r.shard_state(ORIGIN)
    assert all(e.body is None for e in entries[:40])
    assert all(e.body is not None for e in entries[40:])
    assert state is not None and state.pruned_before == 40
    marker = orjson.loads(entries[50].body or b"{}")
    assert marker["action"] == "retention.pruned" and marker["details"]["before_seq"] == 40
    log.close()
    (report,) = verify_store(store, ring.verifiers(ORIGIN))
    assert report.error is None
    assert report.pruned == 40
    assert log.prune(retention_days=RETENTION_MINIMUM_DAYS + 5) == 0  # idempotent


def test_prune_refuses_less_than_the_legal_minimum(store: Store, ring: KeyRing) -> None:
    clock = Clock()
    log = make_log(store, ring, clock)
    fill(log, ring, 10)
    log.close()
    clock.now += 10 * 86400
    with pytest.raises(AuditError, match="below the legal minimum of 1096 days"):
        log.prune(retention_days=1)
    with store.snapshot() as r:
        assert all(e.body is not None for e in r.iter_entries(ORIGIN))


def test_prune_never_touches_entries_no_checkpoint_covers(store: Store, ring: KeyRing) -> None:
    clock = Clock()
    log = make_log(store, ring, clock)
    with store.transaction() as tx:  # appended, but never checkpointed
        tx.append_audit([decision(ring, i) for i in range(10)])
    clock.now += (RETENTION_MINIMUM_DAYS + 10) * 86400
    assert log.prune() == 0
    with store.snapshot() as r:
        assert all(e.body is not None for e in r.iter_entries(ORIGIN))
