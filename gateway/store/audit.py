"""The audit tables: ``audit_shards`` (each shard's head), ``audit_entries`` and
``audit_tiles`` (the tree's completed tiles).

This repository is the one owner of audit sequence numbers: :meth:`AuditWrites.audit_batch`
hands them out to a caller that must know an entry's number before the entry is built (a
view's bytes carry it), and :meth:`AuditWrites.append_batch` refuses a batch whose numbers
the shard no longer agrees with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import AuditError, StoreError
from gateway.store.cursor import Session, WriteSession
from gateway.store.deadletters import delete_deadletters_before
from gateway.store.outbox import delete_delivered_before
from gateway.tlog.entries import AuditEntry, encode_entry, to_ms
from gateway.tlog.merkle import TILE_HEIGHT, CompactRange, node_hash

ENTRY_COLUMNS = "shard, seq, ts_ms, kind, subscriber, vehicle, decision, rules, body, leaf_hash"
_SHARD_COLUMNS = "shard, size, last_leaf, edge, pruned_before"


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
class AppendResult:
    """Where a batch landed: its sequence numbers and the shard's new size."""

    shard: str
    seqs: range

    @property
    def size(self) -> int:
        """The shard's size after the append."""
        return self.seqs.stop


@dataclass(slots=True)
class AuditBatch:
    """Entries to append to one shard, each numbered when it is added: ``start`` is the
    shard's size when the batch was opened (its head locked), and the ``i``-th entry added
    gets ``start + i``. Appended by :meth:`AuditWrites.append_batch`."""

    shard: str
    start: int
    entries: list[AuditEntry] = field(default_factory=list)

    @property
    def next_seq(self) -> int:
        """The sequence number the next entry added will have."""
        return self.start + len(self.entries)

    def add(self, entry: AuditEntry) -> int:
        """Add ``entry``; returns its sequence number."""
        seq = self.next_seq
        self.entries.append(entry)
        return seq


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for :meth:`AuditReads.query`; ``None`` means no filter. Times are Unix ms."""

    shard: str | None = None
    subscriber: str | None = None
    vehicles: Sequence[str] | None = None
    decision: str | None = None
    rule: str | None = None
    kind: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None
    after: tuple[str, int] | None = None
    """Only entries after this ``(shard, seq)`` in the query's order (a page's cursor)."""


def _state(row: Any) -> ShardState:
    return ShardState(
        row[0], int(row[1]), bytes(row[2]) if row[2] is not None else None, bytes(row[3]), row[4]
    )


def stored_entry(r: Any) -> StoredEntry:
    """A row of :data:`ENTRY_COLUMNS` as a :class:`StoredEntry`."""
    body = bytes(r[8]) if r[8] is not None else None
    return StoredEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], body, bytes(r[9]))


class AuditReads(Session):
    """Reading the audit log's shards, entries and tiles."""

    def shards(self) -> list[ShardState]:
        """Every log shard in the store, by name."""
        rows = self.fetch_all(f"select {_SHARD_COLUMNS} from audit_shards order by shard")
        return [_state(r) for r in rows]

    def shard_state(self, shard: str) -> ShardState | None:
        """The head of ``shard``, or None if it has never been written."""
        row = self.fetch_one(f"select {_SHARD_COLUMNS} from audit_shards where shard = ?", (shard,))
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
            rows = self.fetch_all(
                f"select {ENTRY_COLUMNS} from audit_entries "
                "where shard = ? and seq >= ? order by seq limit ?",
                (shard, pos, limit),
            )
            for r in rows:
                if stop is not None and r[1] >= stop:
                    return
                yield stored_entry(r)
            if len(rows) < limit:
                return
            pos = rows[-1][1] + 1

    def entry(self, shard: str, seq: int) -> StoredEntry | None:
        """One entry, or None."""
        row = self.fetch_one(
            f"select {ENTRY_COLUMNS} from audit_entries where shard = ? and seq = ?",
            (shard, seq),
        )
        return stored_entry(row) if row else None

    def first_seq_since(self, shard: str, ts_ms: int, below: int) -> int:
        """The first seq below ``below`` whose time is at or after ``ts_ms``, else ``below``."""
        row = self.fetch_one(
            "select min(seq) from audit_entries where shard = ? and seq < ? and ts_ms >= ?",
            (shard, below, ts_ms),
        )
        return int(row[0]) if row and row[0] is not None else below

    def tiles(self, shard: str) -> dict[tuple[int, int], bytes]:
        """Every stored tile node of ``shard`` by (level, index)."""
        rows = self.fetch_all("select level, idx, hash from audit_tiles where shard = ?", (shard,))
        return {(r[0], r[1]): bytes(r[2]) for r in rows}

    def tiles_completed(self, shard: str, start: int, stop: int) -> dict[tuple[int, int], bytes]:
        """The stored tile nodes of ``shard`` that the leaves ``start <= seq < stop``
        complete, by (level, index): what appending those leaves produces."""
        out: dict[tuple[int, int], bytes] = {}
        level = TILE_HEIGHT
        while stop >> level:
            # Node (level, i) is completed by leaf (i + 1) * 2**level - 1.
            lo, hi = (start >> level), (stop >> level) - 1
            if lo <= hi:
                rows = self.fetch_all(
                    "select idx, hash from audit_tiles where shard = ? and level = ? "
                    "and idx >= ? and idx <= ?",
                    (shard, level, lo, hi),
                )
                out.update(((level, r[0]), bytes(r[1])) for r in rows)
            level += TILE_HEIGHT
        return out

    def perfect_hash(self, shard: str, level: int, index: int) -> bytes:
        """Hash of the perfect subtree at (level, index), from stored leaf hashes and tiles:
        at most 2**(TILE_HEIGHT-1) stored hashes are combined."""
        base = (level // TILE_HEIGHT) * TILE_HEIGHT
        span = level - base
        start, stop = index << span, (index + 1) << span
        if base == 0:
            rows = self.fetch_all(
                "select leaf_hash from audit_entries where shard = ? and seq >= ? and seq < ? "
                "order by seq",
                (shard, start, stop),
            )
        else:
            rows = self.fetch_all(
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
        if q.after is not None:
            where.append("(shard > ? or (shard = ? and seq > ?))")
            params.extend((q.after[0], q.after[0], q.after[1]))
        sql = f"select {ENTRY_COLUMNS} from audit_entries"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by shard, seq"
        if q.limit is not None:
            sql += " limit ?"
            params.append(q.limit)
        for row in self.fetch_all(sql, params):
            yield stored_entry(row)


class AuditWrites(AuditReads, WriteSession):
    """Appending to the audit log, and pruning entry bodies."""

    def _shard_name(self, shard: str | None) -> str:
        name = shard or self.store.shard
        if not name:
            raise AuditError("the store was opened without an audit shard; pass shard=")
        return name

    def _lock_shard(self, shard: str) -> ShardState:
        self.execute(
            "insert into audit_shards (shard, size, last_leaf, edge, pruned_before) "
            "values (?, 0, null, ?, 0) on conflict (shard) do nothing",
            (shard, b""),
        )
        row = self.fetch_one(
            f"select {_SHARD_COLUMNS} from audit_shards where shard = ?{self.store.for_update}",
            (shard,),
        )
        return _state(row)

    def audit_head(self, shard: str | None = None) -> ShardState:
        """The shard's head, locked for the rest of this transaction."""
        return self._lock_shard(self._shard_name(shard))

    def audit_batch(self, shard: str | None = None) -> AuditBatch:
        """An empty batch numbered from the shard's size (its head locked for the rest of
        this transaction): add entries, then :meth:`append_batch`."""
        name = self._shard_name(shard)
        return AuditBatch(name, self._lock_shard(name).size)

    def append_batch(self, batch: AuditBatch) -> AppendResult:
        """Append ``batch``'s entries with the numbers it gave them; :class:`AuditError`
        (nothing appended) if the shard has moved on since the batch was opened."""
        return self.append_audit(batch.entries, shard=batch.shard, first_seq=batch.start)

    def append_audit(
        self,
        entries: Iterable[AuditEntry],
        *,
        shard: str | None = None,
        first_seq: int | None = None,
    ) -> AppendResult:
        """Append entries to the shard's log, in order, in this transaction.

        Assigns ``seq`` and ``prev``, encodes each entry canonically, hashes it, extends the
        right edge (O(1) amortised hashes per entry) and stores completed tiles. With
        ``first_seq``, the numbers the caller expects: :class:`AuditError` if the first
        entry would get another.
        """
        name = self._shard_name(shard)
        state = self._lock_shard(name)
        if first_seq is not None and first_seq != state.size:
            raise AuditError(
                f"shard {name}: entries numbered from {first_seq}, but the next is {state.size}"
            )
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
            self.bulk_insert("audit_entries", ENTRY_COLUMNS, rows)
            if tiles:
                self.insert_rows(
                    "insert into audit_tiles (shard, level, idx, hash)",
                    [(name, lv, ix, h) for lv, ix, h in tiles],
                )
            self.execute(
                "update audit_shards set size=?, last_leaf=?, edge=? where shard=?",
                (cr.size, prev, cr.to_bytes(), name),
            )
        return AppendResult(name, range(state.size, cr.size))

    def prune_bodies(self, shard: str, below_seq: int) -> int:
        """Drop entry bodies and query columns (keeping leaf hashes) for ``seq < below_seq``;
        returns how many entries were newly pruned. The delivered views and dead letters of
        those entries go too: nothing could tell whose they are any more (an erasure finds
        them through the entry's vehicle), and the retention period is over for them as
        well. Views not yet delivered stay."""
        delete_delivered_before(self, shard, below_seq)
        delete_deadletters_before(self, shard, below_seq)
        count = self.execute(
            "update audit_entries set body = null, subscriber = null, vehicle = null, "
            "decision = null, rules = null where shard = ? and seq < ? and body is not null",
            (shard, below_seq),
        )
        self.execute(
            "update audit_shards set pruned_before = ? where shard = ? and pruned_before < ?",
            (below_seq, shard, below_seq),
        )
        return max(count, 0)
