"""Inclusion and consistency proofs served from the store's tiles."""

from __future__ import annotations

import base64
import copy

import pytest

from gateway.audit.proof import check_proof_document, consistency_document, proof_document
from gateway.errors import AuditError, VerificationError
from gateway.keys import KeyRing, init_keys
from gateway.store import Store
from gateway.tlog.merkle import leaf_hash, verify_consistency
from tests.audit.conftest import ORIGIN, fill, make_log
from tests.tlog.test_merkle import ref_mth, ref_path, ref_proof


@pytest.fixture
def big(store: Store, ring: KeyRing) -> Store:
    log = make_log(store, ring)
    fill(log, ring, 300, batch=100)
    log.close()
    return store


def _bodies(store: Store) -> list[bytes]:
    with store.snapshot() as r:
        return [e.body for e in r.iter_entries(ORIGIN) if e.body is not None]


@pytest.mark.parametrize("seq", [0, 1, 127, 255, 256, 299])
def test_inclusion_proofs_check_and_equal_the_rfc_path(big: Store, ring: KeyRing, seq: int) -> None:
    doc = proof_document(big, seq)
    assert doc["tree_size"] == 300 and doc["origin"] == ORIGIN
    bodies = _bodies(big)
    assert doc["entry"].encode() == bodies[seq]
    assert [base64.b64decode(p) for p in doc["inclusion_proof"]] == ref_path(seq, bodies)
    check_proof_document(doc, ring.verifiers(ORIGIN))


def test_tampered_proof_documents_fail(big: Store, ring: KeyRing) -> None:
    doc = proof_document(big, 42)
    edited = copy.deepcopy(doc)
    edited["entry"] = doc["entry"].replace("m-42", "m-24")
    edited.pop("leaf_hash")
    with pytest.raises(VerificationError, match="does not lead to the root"):
        check_proof_document(edited, ring.verifiers(ORIGIN))
    moved = copy.deepcopy(doc)
    moved["seq"] = 43
    with pytest.raises(VerificationError):
        check_proof_document(moved, ring.verifiers(ORIGIN))
    flipped = copy.deepcopy(doc)
    raw = bytearray(base64.b64decode(doc["inclusion_proof"][0]))
    raw[0] ^= 1
    flipped["inclusion_proof"][0] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(VerificationError):
        check_proof_document(flipped, ring.verifiers(ORIGIN))
    with pytest.raises(VerificationError, match="no verifiable signatures"):
        check_proof_document(doc, init_keys(ring.directory.parent / "other").verifiers(ORIGIN))
    with pytest.raises(VerificationError, match="malformed"):
        check_proof_document({"seq": 1}, ring.verifiers(ORIGIN))


def test_proofs_need_a_covering_checkpoint(store: Store, ring: KeyRing) -> None:
    with pytest.raises(AuditError, match="no checkpoint"):
        proof_document(store, 0)
    log = make_log(store, ring)
    fill(log, ring, 10)
    with pytest.raises(AuditError, match="not covered"):
        proof_document(store, 10)


@pytest.mark.parametrize("old", [0, 1, 100, 256, 257, 300])
def test_consistency_proofs_from_the_store(big: Store, old: int) -> None:
    doc = consistency_document(big, old, shard=ORIGIN)
    bodies = _bodies(big)
    proof = [base64.b64decode(p) for p in doc["consistency_proof"]]
    assert proof == ref_proof(old, bodies)
    verify_consistency(old, 300, ref_mth(bodies[:old]), ref_mth(bodies), proof)


def test_leaf_hash_in_document_is_the_hash_of_the_entry(big: Store) -> None:
    doc = proof_document(big, 7)
    assert base64.b64decode(doc["leaf_hash"]) == leaf_hash(doc["entry"].encode())
