"""Consents at run time: the store is authoritative, the bundle's ``consents.yaml`` seeds it.

The store keys consents by the keyed vehicle reference (never the VIN). For each batch the
service loads the consents of the batch's vehicles and hands the decision engine a
:class:`~gateway.state.snapshot.ConsentBook` keyed by VIN (it knows which VIN each reference
in the batch stands for). A consent granted or withdrawn in the store — by ``icvgw consent``
or, later, the API — therefore applies to the next batch; every change is an audited
``consent.changed`` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from gateway.audit.store import IN_CHUNK, Consent, Reader, Store, _consent
from gateway.policy.bundle import PolicyBundle
from gateway.state.snapshot import ConsentBook, ConsentRecord


def seed(
    store: Store,
    bundle: PolicyBundle,
    vehicle_ref: Callable[[str], str],
    *,
    at: float,
    instance: str,
) -> int:
    """Write the bundle's consents the store does not hold yet (or holds differently);
    returns how many were written. A consent withdrawn in the store stays withdrawn unless
    the bundle itself records a withdrawal or a new expiry for it."""
    wanted = [
        Consent(
            c.id,
            vehicle_ref(c.vin),
            c.purpose,
            c.granted.timestamp(),
            c.expires.timestamp(),
            None if c.revoked is None else c.revoked.timestamp(),
        )
        for c in bundle.consents
    ]
    with store.transaction() as tx:
        changed = []
        for c in wanted:
            current = tx.consent(c.consent_id)
            if current is None or _differs(current, c):
                changed.append(c)
        if changed:
            tx.put_consents(changed, at=at, instance=instance)
    return len(changed)


def _differs(current: Consent, wanted: Consent) -> bool:
    fixed = (current.vehicle, current.purpose, current.granted_at, current.expires_at)
    if fixed != (wanted.vehicle, wanted.purpose, wanted.granted_at, wanted.expires_at):
        return True
    return wanted.withdrawn_at is not None and current.withdrawn_at != wanted.withdrawn_at


def of_vehicles(reader: Reader, refs: Sequence[str]) -> list[Consent]:
    """Every stored consent of these vehicle references."""
    out: list[Consent] = []
    for i in range(0, len(refs), IN_CHUNK):
        chunk = list(refs[i : i + IN_CHUNK])
        marks = ",".join("?" for _ in chunk)
        rows = reader._all(
            "select consent_id, vehicle, purpose, granted_ms, expires_ms, withdrawn_ms "
            f"from consents where vehicle in ({marks})",
            chunk,
        )
        out.extend(_consent(r) for r in rows)
    return out


def book(consents: Iterable[Consent], vin_of: dict[str, str]) -> ConsentBook:
    """The engine's VIN-keyed book of ``consents`` (references mapped by ``vin_of``)."""
    return ConsentBook(
        ConsentRecord(
            id=c.consent_id,
            vin=vin_of[c.vehicle],
            purpose=c.purpose,
            granted=c.granted_at,
            expires=c.expires_at,
            revoked=c.withdrawn_at,
        )
        for c in consents
        if c.vehicle in vin_of
    )
