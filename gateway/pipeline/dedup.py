"""De-duplication for the batch stage: the same record is decided once, whatever redelivers it.

A record's key is its vehicle's keyed reference and its record part
(:func:`~gateway.pipeline.shape.record_part`: its timestamp in milliseconds and its ``msg_id``);
an unusable input's key is its dead-letter id. The store keeps
the keys of the de-duplication window (``rules.ingest.dedup_window_s``); a batch looks its
keys up there once (:func:`seen_before`) and keeps only the first of each key it has not
seen (:func:`fresh_rows`, :func:`first_sight`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from gateway.keys import KeyKind, KeyRing
from gateway.model import Batch
from gateway.pipeline.shape import record_part
from gateway.store import Reader
from gateway.store.dedup import seen_records, seen_under

__all__ = [
    "RecordKey",
    "first_sight",
    "fresh_rows",
    "previous_generation_in_window",
    "record_keys",
    "seen_before",
]

RecordKey = tuple[str, str]
"""(vehicle reference, record part): what the store remembers of a decided record."""


def record_keys(
    batch: Batch, rows: Sequence[int], vehicle_ref: Callable[[str], str]
) -> list[RecordKey]:
    """The key of each of ``rows`` of ``batch``: (vehicle, timestamp and msg_id). A msg_id
    reused with another timestamp (a counter restarted) is another record."""
    vehicles = batch.vehicle.tolist()
    msg_ids = batch.msg_id.tolist() if batch.msg_id is not None else [None] * len(batch)
    times = batch.time.tolist()
    return [(vehicle_ref(vehicles[row]), record_part(msg_ids[row], times[row])) for row in rows]


def seen_before(
    rd: Reader,
    keys: list[RecordKey],
    vin_of: dict[str, str],
    *,
    ring: KeyRing,
    previous: int | None,
    in_window: bool,
    dead_earlier: dict[RecordKey, RecordKey] | None = None,
) -> set[RecordKey]:
    """Which of ``keys`` were decided before. While records of an older HMAC key generation
    (``previous``) can still be in the window (``in_window``: the key was rotated before
    this start), their keys under that generation are looked up too: a record's from
    ``vin_of``, a dead input's from ``dead_earlier`` (its key then, to its key now)."""
    seen = seen_records(rd, keys)
    if previous is None or not in_window:
        return seen
    earlier = {
        (ring.vehicle_ref(vin_of[ref], generation=previous), record): (ref, record)
        for ref, record in keys
        if ref in vin_of and not record.startswith("dl:")
    }
    earlier.update(dead_earlier or {})
    found = seen_records(rd, list(earlier), generation=previous)
    return seen | {earlier[k] for k in found}


def previous_generation_in_window(
    reader: Callable[[], AbstractContextManager[Reader]], ring: KeyRing
) -> int | None:
    """The previous HMAC key generation, if the de-duplication window holds records keyed
    with it (the key was rotated while the worker was stopped); the store is read in what
    ``reader`` opens, only if there is a previous generation."""
    gens = ring.generations(KeyKind.HMAC)
    if len(gens) < 2:
        return None
    with reader() as rd:
        return gens[-2] if seen_under(rd, f"k{gens[-2]}:") else None


def first_sight(keys: Sequence[RecordKey], seen: set[RecordKey]) -> list[bool]:
    """For each of ``keys``: whether it is neither ``seen`` nor an earlier one's repeat."""
    first = {k: i for i, k in reversed(list(enumerate(keys)))}  # linear, not i²
    return [k not in seen and first[k] == i for i, k in enumerate(keys)]


def fresh_rows(
    rows: Sequence[int], keys: Sequence[RecordKey], seen: set[RecordKey]
) -> tuple[list[int], list[RecordKey]]:
    """The rows (and their keys) whose key is not ``seen``, the first of each key only."""
    fresh: list[int] = []
    fresh_keys: list[RecordKey] = []
    taken: set[RecordKey] = set()
    for row, key in zip(rows, keys, strict=True):
        if key in seen or key in taken:
            continue
        taken.add(key)
        fresh.append(row)
        fresh_keys.append(key)
    return fresh, fresh_keys
