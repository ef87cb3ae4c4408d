"""The sequential rule sections, in (vehicle, time, row) order (RULES.md arrows 8-11).

Trip start trimming, down-sampling, the cross-border gate and trip end trimming follow each
vehicle's records in time order; they run after the column rules
(:mod:`gateway.pipeline.decide.columnar`) on the rows those left unblocked, each a function
named after its rule; :func:`apply` runs them in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.model import BoolArray, FloatArray
from gateway.pipeline.decide.columnar import rows_with
from gateway.pipeline.decide.context import BatchContext, Changes, ViewPairs
from gateway.pipeline.decide.downsample import downsample, last_sent_seeds, record_last_sent
from gateway.pipeline.decide.gate import TIER_RULES, GateResult, crossborder_gate
from gateway.pipeline.decide.held import released, settle_held
from gateway.pipeline.decide.plan import ResolvedView
from gateway.pipeline.decide.result import Applied, Verdict
from gateway.pipeline.decide.rulebits import BIT, IntpArray, bits_of
from gateway.pipeline.decide.trips import left_start, trimmed
from gateway.policy.rules import RuleId

__all__ = ["apply"]

_GATE_BLOCK = bits_of(RuleId.XBORDER_BASIS_MISSING, RuleId.XBORDER_IMPACT_ASSESSMENT, *TIER_RULES)
_KEEP_APPLIED = np.uint32(Applied.TRIMMED | Applied.ZONE_MASKED | Applied.PER_TRIP_TRIM)


@dataclass(slots=True, eq=False)
class _Sorted:
    """One view's pass over the sorted rows (``trips.order``): ``ok`` (still going),
    ``raised`` (under a per-trip pseudonym whose trim exceeds the view's), ``thr`` (the trim
    distance per row), ``trimming`` (any trim applies), ``seeds`` (last sent, per vehicle)."""

    ok: BoolArray
    raised: BoolArray
    thr: FloatArray
    trimming: bool
    seeds: FloatArray


def apply(ctx: BatchContext, view: ResolvedView, p: ViewPairs, changes: Changes) -> None:
    """Apply the sequential rules of ``view`` to ``p``, settle the views held for it from
    earlier batches and give the final verdict."""
    trips = ctx.trips
    order = trips.order
    trim = view.subscriber.view.trip_trim_m
    raised = p.per_trip[order] & (view.per_trip_trim_m > trim)
    thr = np.where(raised, view.per_trip_trim_m, trim)
    sp = _Sorted(
        ok=~p.blocked[order],
        raised=raised,
        thr=thr,
        trimming=bool(len(order)) and bool(thr.max(initial=0.0) > 0),
        seeds=np.empty(0),
    )
    if sp.trimming:
        trip_start_trim(ctx, view, p, sp)
    if len(order):
        sp.seeds = last_sent_seeds(trips, ctx.state, view.id)
        view_downsample(ctx, view, p, sp)
        if view.cross_border:
            crossborder(ctx, view, p, sp, changes)
        record_last_sent(trips, sp.ok, sp.seeds, view.id, ctx.state.vehicles, changes.last_sent)
    if sp.trimming:
        trip_end_trim(ctx, p, sp)
    rel, dis = settle_held(
        trips,
        ctx.state,
        ctx.held_veh,
        view.id,
        (trim, view.per_trip_trim_m),
        ctx.plan.bundle.version,
    )
    changes.released.extend(rel.tolist())
    changes.discarded.extend(dis.tolist())
    _final_block(p)


def trip_start_trim(ctx: BatchContext, view: ResolvedView, p: ViewPairs, sp: _Sorted) -> None:
    """``pi.trip-trim`` at the start: records are blocked until the trip has been the trim
    distance from its first position."""
    trips = ctx.trips
    left = left_start(trips, view.subscriber.view.trip_trim_m)
    if sp.raised.any():
        left = np.where(sp.raised, left_start(trips, view.per_trip_trim_m), left)
    cut = sp.ok & ~left
    rows_cut = trips.order[cut]
    p.verdict[rows_cut] = Verdict.BLOCK
    p.block_rules[rows_cut] = BIT[RuleId.PI_TRIP_TRIM]
    p.applied[rows_cut] = trimmed(sp.raised[cut])
    sp.ok &= left


def view_downsample(ctx: BatchContext, view: ResolvedView, p: ViewPairs, sp: _Sorted) -> None:
    """``view.downsample``: at most one record per vehicle per ``min_interval_s``."""
    sent = downsample(ctx.trips, sp.ok, view.subscriber.view.min_interval_s, sp.seeds)
    dropped_rows = ctx.trips.order[sp.ok & ~sent]
    p.verdict[dropped_rows] = Verdict.BLOCK
    p.block_rules[dropped_rows] = BIT[RuleId.VIEW_DOWNSAMPLE]
    p.applied[dropped_rows] = 0
    sp.ok &= sent


def crossborder(
    ctx: BatchContext, view: ResolvedView, p: ViewPairs, sp: _Sorted, changes: Changes
) -> None:
    """The cross-border gate (``xborder.*``): the picked records of all vehicles in time
    order, each allowed only at a tier a valid legal basis covers."""
    spi = p.out_pos | (rows_with(ctx.classified, view.sensitive, ctx.n) & ctx.live)
    gated, gate = _gate(ctx, view, sp.ok, spi)
    changes.counted.extend(gate.counted)
    rows_gated = ctx.trips.order[gated]
    p.rules[rows_gated] |= np.asarray(gate.rules, dtype=np.uint64)
    allowed = np.asarray(gate.allowed, dtype=bool)
    denied = rows_gated[~allowed]
    p.verdict[denied] = Verdict.BLOCK
    p.block_rules[denied] = p.rules[denied] & _GATE_BLOCK
    p.applied[denied] = 0
    for row, basis in zip(rows_gated.tolist(), gate.basis, strict=True):
        if basis:
            p.add_basis(row, basis)
    sp.ok[gated[~allowed]] = False


def _gate(
    ctx: BatchContext, view: ResolvedView, ok: BoolArray, sensitive: BoolArray
) -> tuple[IntpArray, GateResult]:
    """Cross-border gate for the sorted positions ``ok``, taken in (time, row) order: the
    sorted positions in that order, and the gate's per-record result. Arrival breaks a tie
    in time, never the vehicle's place in the batch, so cutting a stream into batches
    changes nobody's turn at a threshold."""
    trips = ctx.trips
    pos = np.flatnonzero(ok)
    if pos.size == 0:
        return pos, GateResult((), (), (), ())
    pos = pos[np.lexsort((trips.order[pos], trips.time[pos]))]
    the_plan = ctx.plan
    result = crossborder_gate(
        view.subscriber,
        the_plan.bundle.rules.crossborder,
        the_plan.day,
        the_plan.year,
        ctx.state.crossborder,
        trips.vehicles[trips.veh[pos]].tolist(),
        sensitive[trips.order[pos]].tolist(),
    )
    return pos, result


def trip_end_trim(ctx: BatchContext, p: ViewPairs, sp: _Sorted) -> None:
    """``pi.trip-trim`` at the end: a record is held until the vehicle has been the trim
    distance from it, dropped if its trip ends first."""
    trips = ctx.trips
    order = trips.order
    cand = np.flatnonzero(sp.ok & (sp.thr > 0))
    go = released(trips, cand, sp.thr[cand])
    waiting = cand[~go]
    ended = trips.ended[trips.seg[waiting]]
    dropped_rows = order[waiting[ended]]
    p.verdict[dropped_rows] = Verdict.BLOCK
    p.block_rules[dropped_rows] = BIT[RuleId.PI_TRIP_TRIM]
    p.applied[dropped_rows] = trimmed(sp.raised[waiting[ended]])
    held_rows = order[waiting[~ended]]
    p.verdict[held_rows] = Verdict.HELD
    p.rules[held_rows] |= BIT[RuleId.PI_TRIP_TRIM]


def _final_block(p: ViewPairs) -> None:
    """A blocked pair cites only its blocking rules, carries no consent, basis or position
    and keeps only the trimming and zone marks of what was applied."""
    final_block = p.verdict == Verdict.BLOCK
    p.rules[final_block] = p.block_rules[final_block]
    p.applied[final_block] &= _KEEP_APPLIED
    p.consent[final_block] = None
    p.basis[final_block] = None
    p.out_pos &= ~final_block
    p.degraded &= ~final_block
