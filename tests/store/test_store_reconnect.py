"""A PostgreSQL store whose connection is lost (server restarted, backend terminated,
network cut) fails that operation with a StoreError and connects again on the next one:
the gateway's retry loop then resumes by itself."""

from __future__ import annotations

import pytest

from gateway.errors import StoreError
from gateway.store import open_store
from gateway.tlog.entries import AdminAction, AdminEntry

SHARD = "icv-gateway/reconnect-test"


def entry(n: int) -> AdminEntry:
    return AdminEntry(
        time=1_795_867_200.0 + n,
        instance="t",
        action=AdminAction.POLICY_LOADED,
        subject=f"v{n}",
        details={},
    )


def test_a_lost_postgresql_connection_is_made_again(postgres_url: str) -> None:
    import psycopg

    store = open_store(postgres_url, shard=SHARD)
    try:
        with store.transaction() as tx:
            tx.append_audit([entry(0)], shard=SHARD)
        with store.snapshot() as rd:
            (pid,) = rd.fetch_one("select pg_backend_pid()")
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreError), store.transaction() as tx:
            tx.append_audit([entry(1)], shard=SHARD)
        with store.transaction() as tx:  # connects again
            tx.append_audit([entry(1)], shard=SHARD)
        with store.snapshot() as rd:
            assert rd.shard_state(SHARD).size == 2  # type: ignore[union-attr]
    finally:
        store.close()
