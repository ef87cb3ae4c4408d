"""Consent look-ups per row (RULES.md §3, ``pi.trajectory-consent``).

A consent covers a row if it is for one of the subscriber's purposes and active at the
row's time, at the decision time and since the row's trip began.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from gateway.model import Batch, BoolArray
from gateway.pipeline.decide.rulebits import IntpArray
from gateway.pipeline.decide.trips import Trips
from gateway.state.snapshot import StateSnapshot

__all__ = ["ConsentIndex"]


class ConsentIndex:
    """Per-row look-ups of a batch's consents, from the book's sorted columns."""

    def __init__(self, batch: Batch, trips: Trips, state: StateSnapshot) -> None:
        n = len(batch)
        self.time = batch.time
        self.now = state.now
        self.book = state.consents.columns()
        self.lo = np.zeros(n, dtype=np.intp)
        self.count = np.zeros(n, dtype=np.intp)
        self.trip_start = trips.by_row(n, trips.start[trips.seg], np.inf)
        vins = self.book.vins
        if len(vins) and len(trips.order):
            names = trips.names  # the batch's vehicles, once each
            pos = np.minimum(np.searchsorted(vins, names), len(vins) - 1)
            found = vins[pos] == names
            lo = np.where(found, self.book.lo[pos], 0)
            count = np.where(found, self.book.count[pos], 0)
            self.lo[trips.order] = lo[trips.veh]
            self.count[trips.order] = count[trips.veh]

    def _pairs(
        self, purposes: Iterable[str], rows: BoolArray
    ) -> tuple[IntpArray, IntpArray, BoolArray] | None:
        """Every (row, consent) pair of ``rows`` for one of ``purposes``."""
        idx = np.flatnonzero(rows & (self.count > 0))
        if idx.size == 0:
            return None
        cnt = self.count[idx]
        pair_row = np.repeat(idx, cnt)
        offsets = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        c = np.repeat(self.lo[idx], cnt) + offsets
        return pair_row, c, self.book.purpose_mask(purposes)[c]

    def lookup(self, purposes: Iterable[str], rows: BoolArray) -> npt.NDArray[np.object_]:
        """Per row (where ``rows``): id of the consent (smallest id) for one of ``purposes``
        active both at the row's time and at the decision time, else ``None``: an expired or
        withdrawn consent covers nothing decided afterwards, whatever the record's time. A
        consent granted after the row's trip began covers none of that trip: its stable
        pseudonym would continue the trip's per-trip views and name what went before."""
        out = np.full(len(rows), None, dtype=object)
        pairs = self._pairs(purposes, rows)
        if pairs is None:
            return out
        pair_row, c, wanted = pairs
        book = self.book
        t = self.time[pair_row]
        now = self.now
        active = wanted & (book.start[c] <= t) & (t < book.end[c])
        active &= (book.start[c] <= now) & (now < book.end[c])
        active &= book.start[c] <= self.trip_start[pair_row]
        pair_row, c = pair_row[active], c[active]
        if pair_row.size == 0:
            return out
        rows_u, first = np.unique(pair_row, return_index=True)
        out[rows_u] = book.ids[c[first]]
        return out

    def began_under(self, purposes: Iterable[str], rows: BoolArray) -> BoolArray:
        """Per row (where ``rows``): a consent for one of ``purposes`` held when the row's
        trip began (it may have lapsed since: the trip then had views under the stable
        pseudonym)."""
        out = np.zeros(len(rows), dtype=bool)
        pairs = self._pairs(purposes, rows)
        if pairs is None:
            return out
        pair_row, c, wanted = pairs
        start = self.trip_start[pair_row]
        held = wanted & (self.book.start[c] <= start) & (start < self.book.end[c])
        out[pair_row[held]] = True
        return out
