"""The ``subscriber_reads`` table: where each subscriber last read its views over HTTP.

One row per subscriber: the cursor after the last view the feed or pull routes handed it,
when, and how many views it has read in all. Operators see its lag from it
(:mod:`gateway.api.status`). The API writes it rarely (at most every few seconds per
subscriber): the pipeline shares SQLite's one writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.store.cursor import Session, WriteSession

__all__ = ["SubscriberRead", "get_read", "list_reads", "record_read"]

_COLUMNS = "subscriber, cursor, read_ms, views"


@dataclass(frozen=True, slots=True)
class SubscriberRead:
    """A subscriber's last read: the cursor it reached, when, and views read in all."""

    subscriber: str
    cursor: str
    read_ms: int
    views: int


def _read(r: Any) -> SubscriberRead:
    return SubscriberRead(r[0], r[1], int(r[2]), int(r[3]))


def record_read(tx: WriteSession, subscriber: str, cursor: str, read_ms: int, views: int) -> None:
    """``subscriber`` reached ``cursor`` at ``read_ms``, having read ``views`` more views."""
    tx.execute(
        f"insert into subscriber_reads ({_COLUMNS}) values (?, ?, ?, ?) "
        "on conflict (subscriber) do update set cursor = excluded.cursor, "
        "read_ms = excluded.read_ms, views = subscriber_reads.views + excluded.views",
        (subscriber, cursor, read_ms, views),
    )


def get_read(reader: Session, subscriber: str) -> SubscriberRead | None:
    """``subscriber``'s last read, or None if it never read over HTTP."""
    row = reader.fetch_one(
        f"select {_COLUMNS} from subscriber_reads where subscriber = ?", (subscriber,)
    )
    return None if row is None else _read(row)


def list_reads(reader: Session) -> dict[str, SubscriberRead]:
    """Every subscriber's last read, by subscriber."""
    return {
        r.subscriber: r
        for r in map(_read, reader.fetch_all(f"select {_COLUMNS} from subscriber_reads"))
    }
