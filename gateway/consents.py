"""Consents at run time: the store is authoritative, the bundle's ``consents.yaml`` seeds it.

The store keys consents by the keyed vehicle reference (never the VIN). For each batch the
service loads the consents of the batch's vehicles and hands the decision engine a
:class:`~gateway.policy.state.ConsentBook` keyed by VIN (it knows which VIN each reference
in the batch stands for). A consent granted or withdrawn in the store — by ``icvgw consent``
or, later, the API — therefore applies to the next batch; every change is an audited
``consent.changed`` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway.model import Consent
from gateway.policy.bundle import PolicyBundle
from gateway.policy.state import ConsentBook
from gateway.store import Store


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
            current = tx.consent(c.id)
            if current is None or _differs(current, c):
                changed.append(c)
        if changed:
            tx.put_consents(changed, at=at, instance=instance)
    return len(changed)


def _differs(current: Consent, wanted: Consent) -> bool:
    fixed = (current.vehicle, current.purpose, current.granted, current.expires)
    if fixed != (wanted.vehicle, wanted.purpose, wanted.granted, wanted.expires):
        return True
    return wanted.revoked is not None and current.revoked != wanted.revoked


def book(consents: Iterable[Consent], vin_of: dict[str, str]) -> ConsentBook:
    """The engine's VIN-keyed book of ``consents`` (references mapped by ``vin_of``)."""
    return ConsentBook(
        c._replace(vehicle=vin_of[c.vehicle]) for c in consents if c.vehicle in vin_of
    )
