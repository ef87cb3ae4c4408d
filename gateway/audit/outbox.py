"""The service's tables in the store: outbox, dead letters, de-duplication window and
per-vehicle decision state.

They live in the same database as the audit log so that one transaction per micro-batch
covers the audit entries, the views to deliver, the records seen and the state the next
batch reads; only then is the input acknowledged. Outbox and dead-letter rows are keyed by
the audit entry (shard, seq) that decided them.

Data at rest (schema 4): a vehicle is a keyed reference (the audit log's,
:meth:`gateway.keys.KeyRing.vehicle_ref`), a record id a keyed digest
(:meth:`~gateway.keys.KeyRing.record_key`). What the pipeline needs raw between batches —
a vehicle's state (trip start, held views, its VIN), a view's topic and bytes, a dead
payload and its topic — is sealed with the store key (AES-256-GCM), bound to its row by the
associated data (:func:`row_aad`): a sealed value copied to another row does not open. The
functions here seal and open with the keys the store was opened with
(:meth:`~gateway.audit.store.Store.at_rest`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.audit.store import (
    IN_CHUNK,
    AtRestKeys,
    Reader,
    Store,
    Transaction,
    _Cursor,
    insert_rows,
)
from gateway.errors import StoreError


def row_aad(table: str, *key: str | int) -> bytes:
    """The associated data of a sealed value: its table and its row's key."""
    return "\x1f".join((table, *map(str, key))).encode()


def _join(topic: str, payload: bytes) -> bytes:
    # MQTT topics never contain U+0000.
    return topic.encode() + b"\0" + payload


def _split(data: bytes) -> tuple[str, bytes]:
    topic, _, payload = data.partition(b"\0")
    return topic.decode(), payload


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One view to deliver: the bytes, where to, and the audit entry that decided it."""

    seq: int
    subscriber: str
    topic: str
    message_id: str
    payload: bytes
    created_ms: int


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


def add_outbox(tx: Transaction, shard: str, rows: Iterable[OutboxRow]) -> int:
    """Queue views for delivery in this transaction (topic and bytes sealed); returns how
    many."""
    seal = tx._store.at_rest().seal
    values = [
        (
            shard,
            r.seq,
            r.subscriber,
            r.message_id,
            seal(_join(r.topic, r.payload), row_aad("outbox", shard, r.seq)),
            r.created_ms,
        )
        for r in rows
    ]
    tx.insert_rows(
        "insert into outbox (shard, seq, subscriber, message_id, sealed, created_ms)", values
    )
    return len(values)


def pending_outbox(
    reader: Reader, shard: str, *, after_seq: int = -1, limit: int = 1000
) -> list[OutboxRow]:
    """Undelivered views of ``shard`` with ``seq > after_seq``, in audit order (opened)."""
    rows = reader._all(
        "select seq, subscriber, message_id, sealed, created_ms from outbox "
        "where shard = ? and delivered_ms is null and seq > ? order by seq limit ?",
        (shard, after_seq, limit),
    )
    return [_outbox_row(reader._store.at_rest(), shard, r) for r in rows]


def outbox_rows(reader: Reader, shard: str) -> list[tuple[OutboxRow, bool]]:
    """Every view of ``shard`` (opened) with whether it was delivered, in audit order."""
    rows = reader._all(
        "select seq, subscriber, message_id, sealed, created_ms, delivered_ms from outbox "
        "where shard = ? order by seq",
        (shard,),
    )
    keys = reader._store.at_rest()
    return [(_outbox_row(keys, shard, r), r[5] is not None) for r in rows]


def _outbox_row(keys: AtRestKeys, shard: str, r: Any) -> OutboxRow:
    topic, payload = _split(keys.unseal(bytes(r[3]), row_aad("outbox", shard, r[0])))
    return OutboxRow(int(r[0]), r[1], topic, r[2], payload, int(r[4]))


def count_pending(reader: Reader, shard: str) -> int:
    """How many views of ``shard`` are committed and not yet confirmed."""
    row = reader._one(
        "select count(*) from outbox where shard = ? and delivered_ms is null", (shard,)
    )
    return int(row[0])


def mark_delivered(tx: Transaction, shard: str, seqs: Iterable[int], at_ms: int) -> None:
    """Record the sink's confirmation of these views.

    One statement per 400 views, not one per view: the drainer holds the store while it
    marks, and the sqlite3 module lets go of the interpreter at every statement, so with a
    busy thread beside it (a policy reload) 380 single updates took 0.35 s, and the
    pipeline waited for the store all that time.
    """
    ordered = sorted(set(seqs))
    for i in range(0, len(ordered), IN_CHUNK):
        chunk = ordered[i : i + IN_CHUNK]
        marks = ",".join("?" for _ in chunk)
        tx._cur.execute(
            tx._q(f"update outbox set delivered_ms = ? where shard = ? and seq in ({marks})"),
            [at_ms, shard, *chunk],
        )


def add_deadletters(tx: Transaction, shard: str, rows: Iterable[DeadLetterRow]) -> int:
    """Keep unusable payloads (sealed, with their topic) and their reason; returns how
    many."""
    seal = tx._store.at_rest().seal
    values = [
        (
            shard,
            r.seq,
            r.ts_ms,
            r.reason,
            len(r.payload),
            seal(_join(r.topic, r.payload), row_aad("deadletters", shard, r.seq)),
        )
        for r in rows
    ]
    tx.insert_rows("insert into deadletters (shard, seq, ts_ms, reason, size, sealed)", values)
    return len(values)


def deadletters(
    reader: Reader, shard: str, limit: int = 1000, *, before_seq: int | None = None
) -> list[DeadLetterInfo]:
    """The most recent dead letters of ``shard`` (newest first; below ``before_seq`` if
    given), without opening them: no keys needed."""
    rows = reader._all(
        "select d.seq, d.ts_ms, d.reason, a.vehicle, d.size from deadletters d "
        "left join audit_entries a on a.shard = d.shard and a.seq = d.seq "
        "where d.shard = ? and d.seq < ? order by d.seq desc limit ?",
        (shard, (1 << 62) if before_seq is None else before_seq, limit),
    )
    return [DeadLetterInfo(int(r[0]), int(r[1]), r[2], r[3], int(r[4])) for r in rows]


def deadletter(reader: Reader, shard: str, seq: int) -> DeadLetterRow | None:
    """One dead letter, opened (topic and payload as received), or None."""
    row = reader._one(
        "select seq, ts_ms, reason, sealed from deadletters where shard = ? and seq = ?",
        (shard, seq),
    )
    if row is None:
        return None
    keys = reader._store.at_rest()
    topic, payload = _split(keys.unseal(bytes(row[3]), row_aad("deadletters", shard, seq)))
    return DeadLetterRow(int(row[0]), int(row[1]), row[2], topic, payload)


def stored_record(keys: AtRestKeys, record: str, generation: int | None = None) -> str:
    """The form a record key takes in the store: a keyed digest (``r:…``, with the HMAC
    key of ``generation``, default the newest), except the ``dl:`` ids of unusable inputs,
    which are keyed digests already."""
    return record if record.startswith("dl:") else keys.record_key(record, generation=generation)


def seen_records(
    reader: Reader, keys: Sequence[tuple[str, str]], *, generation: int | None = None
) -> set[tuple[str, str]]:
    """Which (vehicle reference, record key) pairs were decided before (record keys
    digested with the HMAC key of ``generation``, default the newest)."""
    at_rest = reader._store.at_rest()
    stored = {(v, stored_record(at_rest, r, generation)): (v, r) for v, r in keys}
    wanted = list(stored)
    found: set[tuple[str, str]] = set()
    for i in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[i : i + IN_CHUNK]
        params = [part for key in chunk for part in key]
        rows = reader._all(seen_query(len(chunk)), params)
        found.update(stored[(r[0], r[1])] for r in rows)
    return found


def seen_under(reader: Reader, ref_prefix: str) -> bool:
    """Whether the window holds records of vehicle references starting with ``ref_prefix``
    (``k1:``: of HMAC key generation 1). SQLite compares bytes, so a range probes the
    key's index; PostgreSQL's collation may not, so it matches the prefix (asked once at
    start)."""
    params: tuple[str, ...]
    if reader._store.kind == "sqlite":  # ``ref_prefix`` ends in ":", and ";" follows it
        sql, params = "vehicle >= ? and vehicle < ?", (ref_prefix, ref_prefix[:-1] + ";")
    else:
        sql, params = "vehicle like ?", (ref_prefix + "%",)
    return reader._one(f"select 1 from dedup where {sql} limit 1", params) is not None


def seen_query(n: int) -> str:
    """The look-up of ``n`` (vehicle, record) pairs in ``dedup``, one primary-key probe each.

    Written as a join with the list of pairs: SQLite plans ``(vehicle, record) in (values
    ...)`` as a scan of the whole table, whose cost then grows with every record seen.
    """
    marks = ",".join("(?,?)" for _ in range(n))
    return (
        f"with wanted (vehicle, record) as (values {marks}) "
        "select d.vehicle, d.record from wanted w "
        "join dedup d on d.vehicle = w.vehicle and d.record = w.record"
    )


def add_seen(tx: Transaction, keys: Iterable[tuple[str, str]], at_ms: int) -> None:
    """Remember these records as decided (idempotent; record ids as keyed digests)."""
    at_rest = tx._store.at_rest()
    tx.insert_rows(
        "insert into dedup (vehicle, record, seen_ms)",
        list({(v, stored_record(at_rest, r), at_ms) for v, r in keys}),
        " on conflict (vehicle, record) do nothing",
    )


def prune_seen(tx: Transaction, before_ms: int, limit: int | None = None) -> int:
    """Forget records first seen before ``before_ms`` (the window's far edge), the oldest
    first and at most ``limit`` of them; returns how many were forgotten.

    Each row forgotten is a random page of the key index: the service forgets a few with
    every batch instead of all of them once a minute, which with a day's window at 1,200
    records/s meant deleting 72,000 rows (3.8 s, 173 MB of WAL) in one go. On PostgreSQL
    rows that another worker's transaction is forgetting are skipped, not waited for.
    """
    if limit is None:
        tx._cur.execute(tx._q("delete from dedup where seen_ms < ?"), (before_ms,))
    else:
        tx._cur.execute(
            tx._q(
                "delete from dedup where (vehicle, record) in (select vehicle, record "
                "from dedup where seen_ms < ? order by seen_ms limit ?"
                f"{tx._store.skip_locked})"
            ),
            (before_ms, limit),
        )
    return int(tx._cur.rowcount)


def _state_row(keys: AtRestKeys, r: Any) -> tuple[str, bytes]:
    vin, _, doc = keys.unseal(bytes(r[1]), row_aad("vehicle_state", r[0])).partition(b"\0")
    return vin.decode(), doc


def load_vehicle_state(reader: Reader, vins: Sequence[str]) -> dict[str, bytes]:
    """The stored decision state of these vehicles by VIN (absent ones are left out)."""
    keys = reader._store.at_rest()
    refs = list(dict.fromkeys(keys.vehicle_ref(v) for v in vins))
    wanted = set(vins)
    return {vin: doc for vin, doc in vehicle_states_of(reader, refs) if vin in wanted}


def vehicle_states_of(reader: Reader, refs: Sequence[str]) -> list[tuple[str, bytes]]:
    """(VIN as stored, document) of the states stored under any of these references (one
    vehicle's under every HMAC key generation, whatever case its VIN was given in)."""
    keys = reader._store.at_rest()
    out: list[tuple[str, bytes]] = []
    for i in range(0, len(refs), IN_CHUNK):
        chunk = list(refs[i : i + IN_CHUNK])
        marks = ",".join("?" for _ in chunk)
        rows = reader._all(
            f"select vehicle, state from vehicle_state where vehicle in ({marks})", chunk
        )
        out.extend(_state_row(keys, r) for r in rows)
    return out


def all_vehicle_state(tx: Transaction) -> dict[str, bytes]:
    """Every vehicle's stored decision state by VIN (loaded once at start-up). A row under a
    reference of an older HMAC key generation is moved to the current one here."""
    keys = tx._store.at_rest()
    out: dict[str, bytes] = {}
    stale: dict[str, str] = {}
    for r in tx._all("select vehicle, state, updated_ms from vehicle_state"):
        vin, doc = _state_row(keys, r)
        out[vin] = doc
        if keys.vehicle_ref(vin) != r[0]:
            stale[r[0]] = vin
    if stale:
        delete_vehicle_state(tx, list(stale))
        save_vehicle_state(tx, {vin: out[vin] for vin in stale.values()}, 0)
    return out


def save_vehicle_state(tx: Transaction, states: dict[str, bytes], at_ms: int) -> None:
    """Replace the stored state of these vehicles (by VIN): keyed by reference, sealed with
    the VIN inside."""
    keys = tx._store.at_rest()
    rows: dict[str, tuple[str, bytes, int]] = {}
    for vin, doc in states.items():
        ref = keys.vehicle_ref(vin)
        sealed = keys.seal(vin.encode() + b"\0" + doc, row_aad("vehicle_state", ref))
        rows[ref] = (ref, sealed, at_ms)
    tx.insert_rows(
        "insert into vehicle_state (vehicle, state, updated_ms)",
        list(rows.values()),
        " on conflict (vehicle) do update set state = excluded.state, "
        "updated_ms = excluded.updated_ms",
    )


def delete_vehicle_state(tx: Transaction, refs: Sequence[str]) -> int:
    """Forget the state stored under these vehicle references; returns how many rows."""
    return _delete_in(tx, "delete from vehicle_state where vehicle in ({})", refs)


def _delete_in(tx: Transaction, sql: str, values: Sequence[Any], *head: Any) -> int:
    count = 0
    for i in range(0, len(values), IN_CHUNK):
        chunk = list(values[i : i + IN_CHUNK])
        tx._cur.execute(tx._q(sql.format(",".join("?" for _ in chunk))), [*head, *chunk])
        count += max(tx._cur.rowcount, 0)
    return count


def erase_vehicle(
    tx: Transaction, refs: Sequence[str], *, vin: str | None = None
) -> dict[str, int]:
    """Delete everything the store's working tables hold of the vehicle known by ``refs``
    (its references under every HMAC key generation): decision state (trip, held views),
    views not yet delivered and delivered ones still kept, dead letters and records seen.
    Outbox and dead-letter rows are found through their audit entries' vehicle column;
    given the ``vin``, every dead letter is also opened and those whose topic or payload
    holds it are deleted too (a topic without the vehicle, naming another one, or an entry
    pruned since). Returns rows deleted per table. The audit entries themselves stay."""
    of_vehicle = "(shard, seq) in (select shard, seq from audit_entries where vehicle in ({}))"
    erased = {
        "vehicle_state": delete_vehicle_state(tx, refs),
        "outbox": _delete_in(tx, f"delete from outbox where {of_vehicle}", refs),
        "deadletters": _delete_in(tx, f"delete from deadletters where {of_vehicle}", refs),
        "dedup": _delete_in(tx, "delete from dedup where vehicle in ({})", refs),
    }
    if vin is not None:
        letters, notices = _delete_letters_holding(tx, vin)
        erased["deadletters"] += letters
        erased["outbox"] += notices
    return erased


def _delete_letters_holding(tx: Transaction, vin: str) -> tuple[int, int]:
    """Delete the dead letters whose opened topic or payload holds ``vin`` (any case), and
    their announcements in the outbox; returns how many of each."""
    keys = tx._store.at_rest()
    wanted = vin.strip().upper().encode()
    found: dict[str, list[int]] = {}
    select = "select shard, seq, sealed from deadletters order by shard, seq"
    for rows in _pages(tx._cur, tx._store, select, 2):
        for shard, seq, sealed in rows:
            data = keys.unseal(bytes(sealed), row_aad("deadletters", shard, seq))
            if wanted in data.upper():
                found.setdefault(shard, []).append(int(seq))
    letters = notices = 0
    for shard, seqs in found.items():
        letters += _delete_in(
            tx, "delete from deadletters where shard = ? and seq in ({})", seqs, shard
        )
        notices += _delete_in(tx, "delete from outbox where shard = ? and seq in ({})", seqs, shard)
    return letters, notices


# -- schema 3 -> 4: sealing the rows of an older store ------------------------------------


def seal_v3_rows(cur: _Cursor, store: Store) -> int:
    """Copy the rows of schema 3's working tables into schema 4's (``*_v4``): vehicles keyed
    by reference, record ids digested, raw data sealed. Returns how many rows were
    converted. Needs the key directory if there is anything to convert."""
    tables = ("vehicle_state", "outbox", "deadletters", "dedup")
    present = []
    for table in tables:
        cur.execute(f"select count(*) from {table}")
        if int(cur.fetchone()[0]):
            present.append(table)
    if not present:
        return 0
    if store.keys is None:
        raise StoreError(
            f"{store.kind} store: schema 3 keeps raw vehicle data ({', '.join(present)}); "
            "converting it to schema 4 needs the key directory: start the gateway once "
            "(icvgw run) before other tools"
        )
    keys = store.keys
    total = 0
    for table in present:
        total += _CONVERT[table](cur, store, keys)
    return total


def _pages(cur: _Cursor, store: Store, select: str, key: int) -> Iterable[list[Any]]:
    """``select`` (ordered by its first ``key`` columns) page by page."""
    last: tuple[Any, ...] | None = None
    cols = select.split(" order by ")[1]
    while True:
        if last is None:
            cur.execute(store.sql(f"{select} limit 1000"))
        else:
            where = f"({cols}) > ({','.join('?' * key)})"
            head, order = select.split(" order by ")
            joiner = " and " if " where " in head else " where "
            cur.execute(store.sql(f"{head}{joiner}{where} order by {order} limit 1000"), last)
        rows = cur.fetchall()
        if not rows:
            return
        yield rows
        last = tuple(rows[-1][:key])


def _convert_state(cur: _Cursor, store: Store, keys: AtRestKeys) -> int:
    n = 0
    for rows in _pages(
        cur, store, "select vehicle, state, updated_ms from vehicle_state order by vehicle", 1
    ):
        out: dict[str, tuple[str, bytes, int]] = {}
        for vin, doc, at in rows:
            ref = keys.vehicle_ref(vin)
            sealed = keys.seal(vin.encode() + b"\0" + bytes(doc), row_aad("vehicle_state", ref))
            out[ref] = (ref, sealed, int(at))
        insert_rows(
            cur,
            store.sql,
            "insert into vehicle_state_v4 (vehicle, state, updated_ms)",
            list(out.values()),
            " on conflict (vehicle) do nothing",
        )
        n += len(rows)
    return n


def _convert_outbox(cur: _Cursor, store: Store, keys: AtRestKeys) -> int:
    n = 0
    select = (
        "select shard, seq, subscriber, topic, message_id, payload, created_ms, "
        "delivered_ms from outbox order by shard, seq"
    )
    for rows in _pages(cur, store, select, 2):
        values = [
            (
                sh,
                seq,
                sub,
                mid,
                keys.seal(_join(topic, bytes(p)), row_aad("outbox", sh, seq)),
                created,
                delivered,
            )
            for sh, seq, sub, topic, mid, p, created, delivered in rows
        ]
        insert_rows(
            cur,
            store.sql,
            "insert into outbox_v4 (shard, seq, subscriber, message_id, "
            "sealed, created_ms, delivered_ms)",
            values,
        )
        n += len(rows)
    return n


def _convert_deadletters(cur: _Cursor, store: Store, keys: AtRestKeys) -> int:
    n = 0
    select = "select shard, seq, ts_ms, reason, topic, payload from deadletters order by shard, seq"
    for rows in _pages(cur, store, select, 2):
        values = [
            (
                sh,
                seq,
                ts,
                reason,
                len(bytes(p)),
                keys.seal(_join(topic, bytes(p)), row_aad("deadletters", sh, seq)),
            )
            for sh, seq, ts, reason, topic, p in rows
        ]
        insert_rows(
            cur,
            store.sql,
            "insert into deadletters_v4 (shard, seq, ts_ms, reason, size, sealed)",
            values,
        )
        n += len(rows)
    return n


def _convert_dedup(cur: _Cursor, store: Store, keys: AtRestKeys) -> int:
    n = 0
    select = "select vehicle, record, seen_ms from dedup order by vehicle, record"
    for rows in _pages(cur, store, select, 2):
        values = list({(v, stored_record(keys, r), int(at)) for v, r, at in rows})
        insert_rows(
            cur,
            store.sql,
            "insert into dedup_v4 (vehicle, record, seen_ms)",
            values,
            " on conflict (vehicle, record) do nothing",
        )
        n += len(rows)
    return n


_CONVERT = {
    "vehicle_state": _convert_state,
    "outbox": _convert_outbox,
    "deadletters": _convert_deadletters,
    "dedup": _convert_dedup,
}


# -- re-sealing under the newest store key --------------------------------------------------

_SEALED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("vehicle_state", ("vehicle",), "state"),
    ("outbox", ("shard", "seq"), "sealed"),
    ("deadletters", ("shard", "seq"), "sealed"),
)


def reseal(tx: Transaction, generation: int) -> int:
    """Seal again, with the newest store key, every value sealed with an older one (after
    ``icvgw keys rotate``); ``generation`` is the newest. Returns how many values. Once it
    has run, no row needs an older store key."""
    from gateway.keys import KeyRing

    keys = tx._store.at_rest()
    count = 0
    for table, key, column in _SEALED:
        select = f"select {', '.join(key)}, {column} from {table} order by {', '.join(key)}"
        where = " and ".join(f"{k} = ?" for k in key)
        for rows in _pages(tx._cur, tx._store, select, len(key)):
            fresh = []
            for r in rows:
                blob = bytes(r[-1])
                if KeyRing.sealed_generation(blob) >= generation:
                    continue
                aad = row_aad(table, *r[:-1])
                fresh.append((keys.seal(keys.unseal(blob, aad), aad), *r[:-1]))
            if fresh:
                tx._cur.executemany(tx._q(f"update {table} set {column} = ? where {where}"), fresh)
                count += len(fresh)
    return count


def prune_expired(
    tx: Transaction, *, outbox_ms: int, deadletter_ms: int, vehicle_state_ms: int, limit: int
) -> dict[str, int]:
    """Delete, oldest first and at most ``limit`` rows of each table, views decided before
    ``outbox_ms`` (delivered or not), dead letters received before ``deadletter_ms`` and
    vehicle states last updated before ``vehicle_state_ms``: the retention limits of the
    rules (PIPL art. 47). Returns the rows deleted per table."""
    skip = tx._store.skip_locked
    statements = {
        "outbox": (
            "delete from outbox where (shard, seq) in (select shard, seq from outbox "
            f"where created_ms < ? order by created_ms limit ?{skip})",
            outbox_ms,
        ),
        "deadletters": (
            "delete from deadletters where (shard, seq) in (select shard, seq from "
            f"deadletters where ts_ms < ? order by ts_ms limit ?{skip})",
            deadletter_ms,
        ),
        "vehicle_state": (
            "delete from vehicle_state where vehicle in (select vehicle from vehicle_state "
            f"where updated_ms < ? order by updated_ms limit ?{skip})",
            vehicle_state_ms,
        ),
    }
    out: dict[str, int] = {}
    for table, (sql, before_ms) in statements.items():
        tx._cur.execute(tx._q(sql), (before_ms, limit))
        out[table] = int(tx._cur.rowcount)
    return out
