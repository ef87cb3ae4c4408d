"""The ``vehicle_state`` table: each vehicle's decision state (trip, down-sampling, held
views) as one document, keyed by the vehicle's reference and sealed with its VIN inside
(:func:`~gateway.store.sealing.seal_state`). The document's format is
:mod:`gateway.vehicle_state`'s."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.cursor import Session, WriteSession, chunks, marks
from gateway.store.sealing import open_state, seal_state

SEALED = ("vehicle_state", ("vehicle",), "state")
"""The sealed column: (table, key columns, column)."""


def load_vehicle_state(reader: Session, vins: Sequence[str]) -> dict[str, bytes]:
    """The stored decision state of these vehicles by VIN (absent ones are left out)."""
    keys = reader.at_rest()
    refs = list(dict.fromkeys(keys.vehicle_ref(v) for v in vins))
    wanted = set(vins)
    return {vin: doc for vin, doc in vehicle_states_of(reader, refs) if vin in wanted}


def vehicle_states_of(reader: Session, refs: Sequence[str]) -> list[tuple[str, bytes]]:
    """(VIN as stored, document) of the states stored under any of these references (one
    vehicle's under every HMAC key generation, whatever case its VIN was given in)."""
    keys = reader.at_rest()
    out: list[tuple[str, bytes]] = []
    for chunk in chunks(refs):
        rows = reader.fetch_all(
            f"select vehicle, state from vehicle_state where vehicle in ({marks(len(chunk))})",
            chunk,
        )
        out.extend(open_state(keys, r[0], bytes(r[1])) for r in rows)
    return out


def all_vehicle_state(tx: WriteSession) -> dict[str, bytes]:
    """Every vehicle's stored decision state by VIN (loaded once at start-up). A row under a
    reference of an older HMAC key generation is moved to the current one here."""
    keys = tx.at_rest()
    out: dict[str, bytes] = {}
    stale: dict[str, tuple[str, int]] = {}
    for r in tx.fetch_all("select vehicle, state, updated_ms from vehicle_state"):
        vin, doc = open_state(keys, r[0], bytes(r[1]))
        out[vin] = doc
        if keys.vehicle_ref(vin) != r[0]:
            stale[r[0]] = (vin, int(r[2]))
    if stale:
        # Moved, not updated: each row keeps its time, which retention measures from.
        delete_vehicle_state(tx, list(stale))
        _put(tx, [(vin, out[vin], at_ms) for vin, at_ms in stale.values()])
    return out


def save_vehicle_state(tx: WriteSession, states: dict[str, bytes], at_ms: int) -> None:
    """Replace the stored state of these vehicles (by VIN): keyed by reference, sealed with
    the VIN inside."""
    _put(tx, [(vin, doc, at_ms) for vin, doc in states.items()])


def _put(tx: WriteSession, states: Sequence[tuple[str, bytes, int]]) -> None:
    """Insert or replace (VIN, document, last-updated ms) rows."""
    keys = tx.at_rest()
    rows: dict[str, tuple[str, bytes, int]] = {}
    for vin, doc, at_ms in states:
        ref = keys.vehicle_ref(vin)
        rows[ref] = (ref, seal_state(keys, ref, vin, doc), at_ms)
    tx.insert_rows(
        "insert into vehicle_state (vehicle, state, updated_ms)",
        list(rows.values()),
        " on conflict (vehicle) do update set state = excluded.state, "
        "updated_ms = excluded.updated_ms",
    )


def delete_vehicle_state(tx: WriteSession, refs: Sequence[str]) -> int:
    """Forget the state stored under these vehicle references; returns how many rows."""
    return tx.execute_in("delete from vehicle_state where vehicle in ({})", refs)


def prune_vehicle_state(tx: WriteSession, before_ms: int, limit: int) -> int:
    """Delete, oldest first and at most ``limit``, states last updated before
    ``before_ms``; returns how many rows."""
    return tx.execute(
        "delete from vehicle_state where vehicle in (select vehicle from vehicle_state "
        f"where updated_ms < ? order by updated_ms limit ?{tx.store.skip_locked})",
        (before_ms, limit),
    )
