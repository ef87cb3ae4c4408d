"""The ``consents`` table: each vehicle's consents (keyed references, never VINs), every
change audited in the same transaction as a ``consent.changed`` entry."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gateway.errors import StoreError
from gateway.model import Consent
from gateway.store.audit import AuditWrites
from gateway.store.cursor import Session, chunks, marks
from gateway.tlog.entries import AdminAction, AdminEntry, to_ms

_COLUMNS = "consent_id, vehicle, purpose, granted_ms, expires_ms, withdrawn_ms"


def _consent(r: Any) -> Consent:
    return Consent(
        r[0], r[1], r[2], r[3] / 1000, r[4] / 1000, None if r[5] is None else r[5] / 1000
    )


def _consent_entry(c: Consent, at: float, instance: str) -> AdminEntry:
    return AdminEntry(
        time=at,
        instance=instance,
        action=AdminAction.CONSENT_CHANGED,
        subject=c.id,
        details={
            "vehicle": c.vehicle,
            "purpose": c.purpose,
            "granted_ms": to_ms(c.granted),
            "expires_ms": to_ms(c.expires),
            "withdrawn_ms": None if c.revoked is None else to_ms(c.revoked),
        },
    )


class ConsentReads(Session):
    """Reading consents."""

    def consent(self, consent_id: str) -> Consent | None:
        """One consent by id, or None."""
        row = self.fetch_one(f"select {_COLUMNS} from consents where consent_id = ?", (consent_id,))
        return _consent(row) if row else None

    def active_consent(self, vehicle: str, purpose: str, at: float) -> Consent | None:
        """A consent of ``vehicle`` for ``purpose`` in force at ``at`` (the one expiring
        last), or None."""
        at_ms = to_ms(at)
        row = self.fetch_one(
            f"select {_COLUMNS} from consents where vehicle = ? and purpose = ? "
            "and granted_ms <= ? and expires_ms > ? "
            "and (withdrawn_ms is null or withdrawn_ms > ?) "
            "order by expires_ms desc, consent_id limit 1",
            (vehicle, purpose, at_ms, at_ms, at_ms),
        )
        return _consent(row) if row else None

    def consents_of(self, refs: Sequence[str]) -> list[Consent]:
        """Every stored consent of these vehicle references."""
        out: list[Consent] = []
        for chunk in chunks(refs):
            rows = self.fetch_all(
                f"select {_COLUMNS} from consents where vehicle in ({marks(len(chunk))})", chunk
            )
            out.extend(_consent(r) for r in rows)
        return out


class ConsentWrites(ConsentReads, AuditWrites):
    """Granting and withdrawing consents, audited."""

    def put_consents(
        self, consents: Iterable[Consent], *, at: float, instance: str, shard: str | None = None
    ) -> int:
        """Insert or replace consents, each audited as a ``consent.changed`` entry in this
        same transaction (in ``shard``, default the store's). Returns how many were written."""
        written = []
        for c in consents:
            if not c.expires > c.granted:
                raise StoreError(f"consent {c.id}: expiry must follow the grant")
            self.execute(
                f"insert into consents ({_COLUMNS}) values (?, ?, ?, ?, ?, ?) "
                "on conflict (consent_id) do update "
                "set vehicle = excluded.vehicle, purpose = excluded.purpose, "
                "granted_ms = excluded.granted_ms, expires_ms = excluded.expires_ms, "
                "withdrawn_ms = excluded.withdrawn_ms",
                (
                    c.id,
                    c.vehicle,
                    c.purpose,
                    to_ms(c.granted),
                    to_ms(c.expires),
                    None if c.revoked is None else to_ms(c.revoked),
                ),
            )
            written.append(c)
        self.append_audit((_consent_entry(c, at, instance) for c in written), shard=shard)
        return len(written)

    def withdraw_consent(
        self, consent_id: str, *, at: float, instance: str, shard: str | None = None
    ) -> bool:
        """Withdraw a consent from ``at`` on (audited in ``shard``, default the store's).
        False if unknown or already withdrawn."""
        current = self.consent(consent_id)
        if current is None or current.revoked is not None:
            return False
        self.execute(
            "update consents set withdrawn_ms = ? where consent_id = ?", (to_ms(at), consent_id)
        )
        self.append_audit([_consent_entry(current._replace(revoked=at), at, instance)], shard=shard)
        return True
