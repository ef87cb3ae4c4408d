"""The transactional store: one database per gateway worker, one commit per micro-batch.

Everything that must change together lives here, so one commit covers it: the audit log
(entries, tree tiles, checkpoints, the shard's right edge), consents, cross-border subject
counters, the delivery outbox, dead letters, the de-duplication window and per-vehicle
decision state (:mod:`gateway.audit.outbox`, which keeps vehicles as keyed references and
seals the raw data those tables need); new tables are added as numbered migrations in
:data:`MIGRATIONS`.

Selected by URL:

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's
  convention; the default): one file, WAL, ``synchronous=FULL`` (durable when a commit
  returns), writers serialised by ``BEGIN IMMEDIATE``;
* ``postgresql://…`` (psycopg 3, the ``postgres`` extra): the shard's row is locked
  ``FOR UPDATE`` for an append; cross-border counters take a transaction advisory lock.

Use::

    store = open_store(url, shard="icvgw.example.cn/audit/w1")
    with store.transaction() as tx:          # one commit for the whole micro-batch
        tx.append_audit(entries)
        tx.add_crossborder_subjects("platform-x", 2025, vehicle_refs)

A transaction re-reads the shard's state (size, last leaf, right edge) under its lock, so a
rolled-back transaction leaves nothing behind in memory either.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from gateway.audit.entries import AdminAction, AdminEntry, AuditEntry, encode_entry, to_ms
from gateway.audit.merkle import TILE_HEIGHT, CompactRange, node_hash
from gateway.audit.walcheckpoint import WalCheckpointer
from gateway.errors import AuditError, GatewayError, StoreError

# Each migration: (version, steps); a step is a statement (``{blob}`` is BLOB in SQLite,
# BYTEA in PostgreSQL) or a function of (cursor, store) converting rows in Python.
MIGRATIONS: tuple[tuple[int, tuple[str | Callable[[_Cursor, Store], None], ...]], ...] = (
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
            # directory (:func:`gateway.audit.outbox.seal_v3_rows`), then their tables go.
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
            lambda cur, store: _seal_v3_rows(cur, store),
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
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


_COMPACT_PENDING = "compact_pending"
"""``icvgw_meta`` key set, in the converting transaction, while converted rows may remain
in older pages: every open compacts until one succeeds."""


def _seal_v3_rows(cur: _Cursor, store: Store) -> None:
    from gateway.audit.outbox import seal_v3_rows

    store.converted = seal_v3_rows(cur, store)
    if store.converted:
        cur.execute(
            store.sql("insert into icvgw_meta (key, value) values (?, '1')"), (_COMPACT_PENDING,)
        )


class AtRestKeys(Protocol):
    """What the store needs of the key directory (:class:`gateway.keys.KeyRing`) to keep
    vehicles as keyed references and raw data sealed."""

    def seal(self, data: bytes, aad: bytes) -> bytes:
        """``data`` encrypted and bound to ``aad``."""

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`seal`."""

    def vehicle_ref(self, vin: str, *, generation: int | None = None) -> str:
        """The keyed reference of a VIN."""

    def record_key(self, record: str, *, generation: int | None = None) -> str:
        """The keyed digest of a record id."""


_ENTRY_COLUMNS = "shard, seq, ts_ms, kind, subscriber, vehicle, decision, rules, body, leaf_hash"

_MAX_PARAMS = 999
"""Parameters per statement: SQLite's limit before 3.32 (PostgreSQL allows 65,535)."""

IN_CHUNK = 400
"""Values per ``in (...)`` list: the stores' lookups by key split longer lists into these."""


def insert_rows(
    cur: _Cursor,
    sql: Callable[[str], str],
    head: str,
    rows: Sequence[tuple[Any, ...]],
    tail: str = "",
) -> None:
    """``head values (?,…),(?,…)… tail`` for ``rows``, in a few statements within the
    parameter limit (``sql`` puts a query in the dialect's form).

    Not ``executemany``: the sqlite3 module lets go of the interpreter for every row it
    steps, and each time another busy thread (a policy being loaded) may keep it for up to
    the switch interval; a batch's 44 audit rows one by one took the pipeline ~0.3 s then.
    """
    if not rows:
        return
    width = len(rows[0])
    most = 1 << (max(1, _MAX_PARAMS // width).bit_length() - 1)
    one = "(" + ",".join("?" * width) + ")"
    i = 0
    while i < len(rows):
        # Chunks of a power of two rows (44 = 32 + 8 + 4): a handful of distinct statements
        # per table, so they stay in the connection's statement cache.
        n = min(most, 1 << ((len(rows) - i).bit_length() - 1))
        chunk = rows[i : i + n]
        cur.execute(
            sql(f"{head} values {','.join([one] * n)}{tail}"),
            [value for row in chunk for value in row],
        )
        i += n


@dataclass(frozen=True, slots=True)
class ShardState:
    """A log shard's head: its size, last leaf hash, right edge and pruning bound."""

    shard: str
    size: int
    last_leaf: bytes | None
    edge: bytes
    pruned_before: int

    def compact_range(self) -> CompactRange:
        """The shard's right edge as a :class:`CompactRange`."""
        return CompactRange.from_bytes(self.size, self.edge)

    def root(self) -> bytes:
        """The root hash of the whole shard."""
        return self.compact_range().root()


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One stored entry: the exact bytes hashed (``None`` once pruned), its leaf hash and the
    query columns derived from it."""

    shard: str
    seq: int
    ts_ms: int
    kind: str
    subscriber: str | None
    vehicle: str | None
    decision: str | None
    rules: str | None
    body: bytes | None
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint as stored: the note bytes, exactly as published."""

    shard: str
    ordinal: int
    size: int
    note: bytes
    created_ms: int


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where a batch landed: its sequence numbers and the shard's new size."""

    shard: str
    seqs: range

    @property
    def size(self) -> int:
        """The shard's size after the append."""
        return self.seqs.stop


@dataclass(frozen=True, slots=True)
class Consent:
    """A vehicle's consent for one purpose. It always expires; withdrawal is final.

    ``vehicle`` is the vehicle as the policy engine keys it (a keyed reference, not a VIN).
    Times are Unix seconds.
    """

    consent_id: str
    vehicle: str
    purpose: str
    granted_at: float
    expires_at: float
    withdrawn_at: float | None = None

    def active(self, at: float) -> bool:
        """True if the consent covers a record at time ``at``."""
        if self.withdrawn_at is not None and at >= self.withdrawn_at:
            return False
        return self.granted_at <= at < self.expires_at


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for :meth:`Reader.query`; ``None`` means no filter. Times are Unix ms."""

    shard: str | None = None
    subscriber: str | None = None
    vehicles: Sequence[str] | None = None
    decision: str | None = None
    rule: str | None = None
    kind: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def executemany(self, sql: Any, params: Any, /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int = ..., /) -> list[Any]: ...


def _wrap_db_errors(store: Store) -> Callable[[BaseException], BaseException]:
    def wrap(exc: BaseException) -> BaseException:
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, store.db_errors):
            return StoreError(f"{store.kind} store: {exc}")
        return exc

    return wrap


class Reader:
    """Read-only access inside one snapshot (a read transaction) of the store."""

    def __init__(self, store: Store, cur: _Cursor) -> None:
        self._store = store
        self._cur = cur

    def _q(self, sql: str) -> str:
        return self._store.sql(sql)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._cur.execute(self._q(sql), tuple(params))
        return self._cur.fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self._cur.execute(self._q(sql), tuple(params))
        return self._cur.fetchall()

    # audit ----------------------------------------------------------------------------------

    def shards(self) -> list[ShardState]:
        """Every log shard in the store, by name."""
        rows = self._all(
            "select shard, size, last_leaf, edge, pruned_before from audit_shards order by shard"
        )
        return [_state(r) for r in rows]

    def shard_state(self, shard: str) -> ShardState | None:
        """The head of ``shard``, or None if it has never been written."""
        row = self._one(
            "select shard, size, last_leaf, edge, pruned_before from audit_shards where shard = ?",
            (shard,),
        )
        return _state(row) if row else None

    def iter_entries(
        self, shard: str, start: int = 0, stop: int | None = None, *, batch: int = 5000
    ) -> Iterator[StoredEntry]:
        """Entries of ``shard`` with ``start <= seq < stop`` in sequence order, streamed."""
        pos = start
        while True:
            limit = batch if stop is None else min(batch, stop - pos)
            if limit <= 0:
                return
            rows = self._all(
                f"select {_ENTRY_COLUMNS} from audit_entries "
                "where shard = ? and seq >= ? order by seq limit ?",
                (shard, pos, limit),
            )
            for r in rows:
                if stop is not None and r[1] >= stop:
                    return
                yield _entry(r)
            if len(rows) < limit:
                return
            pos = rows[-1][1] + 1

    def entry(self, shard: str, seq: int) -> StoredEntry | None:
        """One entry, or None."""
        row = self._one(
            f"select {_ENTRY_COLUMNS} from audit_entries where shard = ? and seq = ?",
            (shard, seq),
        )
        return _entry(row) if row else None

    def checkpoints(self, shard: str) -> list[StoredCheckpoint]:
        """Every stored checkpoint of ``shard``, oldest first."""
        rows = self._all(
            "select shard, ordinal, size, note, created_ms from audit_checkpoints "
            "where shard = ? order by ordinal",
            (shard,),
        )
        return [StoredCheckpoint(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def latest_checkpoint(self, shard: str) -> StoredCheckpoint | None:
        """The newest checkpoint of ``shard``, or None."""
        row = self._one(
            "select shard, ordinal, size, note, created_ms from audit_checkpoints "
            "where shard = ? order by ordinal desc limit 1",
            (shard,),
        )
        return StoredCheckpoint(row[0], row[1], row[2], bytes(row[3]), row[4]) if row else None

    def first_seq_since(self, shard: str, ts_ms: int, below: int) -> int:
        """The first seq below ``below`` whose time is at or after ``ts_ms``, else ``below``."""
        row = self._one(
            "select min(seq) from audit_entries where shard = ? and seq < ? and ts_ms >= ?",
            (shard, below, ts_ms),
        )
        return int(row[0]) if row and row[0] is not None else below

    def tiles(self, shard: str) -> dict[tuple[int, int], bytes]:
        """Every stored tile node of ``shard`` by (level, index)."""
        rows = self._all("select level, idx, hash from audit_tiles where shard = ?", (shard,))
        return {(r[0], r[1]): bytes(r[2]) for r in rows}

    def perfect_hash(self, shard: str, level: int, index: int) -> bytes:
        """Hash of the perfect subtree at (level, index), from stored leaf hashes and tiles:
        at most 2**(TILE_HEIGHT-1) stored hashes are combined."""
        base = (level // TILE_HEIGHT) * TILE_HEIGHT
        span = level - base
        start, stop = index << span, (index + 1) << span
        if base == 0:
            rows = self._all(
                "select leaf_hash from audit_entries where shard = ? and seq >= ? and seq < ? "
                "order by seq",
                (shard, start, stop),
            )
        else:
            rows = self._all(
                "select hash from audit_tiles where shard = ? and level = ? and idx >= ? "
                "and idx < ? order by idx",
                (shard, base, start, stop),
            )
        hashes = [bytes(r[0]) for r in rows]
        if len(hashes) != stop - start:
            raise StoreError(f"shard {shard}: tree node ({level}, {index}) is not stored")
        while len(hashes) > 1:
            hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

    def query(self, q: AuditQuery) -> Iterator[StoredEntry]:
        """Entries matching every filter of ``q``, by shard then sequence number."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("shard", q.shard),
            ("subscriber", q.subscriber),
            ("decision", q.decision),
            ("kind", q.kind),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if q.vehicles is not None:
            if not q.vehicles:
                return
            where.append(f"vehicle in ({', '.join('?' for _ in q.vehicles)})")
            params.extend(q.vehicles)
        if q.rule is not None:
            where.append("rules like ? escape '!'")
            escaped = q.rule.replace("!", "!!").replace("%", "!%").replace("_", "!_")
            params.append(f"%|{escaped}|%")
        if q.since_ms is not None:
            where.append("ts_ms >= ?")
            params.append(q.since_ms)
        if q.until_ms is not None:
            where.append("ts_ms < ?")
            params.append(q.until_ms)
        sql = f"select {_ENTRY_COLUMNS} from audit_entries"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by shard, seq"
        if q.limit is not None:
            sql += " limit ?"
            params.append(q.limit)
        for row in self._all(sql, params):
            yield _entry(row)

    # consents -------------------------------------------------------------------------------

    def consent(self, consent_id: str) -> Consent | None:
        """One consent by id, or None."""
        row = self._one(
            "select consent_id, vehicle, purpose, granted_ms, expires_ms, withdrawn_ms "
            "from consents where consent_id = ?",
            (consent_id,),
        )
        return _consent(row) if row else None

    def active_consent(self, vehicle: str, purpose: str, at: float) -> Consent | None:
        """A consent of ``vehicle`` for ``purpose`` in force at ``at`` (the one expiring
        last), or None."""
        at_ms = to_ms(at)
        row = self._one(
            "select consent_id, vehicle, purpose, granted_ms, expires_ms, withdrawn_ms "
            "from consents where vehicle = ? and purpose = ? and granted_ms <= ? "
            "and expires_ms > ? and (withdrawn_ms is null or withdrawn_ms > ?) "
            "order by expires_ms desc, consent_id limit 1",
            (vehicle, purpose, at_ms, at_ms, at_ms),
        )
        return _consent(row) if row else None

    # cross-border counters ------------------------------------------------------------------

    def crossborder_count(self, recipient: str, year: int, category: str = "pi") -> int:
        """Distinct data subjects exported to ``recipient`` in ``year`` (the counting year):
        the counter row kept with the subjects, read in O(1)."""
        row = self._one(
            "select subjects from crossborder_counts "
            "where recipient = ? and year = ? and category = ?",
            (recipient, year, category),
        )
        return int(row[0]) if row else 0

    def crossborder_new(
        self, recipient: str, year: int, subjects: Iterable[str], category: str = "pi"
    ) -> list[str]:
        """Those of ``subjects`` (deduplicated, in order) not yet counted for the year."""
        wanted = list(dict.fromkeys(subjects))
        known: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            rows = self._all(
                "select subject from crossborder_subjects where recipient = ? and year = ? "
                f"and category = ? and subject in ({', '.join('?' for _ in chunk)})",
                (recipient, year, category, *chunk),
            )
            known.update(r[0] for r in rows)
        return [s for s in wanted if s not in known]


class Transaction(Reader):
    """A write transaction: everything done through it commits together or not at all."""

    def insert_rows(self, head: str, rows: Sequence[tuple[Any, ...]], tail: str = "") -> None:
        """Insert ``rows`` with ``head`` (``insert into t (a, b)``) and ``tail`` (``on
        conflict …``), a few statements for all of them (see :func:`insert_rows`)."""
        insert_rows(self._cur, self._q, head, rows, tail)

    def _shard_name(self, shard: str | None) -> str:
        name = shard or self._store.shard
        if not name:
            raise AuditError("the store was opened without an audit shard; pass shard=")
        return name

    def _lock_shard(self, shard: str) -> ShardState:
        self._cur.execute(
            self._q(
                "insert into audit_shards (shard, size, last_leaf, edge, pruned_before) "
                "values (?, 0, null, ?, 0) on conflict (shard) do nothing"
            ),
            (shard, b""),
        )
        row = self._one(
            "select shard, size, last_leaf, edge, pruned_before from audit_shards where shard = ?"
            + self._store.for_update,
            (shard,),
        )
        return _state(row)

    def append_audit(
        self, entries: Iterable[AuditEntry], *, shard: str | None = None
    ) -> AppendResult:
        """Append entries to the shard's log, in order, in this transaction.

        Assigns ``seq`` and ``prev``, encodes each entry canonically, hashes it, extends the
        right edge (O(1) amortised hashes per entry) and stores completed tiles.
        """
        name = self._shard_name(shard)
        state = self._lock_shard(name)
        cr = state.compact_range()
        prev = state.last_leaf
        seq = state.size
        rows: list[tuple[Any, ...]] = []
        tiles: list[tuple[int, int, bytes]] = []
        sha256 = hashlib.sha256
        for e in entries:
            body = encode_entry(e, seq, prev)
            h = sha256(b"\x00" + body).digest()
            cr.append(h, tiles)
            sub, veh, dec, rules = e.columns()
            rows.append((name, seq, to_ms(e.time), e.kind, sub, veh, dec, rules, body, h))
            prev = h
            seq += 1
        if rows:
            self._store.insert_entries(self._cur, rows)
            if tiles:
                self.insert_rows(
                    "insert into audit_tiles (shard, level, idx, hash)",
                    [(name, lv, ix, h) for lv, ix, h in tiles],
                )
            self._cur.execute(
                self._q("update audit_shards set size=?, last_leaf=?, edge=? where shard=?"),
                (cr.size, prev, cr.to_bytes(), name),
            )
        return AppendResult(name, range(state.size, cr.size))

    def audit_head(self, shard: str | None = None) -> ShardState:
        """The shard's head, locked for the rest of this transaction."""
        return self._lock_shard(self._shard_name(shard))

    def add_checkpoint(self, shard: str, size: int, note: bytes, created_ms: int) -> int:
        """Store a signed checkpoint; returns its ordinal (1 for the first)."""
        row = self._one(
            "select coalesce(max(ordinal), 0) from audit_checkpoints where shard = ?", (shard,)
        )
        ordinal = int(row[0]) + 1
        self._cur.execute(
            self._q(
                "insert into audit_checkpoints (shard, ordinal, size, note, created_ms) "
                "values (?, ?, ?, ?, ?)"
            ),
            (shard, ordinal, size, note, created_ms),
        )
        return ordinal

    def prune_bodies(self, shard: str, below_seq: int) -> int:
        """Drop entry bodies and query columns (keeping leaf hashes) for ``seq < below_seq``;
        returns how many entries were newly pruned. The delivered views and dead letters of
        those entries go too: nothing could tell whose they are any more (an erasure finds
        them through the entry's vehicle), and the retention period is over for them as
        well. Views not yet delivered stay."""
        for sql in (
            "delete from outbox where shard = ? and seq < ? and delivered_ms is not null",
            "delete from deadletters where shard = ? and seq < ?",
        ):
            self._cur.execute(self._q(sql), (shard, below_seq))
        self._cur.execute(
            self._q(
                "update audit_entries set body = null, subscriber = null, vehicle = null, "
                "decision = null, rules = null where shard = ? and seq < ? and body is not null"
            ),
            (shard, below_seq),
        )
        count = max(self._cur.rowcount, 0)
        self._cur.execute(
            self._q(
                "update audit_shards set pruned_before = ? where shard = ? and pruned_before < ?"
            ),
            (below_seq, shard, below_seq),
        )
        return count

    # consents -------------------------------------------------------------------------------

    def put_consents(self, consents: Iterable[Consent], *, at: float, instance: str) -> int:
        """Insert or replace consents, each audited as a ``consent.changed`` entry in this
        same transaction. Returns how many were written."""
        written = []
        for c in consents:
            if not c.expires_at > c.granted_at:
                raise StoreError(f"consent {c.consent_id}: expiry must follow the grant")
            self._cur.execute(
                self._q(
                    "insert into consents (consent_id, vehicle, purpose, granted_ms, expires_ms, "
                    "withdrawn_ms) values (?, ?, ?, ?, ?, ?) on conflict (consent_id) do update "
                    "set vehicle = excluded.vehicle, purpose = excluded.purpose, "
                    "granted_ms = excluded.granted_ms, expires_ms = excluded.expires_ms, "
                    "withdrawn_ms = excluded.withdrawn_ms"
                ),
                (
                    c.consent_id,
                    c.vehicle,
                    c.purpose,
                    to_ms(c.granted_at),
                    to_ms(c.expires_at),
                    None if c.withdrawn_at is None else to_ms(c.withdrawn_at),
                ),
            )
            written.append(c)
        self.append_audit(_consent_entry(c, at, instance) for c in written)
        return len(written)

    def withdraw_consent(self, consent_id: str, *, at: float, instance: str) -> bool:
        """Withdraw a consent from ``at`` on (audited). False if unknown or already withdrawn."""
        current = self.consent(consent_id)
        if current is None or current.withdrawn_at is not None:
            return False
        self._cur.execute(
            self._q("update consents set withdrawn_ms = ? where consent_id = ?"),
            (to_ms(at), consent_id),
        )
        withdrawn = Consent(
            current.consent_id,
            current.vehicle,
            current.purpose,
            current.granted_at,
            current.expires_at,
            at,
        )
        self.append_audit([_consent_entry(withdrawn, at, instance)])
        return True

    # cross-border counters ------------------------------------------------------------------

    def lock_crossborder(self, recipient: str, year: int) -> None:
        """Serialise threshold checks for (recipient, year) across workers until commit."""
        self._store.lock_key(self._cur, f"crossborder:{recipient}:{year}")

    def add_crossborder_subjects(
        self,
        recipient: str,
        year: int,
        subjects: Iterable[str],
        *,
        category: str = "pi",
        at: float,
    ) -> int:
        """Count ``subjects`` as exported to ``recipient`` in ``year``; returns how many were
        new. Idempotent: a subject is counted once per (recipient, year, category). Takes
        :meth:`lock_crossborder`, so the counter row moves with the subjects it counts."""
        self.lock_crossborder(recipient, year)
        new = self.crossborder_new(recipient, year, subjects, category)
        if new:
            self.insert_rows(
                "insert into crossborder_subjects (recipient, year, category, subject, first_ms)",
                [(recipient, year, category, s, to_ms(at)) for s in new],
            )
            self._cur.execute(
                self._q(
                    "insert into crossborder_counts (recipient, year, category, subjects) "
                    "values (?, ?, ?, ?) on conflict (recipient, year, category) "
                    "do update set subjects = crossborder_counts.subjects + excluded.subjects"
                ),
                (recipient, year, category, len(new)),
            )
        return len(new)


def _consent_entry(c: Consent, at: float, instance: str) -> AdminEntry:
    return AdminEntry(
        time=at,
        instance=instance,
        action=AdminAction.CONSENT_CHANGED,
        subject=c.consent_id,
        details={
            "vehicle": c.vehicle,
            "purpose": c.purpose,
            "granted_ms": to_ms(c.granted_at),
            "expires_ms": to_ms(c.expires_at),
            "withdrawn_ms": None if c.withdrawn_at is None else to_ms(c.withdrawn_at),
        },
    )


def _state(row: Any) -> ShardState:
    return ShardState(
        row[0], int(row[1]), bytes(row[2]) if row[2] is not None else None, bytes(row[3]), row[4]
    )


def _entry(r: Any) -> StoredEntry:
    return StoredEntry(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        bytes(r[8]) if r[8] is not None else None,
        bytes(r[9]),
    )


def _consent(r: Any) -> Consent:
    return Consent(
        r[0], r[1], r[2], r[3] / 1000, r[4] / 1000, None if r[5] is None else r[5] / 1000
    )


class Store(ABC):
    """A connection to the transactional store. Thread-safe: one transaction at a time."""

    kind = "abstract"
    for_update = ""
    skip_locked = ""
    """Appended to a sub-select of rows to delete: rows another transaction is deleting
    are left to it (workers sharing a store forget the same oldest rows)."""
    db_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, url: str, shard: str | None) -> None:
        self.url = url
        self.shard = shard
        self._lock = threading.RLock()
        self.keys: AtRestKeys | None = None
        self.converted = 0
        """Rows the last migration converted to the sealed form (0: nothing to convert)."""

    def at_rest(self) -> AtRestKeys:
        """The keys that seal raw data and key vehicle references; :class:`StoreError` if
        the store was opened without the key directory."""
        if self.keys is None:
            raise StoreError(
                f"{self.kind} store: sealed data needs the key directory (open it with keys)"
            )
        return self.keys

    def sql(self, sql: str) -> str:
        """The dialect's form of a query written with ``?`` placeholders."""
        return sql

    @abstractmethod
    def _cursor(self) -> _Cursor: ...

    @abstractmethod
    def _begin(self, cur: _Cursor, write: bool) -> None: ...

    @abstractmethod
    def _commit(self, cur: _Cursor) -> None: ...

    @abstractmethod
    def _rollback(self, cur: _Cursor) -> None: ...

    def insert_entries(self, cur: _Cursor, rows: list[tuple[Any, ...]]) -> None:
        """Bulk-insert entry rows (columns in the order of ``_ENTRY_COLUMNS``)."""
        insert_rows(cur, self.sql, f"insert into audit_entries ({_ENTRY_COLUMNS})", rows)

    @abstractmethod
    def lock_key(self, cur: _Cursor, key: str) -> None:
        """Take a lock on ``key`` until the transaction ends."""

    @abstractmethod
    def compact(self, wait_s: float | None = None) -> None:
        """Leave no bytes of deleted rows in the database files, where the database allows;
        waiting at most ``wait_s`` (default: the store's lock timeout) for other
        connections. :class:`StoreError` if it could not (the deleted rows then still sit
        in older pages)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self, write: bool) -> Iterator[_Cursor]:
        wrap = _wrap_db_errors(self)
        with self._lock:
            try:
                cur = self._cursor()
                self._begin(cur, write)
            except BaseException as exc:
                raise wrap(exc) from exc
            try:
                yield cur
            except BaseException as exc:
                with suppress(*self.db_errors):
                    self._rollback(cur)
                wrapped = wrap(exc)
                if wrapped is exc:
                    raise
                raise wrapped from exc
            try:
                self._commit(cur)
            except BaseException as exc:
                with suppress(*self.db_errors):
                    self._rollback(cur)
                raise wrap(exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction: committed (durably) when the block ends, rolled back if it
        raises. Database errors surface as :class:`StoreError`."""
        with self._tx(write=True) as cur:
            yield Transaction(self, cur)

    @contextmanager
    def snapshot(self) -> Iterator[Reader]:
        """A consistent read-only view for the length of the block."""
        with self._tx(write=False) as cur:
            yield Reader(self, cur)

    def migrate(self) -> None:
        """Create or upgrade the schema to :data:`SCHEMA_VERSION`."""
        with self._tx(write=True) as cur:
            self.lock_key(cur, "icvgw:migrate")
            cur.execute("create table if not exists icvgw_meta (key text primary key, value text)")
            cur.execute(self.sql("select value from icvgw_meta where key = ?"), ("schema_version",))
            row = cur.fetchone()
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
                        cur.execute(step.format(blob=self.blob_type))
                    else:
                        step(cur, self)
            cur.execute(
                self.sql(
                    "insert into icvgw_meta (key, value) values (?, ?) "
                    "on conflict (key) do update set value = excluded.value"
                ),
                ("schema_version", str(SCHEMA_VERSION)),
            )

    blob_type = "blob"


class SqliteStore(Store):
    """SQLite: one file, WAL journal, synchronous=FULL, writers serialised. A writing store
    (one bound to a shard) checkpoints the log from a thread of its own
    (:class:`~gateway.audit.walcheckpoint.WalCheckpointer`), not inside its commits."""

    kind = "sqlite"
    db_errors = (sqlite3.Error,)
    blob_type = "blob"
    _timeout = 30.0

    def __init__(self, url: str, path: str, shard: str | None, *, create: bool = True) -> None:
        super().__init__(url, shard)
        if not create and not Path(path).is_file():
            raise StoreError(f"sqlite store {path}: no such file")
        try:
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=self._timeout
            )
            self._conn.execute("pragma journal_mode = wal")
            self._conn.execute("pragma synchronous = full")
            # Deleted rows (an erased vehicle, forgotten records) are overwritten with zeros
            # in the file, not left in free pages.
            self._conn.execute("pragma secure_delete = on")
            self._conn.execute("pragma foreign_keys = on")
            if shard is not None:  # a writer: checkpoints leave the commit path
                self._conn.execute("pragma wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {path}: {exc}") from exc
        self.checkpointer: WalCheckpointer | None = None
        if shard is not None:
            self.checkpointer = WalCheckpointer(path)
            self.checkpointer.start()

    def _cursor(self) -> _Cursor:
        return self._conn.cursor()

    def _begin(self, cur: _Cursor, write: bool) -> None:
        cur.execute("begin immediate" if write else "begin")

    def _commit(self, cur: _Cursor) -> None:
        cur.execute("commit")

    def _rollback(self, cur: _Cursor) -> None:
        if self._conn.in_transaction:
            cur.execute("rollback")

    def lock_key(self, cur: _Cursor, key: str) -> None:
        """No-op: ``begin immediate`` already serialises every SQLite writer."""

    def compact(self, wait_s: float | None = None) -> None:
        """Rebuild the file and empty the write-ahead log, so no page of deleted or
        converted rows survives in either (no transaction may be open). While another
        connection reads an older snapshot, the log can be neither copied back nor
        emptied, and the file keeps the old pages: that is an error, not a success."""
        with self._lock:
            try:
                wait = self._timeout if wait_s is None else wait_s
                self._conn.execute(f"pragma busy_timeout = {round(wait * 1000)}")
                self._conn.execute("vacuum")
                busy = self._conn.execute("pragma wal_checkpoint(truncate)").fetchone()[0]
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store: {exc}") from exc
            finally:
                self._conn.execute(f"pragma busy_timeout = {round(self._timeout * 1000)}")
            if busy:
                raise StoreError(
                    "sqlite store: another connection (a reader) holds the write-ahead log; "
                    "older copies of deleted pages remain until it lets go"
                )

    def close(self) -> None:
        """Close the connection (the last one to close checkpoints the log)."""
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self._conn.close()


class PostgresStore(Store):
    """PostgreSQL through psycopg 3 (the ``postgres`` extra), imported only when used."""

    kind = "postgresql"
    for_update = " for update"
    skip_locked = " for update skip locked"
    blob_type = "bytea"

    def __init__(self, url: str, shard: str | None) -> None:
        super().__init__(url, shard)
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                "postgresql store needs psycopg: install icv-gateway[postgres]"
            ) from exc
        self._psycopg = psycopg
        self.db_errors = (psycopg.Error,)
        try:
            self._conn = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"postgresql store: {exc}") from exc

    def sql(self, sql: str) -> str:
        """psycopg placeholders are ``%s``."""
        return sql.replace("?", "%s")

    def _cursor(self) -> _Cursor:
        if self._conn.broken:  # lost (the server restarted, the network failed): connect again
            self._conn.close()
            self._conn = self._psycopg.connect(self.url, autocommit=True)
        cur: _Cursor = self._conn.cursor()
        return cur

    def _begin(self, cur: _Cursor, write: bool) -> None:
        # Writes run at read committed whatever the server's default: at repeatable read a
        # batch would fail whenever another worker had just forgotten the same old records.
        cur.execute(
            "begin isolation level read committed"
            if write
            else "begin isolation level repeatable read read only"
        )

    def _commit(self, cur: _Cursor) -> None:
        cur.execute("commit")

    def _rollback(self, cur: _Cursor) -> None:
        cur.execute("rollback")

    def insert_entries(self, cur: _Cursor, rows: list[tuple[Any, ...]]) -> None:
        """COPY the rows in: several times faster than INSERT for a micro-batch."""
        with cur.copy(f"copy audit_entries ({_ENTRY_COLUMNS}) from stdin") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(row)

    def lock_key(self, cur: _Cursor, key: str) -> None:
        """A transaction-scoped advisory lock on a 64-bit hash of ``key``."""
        lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        cur.execute("select pg_advisory_xact_lock(%s)", (lock_id,))

    def compact(self, wait_s: float | None = None) -> None:
        """Nothing to do here: PostgreSQL drops a converted table's files; rows deleted
        later stay (sealed) in their table until VACUUM reuses the space."""

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def open_store(
    url: str,
    *,
    shard: str | None = None,
    migrate: bool = True,
    keys: AtRestKeys | None = None,
) -> Store:
    """Open the store at ``url`` (``sqlite:///…`` or ``postgresql://…``), bring its schema
    up to date, and bind it to the audit ``shard`` this process writes (None: read-only use).
    With ``migrate=False`` (the auditor's tools) the schema is left alone and a missing SQLite
    file is an error rather than a new, empty store. ``keys`` (the key ring) seal and unseal
    the store's raw data; without them, only the audit log and row counts can be used, and a
    store of schema 3 holding vehicle data cannot be migrated.

    Raises :class:`StoreError` if the URL is not understood or the database does not answer.
    """
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path:
            raise StoreError(f"no file in store URL {url!r}")
        store: Store = SqliteStore(url, path, shard, create=migrate)
    elif url.startswith(("postgresql://", "postgres://")):
        store = PostgresStore(url, shard)
    else:
        raise StoreError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://…")
    store.keys = keys
    if migrate:
        try:
            store.migrate()
            _compact_if_pending(store)
        except BaseException:
            store.close()
            raise
    return store


def _compact_if_pending(store: Store) -> None:
    """Compact the store if a conversion left raw rows in older pages, then say it is done
    (:class:`StoreError`, the mark kept, if it cannot be compacted now)."""
    with store.snapshot() as rd:
        pending = rd._one("select value from icvgw_meta where key = ?", (_COMPACT_PENDING,))
    if pending is None:
        return
    store.compact()
    with store.transaction() as tx:
        tx._cur.execute(tx._q("delete from icvgw_meta where key = ?"), (_COMPACT_PENDING,))
