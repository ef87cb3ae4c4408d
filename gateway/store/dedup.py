"""The ``dedup`` table: records already decided, (vehicle reference, record key) -> first
seen, kept for the de-duplication window. Record ids are keyed digests
(:func:`~gateway.store.sealing.stored_record`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.store.cursor import Session, WriteSession, chunks
from gateway.store.sealing import stored_record


def seen_records(
    reader: Session, keys: Sequence[tuple[str, str]], *, generation: int | None = None
) -> set[tuple[str, str]]:
    """Which (vehicle reference, record key) pairs were decided before (record keys
    digested with the HMAC key of ``generation``, default the newest)."""
    at_rest = reader.at_rest()
    stored = {(v, stored_record(at_rest, r, generation)): (v, r) for v, r in keys}
    found: set[tuple[str, str]] = set()
    for chunk in chunks(list(stored)):
        params = [part for key in chunk for part in key]
        rows = reader.fetch_all(seen_query(len(chunk)), params)
        found.update(stored[(r[0], r[1])] for r in rows)
    return found


def seen_under(reader: Session, ref_prefix: str) -> bool:
    """Whether the window holds records of vehicle references starting with ``ref_prefix``
    (``k1:``: of HMAC key generation 1). SQLite compares bytes, so a range probes the
    key's index; PostgreSQL's collation may not, so it matches the prefix (asked once at
    start)."""
    params: tuple[str, ...]
    if reader.store.kind == "sqlite":  # ``ref_prefix`` ends in ":", and ";" follows it
        sql, params = "vehicle >= ? and vehicle < ?", (ref_prefix, ref_prefix[:-1] + ";")
    else:
        sql, params = "vehicle like ?", (ref_prefix + "%",)
    return reader.fetch_one(f"select 1 from dedup where {sql} limit 1", params) is not None


def seen_query(n: int) -> str:
    """The look-up of ``n`` (vehicle, record) pairs in ``dedup``, one primary-key probe each.

    Written as a join with the list of pairs: SQLite plans ``(vehicle, record) in (values
    ...)`` as a scan of the whole table, whose cost then grows with every record seen.
    """
    pairs = ",".join("(?,?)" for _ in range(n))
    return (
        f"with wanted (vehicle, record) as (values {pairs}) "
        "select d.vehicle, d.record from wanted w "
        "join dedup d on d.vehicle = w.vehicle and d.record = w.record"
    )


def add_seen(tx: WriteSession, keys: Iterable[tuple[str, str]], at_ms: int) -> None:
    """Remember these records as decided (idempotent; record ids as keyed digests)."""
    at_rest = tx.at_rest()
    tx.insert_rows(
        "insert into dedup (vehicle, record, seen_ms)",
        list({(v, stored_record(at_rest, r), at_ms) for v, r in keys}),
        " on conflict (vehicle, record) do nothing",
    )


def prune_seen(tx: WriteSession, before_ms: int, limit: int | None = None) -> int:
    """Forget records first seen before ``before_ms`` (the window's far edge), the oldest
    first and at most ``limit`` of them; returns how many were forgotten.

    Each row forgotten is a random page of the key index: the service forgets a few with
    every batch instead of all of them once a minute, which with a day's window at 1,200
    records/s meant deleting 72,000 rows (3.8 s, 173 MB of WAL) in one go. On PostgreSQL
    rows that another worker's transaction is forgetting are skipped, not waited for.
    """
    if limit is None:
        return tx.execute("delete from dedup where seen_ms < ?", (before_ms,))
    return tx.execute(
        "delete from dedup where (vehicle, record) in (select vehicle, record "
        "from dedup where seen_ms < ? order by seen_ms limit ?"
        f"{tx.store.skip_locked})",
        (before_ms, limit),
    )


def delete_seen_of_vehicles(tx: WriteSession, refs: Sequence[str]) -> int:
    """Forget every record seen of these vehicle references; returns how many rows."""
    return tx.execute_in("delete from dedup where vehicle in ({})", refs)
