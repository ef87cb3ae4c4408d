"""The JSON Schema of each view: names carry the datum, nothing outside the view fits.

The tests validate sample records with a small JSON Schema checker written here (the
keywords the view schemas use), so a schema that lets a WGS-84 name or an unallowed field
through fails.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from types import MappingProxyType
from typing import Any

import pytest

from gateway.policy import load_bundle
from gateway.policy.schema import AltitudeMode, OutputDatum
from gateway.policy.view_schema import VIEW_SCHEMA, coordinate_names, view_schema

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def errors(schema: dict[str, Any], value: Any, at: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (the keywords the view schemas use)."""
    out: list[str] = []
    if "const" in schema and value != schema["const"]:
        out.append(f"{at}: not {schema['const']!r}")
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not errors(s, value, at)]
        if len(matching) != 1:
            out.append(f"{at}: matches {len(matching)} of oneOf")
    kind = schema.get("type")
    if kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is not None:
        ok = isinstance(value, _TYPES[kind])
    else:
        ok = True
    if not ok:
        return [*out, f"{at}: not {kind}"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{at}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{at}: above maximum")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            out.append(f"{at}: not below exclusiveMaximum")
        if "multipleOf" in schema:
            ratio = value / schema["multipleOf"]
            if not math.isclose(ratio, round(ratio), abs_tol=1e-9):
                out.append(f"{at}: not a multiple of {schema['multipleOf']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{at}: does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            out.append(f"{at}: too short")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out.extend(errors(schema["items"], item, f"{at}[{i}]"))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                out.append(f"{at}: {name} missing")
        for name, item in value.items():
            if name in props:
                out.extend(errors(props[name], item, f"{at}.{name}"))
            elif schema.get("additionalProperties") is False:
                out.append(f"{at}: {name} not allowed")
    return out


BUNDLE = load_bundle()
VERSION = BUNDLE.version


def record(subscriber: str, location: Any, signals: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": VIEW_SCHEMA,
        "subscriber": subscriber,
        "message_id": "m-1",
        "audit_seq": 7,
        "policy_version": VERSION,
        "vehicle": "p-3f9a",
        "time": "2025-03-01T08:15:00Z",
        "location": location,
        "signals": signals,
    }


def test_coordinate_names_carry_the_datum() -> None:
    assert coordinate_names(OutputDatum.GCJ02) == ("lat_gcj02", "lon_gcj02")
    assert coordinate_names(OutputDatum.WGS84) == ("lat_wgs84", "lon_wgs84")


def test_gridded_gcj02_view() -> None:
    schema = view_schema(BUNDLE, "sh-traffic")
    good_location = {
        "datum": "GCJ-02",
        "precision_m": 50,
        "lat_gcj02": 31.2,
        "lon_gcj02": 121.4,
        "cell": "32651:7012:34567",
        "alt_m": 50.0,
        "alt_step_m": 50,
    }
    signals = {
        "Vehicle.Speed": 40.0,
        "Vehicle.CurrentLocation.Heading": 315.0,
        "Vehicle.Body.Lights.Hazard.IsSignaling": True,
    }
    assert errors(schema, record("sh-traffic", good_location, signals)) == []
    assert errors(schema, record("sh-traffic", None, {})) == []  # withheld position
    wgs_names = {**good_location, "lat_wgs84": 31.2}
    del wgs_names["lat_gcj02"]
    assert "$.location: matches 0 of oneOf" in errors(schema, record("sh-traffic", wgs_names, {}))
    bad: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({**good_location, "precision_m": 10}, {}),
        ({**good_location, "datum": "WGS-84"}, {}),
        ({**good_location, "alt_m": 60.0}, {}),  # not on the 50 m altitude step
        (good_location, {"Vehicle.Speed": 43.0}),  # not coarsened to 10 km/h
        (good_location, {"Vehicle.CurrentLocation.Heading": 360.0}),  # wraps to 0
        (good_location, {"Vehicle.VehicleIdentification.VIN": "1M8GDM9AXKP042788"}),
        (good_location, {"Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": 50.0}),
        (good_location, {"Vehicle.CurrentLocation.Latitude": 31.2}),  # never a signal
    ]
    for location, sig in bad:
        assert errors(schema, record("sh-traffic", location, sig)), (location, sig)


def test_raw_wgs84_view() -> None:
    schema = view_schema(BUNDLE, "mapco-nav")
    location = {
        "datum": "WGS-84",
        "precision_m": 0,
        "lat_wgs84": 31.2345678,
        "lon_wgs84": 121.4567891,
        "alt_m": 12.3,
    }
    signals = {"Vehicle.Speed": 43.7, "Vehicle.CurrentLocation.Heading": 12.5}
    assert errors(schema, record("mapco-nav", location, signals)) == []
    loc_schema = schema["properties"]["location"]["oneOf"][0]
    assert "cell" not in loc_schema["properties"]
    assert set(loc_schema["required"]) == {"datum", "precision_m", "lat_wgs84", "lon_wgs84"}


def test_view_without_altitude_has_no_altitude() -> None:
    schema = view_schema(BUNDLE, "insureco-ubi")  # allows altitude, removes it
    loc_schema = schema["properties"]["location"]["oneOf"][0]
    assert "alt_m" not in loc_schema["properties"]
    assert loc_schema["properties"]["precision_m"]["const"] == 1000


def test_cross_border_view_never_has_a_position() -> None:
    schema = view_schema(BUNDLE, "oem-hq-de")
    assert schema["properties"]["location"]["type"] == "null"
    signals = schema["properties"]["signals"]["properties"]
    assert "Vehicle.OBD.DTCList" in signals
    assert signals["Vehicle.OBD.DTCList"] == {
        "type": "array",
        "items": {"type": "string"},
        "description": "diagnostic trouble codes",
    }
    assert not any(p.startswith("Vehicle.Acceleration") for p in signals)  # suppressed
    ok = record("oem-hq-de", None, {"Vehicle.Powertrain.Range": 120000})
    assert errors(schema, ok) == []
    assert errors(schema, record("oem-hq-de", None, {"Vehicle.Powertrain.Range": -1}))


def test_every_view_is_deterministic_json() -> None:
    for subscriber in BUNDLE.subscribers:
        one = json.dumps(view_schema(BUNDLE, subscriber), sort_keys=True)
        assert one == json.dumps(view_schema(BUNDLE, subscriber), sort_keys=True)
        schema = json.loads(one)
        assert schema["properties"]["subscriber"] == {"const": subscriber}
        assert schema["additionalProperties"] is False
        identifier = BUNDLE.subscribers[subscriber].view.identifier
        assert schema["properties"]["vehicle"]["type"] == "string", identifier


def test_unknown_subscriber() -> None:
    with pytest.raises(KeyError):
        view_schema(BUNDLE, "nobody")


def test_an_expired_qualification_states_the_altitude_floor() -> None:
    sub = BUNDLE.subscribers["mapco-nav"]
    view = sub.view.model_copy(update={"altitude": AltitudeMode.COARSEN, "altitude_step_m": 1.0})
    subs = {**BUNDLE.subscribers, "mapco-nav": sub.model_copy(update={"view": view})}
    bundle = dataclasses.replace(BUNDLE, subscribers=MappingProxyType(subs))
    schema = view_schema(bundle, "mapco-nav")
    fallback = {
        "datum": "GCJ-02",
        "precision_m": 50,
        "lat_gcj02": 31.2,
        "lon_gcj02": 121.4,
        "cell": "32651:7012:34567",
        "alt_m": 0.0,
        "alt_step_m": 50,
    }
    assert errors(schema, record("mapco-nav", fallback, {})) == []
    finer = {**fallback, "alt_m": 19.0, "alt_step_m": 1.0}
    assert errors(schema, record("mapco-nav", finer, {}))
