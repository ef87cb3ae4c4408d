"""The ``api_keys`` table: the HTTP API's keys, each kept only as a salted hash.

Creating and revoking a key is audited in the same transaction (``apikey.created``,
``apikey.revoked`` entries in the given shard). Keys are created by ``icvgw apikey create``
(:mod:`gateway.apikeys`), checked by the API on every request (:mod:`gateway.api.auth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.store.audit import AuditWrites
from gateway.store.cursor import Session
from gateway.tlog.entries import AdminAction, AdminEntry, to_ms

_COLUMNS = "key_id, role, subscriber, label, salt, digest, created_ms, revoked_ms"


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One API key as stored: who it is for, and the salted hash of its secret."""

    key_id: str
    role: str
    subscriber: str | None
    label: str
    salt: bytes
    digest: bytes
    created_ms: int
    revoked_ms: int | None


def _key(r: Any) -> StoredKey:
    revoked = None if r[7] is None else int(r[7])
    return StoredKey(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), int(r[6]), revoked)


def get_api_key(reader: Session, key_id: str) -> StoredKey | None:
    """The key ``key_id``, revoked or not; None if there is none."""
    row = reader.fetch_one(f"select {_COLUMNS} from api_keys where key_id = ?", (key_id,))
    return None if row is None else _key(row)


def list_api_keys(reader: Session) -> list[StoredKey]:
    """Every key, oldest first."""
    return [
        _key(r)
        for r in reader.fetch_all(f"select {_COLUMNS} from api_keys order by created_ms, key_id")
    ]


def add_api_key(tx: AuditWrites, key: StoredKey, *, shard: str, instance: str) -> None:
    """Store ``key`` and audit its creation (role and subscriber, never the secret)."""
    tx.execute(
        f"insert into api_keys ({_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key.key_id,
            key.role,
            key.subscriber,
            key.label,
            key.salt,
            key.digest,
            key.created_ms,
            key.revoked_ms,
        ),
    )
    details: dict[str, str] = {"role": key.role, "label": key.label}
    if key.subscriber is not None:
        details["subscriber"] = key.subscriber
    entry = AdminEntry(
        key.created_ms / 1000, instance, AdminAction.APIKEY_CREATED, key.key_id, details
    )
    tx.append_audit([entry], shard=shard)


def revoke_api_key(tx: AuditWrites, key_id: str, *, at: float, shard: str, instance: str) -> bool:
    """Revoke ``key_id`` from ``at`` on (audited); False if unknown or already revoked."""
    done = tx.execute(
        "update api_keys set revoked_ms = ? where key_id = ? and revoked_ms is null",
        (to_ms(at), key_id),
    )
    if done <= 0:
        return False
    tx.append_audit([AdminEntry(at, instance, AdminAction.APIKEY_REVOKED, key_id)], shard=shard)
    return True
