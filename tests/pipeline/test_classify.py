"""Classify: signal columns looked up in the bundle; unclassified and ill-typed values dropped."""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Batch
from gateway.pipeline.classify import classify, coarsen_values, value_fits
from gateway.pipeline.decode import decode_records
from gateway.policy.bundle import PolicyBundle
from gateway.policy.loader import load_bundle
from gateway.policy.schema import Coarsen, DataType, FieldCategory, FieldSpec

VIN = "LSVAU2181P2100001"


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return load_bundle()


def column(values: list[Any]) -> np.ndarray:
    """A 1-d object column (as decode builds them), whatever the values are."""
    out = np.full(len(values), None, dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def batch_of(*signals: dict[str, Any]) -> Batch:
    batch = Batch.from_columns(
        vehicle=[VIN] * len(signals),
        time=[0.0] * len(signals),
        lat=[31.0] * len(signals),
        lon=[121.0] * len(signals),
    )
    for k in sorted({k for s in signals for k in s}):
        batch.signals[k] = column([s.get(k) for s in signals])
    return batch


def test_unclassified_columns_are_reported_per_row(bundle: PolicyBundle) -> None:
    c = classify(batch_of({"Vehicle.Speed": 10.0, "foo": 1}, {"bar": "x"}, {}), bundle)
    assert set(c.specs) == {"Vehicle.Speed"}
    assert c.unclassified_names(0) == ("foo",)
    assert c.unclassified_names(1) == ("bar",)
    assert c.unclassified_names(2) == ()
    assert c.any_unclassified.tolist() == [True, True, False]
    assert c.present["Vehicle.Speed"].tolist() == [True, False, False]


def test_aliases_merge_into_the_vss_path(bundle: PolicyBundle) -> None:
    batch = batch_of({"veh_spd": 50.0}, {"Vehicle.Speed": 20.0, "veh_spd": 99.0}, {})
    c = classify(batch, bundle)
    assert list(c.values["Vehicle.Speed"]) == [50.0, 20.0, None]  # the path wins
    assert "veh_spd" not in c.unclassified


def test_decode_with_aliases_gives_the_same_columns(bundle: PolicyBundle) -> None:
    raw = {"vin": VIN, "gps": {"time": 1.0, "lat": 31.0, "lon": 121.0}, "veh_spd": 50.0}
    c = classify(decode_records([raw], bundle.aliases), bundle)
    assert c.values["Vehicle.Speed"].tolist() == [50.0]


@pytest.mark.parametrize(
    ("path", "value", "fits"),
    [
        ("Vehicle.Speed", 50, True),
        ("Vehicle.Speed", 50.5, True),
        ("Vehicle.Speed", "50", False),
        ("Vehicle.Speed", True, False),
        ("Vehicle.Speed", math.inf, False),
        ("Vehicle.IsMoving", True, True),
        ("Vehicle.IsMoving", 1, False),
        ("Vehicle.Powertrain.FuelSystem.RelativeLevel", 255, True),  # uint8
        ("Vehicle.Powertrain.FuelSystem.RelativeLevel", 256, False),
        ("Vehicle.Powertrain.FuelSystem.RelativeLevel", -1, False),
        ("Vehicle.Powertrain.FuelSystem.RelativeLevel", 7.0, True),
        ("Vehicle.Powertrain.FuelSystem.RelativeLevel", 7.5, False),
        ("Vehicle.OBD.DTCList", ["P0001", "U0100"], True),
        ("Vehicle.OBD.DTCList", ["P0001", 3], False),
        ("Vehicle.Body.Lights.Brake.IsActive", "ACTIVE", True),
        ("Vehicle.Body.Lights.Brake.IsActive", None, False),
    ],
)
def test_values_must_fit_their_data_type(
    bundle: PolicyBundle, path: str, value: Any, fits: bool
) -> None:
    assert value_fits(bundle.fields[path], value) is fits
    c = classify(batch_of({path: value}, {path: value}), bundle)
    if value is None:
        assert path not in c.present or not c.present[path].any()
        return
    assert c.present[path].tolist() == [fits, fits]
    assert (path in c.unclassified) is not fits


def test_a_mixed_column_is_checked_value_by_value(bundle: PolicyBundle) -> None:
    values: list[Any] = [10, 2.5, "x", None, True, 2**70, -3]
    c = classify(batch_of(*({"Vehicle.Speed": v} for v in values)), bundle)
    assert c.present["Vehicle.Speed"].tolist() == [True, True, False, False, False, True, True]
    assert np.isnan(c.numbers["Vehicle.Speed"][2])
    assert c.numbers["Vehicle.Speed"][1] == 2.5


def test_key_off_rows(bundle: PolicyBundle) -> None:
    c = classify(
        batch_of(
            {"Vehicle.LowVoltageSystemState": "ON"},
            {"Vehicle.LowVoltageSystemState": "OFF"},
            {"Vehicle.LowVoltageSystemState": "LOCK"},
            {},
        ),
        bundle,
    )
    assert c.key_off.tolist() == [False, True, True, False]


def test_location_derived_columns_are_coarsened_once(bundle: PolicyBundle) -> None:
    c = classify(
        batch_of(
            {"Vehicle.CurrentLocation.Heading": 359.0, "Vehicle.Speed": 44.9},
            {"Vehicle.CurrentLocation.Heading": 22.5, "Vehicle.Speed": 45.0},
        ),
        bundle,
    )
    assert c.coarsened["Vehicle.CurrentLocation.Heading"].tolist() == [0.0, 45.0]
    assert c.coarsened["Vehicle.Speed"].tolist() == [40.0, 50.0]
    derived = c.category_present(FieldCategory.LOCATION_DERIVED)
    assert set(derived) == {"Vehicle.CurrentLocation.Heading", "Vehicle.Speed"}


def test_coarsen_values_rounds_to_the_nearest_step_halves_up() -> None:
    values = np.array([-5.0, -4.9, 4.9, 5.0, 14.99, np.nan])
    assert coarsen_values(values, Coarsen(step=10)).tolist()[:5] == [0.0, 0.0, 0.0, 10.0, 10.0]
    assert np.isnan(coarsen_values(values, Coarsen(step=10))[5])
    wrapped = coarsen_values(np.array([337.5, 359.0, -22.6, 720.0]), Coarsen(step=45, wrap=360))
    assert wrapped.tolist() == [0.0, 0.0, 315.0, 0.0]


@settings(max_examples=200)
@given(
    st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from([1.0, 5.0, 10.0, 45.0]),
    st.booleans(),
)
def test_coarsened_values_are_multiples_of_the_step(
    values: list[float], step: float, wrap: bool
) -> None:
    spec = Coarsen(step=step, wrap=360.0 if wrap else None)
    out = coarsen_values(np.array(values), spec)
    for v, o in zip(values, out.tolist(), strict=True):
        k = o / step
        assert k == round(k)
        if wrap:
            assert 0 <= o < 360
            assert min(abs(o - v) % 360, 360 - abs(o - v) % 360) <= step / 2 + 1e-6
        else:
            assert abs(o - v) <= step / 2 + 1e-6


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(min_value=-(2**65), max_value=2**65),
            st.floats(allow_nan=True),
            st.text(max_size=3),
            st.lists(st.text(max_size=2), max_size=2),
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(list(DataType)),
)
def test_bulk_type_checks_agree_with_the_per_value_check(
    bundle: PolicyBundle, values: list[Any], datatype: DataType
) -> None:
    spec = FieldSpec(category=FieldCategory.VEHICLE_STATE, datatype=datatype)
    fields = dict(bundle.fields)
    fields["Vehicle.Test.Signal"] = spec
    test_bundle = dataclasses.replace(bundle, fields=MappingProxyType(fields))
    c = classify(batch_of(*({"Vehicle.Test.Signal": v} for v in values)), test_bundle)
    expected = [value_fits(spec, v) for v in values]
    if "Vehicle.Test.Signal" in c.present:
        assert c.present["Vehicle.Test.Signal"].tolist() == expected
    else:
        assert not any(expected)
