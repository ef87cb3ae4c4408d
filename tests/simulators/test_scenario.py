"""Scenario files: strict validation, errors naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from simulators.scenario import Scenario, load_scenario

MIXED = Path(__file__).parents[2] / "simulators" / "scenarios" / "mixed.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.file == str(path)
    return [str(p) for p in info.value.problems]


def test_shipped_example_loads() -> None:
    scenario = load_scenario(MIXED)
    assert scenario.zone_crossing.share == 0.2
    assert scenario.faults.malformed == 0.01
    assert scenario.batches.size == (2, 10)
    assert scenario.consent.share == 0.7


def test_empty_file_is_a_clean_fleet(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path, "# nothing\n")) == Scenario()
    clean = Scenario()
    assert clean.faults.malformed == clean.faults.duplicate == 0
    assert clean.consent.share == 1.0
    assert clean.zone_crossing.share == 0.0


def test_unknown_key_names_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "faults:\n  malformed: 0.1\n  dupliate: 0.2\n")
    assert problems(path) == [f"{path}:3: faults.dupliate: unknown field"]


def test_every_bad_value_is_reported_with_its_line(tmp_path: Path) -> None:
    text = (
        "consent:\n"
        "  share: 1.5\n"
        "batches:\n"
        "  size: [5, 2]\n"
        "trips:\n"
        "  pause_s: [10, -1]\n"
        "network:\n"
        "  rings_km: [3, 'far']\n"
    )
    path = write(tmp_path, text)
    found = problems(path)
    assert len(found) == 4
    assert found[0].startswith(f"{path}:2: consent.share: ")
    assert found[1] == f"{path}:4: batches.size: must be [min, max] with min <= max"
    assert found[2].startswith(f"{path}:6: trips.pause_s[1]: ")
    assert found[3].startswith(f"{path}:8: network.rings_km[1]: ")


def test_exclusive_faults_must_not_exceed_one(tmp_path: Path) -> None:
    path = write(tmp_path, "faults:\n  malformed: 0.5\n  spoofed_vin: 0.4\n  out_of_order: 0.2\n")
    assert problems(path) == [
        f"{path}:1: faults: malformed + spoofed_vin + out_of_order must not exceed 1"
    ]


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "faults:\n  malformed: [0.1\n")
    (found,) = problems(path)
    assert found.startswith(f"{path}:3: YAML syntax")


def test_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert problems(path) == [f"{path}:1: a scenario must be a mapping of sections"]


def test_missing_file(tmp_path: Path) -> None:
    (found,) = problems(tmp_path / "nope.yaml")
    assert "cannot read" in found


def test_relative_zone_paths_resolve_against_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "s"
    sub.mkdir()
    path = sub / "scenario.yaml"
    path.write_text("zone_crossing:\n  zones: [z.geojson, /abs/z.geojson]\n", encoding="utf-8")
    scenario = load_scenario(path)
    assert scenario.zone_crossing.zones == [sub / "z.geojson", Path("/abs/z.geojson")]


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "faults:\n  malformed: 0.1\n  malformed: 0.2\n")
    (found,) = problems(path)
    assert found.startswith(f"{path}:3: faults.malformed: duplicate key")
