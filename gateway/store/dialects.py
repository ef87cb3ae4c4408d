"""The dialects: SQLite and PostgreSQL, and :func:`open_store`, which picks one by URL.

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's
  convention; the default): one file, WAL, ``synchronous=FULL`` (durable when a commit
  returns), ``secure_delete`` (deleted rows overwritten), writers serialised by ``BEGIN
  IMMEDIATE``, the log checkpointed off the commit path;
* ``postgresql://…`` (psycopg 3, the ``postgres`` extra): ``%s`` placeholders, the shard's
  row locked ``FOR UPDATE`` for an append, advisory locks for cross-border counters, COPY
  for audit entries, a lost connection opened again at the next transaction.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.store.connection import Store
from gateway.store.cursor import Cursor
from gateway.store.schema import compact_if_pending
from gateway.store.sealing import AtRestKeys
from gateway.store.walcheckpoint import WalCheckpointer


class SqliteStore(Store):
    """SQLite: one file, WAL journal, synchronous=FULL, writers serialised. A writing store
    (one bound to a shard) checkpoints the log from a thread of its own
    (:class:`~gateway.store.walcheckpoint.WalCheckpointer`), not inside its commits."""

    kind = "sqlite"
    db_errors = (sqlite3.Error,)
    blob_type = "blob"
    _timeout = 30.0

    def __init__(self, url: str, path: str, shard: str | None, *, create: bool = True) -> None:
        super().__init__(url, shard)
        if not create and not Path(path).is_file():
            raise StoreError(f"sqlite store {path}: no such file")
        try:
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=self._timeout
            )
            self._conn.execute("pragma journal_mode = wal")
            self._conn.execute("pragma synchronous = full")
            # Deleted rows (an erased vehicle, forgotten records) are overwritten with zeros
            # in the file, not left in free pages.
            self._conn.execute("pragma secure_delete = on")
            self._conn.execute("pragma foreign_keys = on")
            if shard is not None:  # a writer: checkpoints leave the commit path
                self._conn.execute("pragma wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {path}: {exc}") from exc
        self.checkpointer: WalCheckpointer | None = None
        if shard is not None:
            self.checkpointer = WalCheckpointer(path)
            self.checkpointer.start()

    def _cursor(self) -> Cursor:
        return self._conn.cursor()

    def _begin(self, cur: Cursor, write: bool) -> None:
        cur.execute("begin immediate" if write else "begin")

    def _commit(self, cur: Cursor) -> None:
        cur.execute("commit")

    def _rollback(self, cur: Cursor) -> None:
        if self._conn.in_transaction:
            cur.execute("rollback")

    def lock_key(self, cur: Cursor, key: str) -> None:
        """No-op: ``begin immediate`` already serialises every SQLite writer."""

    def compact(self, wait_s: float | None = None) -> None:
        """Rebuild the file and empty the write-ahead log, so no page of deleted or
        converted rows survives in either (no transaction may be open). While another
        connection reads an older snapshot, the log can be neither copied back nor
        emptied, and the file keeps the old pages: that is an error, not a success."""
        with self._lock:
            try:
                wait = self._timeout if wait_s is None else wait_s
                self._conn.execute(f"pragma busy_timeout = {round(wait * 1000)}")
                self._conn.execute("vacuum")
                busy = self._truncate_log(wait)
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store: {exc}") from exc
            finally:
                self._conn.execute(f"pragma busy_timeout = {round(self._timeout * 1000)}")
            if busy:
                raise StoreError(
                    "sqlite store: another connection (a reader) holds the write-ahead log; "
                    "older copies of deleted pages remain until it lets go"
                )

    def _truncate_log(self, wait: float) -> bool:
        """Copy the log back and empty it; True if a reader still kept it after ``wait``
        seconds. A checkpoint that meets another one in progress (the background
        checkpointer's) returns at once without the busy handler: tried again until then."""
        deadline = time.monotonic() + wait
        while True:
            busy = bool(self._conn.execute("pragma wal_checkpoint(truncate)").fetchone()[0])
            if not busy or time.monotonic() >= deadline:
                return busy
            time.sleep(0.02)

    def close(self) -> None:
        """Close the connection (the last one to close checkpoints the log)."""
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self._conn.close()


class PostgresStore(Store):
    """PostgreSQL through psycopg 3 (the ``postgres`` extra), imported only when used."""

    kind = "postgresql"
    for_update = " for update"
    skip_locked = " for update skip locked"
    blob_type = "bytea"

    def __init__(self, url: str, shard: str | None) -> None:
        super().__init__(url, shard)
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                "postgresql store needs psycopg: install icv-gateway[postgres]"
            ) from exc
        self._psycopg = psycopg
        self.db_errors = (psycopg.Error,)
        try:
            self._conn = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"postgresql store: {exc}") from exc

    def sql(self, sql: str) -> str:
        """psycopg placeholders are ``%s``."""
        return sql.replace("?", "%s")

    def _cursor(self) -> Cursor:
        if self._conn.broken:  # lost (the server restarted, the network failed): connect again
            self._conn.close()
            self._conn = self._psycopg.connect(self.url, autocommit=True)
        cur: Cursor = self._conn.cursor()
        return cur

    def _begin(self, cur: Cursor, write: bool) -> None:
        # Writes run at read committed whatever the server's default: at repeatable read a
        # batch would fail whenever another worker had just forgotten the same old records.
        cur.execute(
            "begin isolation level read committed"
            if write
            else "begin isolation level repeatable read read only"
        )

    def _commit(self, cur: Cursor) -> None:
        cur.execute("commit")

    def _rollback(self, cur: Cursor) -> None:
        cur.execute("rollback")

    def bulk_insert(
        self, cur: Cursor, table: str, columns: str, rows: list[tuple[Any, ...]]
    ) -> None:
        """COPY the rows in: several times faster than INSERT for a micro-batch."""
        with cur.copy(f"copy {table} ({columns}) from stdin") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(row)

    def lock_key(self, cur: Cursor, key: str) -> None:
        """A transaction-scoped advisory lock on a 64-bit hash of ``key``."""
        lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        cur.execute("select pg_advisory_xact_lock(%s)", (lock_id,))

    def compact(self, wait_s: float | None = None) -> None:
        """Nothing to do here: PostgreSQL drops a converted table's files; rows deleted
        later stay (sealed) in their table until VACUUM reuses the space."""

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def open_store(
    url: str,
    *,
    shard: str | None = None,
    migrate: bool = True,
    keys: AtRestKeys | None = None,
) -> Store:
    """Open the store at ``url`` (``sqlite:///…`` or ``postgresql://…``), bring its schema
    up to date, and bind it to the audit ``shard`` this process writes (None: read-only use).
    With ``migrate=False`` (the auditor's tools) the schema is left alone and a missing SQLite
    file is an error rather than a new, empty store. ``keys`` (the key ring) seal and unseal
    the store's raw data; without them, only the audit log and row counts can be used, and a
    store of schema 3 holding vehicle data cannot be migrated.

    Raises :class:`StoreError` if the URL is not understood or the database does not answer.
    """
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path:
            raise StoreError(f"no file in store URL {url!r}")
        store: Store = SqliteStore(url, path, shard, create=migrate)
    elif url.startswith(("postgresql://", "postgres://")):
        store = PostgresStore(url, shard)
    else:
        raise StoreError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://…")
    store.keys = keys
    if migrate:
        try:
            store.migrate()
            compact_if_pending(store)
        except BaseException:
            store.close()
            raise
    return store
