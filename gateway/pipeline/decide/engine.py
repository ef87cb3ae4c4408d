"""The decision stage's entry point: :func:`decide` hands each view to the rule sections.

Shared parts are derived once per batch (:class:`~gateway.pipeline.decide.context.BatchContext`);
each view then goes through the column rules (:mod:`~gateway.pipeline.decide.columnar`) and
the sequential ones (:mod:`~gateway.pipeline.decide.sequential`), and its pairs are stored
in the :class:`~gateway.pipeline.decide.result.Decisions` columns.
"""

from __future__ import annotations

import numpy as np

from gateway.model import Batch
from gateway.pipeline.classify import Classified
from gateway.pipeline.decide import columnar, sequential
from gateway.pipeline.decide.context import BatchContext, Changes, ViewPairs
from gateway.pipeline.decide.plan import Plan, ResolvedView
from gateway.pipeline.decide.result import Decisions
from gateway.pipeline.geo import Located
from gateway.state.snapshot import StateSnapshot

__all__ = ["decide"]


def decide(
    batch: Batch,
    classified: Classified,
    located: Located,
    the_plan: Plan,
    state: StateSnapshot,
) -> Decisions:
    """Decide every (record, subscriber) pair of ``batch`` (see :mod:`gateway.pipeline.decide`).

    Pure: reads only its arguments. Guarantees: a rejected row is blocked for everyone; no
    pair of a non-privileged subscriber carries a position finer than the grid floor or in
    a datum other than GCJ-02; every cited rule id is a :class:`RuleId` (so in the bundle's
    catalogue); the result does not depend on how a stream of records is cut into batches,
    given the state each batch leaves.
    """
    ctx = BatchContext.of(batch, classified, located, the_plan, state)
    changes = Changes()
    shape = (len(the_plan.views), len(batch))
    verdict = np.zeros(shape, dtype=np.uint8)
    rules = np.zeros(shape, dtype=np.uint64)
    applied = np.zeros(shape, dtype=np.uint32)
    consent = np.full(shape, None, dtype=object)
    basis = np.full(shape, None, dtype=object)
    position = np.zeros(shape, dtype=bool)
    redacted = np.zeros(shape, dtype=bool)
    for view in the_plan.views:
        p = _decide_view(ctx, view, changes)
        s = view.index
        verdict[s], rules[s], applied[s] = p.verdict, p.rules, p.applied
        consent[s], basis[s] = p.consent, p.basis
        position[s], redacted[s] = p.out_pos, p.degraded
    trips = ctx.trips
    return Decisions(
        plan=the_plan,
        batch=batch,
        classified=classified,
        located=located,
        verdict=verdict,
        rules=rules,
        applied=applied,
        consent=consent,
        basis=basis,
        position=position,
        redacted=redacted,
        trip_start=trips.by_row(len(batch), trips.start[trips.seg], np.nan),
        trip_lat=trips.by_row(len(batch), trips.lat, np.nan),
        trip_lon=trips.by_row(len(batch), trips.lon, np.nan),
        delta=changes.delta(ctx),
        inherited=ctx.inherited,
    )


def _decide_view(ctx: BatchContext, view: ResolvedView, changes: Changes) -> ViewPairs:
    """One view's pairs: the column rules, then the sequential ones."""
    p = ViewPairs.start(ctx.n)
    columnar.apply(ctx, view, p)
    sequential.apply(ctx, view, p, changes)
    return p
