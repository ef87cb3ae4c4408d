"""Batch: the decoded micro-batch made ready to decide (after decode, before classify).

What decode hands over is every row of the batch's payloads, rejected ones included. This
stage turns it into what the policy stages decide (:class:`Pending`):

* every payload decode could not use, and every record it rejected, becomes a
  :class:`~gateway.model.DeadInput` with a stable id: a keyed digest of its topic and bytes
  (:func:`dead_id`), so a redelivery gets the same id and the id reveals nothing;
* de-duplication (:mod:`gateway.pipeline.dedup`): a record, or an unusable input, seen
  before (in the store's window, or earlier in this batch) is dropped, not decided again;
* the state the batch is decided on: the worker's state as of ``now``, with the consents
  of the batch's vehicles read from the store (under every HMAC key generation: a consent
  keeps the reference it was recorded under).

It reads the store (one snapshot, given by the caller) and writes nothing; what it drops
it only counts, for the caller's metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from gateway.keys import KeyKind, KeyRing
from gateway.model import Batch, DeadInput, Envelope, ErrorCode
from gateway.pipeline.decode import Decoded, topic_vehicle
from gateway.pipeline.dedup import (
    RecordKey,
    first_sight,
    fresh_rows,
    record_keys,
    seen_before,
)
from gateway.policy.bundle import PolicyBundle
from gateway.state.snapshot import ConsentBook, StateSnapshot
from gateway.store import Reader

__all__ = ["Keying", "Pending", "consent_refs", "dead_id", "dead_inputs", "prepare"]


@dataclass(frozen=True, slots=True)
class Keying:
    """How the stage keys what it looks up: the key ring, the (cached) vehicle reference,
    and the previous HMAC key generation still in the de-duplication window since
    ``started`` (``None``: none)."""

    ring: KeyRing
    vehicle_ref: Callable[[str], str]
    previous_hmac: int | None
    started: float


@dataclass(frozen=True, slots=True)
class Pending:
    """A batch ready to decide: its fresh records (``work``), the state before it (``base``,
    without cross-border counts), its dead inputs, the record keys it marks seen, and its
    number of rows; with what it dropped (``duplicates`` of records, ``dead_duplicates`` of
    unusable inputs) and how many rows decode ``rejected``, for the metrics."""

    bundle: PolicyBundle
    work: Batch
    base: StateSnapshot
    dead: list[DeadInput]
    seen: list[RecordKey]
    rows: int
    duplicates: int = 0
    dead_duplicates: int = 0
    rejected: int = 0


def prepare(
    envelopes: Sequence[Envelope],
    decoded: Decoded,
    rd: Reader,
    *,
    bundle: PolicyBundle,
    state: StateSnapshot,
    now: float,
    keying: Keying,
) -> Pending:
    """The stage: ``decoded`` (of ``envelopes``) de-duplicated against the store read in
    ``rd``, its unusable inputs as dead inputs, its records with the state to decide on."""
    batch = decoded.batch
    ref = keying.vehicle_ref
    dead = dead_inputs(envelopes, decoded, now, keying)
    rows = np.flatnonzero(batch.ok).tolist()
    keys = record_keys(batch, rows, ref)
    vehicles = batch.vehicle.tolist()
    vin_of = {ref(v): v for v in {vehicles[row] for row in rows}}
    dead_keys = [(d.vehicle_ref or "-", d.message_id) for d in dead]
    window = bundle.rules.ingest.dedup_window_s
    previous = keying.previous_hmac
    seen = seen_before(
        rd,
        keys + dead_keys,
        vin_of,
        ring=keying.ring,
        previous=previous,
        in_window=now - keying.started <= window,
        dead_earlier=None if previous is None else earlier_dead_keys(keying.ring, dead, previous),
    )
    consent_of = consent_refs(keying.ring, vin_of)
    book = ConsentBook.by_vin(rd.consents_of(list(consent_of)), consent_of)
    # A redelivered unusable input is not dead-lettered (and audited) twice either.
    unseen = first_sight(dead_keys, seen)
    dead = [d for d, keep in zip(dead, unseen, strict=True) if keep]
    dead_keys = [k for k, keep in zip(dead_keys, unseen, strict=True) if keep]
    fresh, fresh_keys = fresh_rows(rows, keys, seen)
    return Pending(
        bundle,
        batch.take(np.asarray(fresh, dtype=np.intp)),
        replace(state, now=now, consents=book),
        dead,
        fresh_keys + dead_keys,
        len(batch),
        duplicates=len(rows) - len(fresh),
        dead_duplicates=unseen.count(False),
        rejected=len(batch) - len(rows),
    )


def dead_id(ring: KeyRing, env: Envelope, *, generation: int | None = None) -> str:
    """A stable id for an unusable input: a keyed digest of its topic and bytes, so a
    redelivery gets the same id (and is recognised) and the id reveals nothing. Under the
    HMAC key ``generation`` (default: the current one)."""
    digest = ring.payload_digest(env.topic.encode() + b"\0" + env.payload, generation=generation)
    return "dl:" + digest.rsplit(":", 1)[-1][:32]


def earlier_dead_keys(
    ring: KeyRing, dead: Sequence[DeadInput], generation: int
) -> dict[RecordKey, RecordKey]:
    """The de-duplication key each of ``dead`` had under the HMAC key ``generation``, to its
    key now: a dead input redelivered after ``icvgw keys rotate`` is recognised too."""
    out: dict[RecordKey, RecordKey] = {}
    for d in dead:
        vin = topic_vehicle(d.topic)
        ref = ring.vehicle_ref(vin, generation=generation) if vin else "-"
        old = dead_id(ring, Envelope(d.topic, d.payload, 0.0, 0), generation=generation)
        index = d.message_id[len(old) :]  # "" for a whole payload, ":<i>" for one record
        out[(ref, old + index)] = (d.vehicle_ref or "-", d.message_id)
    return out


def dead_inputs(
    envelopes: Sequence[Envelope], decoded: Decoded, now: float, keying: Keying
) -> list[DeadInput]:
    """Every payload decode could not use, then every row it rejected (``id:index``, the
    record's place in its payload), as dead inputs."""

    def dead(env: Envelope, reason: str, message_id: str) -> DeadInput:
        vin = topic_vehicle(env.topic)
        ref = keying.vehicle_ref(vin) if vin else None
        return DeadInput(now, reason, env.topic, env.payload, ref, message_id)

    out = [
        dead(envelopes[d.source], d.reason, dead_id(keying.ring, envelopes[d.source]))
        for d in decoded.dead
    ]
    batch = decoded.batch
    # A record's place in its own payload (rows of one payload are contiguous).
    first_row = np.searchsorted(batch.source, batch.source, side="left")
    dead_ids: dict[int, str] = {}  # one digest per payload, not one per bad record
    for row in np.flatnonzero(~batch.ok).tolist():
        source = int(batch.source[row])
        env = envelopes[source]
        if source not in dead_ids:
            dead_ids[source] = dead_id(keying.ring, env)
        reason = ErrorCode(int(batch.error[row])).reason
        out.append(dead(env, reason, f"{dead_ids[source]}:{row - int(first_row[row])}"))
    return out


def consent_refs(ring: KeyRing, vin_of: dict[str, str]) -> dict[str, str]:
    """``vin_of`` (current references to VINs) with the references of every older HMAC
    key generation added: a consent keeps the reference it was recorded under, so one
    granted before ``icvgw keys rotate`` is found under the older one."""
    older = ring.generations(KeyKind.HMAC)[:-1]
    if not older:
        return vin_of
    out = dict(vin_of)
    for vin in vin_of.values():
        for gen in older:
            out[ring.vehicle_ref(vin, generation=gen)] = vin
    return out
