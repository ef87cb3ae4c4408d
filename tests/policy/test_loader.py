"""Loading bundles: the default loads; every mistake is reported as file:line: field: message.

Expected lines are found in the edited files themselves (:func:`line_of`), so the tests
state exactly which line each problem must name without depending on the bundle's layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.errors import PolicyError
from gateway.policy import RuleId, load_bundle
from gateway.policy.schema import FieldCategory
from gateway.resources import default_policy_dir
from tests.policy.conftest import edit, feature_line, line_of

CATEGORIES = (
    "Input should be 'location', 'location_derived', 'altitude', 'time', 'vehicle_id', "
    "'personal', 'imagery', 'vehicle_state', 'energy' or 'diagnostics'"
)


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_bundle(directory)
    return [str(p) for p in info.value.problems]


def test_default_bundle_loads() -> None:
    bundle = load_bundle()
    assert bundle.directory == default_policy_dir()
    assert set(bundle.subscribers) == {"mapco-nav", "insureco-ubi", "sh-traffic", "oem-hq-de"}
    assert set(bundle.rules.catalogue) == {str(r) for r in RuleId}
    assert bundle.zones.ids == (
        "example-prohibited-1",
        "example-sensitive-1",
        "example-sensitive-2",
    )
    assert bundle.fields["Vehicle.Speed"].category is FieldCategory.LOCATION_DERIVED
    assert len(bundle.version) == 64


def test_default_bundle_exercises_every_kind_of_subscriber() -> None:
    subs = load_bundle().subscribers
    assert subs["mapco-nav"].has_qualification and subs["mapco-nav"].view.raw_location
    assert subs["mapco-nav"].mainland
    assert not subs["insureco-ubi"].has_qualification
    assert subs["insureco-ubi"].view.location_precision_m >= 50
    assert subs["sh-traffic"].region == "CN-SH" and subs["sh-traffic"].zone_authorisations
    assert subs["oem-hq-de"].cross_border and subs["oem-hq-de"].legal_bases


def test_zone_names_say_fictitious() -> None:
    for zone in load_bundle().zones:
        assert zone.name is not None and "fictitious" in zone.name


def test_not_a_directory(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope") == [f"{tmp_path / 'nope'}: not a directory"]


def test_every_mistake_listed_at_once(bundle_dir: Path) -> None:
    fields = bundle_dir / "fields.yaml"
    subs = bundle_dir / "subscribers.yaml"
    consents = bundle_dir / "consents.yaml"
    rules = bundle_dir / "rules.yaml"
    zones = bundle_dir / "zones.geojson"
    mistakes = [
        # fields.yaml: unknown category, alias to an unknown field, duplicate key, coarsen on
        # a field that is not location_derived
        (
            fields,
            "    category: location_derived\n    datatype: float\n    unit: km/h",
            "    category: location_derivd\n    datatype: float\n    unit: km/h",
        ),
        (fields, "  veh_spd: Vehicle.Speed", "  veh_spd: Vehicle.Sped\n  vin: Vehicle.Speed"),
        (
            fields,
            "    unit: celsius\n\n  # --- energy",
            "    unit: celsius\n    coarsen: {step: 2.5}\n\n  # --- energy",
        ),
        # subscribers.yaml: unknown purpose, bad region, unknown category, unknown key,
        # unknown zone, grid below the floor, duplicate id, a contract covering important
        # data, WGS-84 without a qualification
        (subs, "purposes: [navigation-map]", "purposes: [navigation-maps]"),
        (subs, "    storage_region: CN-GD", "    storage_region: CN-ZZ"),
        (
            subs,
            "time, vehicle_state]\n      fields: [Vehicle.Powertrain",
            "time, vehicle_stat]\n      fields: [Vehicle.Powertrain",
        ),
        (subs, "      time_precision_s: 60\n", "      time_precision_s: 60\n      colour: red\n"),
        (subs, "      - zone: example-sensitive-1", "      - zone: example-sensitiv-1"),
        (subs, "      location_precision_m: 50\n", "      location_precision_m: 20\n"),
        (subs, "  - id: oem-hq-de", "  - id: sh-traffic"),
        (subs, "covers: [personal_information]", "covers: [personal_information, important_data]"),
        (
            subs,
            "location_precision_m: 5000\n      datum: GCJ-02",
            "location_precision_m: 5000\n      datum: WGS-84",
        ),
        # consents.yaml: check digit, unknown purpose, no UTC offset, expiry before grant
        (consents, "vin: LFV2A21K9R4100002", "vin: LFV2A21K8R4100002"),
        (consents, "purpose: product-quality", "purpose: product-qualty"),
        (consents, "granted: 2025-04-01T10:00:00+08:00", "granted: 2025-04-01T10:00:00"),
        (consents, "expires: 2027-02-15T12:00:00+08:00", "expires: 2024-02-15T12:00:00+08:00"),
        # rules.yaml: misspelt rule id (unknown + missing), tiers in the wrong order
        (rules, "  geo.grid-floor:\n", "  geo.grid-flor:\n"),
        (rules, "assessment_from: 10000 ", "assessment_from: 1 "),
        # zones.geojson: unknown level in feature 1
        (
            zones,
            '"level": "sensitive",\n        "buffer_m": 200',
            '"level": "forbidden",\n        "buffer_m": 200',
        ),
    ]
    for path, old, new in mistakes:
        edit(path, old, new)

    f, s, c, r, z = (str(p) for p in (fields, subs, consents, rules, zones))
    assert problems_of(bundle_dir) == [
        f"{f}:{line_of(fields, 'location_derivd')}: fields[Vehicle.Speed].category: {CATEGORIES}",
        f"{f}:{line_of(fields, 'step: 2.5}')}: fields[Vehicle.Exterior.AirTemperature].coarsen: "
        "coarsen applies only to location_derived fields, not vehicle_state",
        f"{f}:{line_of(fields, 'veh_spd')}: aliases.veh_spd: maps to unknown field "
        "'Vehicle.Sped' (did you mean 'Vehicle.Speed'?)",
        f"{f}:{line_of(fields, 'vin: Vehicle.Speed')}: aliases.vin: duplicate key (first given "
        f"on line {line_of(fields, 'vin: Vehicle.VehicleIdentification.VIN')})",
        f"{s}:{line_of(subs, 'navigation-maps')}: subscribers[0].purposes[0]: unknown purpose "
        "'navigation-maps' (did you mean 'navigation-map'?)",
        f"{s}:{line_of(subs, 'CN-ZZ')}: subscribers[1].storage_region: 'CN-ZZ' is not an ISO "
        "3166 region code (a country such as CN, HK, DE, or a subdivision such as CN-SH, DE-BY)",
        f"{s}:{line_of(subs, 'vehicle_stat]')}: subscribers[1].view.categories[4]: {CATEGORIES}",
        f"{s}:{line_of(subs, 'colour')}: subscribers[1].view.colour: unknown field",
        f"{s}:{line_of(subs, 'example-sensitiv-1')}: subscribers[2].zone_authorisations[0].zone: "
        "unknown zone 'example-sensitiv-1' (did you mean 'example-sensitive-1'?)",
        f"{s}:{line_of(subs, 'location_precision_m: 20')}: subscribers[2].view."
        "location_precision_m: 20 m is below the grid floor of 50 m (rules.yaml "
        "geo.grid_floor_m) for a subscriber without a navigation_map_surveying qualification",
        f"{s}:{line_of(subs, '- id: sh-traffic', 1)}: subscribers[3].id: duplicate subscriber "
        "id 'sh-traffic' (also subscribers[2])",
        f"{s}:{line_of(subs, 'important_data]')}: subscribers[3].legal_bases[0].covers[1]: a "
        "standard_contract cannot cover important_data: important data needs a security "
        "assessment and geographic data an export approval",
        f"{s}:{line_of(subs, 'datum: WGS-84', 1)}: subscribers[3].view.datum: WGS-84 output needs "
        "a navigation_map_surveying qualification (RULES.md §1)",
        f"{c}:{line_of(consents, 'LFV2A21K8R4100002')}: consents[2].vin: 'LFV2A21K8R4100002' is "
        "not a valid VIN: check digit (position 9) is '8', expected '9'",
        f"{c}:{line_of(consents, '2024-02-15')}: consents[3].expires: must be later than granted",
        f"{c}:{line_of(consents, 'product-qualty')}: consents[4].purpose: unknown purpose "
        "'product-qualty' (purposes are listed in subscribers.yaml) (did you mean "
        "'product-quality'?)",
        f"{c}:{line_of(consents, 'granted: 2025-04-01T10:00:00')}: consents[5].granted: "
        "needs a UTC offset, e.g. 2025-01-10T09:30:00+08:00",
        f"{r}:{line_of(rules, 'assessment_from: 1 ')}: crossborder.sensitive_personal_information"
        ".assessment_from: must be greater than contract_from (1)",
        f"{r}:{line_of(rules, 'catalogue:')}: catalogue: missing rule geo.grid-floor: every "
        "RuleId is described",
        f"{r}:{line_of(rules, 'geo.grid-flor')}: catalogue[geo.grid-flor]: unknown rule id (did "
        "you mean 'geo.grid-floor'?); decisions cite only the ids of gateway.policy.rules.RuleId",
        f"{z}:{feature_line(zones, 1)}: features[1]: 'level' must be one of ['prohibited', "
        "'sensitive'], got 'forbidden'",
    ]


def test_the_collector_is_paused_while_loading_and_restored_after(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from gateway.policy import loader

    seen: list[bool] = []
    real = loader._load

    def spying(directory: str | Path | None) -> Any:
        seen.append(gc.isenabled())
        return real(directory)

    monkeypatch.setattr(loader, "_load", spying)
    assert gc.isenabled()
    load_bundle(bundle_dir)
    assert seen == [False] and gc.isenabled()
    edit(bundle_dir / "rules.yaml", "geo:\n", "geo: [\n")  # broken: the load raises
    with pytest.raises(PolicyError):
        load_bundle(bundle_dir)
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(PolicyError):
            load_bundle(bundle_dir)
        assert not gc.isenabled()  # a caller's own pause is left alone
    finally:
        gc.enable()


def test_ingest_limits_are_checked(bundle_dir: Path) -> None:
    rules = bundle_dir / "rules.yaml"
    edit(rules, "max_future_s: 300 ", "max_future_s: 90000 ")
    edit(rules, "verify_vin_check_digit: true", "verify_vin_check_digit: yes")
    edit(rules, "max_age_s: 604800 ", "max_age_s: 0 ")
    found = problems_of(bundle_dir)
    assert [p.split(": ")[1] for p in found] == [
        "ingest.verify_vin_check_digit",
        "ingest.max_future_s",
        "ingest.max_age_s",
    ], found
