"""Inclusion proofs a third party can check with nothing but the public key.

A proof document (JSON)::

    {"origin": …, "seq": 5, "tree_size": 100,
     "entry": "<the entry bytes as text>", "leaf_hash": "<base64>",
     "inclusion_proof": ["<base64>", …],
     "checkpoint": "<the signed checkpoint note>"}

Checking it: the checkpoint note verifies with the log's key (name = origin); the leaf hash
is SHA-256(0x00 || entry bytes); the RFC 9162 §2.1.3.2 algorithm turns leaf, index, size and
proof into the checkpoint's root.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from gateway.crypto import NoteVerifier
from gateway.errors import AuditError, VerificationError
from gateway.store import Reader, Store
from gateway.store.checkpoints import StoredCheckpoint
from gateway.tlog.checkpoint import open_checkpoint
from gateway.tlog.merkle import consistency_proof, inclusion_proof, leaf_hash, verify_inclusion


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _shard(r: Reader, store: Store, shard: str | None) -> str:
    """The shard named, the store's own, or the only one it holds."""
    name = shard or store.shard
    if name is None:
        shards = [s.shard for s in r.shards()]
        if len(shards) != 1:
            raise AuditError(f"the store has {len(shards)} shards: name one with --shard")
        name = shards[0]
    return name


def _checkpoint(r: Reader, shard: str, size: int | None) -> StoredCheckpoint:
    """The shard's newest checkpoint, or its checkpoint of ``size`` entries."""
    latest = r.latest_checkpoint(shard)
    if latest is None:
        raise AuditError(f"shard {shard}: no checkpoint yet")
    if size is None or size == latest.size:
        return latest
    found = r.checkpoint_of_size(shard, size)
    if found is None:
        raise AuditError(
            f"shard {shard}: no checkpoint of size {size} (the newest has size {latest.size})"
        )
    return found


def proof_document(
    store: Store, seq: int, *, shard: str | None = None, tree_size: int | None = None
) -> dict[str, Any]:
    """The inclusion proof of entry ``seq`` against the shard's newest checkpoint (or its
    checkpoint of ``tree_size`` entries).

    Raises :class:`AuditError` if there is no such checkpoint, it does not cover the entry,
    or the entry is pruned.
    """
    with store.snapshot() as r:
        name = _shard(r, store, shard)
        cp = _checkpoint(r, name, tree_size)
        if not 0 <= seq < cp.size:
            raise AuditError(
                f"shard {name}: entry {seq} is not covered by the "
                f"{'newest ' if tree_size is None else ''}checkpoint (size {cp.size})"
            )
        entry = r.entry(name, seq)
        if entry is None or entry.body is None:
            raise AuditError(f"shard {name}: entry {seq} is missing or pruned")

        def perfect(level: int, index: int) -> bytes:
            return r.perfect_hash(name, level, index)

        path = inclusion_proof(seq, cp.size, perfect)
    return {
        "origin": name,
        "seq": seq,
        "tree_size": cp.size,
        "entry": entry.body.decode("utf-8"),
        "leaf_hash": _b64(entry.leaf_hash),
        "inclusion_proof": [_b64(h) for h in path],
        "checkpoint": cp.note.decode("utf-8"),
    }


def check_proof_document(doc: dict[str, Any], verifiers: Sequence[NoteVerifier]) -> None:
    """Check a proof document end to end; raises :class:`VerificationError` if it fails."""
    try:
        origin = doc["origin"]
        seq = int(doc["seq"])
        size = int(doc["tree_size"])
        entry = doc["entry"].encode("utf-8")
        proof = [base64.b64decode(p, validate=True) for p in doc["inclusion_proof"]]
        note = doc["checkpoint"].encode("utf-8")
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise VerificationError(f"malformed proof document: {exc}") from exc
    cp = open_checkpoint(note, verifiers, origin=origin).checkpoint
    if cp.size != size:
        raise VerificationError(f"proof is for size {size}, the checkpoint for {cp.size}")
    leaf = leaf_hash(entry)
    if "leaf_hash" in doc and doc["leaf_hash"] != _b64(leaf):
        raise VerificationError("leaf_hash is not the hash of the entry bytes")
    verify_inclusion(seq, size, leaf, proof, cp.root)


def consistency_document(
    store: Store, old_size: int, *, shard: str | None = None, new_size: int | None = None
) -> dict[str, Any]:
    """The consistency proof from ``old_size`` to the shard's newest checkpoint (or its
    checkpoint of ``new_size`` entries), with that checkpoint and, if one is stored, the
    checkpoint of ``old_size`` entries (``old_checkpoint``; else None)."""
    with store.snapshot() as r:
        name = _shard(r, store, shard)
        cp = _checkpoint(r, name, new_size)
        if not 0 <= old_size <= cp.size:
            raise AuditError(f"size {old_size} is not within the checkpoint (size {cp.size})")
        old = r.checkpoint_of_size(name, old_size)

        def perfect(level: int, index: int) -> bytes:
            return r.perfect_hash(name, level, index)

        path = consistency_proof(old_size, cp.size, perfect)
    return {
        "origin": name,
        "old_size": old_size,
        "tree_size": cp.size,
        "consistency_proof": [_b64(h) for h in path],
        "checkpoint": cp.note.decode("utf-8"),
        "old_checkpoint": None if old is None else old.note.decode("utf-8"),
    }
