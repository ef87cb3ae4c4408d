"""One mistake at a time: each is reported exactly once, on the right line and field.

Every case edits a fresh copy of the default bundle and expects exactly one problem:
``file:line: field: message``, the line being the one that holds ``marker`` (the
``nth`` occurrence when the marker is not unique).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from gateway.errors import PolicyError
from gateway.geo.datum import available_transforms
from gateway.policy import load_bundle
from tests.policy.conftest import edit, feature_line, line_of

NEEDS_QUALIFICATION = "needs a navigation_map_surveying qualification (RULES.md §1)"


class Case(NamedTuple):
    file: str
    old: str
    new: str
    marker: str
    nth: int | None
    expected: str


CASES = {
    "raw-without-qualification": Case(
        "subscribers.yaml",
        "      location_precision_m: 1000\n",
        "      location_precision_m: 0\n",
        "location_precision_m: 0",
        1,
        f"subscribers[1].view.location_precision_m: 0 (raw) {NEEDS_QUALIFICATION}",
    ),
    "raw-stored-in-hong-kong": Case(
        "subscribers.yaml",
        "    storage_region: CN-BJ",
        "    storage_region: CN-HK\n    impact_assessment: {reference: PIA-1, date: 2025-01-01}",
        "location_precision_m: 0",
        None,
        "subscribers[0].view.location_precision_m: 0 (raw) is only for a subscriber in "
        "mainland China that stores there",
    ),
    "altitude-kept-without-qualification": Case(
        "subscribers.yaml",
        "      altitude: remove\n      location_derived: coarsen\n",
        "      altitude: keep\n      location_derived: coarsen\n",
        "altitude: keep",
        1,
        f"subscribers[1].view.altitude: keep {NEEDS_QUALIFICATION}; use remove or coarsen",
    ),
    "derived-kept-beside-grid": Case(
        "subscribers.yaml",
        "      altitude: remove\n      location_derived: coarsen\n",
        "      altitude: remove\n      location_derived: keep\n",
        "location_derived: keep",
        1,
        "subscribers[1].view.location_derived: keep (full precision) is only allowed beside "
        "raw positions: heading, speed and odometer at 1 Hz rebuild the path finer than the "
        "grid; use coarsen or suppress",
    ),
    "vin-identifier-without-vin-field": Case(
        "subscribers.yaml",
        "      identifier: trip_pseudonym",
        "      identifier: vin",
        "identifier: vin",
        None,
        "subscribers[2].view.identifier: vin needs the view to allow "
        "Vehicle.VehicleIdentification.VIN (category vehicle_id or the field itself)",
    ),
    "topic-shared": Case(
        "subscribers.yaml",
        "        topic: share/oem-hq-de",
        "        topic: share/mapco-nav",
        "topic: share/mapco-nav",
        1,
        "subscribers[3].view.delivery.topic: topic already used by subscriber 'mapco-nav': "
        "each subscriber gets its own topic, so feeds cannot be joined",
    ),
    "altitude-step-below-floor": Case(
        "subscribers.yaml",
        "      altitude_step_m: 50\n",
        "      altitude_step_m: 0.1\n",
        "altitude_step_m: 0.1",
        None,
        "subscribers[2].view.altitude_step_m: 0.1 m is below the altitude floor of 50 m "
        "(rules.yaml geo.altitude_floor_m) for a subscriber without a "
        "navigation_map_surveying qualification",
    ),
    "sensitive-pi-abroad-without-basis": Case(
        "subscribers.yaml",
        "categories: [location, time, energy, diagnostics, vehicle_state]",
        "categories: [location, time, energy, diagnostics, vehicle_state, personal]",
        "vehicle_state, personal]",
        None,
        "subscribers[3].view.categories[5]: Vehicle.Cabin.Seat.Row1.DriverSide.Occupant."
        "Identifier.Subject, Vehicle.Cabin.Seat.Row1.PassengerSide.Occupant.Identifier.Subject, "
        "Vehicle.Driver.DistractionLevel, Vehicle.Driver.FatigueLevel, Vehicle.Driver.HeartRate, "
        "Vehicle.Driver.Identifier.Subject, Vehicle.Driver.IsEyesOnRoad: sensitive personal "
        "information (fields.yaml) goes abroad only under a legal basis covering "
        "sensitive_personal_information (RULES.md §4)",
    ),
    "imagery-abroad-without-assessment": Case(
        "subscribers.yaml",
        "categories: [location, time, energy, diagnostics, vehicle_state]",
        "categories: [location, time, energy, diagnostics, vehicle_state, imagery]",
        "vehicle_state, imagery]",
        None,
        "subscribers[3].view.categories[5]: Vehicle.ADAS.Camera.Front.Image, "
        "Vehicle.Cabin.Camera.DriverMonitor.Image: important data (images of faces or licence "
        "plates) goes abroad only under a security_assessment covering important_data "
        "(RULES.md §2)",
    ),
    "imagery-for-a-purpose-not-named": Case(
        "subscribers.yaml",
        "fields: [Vehicle.Powertrain.TractionBattery.StateOfCharge.Current]",
        "fields: [Vehicle.Powertrain.TractionBattery.StateOfCharge.Current, "
        "Vehicle.ADAS.Camera.Front.Image]",
        "Vehicle.ADAS.Camera.Front.Image]",
        None,
        "subscribers[1].view.fields[1]: Vehicle.ADAS.Camera.Front.Image: important data (images "
        "of faces or licence plates) reaches a mainland subscriber only for a purpose the field "
        "names (fields.yaml purposes); none of this subscriber's purposes is named "
        "(RULES.md §2)",
    ),
    "imagery-not-important": Case(
        "fields.yaml",
        "    sensitive: true\n    important: true\n    purposes: [navigation-map]\n",
        "    sensitive: true\n",
        "category: imagery",
        0,
        "fields[Vehicle.ADAS.Camera.Front.Image].category: imagery may show faces or licence "
        "plates: it must be flagged important (RULES.md §2)",
    ),
    "field-purpose-unknown": Case(
        "fields.yaml",
        "    purposes: [navigation-map]\n",
        "    purposes: [navigation-maps]\n",
        "navigation-maps",
        None,
        "fields[Vehicle.ADAS.Camera.Front.Image].purposes[0]: unknown purpose 'navigation-maps' "
        "(purposes are listed in subscribers.yaml) (did you mean 'navigation-map'?)",
    ),
    "crossborder-without-impact-assessment": Case(
        "subscribers.yaml",
        '    impact_assessment:\n      reference: "FICTITIOUS-PIA-2025-0007"\n'
        "      date: 2025-02-15\n",
        "",
        "- id: oem-hq-de",
        None,
        "subscribers[3].id: a cross-border subscriber needs impact_assessment (reference, date): "
        "no personal information goes abroad without a PI protection impact assessment "
        "(PIPL art. 55-56, RULES.md §4)",
    ),
    "gba-contract-outside-hong-kong-and-macao": Case(
        "subscribers.yaml",
        "      - kind: standard_contract\n",
        "      - kind: gba_standard_contract\n",
        "kind: gba_standard_contract",
        None,
        "subscribers[3].legal_bases[0].kind: a gba_standard_contract covers only recipients in "
        "Hong Kong or Macao that store there (region and storage_region HK or MO; RULES.md §4)",
    ),
    "navigation-map-subscriber-without-map-review": Case(
        "subscribers.yaml",
        '    map_review:\n      reference: "FICTITIOUS-审图号-0000001"\n      date: 2025-03-01\n',
        "",
        "    qualifications:",
        None,
        "subscribers[0].qualifications: a navigation-map subscriber needs map_review (reference, "
        "date) of its maps (MNR notice of 26 July 2024, RULES.md §1)",
    ),
    "view-allows-nothing": Case(
        "subscribers.yaml",
        "      categories: [location, time, energy, diagnostics, vehicle_state]",
        "      categories: []",
        "    view:",
        3,
        "subscribers[3].view: the view allows nothing: list categories or fields",
    ),
    "alias-in-view": Case(
        "subscribers.yaml",
        "      fields: [Vehicle.Powertrain.TractionBattery.StateOfCharge.Current]",
        "      fields: [bms_soc]",
        "fields: [bms_soc]",
        None,
        "subscribers[1].view.fields[0]: unknown field 'bms_soc': it is an alias of "
        "'Vehicle.Powertrain.TractionBattery.StateOfCharge.Current'; views name VSS paths",
    ),
    "zone-authorised-twice": Case(
        "subscribers.yaml",
        '        reference: "FICTITIOUS-AUTH-2025-017"\n        expires: 2027-06-30\n',
        '        reference: "FICTITIOUS-AUTH-2025-017"\n        expires: 2027-06-30\n'
        "      - zone: example-sensitive-2\n        reference: again\n"
        "        expires: 2027-06-30\n",
        "- zone: example-sensitive-2",
        1,
        "subscribers[0].zone_authorisations[1].zone: zone 'example-sensitive-2' is "
        "authorised twice",
    ),
    "legal-basis-id-twice": Case(
        "subscribers.yaml",
        "        expires: 2027-03-31\n",
        "        expires: 2027-03-31\n"
        '      - kind: certification\n        id: "FICTITIOUS-SCC-2025-0042"\n'
        "        covers: [personal_information]\n        expires: 2027-03-31\n",
        'id: "FICTITIOUS-SCC-2025-0042"',
        1,
        "subscribers[3].legal_bases[1].id: duplicate legal basis id 'FICTITIOUS-SCC-2025-0042'",
    ),
    "approval-not-covering-geodata": Case(
        "subscribers.yaml",
        "      - kind: standard_contract",
        "      - kind: geodata_export_approval",
        "covers: [personal_information]",
        None,
        "subscribers[3].legal_bases[0].covers: a geodata_export_approval must cover "
        "geographic_data",
    ),
    "mqtt-without-topic": Case(
        "subscribers.yaml",
        "        topic: share/mapco-nav\n",
        "",
        "    delivery:",
        0,
        "subscribers[0].view.delivery: channel mqtt takes a topic and no url",
    ),
    "webhook-not-https": Case(
        "subscribers.yaml",
        "channel: mqtt\n        topic: share/sh-traffic",
        "channel: webhook\n        url: http://traffic",
        "    delivery:",
        2,
        "subscribers[2].view.delivery: a webhook url must start with https://",
    ),
    "altitude-coarsen-without-step": Case(
        "subscribers.yaml",
        "      altitude_step_m: 50\n",
        "",
        "    view:",
        2,
        "subscribers[2].view: altitude_step_m is required with altitude: coarsen, and only then",
    ),
    "required-view-setting-missing": Case(
        "subscribers.yaml",
        "        topic: share/oem-hq-de\n      no_consent: drop_location\n",
        "        topic: share/oem-hq-de\n",
        "    view:",
        3,
        "subscribers[3].view.no_consent: required field missing",
    ),
    "precision-out-of-range": Case(
        "subscribers.yaml",
        "      location_precision_m: 1000\n",
        "      location_precision_m: 0.5\n",
        "location_precision_m: 0.5",
        None,
        "subscribers[1].view.location_precision_m: is 0 (raw) or between 1 and 20000 metres",
    ),
    "boolean-for-number": Case(
        "subscribers.yaml",
        "      time_precision_s: 60\n",
        "      time_precision_s: true\n",
        "time_precision_s: true",
        None,
        "subscribers[1].view.time_precision_s: expected a number",
    ),
    "number-for-date": Case(
        "subscribers.yaml",
        "        expires: 2028-12-31",
        "        expires: 20281231",
        "expires: 20281231",
        None,
        "subscribers[0].qualifications[0].expires: expected a date (YYYY-MM-DD)",
    ),
    "location-category-misused": Case(
        "fields.yaml",
        "    category: vehicle_state\n    datatype: float\n    unit: celsius",
        "    category: location  # moved\n    datatype: float\n    unit: celsius",
        "# moved",
        None,
        "fields[Vehicle.Exterior.AirTemperature].category: category location is reserved for "
        "Vehicle.CurrentLocation.Latitude and Vehicle.CurrentLocation.Longitude, the position "
        "the geo stage grids and masks; other coordinates would pass uncoarsened (leave them "
        "unclassified to drop them)",
    ),
    "latitude-not-location": Case(
        "fields.yaml",
        "    category: location\n    datatype: double\n    unit: degrees\n    description: WGS-84 "
        "latitude",
        "    category: energy\n    datatype: double\n    unit: degrees\n    description: WGS-84 "
        "latitude",
        "category: energy",
        0,
        "fields[Vehicle.CurrentLocation.Latitude].category: must be location",
    ),
    "altitude-not-altitude": Case(
        "fields.yaml",
        "    category: altitude\n",
        "    category: time  # changed\n",
        "# changed",
        None,
        "fields[Vehicle.CurrentLocation.Altitude].category: must be altitude",
    ),
    "vin-not-vehicle-id": Case(
        "fields.yaml",
        "    category: vehicle_id\n",
        "    category: personal  # changed\n",
        "# changed",
        None,
        "fields[Vehicle.VehicleIdentification.VIN].category: must be vehicle_id",
    ),
    "not-a-vss-path": Case(
        "fields.yaml",
        "fields:\n",
        "fields:\n  vehicle.speed2:\n    category: vehicle_state\n    datatype: float\n",
        "vehicle.speed2",
        None,
        "fields[vehicle.speed2]: not a VSS signal path: Vehicle.Branch.Signal, each part "
        "starting with a capital letter",
    ),
    "alias-shadows-field": Case(
        "fields.yaml",
        "aliases:\n",
        "aliases:\n  Vehicle.Speed: Vehicle.TraveledDistance\n",
        "Vehicle.Speed: Vehicle.TraveledDistance",
        None,
        "aliases[Vehicle.Speed]: is a field path itself; an alias must not shadow a field",
    ),
    "wrap-not-multiple-of-step": Case(
        "fields.yaml",
        "coarsen: {step: 45, wrap: 360}",
        "coarsen: {step: 50, wrap: 360}",
        "step: 50",
        None,
        "fields[Vehicle.CurrentLocation.Heading].coarsen: wrap must be a whole multiple of step",
    ),
    "coarsen-on-text": Case(
        "fields.yaml",
        "  Vehicle.StartTime:\n    category: time\n",
        "  Vehicle.StartTime:\n    category: location_derived\n    coarsen: {step: 1.5}\n",
        "coarsen: {step: 1.5}",
        None,
        "fields[Vehicle.StartTime].coarsen: coarsen needs a numeric datatype, not string",
    ),
    "consent-id-twice": Case(
        "consents.yaml",
        "  - id: c-0002",
        "  - id: c-0001",
        "id: c-0001",
        1,
        "consents[1].id: duplicate consent id 'c-0001' (also consents[0])",
    ),
    "revoked-before-granted": Case(
        "consents.yaml",
        "revoked: 2025-06-01T18:45:00+08:00",
        "revoked: 2025-01-01T18:45:00+08:00",
        "revoked:",
        None,
        "consents[3].revoked: must not be earlier than granted",
    ),
    "not-an-id": Case(
        "consents.yaml",
        "  - id: c-0001",
        "  - id: C 1",
        "id: C 1",
        None,
        "consents[0].id: 'C 1' is not an id: 1-63 characters of a-z, 0-9 and '-', not "
        "starting with '-'",
    ),
    "retention-below-legal-minimum": Case(
        "rules.yaml",
        "  audit_years: 3 ",
        "  audit_years: 2 ",
        "audit_years",
        None,
        "retention.audit_years: Input should be greater than or equal to 3",
    ),
    "retention-of-views-not-positive": Case(
        "rules.yaml",
        "  outbox_days: 7",
        "  outbox_days: 0",
        "outbox_days",
        None,
        "retention.outbox_days: Input should be greater than 0",
    ),
    "quoted-number": Case(
        "rules.yaml",
        "  grid_floor_m: 50",
        '  grid_floor_m: "50"',
        "grid_floor_m",
        None,
        "geo.grid_floor_m: expected a number",
    ),
    "unknown-top-level-key": Case(
        "rules.yaml",
        "trips:\n",
        "colour: red\ntrips:\n",
        "colour: red",
        None,
        "colour: unknown field",
    ),
    "not-a-mapping": Case(
        "rules.yaml",
        "  grid_floor_m: 50\n  altitude_floor_m: 50\n",
        "  - 50\n",
        "geo:",
        None,
        "geo: expected a mapping",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_one_mistake_one_problem(bundle_dir: Path, case: Case) -> None:
    path = bundle_dir / case.file
    edit(path, case.old, case.new)
    with pytest.raises(PolicyError) as info:
        load_bundle(bundle_dir)
    line = line_of(path, case.marker, case.nth)
    assert [str(p) for p in info.value.problems] == [f"{path}:{line}: {case.expected}"]


def test_unknown_datum_transform(bundle_dir: Path) -> None:
    path = bundle_dir / "subscribers.yaml"
    edit(
        path,
        "      datum: GCJ-02\n      time_precision_s: 60",
        "      datum: GCJ-02\n      datum_transform: certified-x\n      time_precision_s: 60",
    )
    with pytest.raises(PolicyError) as info:
        load_bundle(bundle_dir)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:{line_of(path, 'certified-x')}: subscribers[1].view.datum_transform: unknown "
        f"datum transform 'certified-x'; registered: {', '.join(available_transforms())}"
    ]


def test_vin_identifier_allowed_with_vin_field(bundle_dir: Path) -> None:
    path = bundle_dir / "subscribers.yaml"
    edit(path, "      identifier: trip_pseudonym", "      identifier: vin")
    edit(
        path,
        "fields: [Vehicle.Body.Lights.Hazard.IsSignaling,",
        "fields: [Vehicle.VehicleIdentification.VIN, Vehicle.Body.Lights.Hazard.IsSignaling,",
    )
    assert "Vehicle.VehicleIdentification.VIN" in load_bundle(bundle_dir).allowed_fields(
        "sh-traffic"
    )


def test_missing_file(bundle_dir: Path) -> None:
    (bundle_dir / "consents.yaml").unlink()
    with pytest.raises(PolicyError) as info:
        load_bundle(bundle_dir)
    assert [str(p) for p in info.value.problems] == [f"{bundle_dir / 'consents.yaml'}: missing"]


def test_unexpected_file(bundle_dir: Path) -> None:
    (bundle_dir / "subscriber.yaml").write_text("{}\n")
    (bundle_dir / "README.md").write_text("not policy\n")
    with pytest.raises(PolicyError) as info:
        load_bundle(bundle_dir)
    assert [str(p) for p in info.value.problems] == [
        f"{bundle_dir / 'subscriber.yaml'}: not a bundle file; expected fields.yaml, "
        "subscribers.yaml, consents.yaml, rules.yaml, zones.geojson"
    ]


def test_yaml_syntax_error(bundle_dir: Path) -> None:
    path = bundle_dir / "rules.yaml"
    edit(path, "  split_gap_s: 600", "  split_gap_s: [600")
    with pytest.raises(PolicyError) as info:
        load_bundle(bundle_dir)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert problem.line is not None and problem.line > line_of(path, "split_gap_s")
    assert problem.message.startswith("YAML syntax error:")


def test_zone_file_not_json(bundle_dir: Path) -> None:
    path = bundle_dir / "zones.geojson"
    edit(path, '"level": "prohibited",', '"level": prohibited,')
    with pytest.raises(PolicyError) as info:
        load_bundle(bundle_dir)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:{line_of(path, 'prohibited,')}: not valid JSON: Expecting value"
    ]


def test_zone_problem_keeps_other_checks(bundle_dir: Path) -> None:
    """A broken zone does not hide a reference to a zone id that exists in no feature."""
    zones = bundle_dir / "zones.geojson"
    subs = bundle_dir / "subscribers.yaml"
    edit(zones, '"buffer_m": 500', '"buffer_m": -5')
    edit(subs, "      - zone: example-sensitive-1", "      - zone: example-sensitive-9")
    with pytest.raises(PolicyError) as info:
        load_bundle(bundle_dir)
    got = [str(p) for p in info.value.problems]
    assert got[0] == (
        f"{subs}:{line_of(subs, 'example-sensitive-9')}: subscribers[2].zone_authorisations[0]"
        ".zone: unknown zone 'example-sensitive-9' (did you mean 'example-sensitive-2'?)"
    )
    assert got[1] == (
        f"{zones}:{feature_line(zones, 0)}: features[0]: 'buffer_m' must be between 0 and "
        "100000 m, got -5.0"
    )
    assert len(got) == 2


def test_batch_column_fields_must_be_listed(bundle_dir: Path) -> None:
    fields = bundle_dir / "fields.yaml"
    edit(
        fields,
        "  Vehicle.CurrentLocation.Timestamp:\n    category: time\n    datatype: string\n"
        "    unit: iso8601\n    description: time of the position fix, ISO 8601 with UTC offset\n",
        "",
    )
    with pytest.raises(PolicyError) as info:
        load_bundle(bundle_dir)
    assert [str(p) for p in info.value.problems] == [
        f"{fields}:{line_of(fields, 'fields:', 0)}: fields: Vehicle.CurrentLocation.Timestamp "
        "must be listed, as time",
        f"{fields}:{line_of(fields, 'gps.time')}: aliases[gps.time]: maps to unknown field "
        "'Vehicle.CurrentLocation.Timestamp' (did you mean 'Vehicle.CurrentLocation.Heading'?)",
    ]


def test_sensitive_pi_abroad_needs_a_basis_that_can_cover_it(bundle_dir: Path) -> None:
    """A geodata export approval listing sensitive_personal_information covers no PI tier
    (the engine would block every record): the check says so at the view entry."""
    path = bundle_dir / "subscribers.yaml"
    edit(
        path,
        '    impact_assessment:\n      reference: "FICTITIOUS-PIA-2025-0007"',
        "      - kind: geodata_export_approval\n"
        "        id: GEO-1\n"
        "        covers: [geographic_data, sensitive_personal_information]\n"
        "        expires: 2027-03-31\n"
        '    impact_assessment:\n      reference: "FICTITIOUS-PIA-2025-0007"',
    )
    edit(
        path,
        "categories: [location, time, energy, diagnostics, vehicle_state]",
        "categories: [location, time, energy, diagnostics, vehicle_state, personal]",
    )
    with pytest.raises(PolicyError) as info:
        load_bundle(bundle_dir)
    line = line_of(path, "vehicle_state, personal]")
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1 and problems[0].startswith(
        f"{path}:{line}: subscribers[3].view.categories[5]: "
    )
    assert "sensitive_personal_information (RULES.md §4)" in problems[0]
