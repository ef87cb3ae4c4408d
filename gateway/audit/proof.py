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
from gateway.store import Store
from gateway.tlog.checkpoint import open_checkpoint
from gateway.tlog.merkle import consistency_proof, inclusion_proof, leaf_hash, verify_inclusion


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def proof_document(store: Store, seq: int, *, shard: str | None = None) -> dict[str, Any]:
    """The inclusion proof of entry ``seq`` against the shard's newest checkpoint.

    Raises :class:`AuditError` if the entry is not yet covered by a checkpoint or pruned.
    """
    with store.snapshot() as r:
        name = shard or store.shard
        if name is None:
            shards = [s.shard for s in r.shards()]
            if len(shards) != 1:
                raise AuditError(f"the store has {len(shards)} shards: name one with --shard")
            name = shards[0]
        latest = r.latest_checkpoint(name)
        if latest is None:
            raise AuditError(f"shard {name}: no checkpoint yet")
        if not 0 <= seq < latest.size:
            raise AuditError(
                f"shard {name}: entry {seq} is not covered by the newest checkpoint "
                f"(size {latest.size})"
            )
        entry = r.entry(name, seq)
        if entry is None or entry.body is None:
            raise AuditError(f"shard {name}: entry {seq} is missing or pruned")

        def perfect(level: int, index: int) -> bytes:
            return r.perfect_hash(name, level, index)

        path = inclusion_proof(seq, latest.size, perfect)
    return {
        "origin": name,
        "seq": seq,
        "tree_size": latest.size,
        "entry": entry.body.decode("utf-8"),
        "leaf_hash": _b64(entry.leaf_hash),
        "inclusion_proof": [_b64(h) for h in path],
        "checkpoint": latest.note.decode("utf-8"),
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


def consistency_document(store: Store, old_size: int, *, shard: str) -> dict[str, Any]:
    """The consistency proof from ``old_size`` to the shard's newest checkpoint."""
    with store.snapshot() as r:
        latest = r.latest_checkpoint(shard)
        if latest is None:
            raise AuditError(f"shard {shard}: no checkpoint yet")
        if not 0 <= old_size <= latest.size:
            raise AuditError(f"size {old_size} is not within the newest checkpoint")

        def perfect(level: int, index: int) -> bytes:
            return r.perfect_hash(shard, level, index)

        path = consistency_proof(old_size, latest.size, perfect)
    return {
        "origin": shard,
        "old_size": old_size,
        "tree_size": latest.size,
        "consistency_proof": [_b64(h) for h in path],
        "checkpoint": latest.note.decode("utf-8"),
    }
