"""Exports an auditor can verify offline: ``FILE.jsonl`` and ``FILE.jsonl.checkpoint``.

Each line of the ``.jsonl`` is exactly the bytes that were hashed for that entry (RFC 8785
canonical JSON), in sequence order, so ``SHA-256(0x00 || line)`` is the leaf hash. An entry
whose body was pruned under the retention rule is a line ``{"pruned_leaf_hash":"<hex>"}``:
it keeps the tree verifiable without the data. ``FILE.jsonl.checkpoint`` holds the shard's newest
signed checkpoint, byte for byte as published. Entries appended after that checkpoint are
exported too; verification reports them as not yet covered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.audit.verify import PRUNED_KEY, checkpoint_path
from gateway.errors import AuditError
from gateway.store import Store
from gateway.tlog.canonical import canonical_json


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What one shard's export wrote."""

    origin: str
    path: Path
    checkpoint: Path | None
    entries: int
    checkpoint_size: int | None


def shard_file_name(origin: str) -> str:
    """A file name for a shard's export: the origin with unsafe characters replaced."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", origin).strip("_") + ".jsonl"


def _atomic_write_lines(path: Path, lines: Iterable[bytes]) -> int:
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with tmp.open("wb") as f:
        for line in lines:
            f.write(line)
            f.write(b"\n")
            count += 1
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return count


def export_shard(store: Store, shard: str, out: Path) -> ExportResult:
    """Write ``out`` (entries) and the checkpoint beside it from one consistent snapshot."""
    cp_file = checkpoint_path(out)
    with store.snapshot() as r:
        state = r.shard_state(shard)
        if state is None:
            raise AuditError(f"no audit shard {shard!r} in the store")
        latest = r.latest_checkpoint(shard)

        def lines() -> Iterator[bytes]:
            for e in r.iter_entries(shard, 0, state.size):
                if e.body is None:
                    yield canonical_json({PRUNED_KEY: e.leaf_hash.hex()})
                else:
                    yield e.body

        count = _atomic_write_lines(out, lines())
    if latest is not None:
        tmp = cp_file.with_name(f".{cp_file.name}.tmp")
        tmp.write_bytes(latest.note)
        tmp.replace(cp_file)
    elif cp_file.exists():
        cp_file.unlink()
    return ExportResult(
        shard,
        out,
        cp_file if latest else None,
        count,
        latest.size if latest else None,
    )


def export_store(store: Store, out: Path, *, shard: str | None = None) -> list[ExportResult]:
    """Export one shard to ``out`` (a file), or, when the store has several shards and none
    is named, every shard into the directory ``out`` as ``<origin>.jsonl``."""
    with store.snapshot() as r:
        shards = [s.shard for s in r.shards()]
    if shard is not None:
        return [export_shard(store, shard, out)]
    if not shards:
        raise AuditError("the store holds no audit shard")
    if len(shards) == 1 and not out.is_dir():
        return [export_shard(store, shards[0], out)]
    out.mkdir(parents=True, exist_ok=True)
    return [export_shard(store, s, out / shard_file_name(s)) for s in shards]
