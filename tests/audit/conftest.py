"""Audit fixtures: a key ring, and a store that is SQLite or PostgreSQL (same tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.log import AuditLog, CheckpointPolicy
from gateway.keys import KeyRing, init_keys
from gateway.store import Store, open_store
from gateway.tlog.entries import AdminAction, AdminEntry, Decision, DecisionEntry

ORIGIN = "icvgw.test/audit/w1"
T0 = 1_740_000_000.0


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return init_keys(tmp_path / "keys")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str, ring: KeyRing) -> Iterator[Store]:
    with open_store(store_url, shard=ORIGIN, keys=ring) as s:
        yield s


class Clock:
    """A fake clock the tests move by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def decision(ring: KeyRing, i: int, **over: Any) -> DecisionEntry:
    """A realistic decision entry number ``i``."""
    fields: dict[str, Any] = {
        "time": T0 + i,
        "instance": "w1",
        "message_id": f"m-{i}",
        "decision": (Decision.SHARED, Decision.REDACTED, Decision.BLOCKED)[i % 3],
        "policy": "sha256:" + "ab" * 32,
        "vehicle": ring.vehicle_ref(f"LSVTEST{i % 5:010d}"),
        "subscriber": f"platform-{i % 2}",
        "region": "CN" if i % 2 == 0 else "HK",
        "rules": ("geo.grid", f"rule-{i % 4}"),
        "transforms": {"datum": "GCJ-02", "grid_m": 50, "zones": [f"z{i % 3}"]},
        "precision_m": 50,
        "basis": f"consent:c-{i % 5}",
        "digest": ring.payload_digest(f"payload {i}".encode()),
    }
    fields.update(over)
    return DecisionEntry(**fields)


def admin(i: int) -> AdminEntry:
    return AdminEntry(
        time=T0 + i,
        instance="w1",
        action=AdminAction.POLICY_LOADED,
        subject="sha256:" + "cd" * 32,
        details={"files": 3},
    )


def fill(log: AuditLog, ring: KeyRing, n: int, *, start: int = 0, batch: int = 10) -> None:
    """Append ``n`` decision entries in transactions of ``batch``."""
    for b in range(start, start + n, batch):
        with log.transaction() as tx:
            tx.append_audit([decision(ring, i) for i in range(b, min(b + batch, start + n))])


def make_log(store: Store, ring: KeyRing, clock: Clock | None = None, **kw: Any) -> AuditLog:
    return AuditLog.from_keyring(
        store,
        ring,
        policy=kw.pop("policy", CheckpointPolicy(every_entries=25, every_seconds=3600)),
        clock=clock or Clock(),
        **kw,
    )


def tamper(store: Store, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the database behind the store's back, as an attacker with SQL access would."""
    with store.transaction() as tx:
        tx.execute(sql, params)
