"""What every rule section of :func:`~gateway.pipeline.decide.decide` reads and writes.

:class:`BatchContext`: the batch, its stages' outputs and what is derived from them once per
batch (trips, consents, inherited positions). :class:`ViewPairs`: one view's pairs, built up
rule by rule. :class:`Changes`: the state changes collected over the views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.model import Batch, BoolArray
from gateway.pipeline.classify import Classified
from gateway.pipeline.decide.consent import ConsentIndex
from gateway.pipeline.decide.held import held_vehicles
from gateway.pipeline.decide.inherit import inherit
from gateway.pipeline.decide.plan import Plan
from gateway.pipeline.decide.rulebits import IntpArray
from gateway.pipeline.decide.trips import Trips, trips_of
from gateway.pipeline.geo import Located
from gateway.policy.schema import ExportDataClass
from gateway.state.snapshot import SentTimes, StateDelta, StateSnapshot

__all__ = ["BatchContext", "Changes", "ViewPairs"]


@dataclass(frozen=True, slots=True, eq=False)
class BatchContext:
    """A batch and what the views share: ``live`` rows (not rejected), ``live_pos`` (live
    with a position), ``has_alt`` (live with an altitude), ``unclassified_any`` (live with a
    field outside the catalogue), its :class:`Trips`, consents, the views held for its
    vehicles (``held_veh``: per held view of the state, its vehicle's code in ``trips``) and
    the positions inherited by rows without one."""

    batch: Batch
    classified: Classified
    located: Located
    plan: Plan
    state: StateSnapshot
    trips: Trips
    consents: ConsentIndex
    held_veh: IntpArray
    inherited: Located | None
    live: BoolArray
    live_pos: BoolArray
    has_alt: BoolArray
    unclassified_any: BoolArray

    @classmethod
    def of(
        cls,
        batch: Batch,
        classified: Classified,
        located: Located,
        the_plan: Plan,
        state: StateSnapshot,
    ) -> BatchContext:
        """Derive the shared parts once per batch."""
        live = batch.ok
        trips = trips_of(batch, classified, located, state, the_plan.bundle.rules.trips.split_gap_s)
        return cls(
            batch=batch,
            classified=classified,
            located=located,
            plan=the_plan,
            state=state,
            trips=trips,
            consents=ConsentIndex(batch, trips, state),
            held_veh=held_vehicles(trips, state),
            inherited=inherit(batch, located, trips, the_plan),
            live=live,
            live_pos=live & located.positioned,
            has_alt=np.isfinite(batch.alt) & live,
            unclassified_any=classified.any_unclassified & live,
        )

    @property
    def n(self) -> int:
        """Rows in the batch."""
        return len(self.batch)


@dataclass(slots=True, eq=False)
class ViewPairs:
    """One view's pairs over the batch's rows, built up by the rule sections in order.

    The outcome: ``rules`` (bit set), ``applied``, ``consent`` / ``basis`` (ids or ``None``),
    ``degraded`` (something the view would normally receive was removed), ``verdict`` and
    ``block_rules`` (the rules a blocked row cites). Masks the later rules read: zone hits
    (``zone_hit``, ``prohibited``, ``sensitive``; ``unplaced``: no known position), ``blocked``
    (before the sequential rules), ``wants_pos`` (a position the view would carry),
    ``out_pos`` (one that goes), ``removed`` (wanted and not going), ``derived_in``
    (location-derived fields the view allows), ``consent_dropped`` (position and derived
    fields lost for want of consent), ``trip_pseudonym`` / ``per_trip`` (no-consent fallback;
    the identifier that goes is a per-trip pseudonym).
    """

    rules: npt.NDArray[np.uint64]
    applied: npt.NDArray[np.uint32]
    consent: npt.NDArray[np.object_]
    basis: npt.NDArray[np.object_]
    degraded: BoolArray
    zone_hit: BoolArray
    prohibited: BoolArray
    sensitive: BoolArray
    unplaced: BoolArray
    blocked: BoolArray
    wants_pos: BoolArray
    out_pos: BoolArray
    removed: BoolArray
    derived_in: BoolArray
    consent_dropped: BoolArray
    trip_pseudonym: BoolArray
    per_trip: BoolArray
    verdict: npt.NDArray[np.uint8]
    block_rules: npt.NDArray[np.uint64]

    @classmethod
    def start(cls, n: int) -> ViewPairs:
        """Nothing decided yet for ``n`` rows."""

        def none() -> BoolArray:
            return np.zeros(n, dtype=bool)

        return cls(
            rules=np.zeros(n, dtype=np.uint64),
            applied=np.zeros(n, dtype=np.uint32),
            consent=np.full(n, None, dtype=object),
            basis=np.full(n, None, dtype=object),
            degraded=none(),
            zone_hit=none(),
            prohibited=none(),
            sensitive=none(),
            unplaced=none(),
            blocked=none(),
            wants_pos=none(),
            out_pos=none(),
            removed=none(),
            derived_in=none(),
            consent_dropped=none(),
            trip_pseudonym=none(),
            per_trip=none(),
            verdict=np.zeros(n, dtype=np.uint8),
            block_rules=np.zeros(n, dtype=np.uint64),
        )

    def add_basis(self, row: int, basis: str) -> None:
        """Cite legal basis ``basis`` for ``row`` after those already cited."""
        prior = self.basis[row]
        self.basis[row] = f"{prior},{basis}" if prior else basis


@dataclass(slots=True, eq=False)
class Changes:
    """State changes collected over the views: last-sent times per subscriber, vehicles newly
    counted at the cross-border gate, held views (indices into ``state.held``) released and
    discarded."""

    last_sent: dict[str, SentTimes] = field(default_factory=dict)
    counted: list[tuple[str, int, ExportDataClass, str]] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)

    def delta(self, ctx: BatchContext) -> StateDelta:
        """The state change to persist with the batch."""
        held = ctx.state.held.views
        return StateDelta(
            trips=ctx.trips.new_state,
            last_sent=self.last_sent,
            counted=tuple(self.counted),
            released=tuple(held[i] for i in self.released),
            discarded=tuple(held[i] for i in self.discarded),
            settled=tuple(self.released + self.discarded),
        )
