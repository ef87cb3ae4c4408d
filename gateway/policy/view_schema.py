"""The JSON Schema of the records one subscriber receives, derived from its view.

Every record a subscriber receives is one JSON object of this shape (``icvgw.view/1``)::

    {
      "schema": "icvgw.view/1",
      "subscriber": "sh-traffic",
      "message_id": "...",            stable across redeliveries of a record: de-duplicate on it
      "audit_seq": 1234,              the audit entry that records this decision
      "policy_version": "<64 hex>",   the bundle version that decided it
      "vehicle": "...",               keyed pseudonym, per-trip pseudonym or VIN (per view)
      "time": "2025-03-01T08:15:00Z", UTC, truncated to the view's time precision
      "location": {                   only if the view allows location; null when withheld
        "datum": "GCJ-02",            always stated
        "precision_m": 50,            grid cell size; 0 = raw position as received
        "lat_gcj02": 31.2, "lon_gcj02": 121.4,   names carry the datum: lat_wgs84/lon_wgs84
        "cell": "32651:123:456",      grid cell id (gridded views only)
        "alt_m": 10.0,                only if the view allows altitude and keeps/coarsens it
        "alt_step_m": 10              coarsened altitude only
      },
      "signals": {"Vehicle.Speed": 40.0, ...}   the other allowed fields, by VSS path
    }

The schema is exact for what a view *may* carry: a property it lists can be missing from a
given record (the decision engine removes what a zone, consent or cross-border rule
forbids), but nothing outside it is ever present (``additionalProperties: false``).
"""

from __future__ import annotations

from typing import Any

from gateway.policy.bundle import PolicyBundle
from gateway.policy.schema import (
    AltitudeMode,
    DataType,
    DerivedMode,
    FieldCategory,
    FieldSpec,
    IdentifierMode,
    LegalBasisKind,
    OutputDatum,
    Subscriber,
)
from gateway.vss import TIMESTAMP

__all__ = ["VIEW_SCHEMA", "batch_schema", "coordinate_names", "delivery_schema", "view_schema"]

VIEW_SCHEMA = "icvgw.view/1"
"""Format tag written in every output record."""

_JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"
_OUTSIDE_SIGNALS = frozenset(
    {FieldCategory.LOCATION, FieldCategory.ALTITUDE, FieldCategory.VEHICLE_ID}
)


def coordinate_names(datum: OutputDatum) -> tuple[str, str]:
    """Output names of latitude and longitude in ``datum``: ``lat_gcj02``/``lon_gcj02`` or
    ``lat_wgs84``/``lon_wgs84``. A WGS-84 name never carries another datum's coordinates."""
    suffix = "wgs84" if datum is OutputDatum.WGS84 else "gcj02"
    return f"lat_{suffix}", f"lon_{suffix}"


def view_schema(bundle: PolicyBundle, subscriber_id: str) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the records ``subscriber_id`` receives.

    Raises ``KeyError`` for an unknown subscriber. Deterministic: the same bundle and
    subscriber always give the same schema.
    """
    sub = bundle.subscribers[subscriber_id]
    view = sub.view
    allowed = sorted(bundle.allowed_fields(subscriber_id))
    categories = {p: bundle.fields[p].category for p in allowed if p in bundle.fields}
    properties: dict[str, Any] = {
        "schema": {"const": VIEW_SCHEMA},
        "subscriber": {"const": sub.id},
        "message_id": {
            "type": "string",
            "minLength": 1,
            "description": (
                "Stable across redeliveries of the same record (vehicle, timestamp and "
                "msg_id); different for every other record. De-duplicate on it."
            ),
        },
        "audit_seq": {
            "type": "integer",
            "minimum": 0,
            "description": "Sequence number of the audit entry recording this decision.",
        },
        "policy_version": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "SHA-256 of the policy bundle that decided this record.",
        },
        "vehicle": _vehicle(view.identifier),
        "time": {
            "type": "string",
            "format": "date-time",
            "description": f"Record time in UTC, truncated to {view.time_precision_s:g} s.",
        },
        "signals": _signals(bundle, allowed, categories, view.location_derived),
    }
    required = [*properties]
    if FieldCategory.LOCATION in categories.values():
        has_altitude = FieldCategory.ALTITUDE in categories.values()
        geo = bundle.rules.geo
        properties["location"] = _location(
            sub, has_altitude, geo.grid_floor_m, geo.altitude_floor_m
        )
        required.append("location")
    return {
        "$schema": _JSON_SCHEMA,
        "$id": f"urn:icvgw:view:{sub.id}",
        "title": f"icv-gateway view for {sub.name}",
        "description": (
            f"Records delivered to subscriber {sub.id} ({VIEW_SCHEMA}). Generated from "
            f"policy version {bundle.version}; a property listed here may be absent from a "
            "record, nothing else is ever present."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": properties,
    }


def batch_schema(bundle: PolicyBundle, subscriber_id: str) -> dict[str, Any]:
    """JSON Schema of one batch ``subscriber_id`` receives (:mod:`gateway.deliver.batch`):
    an array of 1 to ``delivery.batch_max_views`` views, each valid under
    :func:`view_schema`. Raises ``KeyError`` for an unknown subscriber."""
    view = view_schema(bundle, subscriber_id)
    item = {k: v for k, v in view.items() if k != "$schema"}
    delivery = bundle.subscribers[subscriber_id].view.delivery
    return {
        "$schema": _JSON_SCHEMA,
        "$id": f"urn:icvgw:batch:{subscriber_id}",
        "title": f"{view['title']}, batched",
        "description": (
            f"A batch of views for subscriber {subscriber_id}: one MQTT message, webhook "
            "POST or SSE event. Views in audit order; each has its own message_id: "
            "de-duplicate per view, never per batch."
        ),
        "type": "array",
        "minItems": 1,
        "maxItems": delivery.batch_max_views,
        "items": {"$ref": "#/$defs/view"},
        "$defs": {"view": item},
    }


def delivery_schema(bundle: PolicyBundle, subscriber_id: str) -> dict[str, Any]:
    """The schema of what one delivery to ``subscriber_id`` carries: a batch
    (:func:`batch_schema`) if its view opts into batches, else one view."""
    if bundle.subscribers[subscriber_id].view.delivery.batched:
        return batch_schema(bundle, subscriber_id)
    return view_schema(bundle, subscriber_id)


def _vehicle(mode: IdentifierMode) -> dict[str, Any]:
    if mode is IdentifierMode.VIN:
        return {
            "type": "string",
            "pattern": "^[A-HJ-NPR-Z0-9]{17}$",
            "description": "The VIN (the view allows it).",
        }
    what = {
        IdentifierMode.KEYED_PSEUDONYM: "Keyed pseudonym of the VIN, stable, different for "
        "every subscriber.",
        IdentifierMode.TRIP_PSEUDONYM: "Pseudonym of the current trip; a new one every trip.",
    }[mode]
    return {"type": "string", "minLength": 1, "description": what}


def _location(
    sub: Subscriber, has_altitude: bool, floor: float, alt_floor: float
) -> dict[str, Any]:
    view = sub.view
    withheld = "null when this record's position is withheld (zone, consent, cross-border)."
    if sub.cross_border and not any(
        b.kind is LegalBasisKind.GEODATA_EXPORT_APPROVAL for b in sub.legal_bases
    ):
        return {
            "type": "null",
            "description": "Always null: no geodata export approval is recorded for this "
            "recipient outside mainland China (rule geo.mainland-only).",
        }
    lat, lon = coordinate_names(view.datum)
    props: dict[str, Any] = {
        "datum": {"const": str(view.datum)},
        "precision_m": {
            "const": view.location_precision_m,
            "description": "Grid cell size in metres; 0 = raw position as received.",
        },
        lat: {"type": "number", "minimum": -90, "maximum": 90},
        lon: {"type": "number", "minimum": -180, "maximum": 180},
    }
    required = ["datum", "precision_m", lat, lon]
    if not view.raw_location:
        props[lat]["description"] = "Centre of the grid cell, in the stated datum."
        props["cell"] = {
            "type": "string",
            "pattern": "^[0-9]+:-?[0-9]+:-?[0-9]+$",
            "description": "Grid cell id (band:ix:iy) at this precision.",
        }
        required.append("cell")
    if has_altitude and view.altitude is not AltitudeMode.REMOVE:
        props["alt_m"] = {"type": "number", "description": "Height above the WGS-84 ellipsoid."}
        if view.altitude is AltitudeMode.COARSEN:
            props["alt_m"]["multipleOf"] = view.altitude_step_m
            props["alt_step_m"] = {"const": view.altitude_step_m}
    obj = {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": props,
    }
    variants: list[dict[str, Any]] = [obj]
    fine_alt = "alt_step_m" in props and (view.altitude_step_m or 0) < alt_floor
    if (
        view.raw_location
        or view.datum is OutputDatum.WGS84
        or view.location_precision_m < floor
        or fine_alt
    ):
        # Without a valid qualification (expired, or storage moved abroad) the view falls back
        # to the grid floor in GCJ-02, as for everyone else (RULES.md §1).
        g_lat, g_lon = coordinate_names(OutputDatum.GCJ02)
        fallback: dict[str, Any] = {
            "datum": {"const": str(OutputDatum.GCJ02)},
            "precision_m": {"const": max(view.location_precision_m, floor)},
            g_lat: {"type": "number", "minimum": -90, "maximum": 90},
            g_lon: {"type": "number", "minimum": -180, "maximum": 180},
            "cell": dict(props.get("cell") or _CELL),
        }
        if "alt_step_m" in props:  # never finer than the altitude floor (RULES.md §1)
            step = max(view.altitude_step_m or 0, alt_floor)
            fallback["alt_m"] = {**props["alt_m"], "multipleOf": step}
            fallback["alt_step_m"] = {"const": step}
        variants.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["datum", "precision_m", g_lat, g_lon, "cell"],
                "properties": fallback,
                "description": "Without a valid qualification: the grid floor, in GCJ-02.",
            }
        )
    return {"oneOf": [*variants, {"type": "null"}], "description": f"The position; {withheld}"}


_CELL = {
    "type": "string",
    "pattern": "^[0-9]+:-?[0-9]+:-?[0-9]+$",
    "description": "Grid cell id (band:ix:iy) at this precision.",
}


def _signals(
    bundle: PolicyBundle,
    allowed: list[str],
    categories: dict[str, FieldCategory],
    derived: DerivedMode,
) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for path in allowed:
        category = categories.get(path)
        if category is None or category in _OUTSIDE_SIGNALS or path == TIMESTAMP:
            continue
        spec = bundle.fields[path]
        dropped = derived is DerivedMode.SUPPRESS or (
            derived is DerivedMode.COARSEN and spec.coarsen is None
        )
        if category is FieldCategory.LOCATION_DERIVED and dropped:
            continue
        props[path] = _value(spec, coarsened=derived is DerivedMode.COARSEN)
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "description": "Allowed signals by VSS path; any may be absent from a record.",
    }


def _value(spec: FieldSpec, *, coarsened: bool) -> dict[str, Any]:
    out: dict[str, Any]
    if spec.datatype is DataType.BOOLEAN:
        out = {"type": "boolean"}
    elif spec.datatype is DataType.STRING:
        out = {"type": "string"}
    elif spec.datatype is DataType.STRING_ARRAY:
        out = {"type": "array", "items": {"type": "string"}}
    elif (bounds := spec.datatype.integer_range) is not None:
        out = {"type": "integer", "minimum": bounds[0], "maximum": bounds[1]}
    else:
        out = {"type": "number"}
    notes = [spec.description] if spec.description else []
    if spec.unit:
        notes.append(f"unit: {spec.unit}")
    if coarsened and spec.category is FieldCategory.LOCATION_DERIVED and spec.coarsen:
        out["multipleOf"] = spec.coarsen.step
        notes.append(f"rounded to the nearest {spec.coarsen.step:g}")
        if spec.coarsen.wrap is not None:
            out["minimum"] = 0
            out["exclusiveMaximum"] = spec.coarsen.wrap
    if notes:
        out["description"] = "; ".join(notes)
    return out
