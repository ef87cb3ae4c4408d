"""The ``deadletters`` table: raw payloads that could not be used, kept with their reason.

Never published; a row is keyed by the audit entry (shard, seq) that recorded it, and its
topic and payload are sealed to the row (:mod:`gateway.store.sealing`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.store.cursor import Session, WriteSession
from gateway.store.sealing import join_topic, row_aad, split_topic
from gateway.tlog.entries import AdminAction, AdminEntry

if TYPE_CHECKING:
    from gateway.store.audit import AuditWrites

SEALED = ("deadletters", ("shard", "seq"), "sealed")
"""The sealed column: (table, key columns, column)."""


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """An unusable input kept with its reason; ``seq`` is its audit entry."""

    seq: int
    ts_ms: int
    reason: str
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """What may be listed of a dead letter without opening it: its audit entry, time,
    reason, the vehicle reference of that entry, and the size of the kept payload."""

    seq: int
    ts_ms: int
    reason: str
    vehicle: str | None
    size: int


def add_deadletters(tx: WriteSession, shard: str, rows: Iterable[DeadLetterRow]) -> int:
    """Keep unusable payloads (sealed, with their topic) and their reason; returns how
    many."""
    seal = tx.at_rest().seal
    values = [
        (
            shard,
            r.seq,
            r.ts_ms,
            r.reason,
            len(r.payload),
            seal(join_topic(r.topic, r.payload), row_aad("deadletters", shard, r.seq)),
        )
        for r in rows
    ]
    tx.insert_rows("insert into deadletters (shard, seq, ts_ms, reason, size, sealed)", values)
    return len(values)


def deadletters(
    reader: Session, shard: str, limit: int = 1000, *, before_seq: int | None = None
) -> list[DeadLetterInfo]:
    """The most recent dead letters of ``shard`` (newest first; below ``before_seq`` if
    given), without opening them: no keys needed. The vehicle is read from each letter's
    audit entry."""
    rows = reader.fetch_all(
        "select d.seq, d.ts_ms, d.reason, a.vehicle, d.size from deadletters d "
        "left join audit_entries a on a.shard = d.shard and a.seq = d.seq "
        "where d.shard = ? and d.seq < ? order by d.seq desc limit ?",
        (shard, (1 << 62) if before_seq is None else before_seq, limit),
    )
    return [DeadLetterInfo(int(r[0]), int(r[1]), r[2], r[3], int(r[4])) for r in rows]


def deadletter(reader: Session, shard: str, seq: int) -> DeadLetterRow | None:
    """One dead letter, opened (topic and payload as received), or None."""
    row = reader.fetch_one(
        "select seq, ts_ms, reason, sealed from deadletters where shard = ? and seq = ?",
        (shard, seq),
    )
    if row is None:
        return None
    keys = reader.at_rest()
    topic, payload = split_topic(keys.unseal(bytes(row[3]), row_aad("deadletters", shard, seq)))
    return DeadLetterRow(int(row[0]), int(row[1]), row[2], topic, payload)


def read_deadletter(
    tx: AuditWrites, shard: str, seq: int, *, at: float, instance: str
) -> DeadLetterRow | None:
    """Open one dead letter and record, in the same transaction, that it was read (a
    ``deadletter.read`` entry in ``shard``: raw input holds VINs and positions); None,
    and nothing recorded, if there is no such letter."""
    row = deadletter(tx, shard, seq)
    if row is not None:
        entry = AdminEntry(
            time=at,
            instance=instance,
            action=AdminAction.DEADLETTER_READ,
            subject=f"{shard}#{seq}",
            details={"reason": row.reason},
        )
        tx.append_audit([entry], shard=shard)
    return row


def deadletter_reasons(reader: Session, shard: str) -> dict[str, int]:
    """How many dead letters ``shard`` keeps, by reason (no keys needed)."""
    rows = reader.fetch_all(
        "select reason, count(*) from deadletters where shard = ? group by reason order by reason",
        (shard,),
    )
    return {r[0]: int(r[1]) for r in rows}


def letters_holding(reader: Session, vin: str) -> dict[str, list[int]]:
    """The dead letters (seqs by shard) whose opened topic or payload holds ``vin`` (any
    case): every letter is opened, page by page."""
    keys = reader.at_rest()
    wanted = vin.strip().upper().encode()
    found: dict[str, list[int]] = {}
    select = "select shard, seq, sealed from deadletters order by shard, seq"
    for rows in reader.pages(select, 2):
        for shard, seq, sealed in rows:
            data = keys.unseal(bytes(sealed), row_aad("deadletters", shard, seq))
            if wanted in data.upper():
                found.setdefault(shard, []).append(int(seq))
    return found


def delete_deadletters(tx: WriteSession, shard: str, seqs: Sequence[int]) -> int:
    """Delete these dead letters of ``shard``; returns how many rows."""
    return tx.execute_in("delete from deadletters where shard = ? and seq in ({})", seqs, shard)


def delete_deadletters_of_vehicles(tx: WriteSession, refs: Sequence[str]) -> int:
    """Delete the dead letters recorded for these vehicle references (found through their
    audit entries' vehicle column); returns how many rows."""
    return tx.execute_in(
        "delete from deadletters where (shard, seq) in "
        "(select shard, seq from audit_entries where vehicle in ({}))",
        refs,
    )


def delete_deadletters_before(tx: WriteSession, shard: str, below_seq: int) -> None:
    """Delete the dead letters of ``shard`` recorded by entries below ``below_seq``."""
    tx.execute("delete from deadletters where shard = ? and seq < ?", (shard, below_seq))


def prune_deadletters(tx: WriteSession, before_ms: int, limit: int) -> int:
    """Delete, oldest first and at most ``limit``, dead letters received before
    ``before_ms``; returns how many rows."""
    return tx.execute(
        "delete from deadletters where (shard, seq) in (select shard, seq from "
        f"deadletters where ts_ms < ? order by ts_ms limit ?{tx.store.skip_locked})",
        (before_ms, limit),
    )
