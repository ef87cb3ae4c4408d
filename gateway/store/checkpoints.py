"""The ``audit_checkpoints`` table: signed checkpoints of each shard, as published."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.store.cursor import Session, WriteSession

_COLUMNS = "shard, ordinal, size, note, created_ms"


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint as stored: the note bytes, exactly as published."""

    shard: str
    ordinal: int
    size: int
    note: bytes
    created_ms: int


def _checkpoint(r: Any) -> StoredCheckpoint:
    return StoredCheckpoint(r[0], r[1], r[2], bytes(r[3]), r[4])


class CheckpointReads(Session):
    """Reading stored checkpoints."""

    def checkpoints(self, shard: str) -> list[StoredCheckpoint]:
        """Every stored checkpoint of ``shard``, oldest first."""
        rows = self.fetch_all(
            f"select {_COLUMNS} from audit_checkpoints where shard = ? order by ordinal",
            (shard,),
        )
        return [_checkpoint(r) for r in rows]

    def latest_checkpoint(self, shard: str) -> StoredCheckpoint | None:
        """The newest checkpoint of ``shard``, or None."""
        row = self.fetch_one(
            f"select {_COLUMNS} from audit_checkpoints "
            "where shard = ? order by ordinal desc limit 1",
            (shard,),
        )
        return _checkpoint(row) if row else None

    def checkpoints_after(self, shard: str, ordinal: int, limit: int) -> list[StoredCheckpoint]:
        """At most ``limit`` checkpoints of ``shard`` stored after the one numbered
        ``ordinal`` (0: from the first), oldest first."""
        rows = self.fetch_all(
            f"select {_COLUMNS} from audit_checkpoints where shard = ? and ordinal > ? "
            "order by ordinal limit ?",
            (shard, ordinal, limit),
        )
        return [_checkpoint(r) for r in rows]

    def checkpoint_of_size(self, shard: str, size: int) -> StoredCheckpoint | None:
        """The newest checkpoint of ``shard`` whose tree has ``size`` entries, or None."""
        row = self.fetch_one(
            f"select {_COLUMNS} from audit_checkpoints where shard = ? and size = ? "
            "order by ordinal desc limit 1",
            (shard, size),
        )
        return _checkpoint(row) if row else None


class CheckpointWrites(CheckpointReads, WriteSession):
    """Storing checkpoints."""

    def add_checkpoint(self, shard: str, size: int, note: bytes, created_ms: int) -> int:
        """Store a signed checkpoint; returns its ordinal (1 for the first)."""
        row = self.fetch_one(
            "select coalesce(max(ordinal), 0) from audit_checkpoints where shard = ?", (shard,)
        )
        ordinal = int(row[0]) + 1
        self.execute(
            f"insert into audit_checkpoints ({_COLUMNS}) values (?, ?, ?, ?, ?)",
            (shard, ordinal, size, note, created_ms),
        )
        return ordinal
