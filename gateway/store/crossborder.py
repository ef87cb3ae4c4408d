"""The cross-border tables: ``crossborder_subjects`` (each data subject exported to a
recipient in a year, once) and ``crossborder_counts`` (their number per recipient, year and
category, kept in the same transaction under the counter's lock, read in O(1))."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.store.cursor import Session, WriteSession, chunks, marks
from gateway.tlog.entries import to_ms


class CrossborderReads(Session):
    """Reading cross-border counts."""

    def crossborder_count(self, recipient: str, year: int, category: str = "pi") -> int:
        """Distinct data subjects exported to ``recipient`` in ``year`` (the counting year):
        the counter row kept with the subjects, read in O(1)."""
        row = self.fetch_one(
            "select subjects from crossborder_counts "
            "where recipient = ? and year = ? and category = ?",
            (recipient, year, category),
        )
        return int(row[0]) if row else 0

    def crossborder_new(
        self, recipient: str, year: int, subjects: Iterable[str], category: str = "pi"
    ) -> list[str]:
        """Those of ``subjects`` (deduplicated, in order) not yet counted for the year."""
        wanted = list(dict.fromkeys(subjects))
        known: set[str] = set()
        for chunk in chunks(wanted, 500):
            rows = self.fetch_all(
                "select subject from crossborder_subjects where recipient = ? and year = ? "
                f"and category = ? and subject in ({marks(len(chunk))})",
                (recipient, year, category, *chunk),
            )
            known.update(r[0] for r in rows)
        return [s for s in wanted if s not in known]


class CrossborderWrites(CrossborderReads, WriteSession):
    """Counting data subjects exported across the border."""

    def lock_crossborder(self, recipient: str, year: int) -> None:
        """Serialise threshold checks for (recipient, year) across workers until commit."""
        self.lock_key(f"crossborder:{recipient}:{year}")

    def add_crossborder_subjects(
        self,
        recipient: str,
        year: int,
        subjects: Iterable[str],
        *,
        category: str = "pi",
        at: float,
    ) -> int:
        """Count ``subjects`` as exported to ``recipient`` in ``year``; returns how many were
        new. Idempotent: a subject is counted once per (recipient, year, category). Takes
        :meth:`lock_crossborder`, so the counter row moves with the subjects it counts."""
        self.lock_crossborder(recipient, year)
        new = self.crossborder_new(recipient, year, subjects, category)
        if new:
            self.insert_rows(
                "insert into crossborder_subjects (recipient, year, category, subject, first_ms)",
                [(recipient, year, category, s, to_ms(at)) for s in new],
            )
            self.execute(
                "insert into crossborder_counts (recipient, year, category, subjects) "
                "values (?, ?, ?, ?) on conflict (recipient, year, category) "
                "do update set subjects = crossborder_counts.subjects + excluded.subjects",
                (recipient, year, category, len(new)),
            )
        return len(new)
