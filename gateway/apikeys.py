"""API keys for the HTTP API: made once, shown once, stored only as a salted hash.

A key reads ``icvgw_<key id>_<secret>``: the id (12 hex digits) finds the stored row, the
secret (32 random bytes, base64url) is checked against ``SHA-256(salt || secret)`` in
constant time. The secret has 256 bits of entropy, so a slow password hash would add
nothing but latency to every request; the salt keeps equal secrets (there are none)
from having equal digests and a stolen table from being matched against other tables.
The id is what logs, audit entries and metrics name; the secret is never logged or kept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from gateway.store import Store
from gateway.store.apikeys import StoredKey, add_api_key, get_api_key, revoke_api_key

__all__ = ["ApiKey", "Role", "create_api_key", "parse_key", "revoke", "verify_key"]

_KEY_RE = re.compile(r"^icvgw_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    """Who a key is for. Each API route declares the roles it admits."""

    SUBSCRIBER = "subscriber"  # a platform: its own feed, records, schema
    AUDITOR = "auditor"  # the audit log: entries, checkpoints, proofs, verification
    ADMIN = "admin"  # operators: policy, consents, subscribers' status, dead letters
    MONITOR = "monitor"  # a Prometheus scraper: /metrics only


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as a request presents it, once checked: its id, role and subscriber."""

    key_id: str
    role: Role
    subscriber: str | None


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


def create_api_key(
    store: Store,
    role: Role,
    *,
    subscriber: str | None,
    label: str,
    shard: str,
    instance: str,
    now: float | None = None,
) -> tuple[ApiKey, str]:
    """Make a key (audited as ``apikey.created``); returns it and the only copy of its token.

    A ``subscriber`` key needs the subscriber it reads for; other roles take none.
    """
    if (role is Role.SUBSCRIBER) != (subscriber is not None):
        raise ValueError("a subscriber key needs --subscriber; other roles take none")
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    salt = secrets.token_bytes(16)
    at = time.time() if now is None else now
    stored = StoredKey(
        key_id, role.value, subscriber, label, salt, _digest(salt, secret), round(at * 1000), None
    )
    with store.transaction() as tx:
        add_api_key(tx, stored, shard=shard, instance=instance)
    return ApiKey(key_id, role, subscriber), f"icvgw_{key_id}_{secret}"


def parse_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    m = _KEY_RE.match(token)
    return None if m is None else (m.group(1), m.group(2))


def verify_key(store: Store, token: str) -> ApiKey | None:
    """The key ``token`` presents if it exists, is not revoked and its secret matches;
    None otherwise (which of these is not told apart)."""
    parsed = parse_key(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    with store.snapshot() as rd:
        stored = get_api_key(rd, key_id)
    if stored is None or stored.revoked_ms is not None:
        return None
    if not hmac.compare_digest(_digest(stored.salt, secret), stored.digest):
        return None
    return ApiKey(stored.key_id, Role(stored.role), stored.subscriber)


def revoke(store: Store, key_id: str, *, shard: str, instance: str) -> bool:
    """Revoke ``key_id`` from now on (audited as ``apikey.revoked``); False if unknown or
    already revoked. The API refuses the key from its next request on."""
    with store.transaction() as tx:
        return revoke_api_key(tx, key_id, at=time.time(), shard=shard, instance=instance)
