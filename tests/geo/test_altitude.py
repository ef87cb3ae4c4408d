"""Altitude coarsening: per-value reference, dropping, bad values never raise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GeoError
from gateway.geo import coarsen_altitude


def reference(alt: float, step: float) -> float:
    """Nearest multiple of ``step``, halves up; NaN for anything not a finite number."""
    scaled = alt / step + 0.5
    if not math.isfinite(scaled):
        return math.nan
    return math.floor(scaled) * step


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=50),
    st.sampled_from([0.5, 1.0, 10.0, 25.0, 50.0, 100.0, 333.0]),
)
def test_matches_per_value_reference(values: list[float], step: float) -> None:
    out = coarsen_altitude(np.array(values, dtype=np.float64), step)
    assert out.shape == (len(values),) and out.dtype == np.float64
    for got, alt in zip(out.tolist(), values, strict=True):
        want = reference(alt, step)
        if math.isnan(want) or math.isinf(want):
            assert math.isnan(got)
        else:
            assert got == want


@settings(max_examples=80, deadline=None)
@given(
    st.floats(min_value=-12_000.0, max_value=12_000.0),
    st.sampled_from([1.0, 10.0, 50.0, 100.0]),
)
def test_bounded_error_and_stable_buckets(alt: float, step: float) -> None:
    out = float(coarsen_altitude(alt, step)[0])
    assert abs(out - alt) <= step / 2
    assert out / step == round(out / step)  # a multiple of the step
    # Coarsening is idempotent: a reported value stays in its bucket.
    assert float(coarsen_altitude(out, step)[0]) == out


def test_rounding_is_to_nearest_with_halves_up() -> None:
    out = coarsen_altitude([12.4, 12.5, 37.4999, 37.5, -12.5, -12.6, -0.2, 0.0], 25.0)
    assert out.tolist() == [0.0, 25.0, 25.0, 50.0, 0.0, -25.0, 0.0, 0.0]
    # No negative zero leaks out.
    assert not np.signbit(out[-2:]).any()


@pytest.mark.parametrize("step", [None, 0, 0.0])
def test_none_or_zero_drops_altitude(step: float | None) -> None:
    out = coarsen_altitude([123.4, -5.0, math.nan], step)
    assert out.shape == (3,) and np.isnan(out).all()


def test_bad_values_become_nan_and_never_raise() -> None:
    values = np.array(
        [None, "high", math.nan, math.inf, -math.inf, True, 1e308, 87.0], dtype=object
    )
    out = coarsen_altitude(values, 10.0)
    assert np.isnan(out[:6]).all()
    assert math.isfinite(out[6])
    assert out[7] == 90.0


def test_scalar_and_empty_input() -> None:
    assert coarsen_altitude(87.0, 50.0).tolist() == [100.0]
    assert coarsen_altitude([], 50.0).size == 0
    assert coarsen_altitude(None, 50.0).size == 1 and math.isnan(coarsen_altitude(None, 50.0)[0])


def test_input_is_not_modified() -> None:
    alt = np.array([12.3, 45.6])
    coarsen_altitude(alt, 10.0)
    assert alt.tolist() == [12.3, 45.6]


@pytest.mark.parametrize("step", [-1.0, math.nan, math.inf, -math.inf])
def test_bad_step_raises(step: float) -> None:
    with pytest.raises(GeoError):
        coarsen_altitude([1.0], step)
