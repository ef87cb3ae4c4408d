"""The loaded bundle: version = hash of canonical content; immutable; lookups."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.located_yaml import read_yaml
from gateway.policy import RuleId, load_bundle
from gateway.policy.bundle import BUNDLE_SCHEMA, _pieces
from gateway.policy.schema import (
    ConsentsDoc,
    FieldCategory,
    FieldsDoc,
    RulesDoc,
    SubscribersDoc,
)
from gateway.resources import default_policy_dir
from tests.policy.conftest import edit


def test_same_content_same_version(bundle_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    shutil.copytree(bundle_dir, other)
    assert load_bundle(bundle_dir).version == load_bundle(other).version == load_bundle().version


def test_comments_and_layout_do_not_change_the_version(bundle_dir: Path) -> None:
    before = load_bundle(bundle_dir).version
    subs = bundle_dir / "subscribers.yaml"
    fields = bundle_dir / "fields.yaml"
    rules = bundle_dir / "rules.yaml"
    zones = bundle_dir / "zones.geojson"
    # comments, a flow list written as a block list, key order, quoting, 50 vs 50.0
    edit(subs, "purposes:\n", "# a new comment\npurposes:  # trailing comment\n")
    edit(subs, "    purposes: [navigation-map]", "    purposes:\n      - navigation-map")
    edit(
        subs,
        "      time_precision_s: 60\n      min_interval_s: 30\n",
        "      min_interval_s: 30\n      time_precision_s: 60.0\n",
    )
    edit(
        subs, "    name: MapCo Navigation (fictitious)", '    name: "MapCo Navigation (fictitious)"'
    )
    edit(
        fields,
        "    coarsen: {step: 45, wrap: 360}",
        "    coarsen:\n      wrap: 360\n      step: 45",
    )
    edit(rules, "  grid_floor_m: 50", "  grid_floor_m: 50.0")
    zones.write_text(json.dumps(json.loads(zones.read_text())), encoding="utf-8")  # one line
    assert load_bundle(bundle_dir).version == before


def test_defaults_written_out_do_not_change_the_version(bundle_dir: Path) -> None:
    before = load_bundle(bundle_dir).version
    edit(
        bundle_dir / "subscribers.yaml",
        "      datum: GCJ-02\n      time_precision_s: 60",
        "      datum: GCJ-02\n      datum_transform: gcj02\n      time_precision_s: 60",
    )
    assert load_bundle(bundle_dir).version == before


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("subscribers.yaml", "      min_interval_s: 30\n", "      min_interval_s: 31\n"),
        ("fields.yaml", "coarsen: {step: 45, wrap: 360}", "coarsen: {step: 90, wrap: 360}"),
        ("consents.yaml", "  - id: c-0006", "  - id: c-0007"),
        ("rules.yaml", "split_gap_s: 600", "split_gap_s: 900"),
        ("rules.yaml", "description: altitude removed for the view", "description: removed"),
        ("zones.geojson", '"buffer_m": 500', '"buffer_m": 501'),
        ("zones.geojson", "Pudong north-east", "Pudong"),
    ],
)
def test_any_semantic_change_changes_the_version(
    bundle_dir: Path, file: str, old: str, new: str
) -> None:
    before = load_bundle(bundle_dir).version
    edit(bundle_dir / file, old, new)
    after = load_bundle(bundle_dir).version
    assert after != before
    assert len(after) == 64 and int(after, 16) >= 0


def test_bundle_is_immutable() -> None:
    bundle = load_bundle()
    with pytest.raises(TypeError):
        bundle.subscribers["x"] = bundle.subscribers["mapco-nav"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del bundle.fields["Vehicle.Speed"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        bundle.version = "0" * 64  # type: ignore[misc]
    with pytest.raises(ValidationError):
        bundle.subscribers["mapco-nav"].view.location_precision_m = 1  # type: ignore[misc]
    assert isinstance(bundle.subscribers["mapco-nav"].purposes, tuple)


def test_resolve_and_category() -> None:
    bundle = load_bundle()
    assert bundle.resolve("veh_spd") == "Vehicle.Speed"
    assert bundle.resolve("Vehicle.Speed") == "Vehicle.Speed"
    assert bundle.resolve("Vehicle.Cabin.Infotainment.Navigation.DestinationSet.Latitude") is None
    assert bundle.category("gps.lat") is FieldCategory.LOCATION
    assert bundle.category("vin") is FieldCategory.VEHICLE_ID
    assert bundle.category("made.up") is None


def test_allowed_fields_are_categories_plus_named_fields() -> None:
    bundle = load_bundle()
    allowed = bundle.allowed_fields("insureco-ubi")
    expected_categories = {
        FieldCategory.LOCATION,
        FieldCategory.LOCATION_DERIVED,
        FieldCategory.ALTITUDE,
        FieldCategory.TIME,
        FieldCategory.VEHICLE_STATE,
    }
    by_category = {p for p, f in bundle.fields.items() if f.category in expected_categories}
    assert allowed == by_category | {"Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"}
    assert "Vehicle.VehicleIdentification.VIN" not in allowed
    assert "Vehicle.Driver.Identifier.Subject" not in allowed
    with pytest.raises(KeyError):
        bundle.allowed_fields("nobody")


def test_every_rule_id_is_described() -> None:
    bundle = load_bundle()
    for rule_id in RuleId:
        spec = bundle.rule(rule_id)
        assert 1 <= spec.section <= 6
        assert spec.description


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@given(_JSON)
def test_canonical_pieces_join_to_one_json_document(value: object) -> None:
    one_shot = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert "".join(_pieces(value, 3)) == one_shot


def test_version_is_the_hash_of_the_whole_content_as_one_document() -> None:
    """The version is hashed piece by piece; it must be the SHA-256 of the canonical JSON
    written in one go, as the module documents (and as earlier versions computed it)."""
    root = default_policy_dir()
    docs = {}
    for name, model in (
        ("fields", FieldsDoc),
        ("subscribers", SubscribersDoc),
        ("consents", ConsentsDoc),
        ("rules", RulesDoc),
    ):
        source, problems = read_yaml(root / f"{name}.yaml", name)
        assert source is not None and problems == []
        docs[name] = model.model_validate(source.data).model_dump(mode="json")
    content = {
        "schema": BUNDLE_SCHEMA,
        **docs,
        "zones": json.loads((root / "zones.geojson").read_text(encoding="utf-8")),
    }
    text = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert load_bundle().version == hashlib.sha256(text.encode("utf-8")).hexdigest()
