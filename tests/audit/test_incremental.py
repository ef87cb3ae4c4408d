"""The incremental verifier: bounded steps, the same verdicts as the full verifier, a
cached result, and tampering found ahead of, behind and beyond its pass."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.audit.incremental import IncrementalVerifier, VerifyStatus
from gateway.audit.verify import verify_store
from gateway.keys import KeyRing
from gateway.store import Store
from gateway.store.audit import AuditReads
from gateway.tlog.checkpoint import Checkpoint, sign_checkpoint
from gateway.tlog.entries import to_ms
from gateway.tlog.merkle import CompactRange
from tests.audit.conftest import ORIGIN, Clock, decision, fill, make_log, tamper

N = 600
BUDGET = 100


class Reads:
    """Counts the entries the verifier reads from the store."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entries = 0
        original = AuditReads.iter_entries

        def counted(reader: AuditReads, *a: Any, **kw: Any) -> Iterator[Any]:
            for e in original(reader, *a, **kw):
                self.entries += 1
                yield e

        monkeypatch.setattr(AuditReads, "iter_entries", counted)


@pytest.fixture
def logged(store: Store, ring: KeyRing) -> Store:
    """600 entries, a checkpoint every 25."""
    log = make_log(store, ring)
    fill(log, ring, N, batch=25)
    log.close()
    return store


def _verifier(store: Store, ring: KeyRing, **kw: Any) -> IncrementalVerifier:
    return IncrementalVerifier(store, ring.verifiers, budget=kw.pop("budget", BUDGET), **kw)


def _until(v: IncrementalVerifier, done: Any, steps: int = 50) -> tuple[VerifyStatus, int]:
    """Step until ``done(status)``; returns that status and the steps it took."""
    for i in range(1, steps + 1):
        status = v.step()
        if done(status):
            return status, i
    raise AssertionError(f"not done after {steps} steps: {status}")


def _failed(status: VerifyStatus) -> bool:
    return not status.ok


def test_steps_are_bounded_and_end_where_the_full_verifier_does(
    logged: Store, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(monkeypatch)
    v = _verifier(logged, ring)
    per_step = []
    status = v.step()
    while not status.complete:
        per_step.append((status.items, reads.entries))
        reads.entries = 0
        status = v.step()
    assert all(items <= BUDGET and read <= BUDGET for items, read in per_step)
    assert len(per_step) >= N // BUDGET  # 600 entries and 24 checkpoints take 7 steps
    (full,) = verify_store(logged, ring.verifiers(ORIGIN))
    (shard,) = status.shards
    assert shard.ok and full.error is None
    assert (shard.verified_size, shard.root, shard.head) == (full.verified_size, full.root, N)
    assert shard.full_pass_at is not None


def test_it_follows_new_entries_and_checkpoints(logged: Store, ring: KeyRing) -> None:
    v = _verifier(logged, ring)
    _until(v, lambda s: s.complete)
    log = make_log(logged, ring)
    fill(log, ring, 40, start=N, batch=40)  # a checkpoint at 640
    fill(log, ring, 10, start=N + 40)  # not yet covered by one
    status = v.step()
    (shard,) = status.shards
    assert shard.complete and shard.head == N + 50 and shard.verified_size == N + 40
    assert shard.checked == N + 50 and status.items == BUDGET
    assert shard.rechecked is not None  # what was left of the step: the re-check from 0


def test_the_result_is_cached_between_steps(
    logged: Store, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    v = _verifier(logged, ring, clock=clock, min_interval_s=5.0)
    first = v.status()
    reads = Reads(monkeypatch)
    clock.now += 4.9
    assert v.status() is first and reads.entries == 0
    clock.now += 0.2
    second = v.status()
    assert second is not first and second.at == clock.now
    assert 0 < reads.entries <= BUDGET
    assert second.shards[0].checked > first.shards[0].checked


def _edit(store: Store, seq: int) -> None:
    with store.snapshot() as r:
        e = r.entry(ORIGIN, seq)
    assert e is not None and e.body is not None
    edited = e.body.replace(f'"msg":"m-{seq}"'.encode(), f'"msg":"x-{seq}"'.encode())
    assert edited != e.body
    tamper(store, "update audit_entries set body = ? where seq = ?", (edited, seq))


def test_an_entry_edited_ahead_of_the_pass_is_found(logged: Store, ring: KeyRing) -> None:
    v = _verifier(logged, ring)
    v.step()
    _edit(logged, 450)
    status, _ = _until(v, _failed)
    (shard,) = status.shards
    assert shard.error_seq == 450 and "stored leaf hash" in (shard.error or "")
    assert not status.complete


def test_an_entry_edited_behind_the_pass_is_found_within_a_cycle(
    logged: Store, ring: KeyRing
) -> None:
    v = _verifier(logged, ring)
    _until(v, lambda s: s.complete)
    _edit(logged, 37)
    status, steps = _until(v, _failed)
    assert steps <= (N + N // 25) // BUDGET + 1
    assert status.shards[0].error_seq == 37
    # and it stays failed: every new pass finds it again
    assert all(not v.step().ok for _ in range(3))


def test_a_failure_clears_once_a_whole_pass_is_clean_again(logged: Store, ring: KeyRing) -> None:
    with logged.snapshot() as r:
        e = r.entry(ORIGIN, 100)
    assert e is not None
    v = _verifier(logged, ring)
    _edit(logged, 100)
    _until(v, _failed)
    tamper(logged, "update audit_entries set body = ? where seq = 100", (e.body,))
    status, _ = _until(v, lambda s: s.complete)
    assert status.ok and status.shards[0].error is None


def test_a_newer_checkpoint_that_does_not_extend_the_verified_one_fails_at_once(
    logged: Store, ring: KeyRing
) -> None:
    v = _verifier(logged, ring)
    _until(v, lambda s: s.complete)
    log = make_log(logged, ring)
    fill(log, ring, 10 * BUDGET, start=N, batch=1000)  # far beyond one step
    with logged.snapshot() as r:
        state = r.shard_state(ORIGIN)
    assert state is not None
    forged = sign_checkpoint(
        Checkpoint(ORIGIN, state.size, b"\x07" * 32), [ring.note_signer(ORIGIN)]
    )  # signed with the real key: an operator re-signing a rewritten log
    with logged.transaction() as tx:
        tx.add_checkpoint(ORIGIN, state.size, forged, to_ms(2e9))
    status = v.step()
    (shard,) = status.shards
    assert not shard.ok and "does not extend the verified one" in (shard.error or "")
    assert shard.error_seq == N


def test_a_truncated_and_resigned_log_fails_against_what_was_verified(
    logged: Store, ring: KeyRing
) -> None:
    v = _verifier(logged, ring)
    _until(v, lambda s: s.complete)
    tamper(logged, "delete from audit_entries where seq >= 300")
    tamper(logged, "delete from audit_checkpoints where size > 300")
    tamper(logged, "delete from audit_tiles where level = 8 and idx >= 1")  # 256..511 on
    with logged.snapshot() as r:
        leaves = [e.leaf_hash for e in r.iter_entries(ORIGIN)]
    cr = CompactRange()
    cr.extend(leaves)
    tamper(
        logged,
        "update audit_shards set size = 300, last_leaf = ?, edge = ?",
        (leaves[-1], cr.to_bytes()),
    )
    status = v.step()
    assert status.shards[0].error_seq == 300 and "truncated" in (status.shards[0].error or "")
    log = make_log(logged, ring)  # another history from 300 on, signed with the real key
    fill(log, ring, 400, start=5000, batch=100)
    log.close()
    (alone,) = verify_store(logged, ring.verifiers(ORIGIN))
    assert alone.error is None  # self-consistent: only what was verified before tells
    status, _ = _until(v, lambda s: "extend" in (s.shards[0].error or "") or s.complete)
    assert not status.ok and "does not extend the trusted checkpoint (size 600)" in (
        status.shards[0].error or ""
    )


def test_a_step_covers_every_shard_in_turn(store_url: str, ring: KeyRing) -> None:
    from gateway.store import open_store

    origins = ["icvgw.test/audit/a", "icvgw.test/audit/b"]
    with open_store(store_url, keys=ring) as s:
        for origin in origins:
            log = make_log(s, ring, origin=origin)
            with log.transaction() as tx:
                tx.append_audit([decision(ring, i) for i in range(150)], shard=origin)
            log.close()
        v = IncrementalVerifier(s, ring.verifiers, budget=BUDGET)
        status, steps = _until(v, lambda st: st.complete and len(st.shards) == 2)
        assert [sh.origin for sh in status.shards] == origins
        assert all(sh.verified_size == 150 for sh in status.shards)
        assert steps <= 4
