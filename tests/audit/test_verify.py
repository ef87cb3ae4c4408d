"""Tamper tests: every alteration of the log, in the store or in an export, is caught and
the first bad sequence number is named."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.audit.export import export_shard, export_store
from gateway.audit.log import RETENTION_MINIMUM_DAYS
from gateway.audit.verify import verify_export, verify_store
from gateway.crypto import NoteSigner
from gateway.keys import KeyRing, init_keys
from gateway.store import Store, open_store
from gateway.tlog.checkpoint import Checkpoint, sign_checkpoint
from gateway.tlog.entries import encode_entry
from gateway.tlog.merkle import CompactRange
from tests.audit.conftest import ORIGIN, decision, fill, make_log, tamper

N = 60


@pytest.fixture
def logged(store: Store, ring: KeyRing) -> Store:
    """A shard of 60 entries with checkpoints at sizes 10, 40 and 60."""
    log = make_log(store, ring)
    fill(log, ring, N)
    log.close()
    return store


def _leaf(body: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + body).digest()


def _row(store: Store, seq: int) -> tuple[bytes, bytes]:
    with store.snapshot() as r:
        e = r.entry(ORIGIN, seq)
    assert e is not None and e.body is not None
    return e.body, e.leaf_hash


def _fails(store: Store, ring: KeyRing, seq: int | None, match: str, **kw: object) -> None:
    (report,) = verify_store(store, ring.verifiers(ORIGIN), **kw)  # type: ignore[arg-type]
    assert report.error is not None, "tampering went unnoticed"
    assert match in str(report.error)
    assert report.error.seq == seq, str(report.error)


def test_an_untouched_log_verifies(logged: Store, ring: KeyRing) -> None:
    (report,) = verify_store(logged, ring.verifiers(ORIGIN))
    assert report.error is None
    assert (report.entries, report.verified_size, report.uncovered, report.checkpoints) == (
        60,
        60,
        0,
        3,
    )
    with logged.transaction() as tx:
        tx.append_audit([decision(ring, 60), decision(ring, 61)])
    (report,) = verify_store(logged, ring.verifiers(ORIGIN))
    assert report.error is None and report.uncovered == 2


def test_edited_entry(logged: Store, ring: KeyRing) -> None:
    body, _ = _row(logged, 17)
    edited = body.replace(b'"msg":"m-17"', b'"msg":"m-71"')
    assert edited != body
    tamper(logged, "update audit_entries set body = ? where seq = 17", (edited,))
    _fails(logged, ring, 17, "do not match their stored leaf hash")


def test_edited_entry_with_its_leaf_hash_recomputed(logged: Store, ring: KeyRing) -> None:
    body, _ = _row(logged, 17)
    edited = body.replace(b'"msg":"m-17"', b'"msg":"m-71"')
    tamper(
        logged,
        "update audit_entries set body = ?, leaf_hash = ? where seq = 17",
        (edited, _leaf(edited)),
    )
    _fails(logged, ring, 17, "hash chain broken")


def test_reordered_entries(logged: Store, ring: KeyRing) -> None:
    b17, h17 = _row(logged, 17)
    b18, h18 = _row(logged, 18)
    tamper(logged, "update audit_entries set body = ?, leaf_hash = ? where seq = 17", (b18, h18))
    tamper(logged, "update audit_entries set body = ?, leaf_hash = ? where seq = 18", (b17, h17))
    _fails(logged, ring, 17, "reordered, inserted or deleted")


def test_inserted_entry(logged: Store, ring: KeyRing) -> None:
    _, h16 = _row(logged, 16)
    forged = encode_entry(decision(ring, 16, message_id="forged"), 17, h16)
    tamper(logged, "update audit_entries set seq = seq + 1000000 where seq >= 17")
    tamper(logged, "update audit_entries set seq = seq - 999999 where seq >= 1000000")
    tamper(
        logged,
        "insert into audit_entries (shard, seq, ts_ms, kind, subscriber, vehicle, decision, "
        "rules, body, leaf_hash) select shard, 17, ts_ms, kind, subscriber, vehicle, decision, "
        "rules, ?, ? from audit_entries where seq = 16",
        (forged, _leaf(forged)),
    )
    _fails(logged, ring, 17, "reordered, inserted or deleted")


def test_deleted_entry_in_the_middle(logged: Store, ring: KeyRing) -> None:
    tamper(logged, "delete from audit_entries where seq = 17")
    _fails(logged, ring, 17, "entry 17 is missing")


def test_deleted_entries_at_the_end_under_a_checkpoint(logged: Store, ring: KeyRing) -> None:
    tamper(logged, "delete from audit_entries where seq >= 50")
    _fails(logged, ring, 50, "the log was truncated")


def test_forged_checkpoint(logged: Store, ring: KeyRing) -> None:
    with logged.snapshot() as r:
        note = r.checkpoints(ORIGIN)[1].note
    assert b"\n40\n" in note
    tamper(
        logged,
        "update audit_checkpoints set note = ? where ordinal = 2",
        (note.replace(b"\n40\n", b"\n39\n"),),
    )
    _fails(logged, ring, 10, "checkpoint #2 is forged")


def test_checkpoint_signed_by_an_unknown_key(logged: Store, ring: KeyRing) -> None:
    stranger = NoteSigner.from_seed(ORIGIN, bytes(32))
    with logged.snapshot() as r:
        state = r.shard_state(ORIGIN)
    assert state is not None
    note = sign_checkpoint(Checkpoint(ORIGIN, state.size, state.root()), [stranger])
    tamper(logged, "update audit_checkpoints set note = ? where ordinal = 3", (note,))
    _fails(logged, ring, 40, "not signed by a trusted key")


def test_a_log_signed_by_one_key_fails_with_another(logged: Store, tmp_path: Path) -> None:
    other = init_keys(tmp_path / "other")
    (report,) = verify_store(logged, other.verifiers(ORIGIN))
    assert report.error is not None and "not signed by a trusted key" in str(report.error)


def test_edited_query_columns(logged: Store, ring: KeyRing) -> None:
    tamper(logged, "update audit_entries set subscriber = ? where seq = 5", ("platform-x",))
    _fails(logged, ring, 5, "query columns disagree")


def test_edited_shard_head(logged: Store, ring: KeyRing) -> None:
    tamper(logged, "update audit_shards set size = 59")
    _fails(logged, ring, 59, "shard head says 59 entries")


def test_body_removed_without_a_retention_record(logged: Store, ring: KeyRing) -> None:
    tamper(logged, "update audit_entries set body = null where seq = 5")
    _fails(logged, ring, 5, "no retention.pruned record")


def test_edited_tree_tile(store: Store, ring: KeyRing) -> None:
    log = make_log(store, ring)
    fill(log, ring, 300, batch=100)
    log.close()
    tamper(store, "update audit_tiles set hash = ?", (b"\x00" * 32,))
    _fails(store, ring, 0, "stored tree tile (level 8, index 0) is wrong")


def _truncate_to(store: Store, size: int) -> None:
    """What an operator with SQL access would do to rewrite history from ``size`` on."""
    with store.snapshot() as r:
        leaves = [e.leaf_hash for e in r.iter_entries(ORIGIN, 0, size)]
    cr = CompactRange()
    cr.extend(leaves)
    tamper(store, "delete from audit_entries where seq >= ?", (size,))
    tamper(store, "delete from audit_checkpoints where size > ?", (size,))
    tamper(store, "delete from audit_tiles")
    tamper(
        store,
        "update audit_shards set size = ?, last_leaf = ?, edge = ?",
        (size, leaves[-1], cr.to_bytes()),
    )


def test_truncated_and_resigned_log_fails_against_a_trusted_checkpoint(
    logged: Store, ring: KeyRing
) -> None:
    with logged.snapshot() as r:
        trusted = r.latest_checkpoint(ORIGIN)
    assert trusted is not None and trusted.size == 60
    _truncate_to(logged, 30)
    log = make_log(logged, ring)
    fill(log, ring, 20, start=1000)  # a different history, re-signed with the real key
    log.close()
    (alone,) = verify_store(logged, ring.verifiers(ORIGIN))
    assert alone.error is None  # self-consistent: only an outside checkpoint can tell
    _fails(logged, ring, 50, "the log was truncated", trusted_notes=[trusted.note])
    fill(log, ring, 40, start=2000)
    log.close()
    _fails(logged, ring, 0, "does not extend the trusted checkpoint", trusted_notes=[trusted.note])


def test_trusted_checkpoint_it_still_extends(logged: Store, ring: KeyRing) -> None:
    with logged.snapshot() as r:
        trusted = r.checkpoints(ORIGIN)[0]
    (report,) = verify_store(logged, ring.verifiers(ORIGIN), [trusted.note])
    assert report.error is None and report.trusted == [10]


def test_trusted_checkpoint_of_a_vanished_shard(logged: Store, ring: KeyRing) -> None:
    other = ring.note_signer("icvgw.test/audit/w9")
    note = sign_checkpoint(Checkpoint("icvgw.test/audit/w9", 0, hashlib.sha256().digest()), [other])
    reports = verify_store(logged, [*ring.verifiers(ORIGIN), other.verifier()], [note])
    assert [r.error is None for r in reports] == [True, False]
    assert "no such shard" in str(reports[1].error)


# --- exports -------------------------------------------------------------------------------


@pytest.fixture
def exported(logged: Store, tmp_path: Path) -> Path:
    out = tmp_path / "audit.jsonl"
    export_shard(logged, ORIGIN, out)
    return out


def _export_fails(path: Path, ring: KeyRing, seq: int | None, match: str) -> None:
    report = verify_export(path, ring.verifiers(ORIGIN))
    assert report.error is not None, "tampering went unnoticed"
    assert match in str(report.error)
    assert report.error.seq == seq, str(report.error)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_export_lines_are_the_hashed_bytes(logged: Store, exported: Path, ring: KeyRing) -> None:
    with logged.snapshot() as r:
        stored = [(e.body, e.leaf_hash) for e in r.iter_entries(ORIGIN)]
    lines = _lines(exported)
    assert lines == [b for b, _ in stored]
    assert [_leaf(line) for line in lines] == [h for _, h in stored]
    cp = exported.with_name("audit.jsonl.checkpoint")  # the name README.md documents
    assert cp.read_bytes().startswith(f"{ORIGIN}\n60\n".encode())
    assert not exported.with_suffix(".checkpoint").exists()
    report = verify_export(exported, ring.verifiers(ORIGIN))
    assert report.error is None and report.verified_size == 60


def test_export_edited_line(exported: Path, ring: KeyRing) -> None:
    lines = _lines(exported)
    lines[17] = lines[17].replace(b'"msg":"m-17"', b'"msg":"m-71"')
    _write(exported, lines)
    _export_fails(exported, ring, 17, "hash chain broken")


def test_export_reordered_lines(exported: Path, ring: KeyRing) -> None:
    lines = _lines(exported)
    lines[17], lines[18] = lines[18], lines[17]
    _write(exported, lines)
    _export_fails(exported, ring, 17, "reordered, inserted or deleted")


def test_export_inserted_line(exported: Path, ring: KeyRing) -> None:
    lines = _lines(exported)
    lines.insert(17, encode_entry(decision(ring, 99), 17, _leaf(lines[16])))
    _write(exported, lines)
    _export_fails(exported, ring, 17, "reordered, inserted or deleted")


def test_export_deleted_line(exported: Path, ring: KeyRing) -> None:
    lines = _lines(exported)
    del lines[17]
    _write(exported, lines)
    _export_fails(exported, ring, 17, "reordered, inserted or deleted")


def test_export_truncated(exported: Path, ring: KeyRing) -> None:
    _write(exported, _lines(exported)[:50])
    _export_fails(exported, ring, 50, "the log was truncated")


def test_export_reformatted_line(exported: Path, ring: KeyRing) -> None:
    lines = _lines(exported)
    lines[3] = lines[3].replace(b'"kind":', b'"kind": ')
    _write(exported, lines)
    _export_fails(exported, ring, 3, "not valid canonical JSON")


def test_export_fully_rewritten_history_fails_at_the_checkpoint(
    exported: Path, ring: KeyRing
) -> None:
    lines = _lines(exported)
    prev = _leaf(lines[24])
    for i in range(25, 60):  # a consistent chain, but not the signed one
        lines[i] = encode_entry(decision(ring, 500 + i), i, prev)
        prev = _leaf(lines[i])
    _write(exported, lines)
    _export_fails(exported, ring, 0, "checkpoint #1 (size 60) does not match the entries")


def test_export_forged_checkpoint(exported: Path, ring: KeyRing, tmp_path: Path) -> None:
    cp = exported.with_name("audit.jsonl.checkpoint")
    cp.write_bytes(cp.read_bytes().replace(b"\n60\n", b"\n59\n"))
    _export_fails(exported, ring, 0, "forged")
    other = init_keys(tmp_path / "other")
    report = verify_export(exported, other.verifiers(ORIGIN))
    assert report.error is not None
    cp.unlink()
    assert verify_export(exported, ring.verifiers(ORIGIN)).error is not None


def test_export_with_pruned_entries_verifies(store: Store, ring: KeyRing, tmp_path: Path) -> None:
    from tests.audit.conftest import Clock

    clock = Clock()
    log = make_log(store, ring, clock)
    fill(log, ring, 30)
    log.close()
    clock.now += (RETENTION_MINIMUM_DAYS + 30) * 86400
    assert log.prune() == 30
    log.close()
    out = tmp_path / "pruned.jsonl"
    export_shard(store, ORIGIN, out)
    assert _lines(out)[0].startswith(b'{"pruned_leaf_hash":"')
    report = verify_export(out, ring.verifiers(ORIGIN))
    assert report.error is None and report.pruned == 30 and report.entries == 31


def test_several_shards_export_to_a_directory(
    store_url: str, ring: KeyRing, tmp_path: Path
) -> None:
    origins = ["icvgw.test/audit/w1", "icvgw.test/audit/w2"]
    for origin in origins:
        with open_store(store_url, shard=origin) as s:
            log = make_log(s, ring)
            fill(log, ring, 12)
            log.close()
    with open_store(store_url) as s:
        verifiers = [v for o in origins for v in ring.verifiers(o)]
        assert all(r.error is None for r in verify_store(s, verifiers))
        results = export_store(s, tmp_path / "out")
    assert [r.path.name for r in results] == [
        "icvgw.test_audit_w1.jsonl",
        "icvgw.test_audit_w2.jsonl",
    ]
    for r in results:
        report = verify_export(r.path, verifiers)
        assert report.error is None and report.origin == r.origin and report.entries == 12


def test_export_with_the_former_checkpoint_name_still_verifies(
    exported: Path, ring: KeyRing
) -> None:
    # Exports written before FILE.jsonl.checkpoint had FILE.checkpoint beside them.
    exported.with_name("audit.jsonl.checkpoint").rename(exported.with_suffix(".checkpoint"))
    report = verify_export(exported, ring.verifiers(ORIGIN))
    assert report.error is None, report.error
    assert report.checkpoints == 1
