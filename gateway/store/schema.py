"""The store's schema: numbered migrations, applied in order by :func:`migrate`.

New tables are added as a new entry of :data:`MIGRATIONS`; a store records its version in
``icvgw_meta`` and is brought up to :data:`SCHEMA_VERSION` when opened (a newer store than
this gateway is refused). Migration 4 converts the rows of schema 3 to their sealed form
(:mod:`gateway.store.schema_v4`) and marks the store for compaction
(:func:`compact_if_pending`), so that no page keeps the raw rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.errors import StoreError
from gateway.store.cursor import WriteSession
from gateway.store.schema_v4 import seal_v3_rows

if TYPE_CHECKING:
    from gateway.store.connection import Store

# Each migration: (version, steps); a step is a statement (``{blob}`` is BLOB in SQLite,
# BYTEA in PostgreSQL) or a function of the transaction converting rows in Python.
MIGRATIONS: tuple[tuple[int, tuple[str | Callable[[WriteSession], None], ...]], ...] = (
    (
        1,
        (
            """create table audit_shards (
                shard text primary key,
                size bigint not null,
                last_leaf {blob},
                edge {blob} not null,
                pruned_before bigint not null default 0
            )""",
            """create table audit_entries (
                shard text not null,
                seq bigint not null,
                ts_ms bigint not null,
                kind text not null,
                subscriber text,
                vehicle text,
                decision text,
                rules text,
                body {blob},
                leaf_hash {blob} not null,
                primary key (shard, seq)
            )""",
            "create index audit_entries_ts on audit_entries (ts_ms)",
            """create table audit_tiles (
                shard text not null,
                level integer not null,
                idx bigint not null,
                hash {blob} not null,
                primary key (shard, level, idx)
            )""",
            """create table audit_checkpoints (
                shard text not null,
                ordinal bigint not null,
                size bigint not null,
                note {blob} not null,
                created_ms bigint not null,
                primary key (shard, ordinal)
            )""",
            """create table consents (
                consent_id text primary key,
                vehicle text not null,
                purpose text not null,
                granted_ms bigint not null,
                expires_ms bigint not null,
                withdrawn_ms bigint
            )""",
            "create index consents_vehicle on consents (vehicle, purpose)",
            """create table crossborder_subjects (
                recipient text not null,
                year integer not null,
                category text not null,
                subject text not null,
                first_ms bigint not null,
                primary key (recipient, year, category, subject)
            )""",
        ),
    ),
    (
        2,
        (
            # Views to deliver, keyed by the audit entry that decided them; a row is pending
            # until its sink confirms it (delivered_ms set).
            """create table outbox (
                shard text not null,
                seq bigint not null,
                subscriber text not null,
                topic text not null,
                message_id text not null,
                payload {blob} not null,
                created_ms bigint not null,
                delivered_ms bigint,
                primary key (shard, seq)
            )""",
            "create index outbox_pending on outbox (delivered_ms, seq)",
            # Raw payloads that could not be used, kept with their reason (never published).
            """create table deadletters (
                shard text not null,
                seq bigint not null,
                ts_ms bigint not null,
                reason text not null,
                topic text not null,
                payload {blob} not null,
                primary key (shard, seq)
            )""",
            # Records already decided: (vehicle reference, record key) -> first seen.
            """create table dedup (
                vehicle text not null,
                record text not null,
                seen_ms bigint not null,
                primary key (vehicle, record)
            )""",
            "create index dedup_seen on dedup (seen_ms)",
            # Per-vehicle decision state (trip, down-sampling, held views) as one document.
            """create table vehicle_state (
                vehicle text primary key,
                state {blob} not null,
                updated_ms bigint not null
            )""",
        ),
    ),
    (
        3,
        (
            # Pending views by shard: with (delivered_ms, seq) alone, SQLite answered "what
            # is pending in this shard" through the primary key, reading every row the
            # shard ever delivered (23 ms at 44k rows, once a second).
            "drop index outbox_pending",
            "create index outbox_pending on outbox (shard, delivered_ms, seq)",
        ),
    ),
    (
        4,
        (
            # Data at rest: keyed vehicle references and sealed values only. Rows of version
            # 3 (VINs, raw positions, raw payloads, message ids) are converted with the key
            # directory (:func:`gateway.store.schema_v4.seal_v3_rows`), then their tables go.
            """create table vehicle_state_v4 (
                vehicle text primary key,
                state {blob} not null,
                updated_ms bigint not null
            )""",
            """create table outbox_v4 (
                shard text not null,
                seq bigint not null,
                subscriber text not null,
                message_id text not null,
                sealed {blob} not null,
                created_ms bigint not null,
                delivered_ms bigint,
                primary key (shard, seq)
            )""",
            """create table deadletters_v4 (
                shard text not null,
                seq bigint not null,
                ts_ms bigint not null,
                reason text not null,
                size bigint not null,
                sealed {blob} not null,
                primary key (shard, seq)
            )""",
            """create table dedup_v4 (
                vehicle text not null,
                record text not null,
                seen_ms bigint not null,
                primary key (vehicle, record)
            )""",
            lambda tx: _seal_v3_rows(tx),
            "drop table vehicle_state",
            "drop table outbox",
            "drop table deadletters",
            "drop table dedup",
            "alter table vehicle_state_v4 rename to vehicle_state",
            "alter table outbox_v4 rename to outbox",
            "alter table deadletters_v4 rename to deadletters",
            "alter table dedup_v4 rename to dedup",
            "create index outbox_pending on outbox (shard, delivered_ms, seq)",
            "create index dedup_seen on dedup (seen_ms)",
        ),
    ),
    (
        5,
        (
            # Distinct subjects per (recipient, year, category), kept with every insert into
            # crossborder_subjects (same transaction, under the counter's lock), so a batch
            # reads its count in one row instead of counting up to a million at commit.
            """create table crossborder_counts (
                recipient text not null,
                year integer not null,
                category text not null,
                subjects bigint not null,
                primary key (recipient, year, category)
            )""",
            """insert into crossborder_counts (recipient, year, category, subjects)
                select recipient, year, category, count(*) from crossborder_subjects
                group by recipient, year, category""",
        ),
    ),
    (
        6,
        (
            # The HTTP API (gateway/api/). API keys: only a salted hash of the secret.
            """create table api_keys (
                key_id text primary key,
                role text not null,
                subscriber text,
                label text not null,
                salt {blob} not null,
                digest {blob} not null,
                created_ms bigint not null,
                revoked_ms bigint
            )""",
            # Each view's channel: the MQTT drainer sends only ``mqtt`` rows; ``http_stream``
            # rows are read by the feed and pull routes, ``webhook`` rows POSTed by the
            # webhook sink, which counts its attempts here and gives up (``failed_ms``).
            "alter table outbox add column channel text not null default 'mqtt'",
            "alter table outbox add column attempts integer not null default 0",
            "alter table outbox add column next_attempt_ms bigint not null default 0",
            "alter table outbox add column failed_ms bigint",
            "create index outbox_subscriber on outbox (subscriber, shard, seq)",
            # Where each HTTP subscriber last read its feed (lag and last delivery).
            """create table subscriber_reads (
                subscriber text primary key,
                cursor text not null,
                read_ms bigint not null,
                views bigint not null default 0
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


COMPACT_PENDING = "compact_pending"
"""``icvgw_meta`` key set, in the converting transaction, while converted rows may remain
in older pages: every open compacts until one succeeds."""


def _seal_v3_rows(tx: WriteSession) -> None:
    store = tx.store
    store.converted = seal_v3_rows(tx)
    if store.converted:
        tx.execute("insert into icvgw_meta (key, value) values (?, '1')", (COMPACT_PENDING,))


def migrate(store: Store) -> None:
    """Create or upgrade the schema of ``store`` to :data:`SCHEMA_VERSION`, in one
    transaction under a lock that serialises workers opening the same store."""
    with store.transaction() as tx:
        tx.lock_key("icvgw:migrate")
        tx.execute("create table if not exists icvgw_meta (key text primary key, value text)")
        row = tx.fetch_one("select value from icvgw_meta where key = ?", ("schema_version",))
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {current} is newer than this gateway ({SCHEMA_VERSION})"
            )
        for version, steps in MIGRATIONS:
            if version <= current:
                continue
            for step in steps:
                if isinstance(step, str):
                    tx.execute(step.format(blob=store.blob_type))
                else:
                    step(tx)
        tx.execute(
            "insert into icvgw_meta (key, value) values (?, ?) "
            "on conflict (key) do update set value = excluded.value",
            ("schema_version", str(SCHEMA_VERSION)),
        )


def compact_if_pending(store: Store) -> None:
    """Compact the store if a conversion left raw rows in older pages, then say it is done
    (:class:`StoreError`, the mark kept, if it cannot be compacted now)."""
    with store.snapshot() as rd:
        pending = rd.fetch_one("select value from icvgw_meta where key = ?", (COMPACT_PENDING,))
    if pending is None:
        return
    store.compact()
    with store.transaction() as tx:
        tx.execute("delete from icvgw_meta where key = ?", (COMPACT_PENDING,))
