"""Loading bundles: the default loads; every mistake is reported as file:line: field: message."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import PolicyError
from gateway.policy import RuleId, load_bundle
from gateway.policy.schema import FieldCategory
from gateway.resources import default_policy_dir


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


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_bundle(tmp_path / "nope")
    assert [str(p) for p in info.value.problems] == [f"{tmp_path / 'nope'}: not a directory"]
