"""Migration 3 -> 4: sealing the rows of an older store.

Schema 3 kept VINs, raw positions, raw payloads and message ids in its working tables.
:func:`seal_v3_rows` copies them into schema 4's tables (``*_v4``): vehicles keyed by
reference, record ids digested, raw data sealed (:mod:`gateway.store.sealing`); the
migration then drops the old tables and renames the new ones.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import StoreError
from gateway.store.cursor import WriteSession
from gateway.store.sealing import AtRestKeys, join_topic, row_aad, seal_state, stored_record


def seal_v3_rows(tx: WriteSession) -> int:
    """Copy the rows of schema 3's working tables into schema 4's (``*_v4``). Returns how
    many rows were converted. Needs the key directory if there is anything to convert."""
    present = [table for table in _CONVERT if int(tx.fetch_one(f"select count(*) from {table}")[0])]
    if not present:
        return 0
    store = tx.store
    if store.keys is None:
        raise StoreError(
            f"{store.kind} store: schema 3 keeps raw vehicle data ({', '.join(present)}); "
            "converting it to schema 4 needs the key directory: start the gateway once "
            "(icvgw run) before other tools"
        )
    return sum(_CONVERT[table](tx, store.keys) for table in present)


def _convert_state(tx: WriteSession, keys: AtRestKeys) -> int:
    n = 0
    select = "select vehicle, state, updated_ms from vehicle_state order by vehicle"
    for rows in tx.pages(select, 1):
        out: dict[str, tuple[str, bytes, int]] = {}
        for vin, doc, at in rows:
            ref = keys.vehicle_ref(vin)
            out[ref] = (ref, seal_state(keys, ref, vin, bytes(doc)), int(at))
        tx.insert_rows(
            "insert into vehicle_state_v4 (vehicle, state, updated_ms)",
            list(out.values()),
            " on conflict (vehicle) do nothing",
        )
        n += len(rows)
    return n


def _convert_outbox(tx: WriteSession, keys: AtRestKeys) -> int:
    n = 0
    select = (
        "select shard, seq, subscriber, topic, message_id, payload, created_ms, "
        "delivered_ms from outbox order by shard, seq"
    )
    for rows in tx.pages(select, 2):
        values = [
            (
                sh,
                seq,
                sub,
                mid,
                keys.seal(join_topic(topic, bytes(p)), row_aad("outbox", sh, seq)),
                created,
                delivered,
            )
            for sh, seq, sub, topic, mid, p, created, delivered in rows
        ]
        tx.insert_rows(
            "insert into outbox_v4 (shard, seq, subscriber, message_id, "
            "sealed, created_ms, delivered_ms)",
            values,
        )
        n += len(rows)
    return n


def _convert_deadletters(tx: WriteSession, keys: AtRestKeys) -> int:
    n = 0
    select = "select shard, seq, ts_ms, reason, topic, payload from deadletters order by shard, seq"
    for rows in tx.pages(select, 2):
        values = [
            (
                sh,
                seq,
                ts,
                reason,
                len(bytes(p)),
                keys.seal(join_topic(topic, bytes(p)), row_aad("deadletters", sh, seq)),
            )
            for sh, seq, ts, reason, topic, p in rows
        ]
        tx.insert_rows(
            "insert into deadletters_v4 (shard, seq, ts_ms, reason, size, sealed)", values
        )
        n += len(rows)
    return n


def _convert_dedup(tx: WriteSession, keys: AtRestKeys) -> int:
    n = 0
    select = "select vehicle, record, seen_ms from dedup order by vehicle, record"
    for rows in tx.pages(select, 2):
        values = list({(v, stored_record(keys, r), int(at)) for v, r, at in rows})
        tx.insert_rows(
            "insert into dedup_v4 (vehicle, record, seen_ms)",
            values,
            " on conflict (vehicle, record) do nothing",
        )
        n += len(rows)
    return n


_CONVERT: dict[str, Callable[[WriteSession, AtRestKeys], int]] = {
    "vehicle_state": _convert_state,
    "outbox": _convert_outbox,
    "deadletters": _convert_deadletters,
    "dedup": _convert_dedup,
}
