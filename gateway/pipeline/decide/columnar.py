"""The rule sections computed on whole columns, one view at a time (RULES.md arrows 1-7).

Each function applies one rule (or the rules of one section), named after it, to a
:class:`~gateway.pipeline.decide.context.ViewPairs`; :func:`apply` runs them in order.
"""

from __future__ import annotations

import numpy as np

from gateway.geo.zones import ZoneLevel
from gateway.model import BoolArray
from gateway.pipeline.classify import Classified
from gateway.pipeline.decide.context import BatchContext, ViewPairs
from gateway.pipeline.decide.inherit import inherited_zones
from gateway.pipeline.decide.plan import ResolvedView
from gateway.pipeline.decide.result import Applied, Verdict
from gateway.pipeline.decide.rulebits import BIT, U64, bits_of, set_where
from gateway.policy.rules import RuleId
from gateway.policy.schema import (
    AltitudeMode,
    DerivedMode,
    FieldCategory,
    IdentifierMode,
    NoConsentFallback,
    OutputDatum,
)
from gateway.vss import ALTITUDE, VIN

__all__ = ["apply", "rows_with"]

_NONE = np.array(None, dtype=object)
_KEEP_ON_BLOCK = bits_of(
    RuleId.ZONE_PROHIBITED, RuleId.XBORDER_IMPORTANT_DATA, RuleId.ZONE_AUTHORISED
)


def apply(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """Apply the column rules of ``view`` to ``p``, in RULES.md order, and set the verdict
    they give before the sequential rules."""
    field_unclassified(ctx, p)
    view_field_not_allowed(ctx, view, p)
    view_important_data(ctx, view, p)
    zone_mask(ctx, view, p)
    geo_mainland_only(ctx, view, p)
    geo_datum_unavailable(ctx, view, p)
    p.derived_in = _derived_in(ctx.classified, view, ctx.live)
    trajectory_consent(ctx, view, p)
    position(view, p)
    export_bases(ctx, view, p)
    altitude(ctx, view, p)
    location_derived(view, p)
    vin_pseudonym(ctx, view, p)
    time_precision(ctx, view, p)
    _verdict_before_sequential(ctx, p)


def rows_with(classified: Classified, paths: frozenset[str], n: int) -> BoolArray:
    """Rows where any of ``paths`` has a value."""
    out = np.zeros(n, dtype=bool)
    for path in paths & classified.present.keys():
        out |= classified.present[path]
    return out


def field_unclassified(ctx: BatchContext, p: ViewPairs) -> None:
    """``field.unclassified``: fields outside the catalogue are removed everywhere."""
    set_where(p.rules, ctx.unclassified_any, BIT[RuleId.FIELD_UNCLASSIFIED])
    set_where(p.applied, ctx.unclassified_any, np.uint32(Applied.UNCLASSIFIED_REMOVED))


def view_field_not_allowed(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """``view.field-not-allowed``: fields outside the view are removed."""
    not_allowed = np.zeros(ctx.n, dtype=bool)
    for path, present in ctx.classified.present.items():
        if path not in view.allowed and path not in view.withheld:
            not_allowed |= present
    if not view.allows_location:
        not_allowed |= ctx.located.positioned
    if ALTITUDE not in view.allowed:
        not_allowed |= ctx.has_alt
    not_allowed &= ctx.live
    set_where(p.rules, not_allowed, BIT[RuleId.VIEW_FIELD_NOT_ALLOWED])
    set_where(p.applied, not_allowed, np.uint32(Applied.FIELDS_REMOVED))


def view_important_data(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """``view.important-data`` / ``xborder.important-data``: important fields the view may
    not receive on the decision day are removed (the record is redacted)."""
    important_out = rows_with(ctx.classified, view.withheld, ctx.n) & ctx.live
    set_where(p.rules, important_out, U64(view.withheld_rule))
    set_where(p.applied, important_out, np.uint32(Applied.FIELDS_REMOVED))
    p.degraded |= important_out


def zone_mask(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """``zone.prohibited`` blocks, ``zone.sensitive`` masks, unless ``zone.authorised``; a
    zone hit abroad is ``xborder.important-data``. Rows without a position are judged on
    their inherited one (``unplaced`` where there is none)."""
    live_pos = ctx.live_pos
    layer = ctx.located.layer(view.grid_m)
    full_level = layer.level
    level = layer.levels_excluding(view.authorised) if view.authorised else full_level
    zone_hit = live_pos & (full_level != ZoneLevel.NONE)
    if view.authorised:
        auth_hit = layer.hits_any(view.authorised)
        set_where(p.rules, auth_hit & live_pos, BIT[RuleId.ZONE_AUTHORISED])
    prohibited = live_pos & (level == ZoneLevel.PROHIBITED)
    sensitive = live_pos & (level == ZoneLevel.SENSITIVE)
    if ctx.inherited is not None:  # rows without a position: their trip's last known one
        bare = ctx.live & ~ctx.located.positioned
        zone_hit, prohibited, sensitive, p.unplaced = inherited_zones(
            ctx.inherited, view, bare, p.rules, (zone_hit, prohibited, sensitive)
        )
    if view.cross_border:
        set_where(p.rules, zone_hit, BIT[RuleId.XBORDER_IMPORTANT_DATA])
    set_where(p.rules, prohibited, BIT[RuleId.ZONE_PROHIBITED])
    set_where(p.rules, sensitive, BIT[RuleId.ZONE_SENSITIVE])
    set_where(p.applied, sensitive | prohibited, np.uint32(Applied.ZONE_MASKED))
    p.zone_hit, p.prohibited, p.sensitive = zone_hit, prohibited, sensitive
    p.blocked = ~ctx.live | prohibited


def geo_mainland_only(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """``geo.mainland-only``: no position abroad without a geodata export approval. Sets the
    positions the view wants and those still going (not in a sensitive zone either)."""
    p.wants_pos = ctx.live_pos & view.allows_location & ~p.prohibited
    p.out_pos = p.wants_pos.copy()
    if view.cross_border and view.geo_approval is None:
        set_where(p.rules, p.out_pos, BIT[RuleId.GEO_MAINLAND_ONLY])
        p.out_pos[:] = False
    p.out_pos &= ~p.sensitive


def geo_datum_unavailable(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """``geo.datum-unavailable``: a position the datum transform cannot produce is removed."""
    if view.transform is None:
        return
    outputs = ctx.located.layer(view.grid_m).outputs[view.transform]
    unavailable = p.out_pos & ~outputs.ok
    set_where(p.rules, unavailable, BIT[RuleId.GEO_DATUM_UNAVAILABLE])
    p.out_pos &= ~unavailable


def trajectory_consent(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """``pi.trajectory-consent``: a position beside an identifier needs the vehicle's consent;
    without it the view's fallback applies."""
    # Consent is the vehicle's standing, whatever this record carries: every record of a
    # located view is judged, so a masked or unplaced record cannot carry an identifier
    # the vehicle's trajectories may not (RULES.md §3).
    judged = ctx.live & ~p.prohibited if view.allows_location else p.out_pos
    consent_ids = ctx.consents.lookup(view.subscriber.purposes, judged)
    has_consent = judged & np.not_equal(consent_ids, _NONE)
    with_position = has_consent & p.out_pos
    set_where(p.rules, with_position, BIT[RuleId.PI_TRAJECTORY_CONSENT])
    p.consent[with_position] = consent_ids[with_position]
    no_consent = judged & ~has_consent
    if view.subscriber.view.no_consent is NoConsentFallback.DROP_LOCATION:
        no_consent_drop_location(p, no_consent)
    else:
        no_consent_trip_pseudonym(ctx, view, p, no_consent)


def no_consent_drop_location(p: ViewPairs, no_consent: BoolArray) -> None:
    """``pi.no-consent-drop-location``: the position and location-derived fields go."""
    p.consent_dropped = no_consent & (p.out_pos | p.derived_in)
    set_where(p.rules, p.consent_dropped, BIT[RuleId.PI_NO_CONSENT_DROP_LOCATION])
    p.out_pos &= ~no_consent


def no_consent_trip_pseudonym(
    ctx: BatchContext, view: ResolvedView, p: ViewPairs, no_consent: BoolArray
) -> None:
    """``pi.no-consent-trip-pseudonym``: the identifier becomes a per-trip pseudonym; if a
    consent held at the trip's start lapsed, the rest of the trip loses its position."""
    set_where(p.rules, no_consent, BIT[RuleId.PI_NO_CONSENT_TRIP_PSEUDONYM])
    p.trip_pseudonym |= no_consent
    # A consent lapsed mid-trip: positions under the per-trip pseudonym would
    # continue the stable one's track, so the rest of the trip goes without them.
    lapsed = no_consent & ctx.consents.began_under(view.subscriber.purposes, no_consent)
    p.consent_dropped = lapsed & (p.out_pos | p.derived_in)
    set_where(p.rules, p.consent_dropped, BIT[RuleId.PI_NO_CONSENT_DROP_LOCATION])
    p.out_pos &= ~lapsed
    if view.subscriber.view.identifier is not IdentifierMode.TRIP_PSEUDONYM:
        p.degraded |= no_consent


def position(view: ResolvedView, p: ViewPairs) -> None:
    """``view.precision`` (and the view's position rules): a position that goes is cited on
    its grid and datum; one the view wanted and lost is marked removed (redact)."""
    p.removed = p.wants_pos & ~p.out_pos
    p.degraded |= p.removed
    set_where(p.applied, p.removed, np.uint32(Applied.POSITION_REMOVED))
    set_where(p.rules, p.out_pos, U64(view.position_rules))
    if view.grid_m > 0:
        set_where(p.applied, p.out_pos, np.uint32(Applied.GRID))
    if view.datum is OutputDatum.GCJ02:
        set_where(p.applied, p.out_pos, np.uint32(Applied.DATUM_GCJ02))


def export_bases(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """The legal bases a cross-border export uses: the geodata export approval beside a
    position, the security assessment beside an important field."""
    if view.cross_border and view.geo_approval is not None:
        p.basis[p.out_pos] = view.geo_approval
    if view.important_basis is None:
        return
    fields = ctx.plan.bundle.fields
    important = frozenset(f for f in view.allowed if f in fields and fields[f].important)
    rows = rows_with(ctx.classified, important, ctx.n) & ctx.live
    for row in np.flatnonzero(rows).tolist():
        p.add_basis(row, view.important_basis)


def altitude(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """``geo.altitude-removed`` / ``geo.altitude-coarsened``: altitude follows the view, and
    goes whenever the position goes."""
    if view.allows_altitude:
        alt_in = ctx.has_alt & p.wants_pos
        keep_alt = alt_in & p.out_pos
        if view.altitude is AltitudeMode.COARSEN:
            set_where(p.rules, keep_alt, BIT[RuleId.GEO_ALTITUDE_COARSENED])
            set_where(p.applied, keep_alt, np.uint32(Applied.ALTITUDE_COARSENED))
        elif view.altitude is AltitudeMode.REMOVE:
            set_where(p.rules, keep_alt, BIT[RuleId.GEO_ALTITUDE_REMOVED])
            set_where(p.applied, keep_alt, np.uint32(Applied.ALTITUDE_REMOVED))
        set_where(p.applied, alt_in & ~p.out_pos, np.uint32(Applied.ALTITUDE_REMOVED))
    elif ALTITUDE in view.allowed:
        dropped = ctx.has_alt & ctx.live
        set_where(p.rules, dropped, BIT[RuleId.GEO_ALTITUDE_REMOVED])
        set_where(p.applied, dropped, np.uint32(Applied.ALTITUDE_REMOVED))


def location_derived(view: ResolvedView, p: ViewPairs) -> None:
    """``pi.location-derived``: location-derived fields go with the position (and where it
    is masked or unknown), else follow the view (coarsened or removed)."""
    derived_in = p.derived_in
    derived_lost = derived_in & (p.removed | p.sensitive | p.unplaced | p.consent_dropped)
    set_where(p.applied, derived_lost, np.uint32(Applied.DERIVED_REMOVED))
    p.degraded |= derived_lost
    if view.derived is DerivedMode.KEEP:
        set_where(p.rules, derived_lost, BIT[RuleId.PI_LOCATION_DERIVED])
        return
    set_where(p.rules, derived_in, BIT[RuleId.PI_LOCATION_DERIVED])
    coarsen = view.derived is DerivedMode.COARSEN
    bit = Applied.DERIVED_COARSENED if coarsen else Applied.DERIVED_REMOVED
    set_where(p.applied, derived_in & ~derived_lost, np.uint32(bit))


def vin_pseudonym(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """``pi.vin-pseudonym`` / ``pi.vin-disclosed``: the identifier that goes; beside a
    per-trip pseudonym, fields that link trips are removed."""
    live = ctx.live
    mode = view.subscriber.view.identifier
    if mode is IdentifierMode.VIN and VIN in view.allowed:
        ident = np.where(p.trip_pseudonym, Applied.TRIP_PSEUDONYM, Applied.VIN)
        set_where(p.rules, live & ~p.trip_pseudonym, BIT[RuleId.PI_VIN_DISCLOSED])
        set_where(p.rules, live & p.trip_pseudonym, BIT[RuleId.PI_VIN_PSEUDONYM])
    else:
        base = (
            Applied.TRIP_PSEUDONYM
            if mode is IdentifierMode.TRIP_PSEUDONYM
            else Applied.KEYED_PSEUDONYM
        )
        ident = np.where(p.trip_pseudonym, Applied.TRIP_PSEUDONYM, base)
        set_where(p.rules, live, BIT[RuleId.PI_VIN_PSEUDONYM])
    set_where(p.applied, live, ident.astype(np.uint32))
    p.per_trip = live & (ident == Applied.TRIP_PSEUDONYM)
    links = p.per_trip & _links_trips_in(ctx.classified, view)
    set_where(p.applied, links, np.uint32(Applied.LINKING_REMOVED))


def time_precision(ctx: BatchContext, view: ResolvedView, p: ViewPairs) -> None:
    """``view.time-precision``: the time is truncated to the view's step."""
    step = view.subscriber.view.time_precision_s
    time = ctx.batch.time
    with np.errstate(invalid="ignore"):
        truncated = ctx.live & (np.floor(time / step) * step != time)
    set_where(p.rules, truncated, BIT[RuleId.VIEW_TIME_PRECISION])
    set_where(p.applied, truncated, np.uint32(Applied.TIME_TRUNCATED))


def _verdict_before_sequential(ctx: BatchContext, p: ViewPairs) -> None:
    """Redact where degraded, block where rejected (``input.invalid``) or prohibited."""
    v = np.where(p.degraded, Verdict.REDACT, Verdict.SHARE).astype(np.uint8)
    v[p.blocked] = Verdict.BLOCK
    p.verdict = v
    p.block_rules[~ctx.live] = BIT[RuleId.INPUT_INVALID]
    p.block_rules[p.prohibited] = p.rules[p.prohibited] & _KEEP_ON_BLOCK


def _derived_in(classified: Classified, view: ResolvedView, live: BoolArray) -> BoolArray:
    """Rows carrying a location-derived field the view allows."""
    out = np.zeros(len(live), dtype=bool)
    for path, present in classified.category_present(FieldCategory.LOCATION_DERIVED).items():
        if path in view.allowed:
            out |= present
    out &= live
    return out


def _links_trips_in(classified: Classified, view: ResolvedView) -> BoolArray:
    """Rows carrying a field the view allows whose value carries over between trips
    (``links_trips`` in the catalogue): never beside a per-trip pseudonym (RULES.md §3)."""
    out = np.zeros(len(classified.key_off), dtype=bool)
    for path, present in classified.present.items():
        if classified.specs[path].links_trips and path in view.allowed:
            out |= present
    return out
