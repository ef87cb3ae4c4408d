"""The closed set of rule ids a decision may cite.

Every id here must be described in the bundle's ``rules.yaml`` (``catalogue``), and the
bundle may describe no other: the loader checks both ways. Decision code cites
:class:`RuleId` members, never bare strings, so it cannot cite a rule the bundle does not
document. Ids are stable: they are stored in audit entries and exported to auditors.
Adding a rule means adding a member here and an entry to every bundle's catalogue.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RuleId"]


class RuleId(StrEnum):
    """A rule a decision cites. The value is the stable id written in audit entries."""

    # RULES.md §1: geographic data
    GEO_RAW_REQUIRES_QUALIFICATION = "geo.raw-requires-qualification"
    GEO_GRID_FLOOR = "geo.grid-floor"
    GEO_DATUM_GCJ02 = "geo.datum-gcj02"
    GEO_DATUM_UNAVAILABLE = "geo.datum-unavailable"
    GEO_ALTITUDE_REMOVED = "geo.altitude-removed"
    GEO_ALTITUDE_COARSENED = "geo.altitude-coarsened"
    GEO_MAINLAND_ONLY = "geo.mainland-only"
    # RULES.md §2: restricted zones, important data, minimisation
    ZONE_PROHIBITED = "zone.prohibited"
    ZONE_SENSITIVE = "zone.sensitive"
    ZONE_AUTHORISED = "zone.authorised"
    VIEW_PRECISION = "view.precision"
    VIEW_TIME_PRECISION = "view.time-precision"
    VIEW_DOWNSAMPLE = "view.downsample"
    VIEW_FIELD_NOT_ALLOWED = "view.field-not-allowed"
    VIEW_IMPORTANT_DATA = "view.important-data"
    FIELD_UNCLASSIFIED = "field.unclassified"
    # RULES.md §3: personal information
    PI_TRAJECTORY_CONSENT = "pi.trajectory-consent"
    PI_NO_CONSENT_DROP_LOCATION = "pi.no-consent-drop-location"
    PI_NO_CONSENT_TRIP_PSEUDONYM = "pi.no-consent-trip-pseudonym"
    PI_VIN_PSEUDONYM = "pi.vin-pseudonym"
    PI_VIN_DISCLOSED = "pi.vin-disclosed"
    PI_TRIP_TRIM = "pi.trip-trim"
    PI_LOCATION_DERIVED = "pi.location-derived"
    # RULES.md §4: cross-border transfer
    XBORDER_EXEMPT = "xborder.exempt"
    XBORDER_TIER_CONTRACT = "xborder.tier-contract"
    XBORDER_TIER_ASSESSMENT = "xborder.tier-assessment"
    XBORDER_IMPORTANT_DATA = "xborder.important-data"
    XBORDER_BASIS_MISSING = "xborder.basis-missing"
    XBORDER_IMPACT_ASSESSMENT = "xborder.impact-assessment"
    # RULES.md §5: records (input that never reached a view is still audited)
    INPUT_INVALID = "input.invalid"
