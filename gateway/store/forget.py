"""Forgetting across the working tables: a vehicle's erasure and the retention limits.

Each table's rows are deleted by its own repository; this module only says which, in one
transaction. The audit entries themselves stay (their bodies are pruned by
:meth:`~gateway.store.audit.AuditWrites.prune_bodies`).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.cursor import WriteSession
from gateway.store.deadletters import (
    delete_deadletters,
    delete_deadletters_of_vehicles,
    letters_holding,
    prune_deadletters,
)
from gateway.store.dedup import delete_seen_of_vehicles
from gateway.store.outbox import delete_outbox, delete_outbox_of_vehicles, prune_outbox
from gateway.store.vehicle_states import delete_vehicle_state, prune_vehicle_state


def erase_vehicle(
    tx: WriteSession, refs: Sequence[str], *, vin: str | None = None
) -> dict[str, int]:
    """Delete everything the store's working tables hold of the vehicle known by ``refs``
    (its references under every HMAC key generation): decision state (trip, held views),
    views not yet delivered and delivered ones still kept, dead letters and records seen.
    Outbox and dead-letter rows are found through their audit entries' vehicle column;
    given the ``vin``, every dead letter is also opened and those whose topic or payload
    holds it are deleted too (a topic without the vehicle, naming another one, or an entry
    pruned since), with their announcements in the outbox. Returns rows deleted per table.
    The audit entries themselves stay."""
    erased = {
        "vehicle_state": delete_vehicle_state(tx, refs),
        "outbox": delete_outbox_of_vehicles(tx, refs),
        "deadletters": delete_deadletters_of_vehicles(tx, refs),
        "dedup": delete_seen_of_vehicles(tx, refs),
    }
    if vin is not None:
        for shard, seqs in letters_holding(tx, vin).items():
            erased["deadletters"] += delete_deadletters(tx, shard, seqs)
            erased["outbox"] += delete_outbox(tx, shard, seqs)
    return erased


def prune_expired(
    tx: WriteSession, *, outbox_ms: int, deadletter_ms: int, vehicle_state_ms: int, limit: int
) -> dict[str, int]:
    """Delete, oldest first and at most ``limit`` rows of each table, views decided before
    ``outbox_ms`` (delivered or not), dead letters received before ``deadletter_ms`` and
    vehicle states last updated before ``vehicle_state_ms``: the retention limits of the
    rules (PIPL art. 47). Returns the rows deleted per table."""
    return {
        "outbox": prune_outbox(tx, outbox_ms, limit),
        "deadletters": prune_deadletters(tx, deadletter_ms, limit),
        "vehicle_state": prune_vehicle_state(tx, vehicle_state_ms, limit),
    }
