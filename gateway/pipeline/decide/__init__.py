"""Decide: for every record and every subscriber, what may go, in which form, and why.

Pure functions over a batch, its classification (:mod:`gateway.pipeline.classify`), its
located positions (:mod:`gateway.pipeline.geo`), the bundle resolved for the decision time
(:func:`plan`) and a :class:`~gateway.state.snapshot.StateSnapshot`. No I/O. The result,
:class:`Decisions`, is a record × subscriber structure (arrays of shape ``(subscribers,
rows)``): a :class:`Verdict`, the rule ids cited (a bit set over
:class:`~gateway.policy.rules.RuleId`), the transformations applied (:class:`Applied`), the
output precision and datum, the consent and legal basis used, and the zone ids hit. It also
carries the :class:`~gateway.state.snapshot.StateDelta` for the store.

Each arrow of RULES.md, per (record, subscriber), in this order:

1. A rejected row (decode error) is blocked for everyone: ``input.invalid``, with its reason.
2. Privilege (§1): a subscriber with a valid (unexpired on the decision day, Beijing time)
   navigation-map surveying qualification that is in and stores in mainland China gets its
   view as configured (raw WGS-84 if it asks: ``geo.raw-requires-qualification``). Everyone
   else gets a grid of at least ``geo.grid_floor_m`` (``geo.grid-floor``, ``view.precision``)
   in GCJ-02 (``geo.datum-gcj02``); ``altitude: keep`` becomes remove, a coarsened altitude
   is never finer than ``geo.altitude_floor_m`` and ``location_derived: keep`` becomes
   coarsen.
3. Zones (§2), on the cell the row would be reported in at the subscriber's grid (the point,
   for raw): a ``prohibited`` hit blocks the record (``zone.prohibited``), a ``sensitive`` hit
   removes the position, altitude and location-derived fields (``zone.sensitive``), unless the
   subscriber is mainland and holds a valid authorisation naming that zone
   (``zone.authorised``). A row whose position cannot be placed on the grid is prohibited
   (fail closed). For a cross-border subscriber a zone hit is also important data
   (``xborder.important-data``): authorisations never apply abroad. A row without a position
   inherits its trip's last known one (in the batch or from the state) and is judged on it
   the same way; a row whose trip has no known position yet loses its location-derived
   fields (``pi.location-derived``, fail closed).
4. Geographic data abroad (§1, §4): no position of any precision goes to a cross-border
   subscriber without a valid geodata export approval (``geo.mainland-only``).
5. A position the datum transform cannot produce (outside its area) is removed, never sent
   as WGS-84 (``geo.datum-unavailable``).
6. Trajectories (§3): a position beside any vehicle identifier needs the vehicle's consent for
   one of the subscriber's purposes, active at the record's time and at the decision time
   (granted, unexpired, not revoked): ``pi.trajectory-consent``. Without it the view's
   fallback applies: the position and location-derived fields are removed
   (``pi.no-consent-drop-location``) or the identifier becomes a per-trip pseudonym
   (``pi.no-consent-trip-pseudonym``). Consent is the vehicle's standing, not the record's:
   every record of a view that may carry a position is judged, so masked records and records
   without a position get the same identifier (and lose the same fields) as located ones.
   Consent is judged per trip too: one granted after the trip began covers none of it, and
   when one held at the trip's start lapses, the rest of the trip also loses its position
   (a per-trip pseudonym would continue the stable one's track).
7. Removing the position always removes altitude and location-derived fields with it.
   Location-derived fields otherwise follow the view (``pi.location-derived``); altitude is
   removed or coarsened (``geo.altitude-removed``, ``geo.altitude-coarsened``); the time is
   truncated (``view.time-precision``); the VIN becomes a keyed pseudonym
   (``pi.vin-pseudonym``) unless the view discloses it (``pi.vin-disclosed``); fields outside
   the view are removed (``view.field-not-allowed``), unclassified ones everywhere
   (``field.unclassified``, reported per row, never blocking). Beside a per-trip pseudonym,
   fields whose value carries over between trips (``links_trips`` in the catalogue:
   odometer, energy levels) are removed: they would link the trips.
8. Trip start trimming (§3): records of a trip are blocked until the vehicle has been at
   least ``trip_trim_m`` (geodesic, WGS-84) from the trip's first position (``pi.trip-trim``).
   Records under a per-trip pseudonym are trimmed (here and in 11) by at least
   ``rules.trips.pseudonym_trim_m``: where one trip ends the next begins.
9. Down-sampling: at most one record per vehicle per ``min_interval_s`` (``view.downsample``).
10. Cross-border thresholds (§4): see :func:`crossborder_gate`; a record that would need a
    tier its recipient's valid legal bases do not cover is blocked
    (``xborder.basis-missing``); otherwise the tier is cited (``xborder.exempt``,
    ``xborder.tier-contract``, ``xborder.tier-assessment``).
11. Trip end trimming (§3): each record is held until the vehicle has been seen at least
    ``trip_trim_m`` from it; it is dropped (``pi.trip-trim``) if the trip ends first (a gap of
    ``trips.split_gap_s`` or a key-off record). Rows still undecided at the end of a batch are
    :attr:`Verdict.HELD`: the latency this costs is the time the vehicle takes to move that
    far. Held views are state (see :mod:`gateway.state.snapshot`).

A record's verdict is ``block`` if nothing goes, ``redact`` if something the view would
normally receive was removed or degraded by a rule that this record triggered (zone, consent,
export, datum area), else ``share``.

Order. Trips, trimming and down-sampling follow each vehicle's records in time order (ties by
row order); down-sampling picks its records before the cross-border gate, which then takes
the picked records of all vehicles in time order (ties by vehicle id, then row). These are
the only sequential parts; everything else is computed on whole columns, one subscriber at a
time. Cutting a stream into batches in time order, carrying the state, gives the same
outcome as one batch (a held view released by a later batch is sent then).
"""

from __future__ import annotations

from gateway.pipeline.decide.engine import decide
from gateway.pipeline.decide.gate import GateResult, crossborder_gate
from gateway.pipeline.decide.held import sweep
from gateway.pipeline.decide.plan import Plan, ResolvedView, plan
from gateway.pipeline.decide.result import Applied, Decisions, Verdict
from gateway.pipeline.decide.rulebits import rule_ids
from gateway.pipeline.decide.trips import distance_m

__all__ = [
    "Applied",
    "Decisions",
    "GateResult",
    "Plan",
    "ResolvedView",
    "Verdict",
    "crossborder_gate",
    "decide",
    "distance_m",
    "plan",
    "rule_ids",
    "sweep",
]
