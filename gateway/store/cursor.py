"""What every table's repository works with: a session over one transaction's cursor.

A :class:`Session` reads (``fetch_one``, ``fetch_all``, ``pages``), a :class:`WriteSession`
also writes (``execute``, ``insert_rows``, ``lock_key``); queries are written with ``?``
placeholders and put in the dialect's form here. The repositories (one module per table)
hold the SQL; nothing else runs any.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.store.connection import Store
    from gateway.store.sealing import AtRestKeys

MAX_PARAMS = 999
"""Parameters per statement: SQLite's limit before 3.32 (PostgreSQL allows 65,535)."""

CHUNK = 400
"""Values per ``IN (...)`` list: well under SQLite's 32,766 parameter limit."""


class Cursor(Protocol):
    """The DB-API cursor methods the store uses (sqlite3 and psycopg 3 both have them)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def executemany(self, sql: Any, params: Any, /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int = ..., /) -> list[Any]: ...


def marks(n: int) -> str:
    """``?,?,…`` for a list of ``n`` values."""
    return ",".join("?" * n)


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    """``values`` in lists of at most ``size``, in order."""
    for i in range(0, len(values), size):
        yield list(values[i : i + size])


def insert_rows(
    cur: Cursor,
    sql: Callable[[str], str],
    head: str,
    rows: Sequence[tuple[Any, ...]],
    tail: str = "",
) -> None:
    """``head values (?,…),(?,…)… tail`` for ``rows``, in a few statements within the
    parameter limit (``sql`` puts a query in the dialect's form).

    Not ``executemany``: the sqlite3 module lets go of the interpreter for every row it
    steps, and each time another busy thread (a policy being loaded) may keep it for up to
    the switch interval; a batch's 44 audit rows one by one took the pipeline ~0.3 s then.
    """
    if not rows:
        return
    width = len(rows[0])
    most = 1 << (max(1, MAX_PARAMS // width).bit_length() - 1)
    one = "(" + ",".join("?" * width) + ")"
    i = 0
    while i < len(rows):
        # Chunks of a power of two rows (44 = 32 + 8 + 4): a handful of distinct statements
        # per table, so they stay in the connection's statement cache.
        n = min(most, 1 << ((len(rows) - i).bit_length() - 1))
        chunk = rows[i : i + n]
        cur.execute(
            sql(f"{head} values {','.join([one] * n)}{tail}"),
            [value for row in chunk for value in row],
        )
        i += n


class Session:
    """Read-only access inside one snapshot (a read transaction) of the store."""

    def __init__(self, store: Store, cur: Cursor) -> None:
        self._store = store
        self._cur = cur

    @property
    def store(self) -> Store:
        """The store this session belongs to (its dialect: ``kind``, ``skip_locked``…)."""
        return self._store

    def at_rest(self) -> AtRestKeys:
        """The keys that seal raw data (:meth:`Store.at_rest`)."""
        return self._store.at_rest()

    def sql(self, sql: str) -> str:
        """The dialect's form of ``sql`` (written with ``?`` placeholders)."""
        return self._store.sql(sql)

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first row of ``sql``, or None."""
        self._cur.execute(self.sql(sql), tuple(params))
        return self._cur.fetchone()

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of ``sql``."""
        self._cur.execute(self.sql(sql), tuple(params))
        return self._cur.fetchall()

    def pages(self, select: str, key: int) -> Iterator[list[Any]]:
        """``select`` (ordered by its first ``key`` columns) page by page, 1,000 rows each."""
        last: tuple[Any, ...] | None = None
        head, order = select.split(" order by ")
        joiner = " and " if " where " in head else " where "
        while True:
            if last is None:
                rows = self.fetch_all(f"{select} limit 1000")
            else:
                where = f"({order}) > ({','.join('?' * key)})"
                rows = self.fetch_all(f"{head}{joiner}{where} order by {order} limit 1000", last)
            if not rows:
                return
            yield rows
            last = tuple(rows[-1][:key])


class WriteSession(Session):
    """A session that may write: everything done through it commits together or not at all."""

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        """Run one statement; returns the rows it changed (-1 where the database does not
        say)."""
        if params is None:
            self._cur.execute(self.sql(sql))
        else:
            self._cur.execute(self.sql(sql), params)
        return int(self._cur.rowcount)

    def execute_in(self, sql: str, values: Sequence[Any], *head: Any) -> int:
        """Run ``sql`` (``… in ({})``) for ``values``, :data:`CHUNK` at a time, with
        parameters ``head`` before each chunk; returns the rows changed in all."""
        count = 0
        for chunk in chunks(values):
            count += max(self.execute(sql.format(marks(len(chunk))), [*head, *chunk]), 0)
        return count

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each of ``rows``."""
        self._cur.executemany(self.sql(sql), rows)

    def insert_rows(self, head: str, rows: Sequence[tuple[Any, ...]], tail: str = "") -> None:
        """Insert ``rows`` with ``head`` (``insert into t (a, b)``) and ``tail`` (``on
        conflict …``), a few statements for all of them (see :func:`insert_rows`)."""
        insert_rows(self._cur, self.sql, head, rows, tail)

    def bulk_insert(self, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
        """Insert many rows the dialect's fastest way (PostgreSQL: COPY)."""
        self._store.bulk_insert(self._cur, table, columns, rows)

    def lock_key(self, key: str) -> None:
        """Take a lock on ``key`` until the transaction ends (:meth:`Store.lock_key`)."""
        self._store.lock_key(self._cur, key)
