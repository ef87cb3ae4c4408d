"""The cross-border counts a batch is decided on: read, locked and checked in the store.

The store is the one source of truth for how many subjects each recipient has received
this counting year (every worker's commits keep it). A batch is decided on counts read
before its transaction (:func:`crossborder_counts`); its commit takes the counters' locks
(:func:`lock_crossborder`, in one order, as every commit takes them) and checks that the
counts it adds to are still those it was decided on (:func:`check_counts`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager

from gateway.errors import StaleDecisionError
from gateway.policy.bundle import PolicyBundle
from gateway.policy.schema import ExportDataClass, counting_year
from gateway.state.snapshot import CounterKey, CrossBorderCount, StateSnapshot
from gateway.store import Reader, Transaction

__all__ = ["check_counts", "crossborder_counts", "lock_crossborder"]


def _crossborder_subscribers(bundle: PolicyBundle) -> list[str]:
    return sorted(s.id for s in bundle.subscribers.values() if s.cross_border)


def crossborder_counts(
    reader: Callable[[], AbstractContextManager[Reader]],
    bundle: PolicyBundle,
    vehicles: Sequence[str],
    now: float,
    vehicle_ref: Callable[[str], str],
) -> dict[CounterKey, CrossBorderCount]:
    """Counts for every cross-border subscriber of ``bundle`` this year, with the batch's
    ``vehicles`` that are already counted (what the engine needs; the store holds keyed
    refs), read in what ``reader`` opens (opened only if there is anything to read)."""
    year = counting_year(bundle.rules.crossborder.year_utc_offset_hours, now)
    subs = _crossborder_subscribers(bundle)
    if not subs or not vehicles:
        return {}
    with reader() as rd:
        return _counts_in(rd, subs, year, vehicles, vehicle_ref)


def _counts_in(
    rd: Reader,
    subs: list[str],
    year: int,
    vehicles: Sequence[str],
    vehicle_ref: Callable[[str], str],
) -> dict[CounterKey, CrossBorderCount]:
    out: dict[CounterKey, CrossBorderCount] = {}
    unique = list(dict.fromkeys(vehicles))
    refs = [vehicle_ref(v) for v in unique]
    for sub in subs:
        for data_class in ExportDataClass:
            count = rd.crossborder_count(sub, year, data_class.value)
            if count == 0:
                continue
            new = set(rd.crossborder_new(sub, year, refs, data_class.value))
            known = frozenset(v for v, r in zip(unique, refs, strict=True) if r not in new)
            out[(sub, year, data_class)] = CrossBorderCount(count, known)
    return out


def lock_crossborder(tx: Transaction, bundle: PolicyBundle, now: float) -> None:
    """Take the counters' locks of every cross-border subscriber of ``bundle`` this year
    (in one order, as every commit takes them)."""
    year = counting_year(bundle.rules.crossborder.year_utc_offset_hours, now)
    for sub_id in _crossborder_subscribers(bundle):
        tx.lock_crossborder(sub_id, year)


def check_counts(
    tx: Transaction,
    state: StateSnapshot,
    crossborder: Mapping[tuple[str, int, str], object],
) -> None:
    """Under the counters' locks, the counts of every (recipient, year) the batch adds
    subjects to (``crossborder``) must be those it was decided on (``state``); else raise
    :class:`StaleDecisionError`. Every class is compared, not only those added to: a tier
    may depend on any."""
    pairs = sorted({(recipient, year) for recipient, year, _ in crossborder})
    for recipient, year in pairs:
        tx.lock_crossborder(recipient, year)
    stale = [
        (recipient, year, c.value)
        for recipient, year in pairs
        for c in ExportDataClass
        if tx.crossborder_count(recipient, year, c.value) != state.count((recipient, year, c)).count
    ]
    if stale:
        raise StaleDecisionError(stale)
