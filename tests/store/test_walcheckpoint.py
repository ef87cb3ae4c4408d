"""A writing SQLite store checkpoints its WAL from a thread of its own, never in a commit."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from gateway.keys import KeyRing
from gateway.store import open_store
from gateway.store.dialects import SqliteStore
from gateway.store.walcheckpoint import WalCheckpointer
from tests.audit.conftest import ORIGIN, decision


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_a_writer_checkpoints_in_the_background_and_its_commits_never_do(
    tmp_path: Path, ring: KeyRing
) -> None:
    path = tmp_path / "s.db"
    with open_store(f"sqlite:///{path}", shard=ORIGIN) as store:
        assert isinstance(store, SqliteStore) and store.checkpointer is not None
        conn = store._conn
        assert conn.execute("pragma wal_autocheckpoint").fetchone()[0] == 0
        assert "icvgw-wal-checkpoint" in _threads()
        for i in range(20):
            with store.transaction() as tx:
                tx.append_audit([decision(ring, 10 * i + k) for k in range(10)], shard=ORIGIN)
        before = store.checkpointer.runs
        deadline = time.monotonic() + 10
        while store.checkpointer.runs < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.checkpointer.runs >= before + 2
        # Everything committed so far is in the database file: nothing left to copy.
        other = sqlite3.connect(path)
        busy, frames, done = other.execute("pragma wal_checkpoint(passive)").fetchone()
        other.close()
        assert busy == 0 and frames == done
    assert "icvgw-wal-checkpoint" not in _threads()
    with open_store(f"sqlite:///{path}", migrate=False) as reader, reader.snapshot() as rd:
        state = rd.shard_state(ORIGIN)
        assert state is not None and state.size == 200


def test_a_reader_keeps_sqlites_own_checkpoints_and_starts_no_thread(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    open_store(f"sqlite:///{path}").close()
    with open_store(f"sqlite:///{path}", migrate=False) as store:
        assert isinstance(store, SqliteStore) and store.checkpointer is None
        assert store._conn.execute("pragma wal_autocheckpoint").fetchone()[0] == 1000


def test_a_checkpointer_that_cannot_open_its_database_stops_quietly(tmp_path: Path) -> None:
    cp = WalCheckpointer(str(tmp_path / "missing-dir" / "s.db"), every_s=0.01)
    cp.start()
    cp.stop()
    assert cp.runs == 0


def test_a_long_log_is_restarted_so_the_file_stops_growing(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("pragma journal_mode = wal")
    writer.execute("pragma wal_autocheckpoint = 0")
    writer.execute("create table t (x blob)")
    cp = WalCheckpointer(str(path), restart_frames=16)
    conn = sqlite3.connect(path, timeout=0.0)
    sizes = []
    for _ in range(5):
        for _ in range(40):
            writer.execute("insert into t values (randomblob(3000))")
        cp.checkpoint(conn)
        sizes.append((path.parent / "w.db-wal").stat().st_size)
    conn.close()
    writer.close()
    # Each round restarts the log, so the writer starts again at its top: the file stays at
    # one round's size instead of growing round after round.
    assert cp.restarts == 5
    assert max(sizes) == sizes[0]
