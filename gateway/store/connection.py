"""A connection to the store: one transaction at a time, database errors as
:class:`~gateway.errors.StoreError`.

:class:`Store` is what every dialect (:mod:`gateway.store.dialects`) has in common: the
transaction discipline (:meth:`Store.transaction`, :meth:`Store.snapshot`), the keys that
seal data at rest, and the points where SQLite and PostgreSQL differ (placeholders, locks,
bulk inserts, compaction, row locks and skipped locks in sub-selects).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

from gateway.errors import GatewayError, StoreError
from gateway.store import schema
from gateway.store.cursor import Cursor, insert_rows
from gateway.store.sealing import AtRestKeys
from gateway.store.session import Reader, Transaction


def _wrap_db_errors(store: Store) -> Callable[[BaseException], BaseException]:
    def wrap(exc: BaseException) -> BaseException:
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, store.db_errors):
            return StoreError(f"{store.kind} store: {exc}")
        return exc

    return wrap


class Store(ABC):
    """A connection to the transactional store. Thread-safe: one transaction at a time."""

    kind = "abstract"
    blob_type = "blob"
    for_update = ""
    skip_locked = ""
    """Appended to a sub-select of rows to delete: rows another transaction is deleting
    are left to it (workers sharing a store forget the same oldest rows)."""
    db_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, url: str, shard: str | None) -> None:
        self.url = url
        self.shard = shard
        self._lock = threading.RLock()
        self.keys: AtRestKeys | None = None
        self.converted = 0
        """Rows the last migration converted to the sealed form (0: nothing to convert)."""

    def at_rest(self) -> AtRestKeys:
        """The keys that seal raw data and key vehicle references; :class:`StoreError` if
        the store was opened without the key directory."""
        if self.keys is None:
            raise StoreError(
                f"{self.kind} store: sealed data needs the key directory (open it with keys)"
            )
        return self.keys

    def sql(self, sql: str) -> str:
        """The dialect's form of a query written with ``?`` placeholders."""
        return sql

    @abstractmethod
    def _cursor(self) -> Cursor: ...

    @abstractmethod
    def _begin(self, cur: Cursor, write: bool) -> None: ...

    @abstractmethod
    def _commit(self, cur: Cursor) -> None: ...

    @abstractmethod
    def _rollback(self, cur: Cursor) -> None: ...

    def bulk_insert(
        self, cur: Cursor, table: str, columns: str, rows: list[tuple[Any, ...]]
    ) -> None:
        """Insert many rows into ``table`` (``columns`` in the rows' order)."""
        insert_rows(cur, self.sql, f"insert into {table} ({columns})", rows)

    @abstractmethod
    def lock_key(self, cur: Cursor, key: str) -> None:
        """Take a lock on ``key`` until the transaction ends."""

    @abstractmethod
    def compact(self, wait_s: float | None = None) -> None:
        """Leave no bytes of deleted rows in the database files, where the database allows;
        waiting at most ``wait_s`` (default: the store's lock timeout) for other
        connections. :class:`StoreError` if it could not (the deleted rows then still sit
        in older pages)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self, write: bool) -> Iterator[Cursor]:
        wrap = _wrap_db_errors(self)
        with self._lock:
            try:
                cur = self._cursor()
                self._begin(cur, write)
            except BaseException as exc:
                raise wrap(exc) from exc
            try:
                yield cur
            except BaseException as exc:
                with suppress(*self.db_errors):
                    self._rollback(cur)
                wrapped = wrap(exc)
                if wrapped is exc:
                    raise
                raise wrapped from exc
            try:
                self._commit(cur)
            except BaseException as exc:
                with suppress(*self.db_errors):
                    self._rollback(cur)
                raise wrap(exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction: committed (durably) when the block ends, rolled back if it
        raises. Database errors surface as :class:`StoreError`."""
        with self._tx(write=True) as cur:
            yield Transaction(self, cur)

    @contextmanager
    def snapshot(self) -> Iterator[Reader]:
        """A consistent read-only view for the length of the block."""
        with self._tx(write=False) as cur:
            yield Reader(self, cur)

    def migrate(self) -> None:
        """Create or upgrade the schema to :data:`~gateway.store.schema.SCHEMA_VERSION`."""
        schema.migrate(self)
