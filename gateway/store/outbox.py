"""The ``outbox`` table: views to deliver, keyed by the audit entry that decided them.

A row is pending until its sink confirms it (``delivered_ms`` set); the topic and bytes are
sealed to the row (:mod:`gateway.store.sealing`). The drainer that publishes them is
:mod:`gateway.deliver.drainer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store.cursor import Session, WriteSession
from gateway.store.sealing import AtRestKeys, join_topic, row_aad, split_topic

SEALED = ("outbox", ("shard", "seq"), "sealed")
"""The sealed column: (table, key columns, column)."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One view to deliver: the bytes, where to, and the audit entry that decided it."""

    seq: int
    subscriber: str
    topic: str
    message_id: str
    payload: bytes
    created_ms: int
    channel: str = "mqtt"
    """``mqtt`` (the drainer publishes it), ``http_stream`` (read through the API's feed and
    pull routes) or ``webhook`` (POSTed by the webhook sink)."""


def add_outbox(tx: WriteSession, shard: str, rows: Iterable[OutboxRow]) -> int:
    """Queue views for delivery in this transaction (topic and bytes sealed); returns how
    many."""
    seal = tx.at_rest().seal
    values = [
        (
            shard,
            r.seq,
            r.subscriber,
            r.message_id,
            seal(join_topic(r.topic, r.payload), row_aad("outbox", shard, r.seq)),
            r.created_ms,
            r.channel,
        )
        for r in rows
    ]
    tx.insert_rows(
        "insert into outbox (shard, seq, subscriber, message_id, sealed, created_ms, channel)",
        values,
    )
    return len(values)


def pending_outbox(
    reader: Session, shard: str, *, after_seq: int = -1, limit: int = 1000, channel: str = "mqtt"
) -> list[OutboxRow]:
    """Undelivered views of ``shard`` for ``channel`` with ``seq > after_seq``, in audit
    order (opened)."""
    rows = reader.fetch_all(
        "select seq, subscriber, message_id, sealed, created_ms, channel from outbox "
        "where shard = ? and delivered_ms is null and channel = ? and seq > ? "
        "order by seq limit ?",
        (shard, channel, after_seq, limit),
    )
    return [_outbox_row(reader.at_rest(), shard, r) for r in rows]


def outbox_rows(reader: Session, shard: str) -> list[tuple[OutboxRow, bool]]:
    """Every view of ``shard`` (opened) with whether it was delivered, in audit order."""
    rows = reader.fetch_all(
        "select seq, subscriber, message_id, sealed, created_ms, channel, delivered_ms "
        "from outbox where shard = ? order by seq",
        (shard,),
    )
    keys = reader.at_rest()
    return [(_outbox_row(keys, shard, r), r[6] is not None) for r in rows]


def _outbox_row(keys: AtRestKeys, shard: str, r: Any) -> OutboxRow:
    topic, payload = split_topic(keys.unseal(bytes(r[3]), row_aad("outbox", shard, r[0])))
    return OutboxRow(int(r[0]), r[1], topic, r[2], payload, int(r[4]), r[5])


def count_pending(reader: Session, shard: str, channel: str = "mqtt") -> int:
    """How many views of ``shard`` for ``channel`` are committed and not yet confirmed."""
    row = reader.fetch_one(
        "select count(*) from outbox where shard = ? and channel = ? and delivered_ms is null",
        (shard, channel),
    )
    return int(row[0])


def mark_delivered(tx: WriteSession, shard: str, seqs: Iterable[int], at_ms: int) -> None:
    """Record the sink's confirmation of these views.

    One statement per 400 views, not one per view: the drainer holds the store while it
    marks, and the sqlite3 module lets go of the interpreter at every statement, so with a
    busy thread beside it (a policy reload) 380 single updates took 0.35 s, and the
    pipeline waited for the store all that time.
    """
    tx.execute_in(
        "update outbox set delivered_ms = ? where shard = ? and seq in ({})",
        sorted(set(seqs)),
        at_ms,
        shard,
    )


def delete_outbox(tx: WriteSession, shard: str, seqs: Sequence[int]) -> int:
    """Delete these views of ``shard`` (delivered or not); returns how many rows."""
    return tx.execute_in("delete from outbox where shard = ? and seq in ({})", seqs, shard)


def delete_outbox_of_vehicles(tx: WriteSession, refs: Sequence[str]) -> int:
    """Delete every view decided for these vehicle references (found through their audit
    entries' vehicle column); returns how many rows."""
    return tx.execute_in(
        "delete from outbox where (shard, seq) in "
        "(select shard, seq from audit_entries where vehicle in ({}))",
        refs,
    )


def delete_delivered_before(tx: WriteSession, shard: str, below_seq: int) -> None:
    """Delete the delivered views of ``shard`` decided by entries below ``below_seq``
    (those entries' bodies are being pruned); views not yet delivered stay."""
    tx.execute(
        "delete from outbox where shard = ? and seq < ? and delivered_ms is not null",
        (shard, below_seq),
    )


def prune_outbox(tx: WriteSession, before_ms: int, limit: int) -> int:
    """Delete, oldest first and at most ``limit``, views decided before ``before_ms``
    (delivered or not); returns how many rows."""
    return tx.execute(
        "delete from outbox where (shard, seq) in (select shard, seq from outbox "
        f"where created_ms < ? order by created_ms limit ?{tx.store.skip_locked})",
        (before_ms, limit),
    )


# -- webhooks: the API process's webhook sink (gateway.api.webhooks) -------------------------


@dataclass(frozen=True, slots=True)
class WebhookRow:
    """A ``webhook`` view still to deliver, with its attempts so far and when the next is
    due (Unix ms; 0: at once)."""

    view: OutboxRow
    attempts: int
    next_attempt_ms: int


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """What became of a view's latest attempt: ``failed_ms`` set when it is given up, else
    ``next_attempt_ms`` is when it is tried again."""

    seq: int
    attempts: int
    next_attempt_ms: int = 0
    failed_ms: int | None = None


def pending_webhooks(
    reader: Session, shard: str, subscriber: str, *, after_seq: int = -1, limit: int = 100
) -> list[WebhookRow]:
    """``subscriber``'s ``webhook`` views of ``shard`` neither delivered nor given up, with
    ``seq > after_seq``, in audit order (opened); found through ``outbox_subscriber``."""
    rows = reader.fetch_all(
        "select seq, subscriber, message_id, sealed, created_ms, channel, attempts, "
        "next_attempt_ms from outbox where subscriber = ? and shard = ? and seq > ? "
        "and channel = 'webhook' and delivered_ms is null and failed_ms is null "
        "order by seq limit ?",
        (subscriber, shard, after_seq, limit),
    )
    keys = reader.at_rest()
    return [WebhookRow(_outbox_row(keys, shard, r), int(r[6]), int(r[7])) for r in rows]


def record_webhook_attempts(
    tx: WriteSession, shard: str, attempts: Sequence[WebhookAttempt]
) -> None:
    """Record failed attempts: the count, and the next attempt's time or the give-up time
    (views delivered are marked with :func:`mark_delivered`)."""
    if not attempts:
        return
    tx.execute_many(
        "update outbox set attempts = ?, next_attempt_ms = ?, failed_ms = ? "
        "where shard = ? and seq = ?",
        [(a.attempts, a.next_attempt_ms, a.failed_ms, shard, a.seq) for a in attempts],
    )
