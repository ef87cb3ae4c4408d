"""Datum transforms: published pairs, per-point reference, exact inverse, fail-closed rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway
from gateway.errors import DatumError
from gateway.geo import datum
from gateway.geo.datum import (
    DatumResult,
    available_transforms,
    gcj02_to_wgs84,
    get_transform,
    register_transform,
    transform,
    transform_back,
    wgs84_to_gcj02,
)
from gateway.model import Datum, ErrorCode

# --- per-point reference (math module, one point at a time) -----------------------------------

A = 6378245.0
EE = 0.00669342162296594323


def ref_out_of_box(lat: float, lon: float) -> bool:
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def ref_offset(lat: float, lon: float) -> tuple[float, float]:
    x, y = lon - 105.0, lat - 35.0
    pi = math.pi
    t_lat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    t_lat += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    t_lat += (20.0 * math.sin(y * pi) + 40.0 * math.sin(y / 3.0 * pi)) * 2.0 / 3.0
    t_lat += (160.0 * math.sin(y / 12.0 * pi) + 320 * math.sin(y * pi / 30.0)) * 2.0 / 3.0
    t_lon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    t_lon += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    t_lon += (20.0 * math.sin(x * pi) + 40.0 * math.sin(x / 3.0 * pi)) * 2.0 / 3.0
    t_lon += (150.0 * math.sin(x / 12.0 * pi) + 300.0 * math.sin(x / 30.0 * pi)) * 2.0 / 3.0
    rad = lat / 180.0 * pi
    magic = 1 - EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    d_lat = (t_lat * 180.0) / ((A * (1 - EE)) / (magic * sqrt_magic) * pi)
    d_lon = (t_lon * 180.0) / (A / sqrt_magic * math.cos(rad) * pi)
    return d_lat, d_lon


def ref_forward(lat: float, lon: float) -> tuple[float, float] | None:
    if ref_out_of_box(lat, lon):
        return None
    d_lat, d_lon = ref_offset(lat, lon)
    return lat + d_lat, lon + d_lon


def ref_inverse(lat: float, lon: float) -> tuple[float, float] | None:
    """Fixed point w <- w - (F(w) - g) until F(w) matches g to 1e-12 deg.

    GCJ-02 offsets stay under 0.01 deg, so a position 0.1 deg or more outside the box has no
    preimage in it. A preimage within 5e-10 deg of the edge counts as on the edge.
    """
    if not (72.004 - 0.1 <= lon <= 137.8347 + 0.1 and 0.8293 - 0.1 <= lat <= 55.8271 + 0.1):
        return None
    w_lat, w_lon = lat, lon
    for _ in range(100):
        d_lat, d_lon = ref_offset(w_lat, w_lon)
        r_lat, r_lon = w_lat + d_lat - lat, w_lon + d_lon - lon
        if abs(r_lat) < 1e-12 and abs(r_lon) < 1e-12:
            break
        w_lat, w_lon = w_lat - r_lat, w_lon - r_lon
    if not (
        72.004 - 5e-10 <= w_lon <= 137.8347 + 5e-10 and 0.8293 - 5e-10 <= w_lat <= 55.8271 + 5e-10
    ):
        return None
    return min(max(w_lat, 0.8293), 55.8271), min(max(w_lon, 72.004), 137.8347)


# --- published pairs (implementations using a = 6378245.0) -------------------------------------

PUBLISHED = [
    # wgs lat, wgs lon, gcj lat, gcj lon
    # googollee/eviltransform test suite (shanghai, shenzhen, beijing)
    (31.1774276, 121.5272106, 31.17530398364597, 121.531541859215),
    (22.543847, 113.912316, 22.540796131694766, 113.9171764808363),
    (39.911954, 116.377817, 39.91334545536069, 116.38404722455657),
    # wandergis/coordtransform ports (coordtransform-rs, hutool CoordinateUtilTest)
    (39.915, 116.404, 39.91640428150164, 116.41024449916938),
]


@pytest.mark.parametrize(("w_lat", "w_lon", "g_lat", "g_lon"), PUBLISHED)
def test_published_pairs(w_lat: float, w_lon: float, g_lat: float, g_lon: float) -> None:
    lat, lon = wgs84_to_gcj02(w_lat, w_lon)
    assert lat == pytest.approx(g_lat, abs=1e-12)
    assert lon == pytest.approx(g_lon, abs=1e-12)
    back_lat, back_lon = gcj02_to_wgs84(g_lat, g_lon)
    assert back_lat == pytest.approx(w_lat, abs=1e-9)
    assert back_lon == pytest.approx(w_lon, abs=1e-9)


def test_published_inverse_to_five_decimals() -> None:
    # hujiulong/gcoord: GCJ-02 (45, 123) -> WGS-84, published to 5 decimals.
    lat, lon = gcj02_to_wgs84(45.0, 123.0)
    assert lat == pytest.approx(44.99804071, abs=5e-6)
    assert lon == pytest.approx(122.99395597, abs=5e-6)


def test_wgs84_semi_major_axis_would_be_wrong() -> None:
    # Libraries using a = 6378137 differ by ~1e-7 deg: make sure we are not one of them.
    lat, lon = wgs84_to_gcj02(30.6107779, 121.0917077)
    assert abs(lat - 30.608604331756705) > 1e-8 or abs(lon - 121.09626935575027) > 1e-8


def test_arrays_match_published_pairs() -> None:
    w = np.array([(p[0], p[1]) for p in PUBLISHED])
    g = np.array([(p[2], p[3]) for p in PUBLISHED])
    lat, lon = wgs84_to_gcj02(w[:, 0], w[:, 1])
    np.testing.assert_allclose(lat, g[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(lon, g[:, 1], rtol=0, atol=1e-12)


# --- property tests against the reference -----------------------------------------------------

box_lat = st.floats(min_value=0.8293, max_value=55.8271)
box_lon = st.floats(min_value=72.004, max_value=137.8347)
any_lat = st.floats(min_value=-90.0, max_value=90.0)
any_lon = st.floats(min_value=-180.0, max_value=180.0)
points = st.lists(
    st.one_of(st.tuples(box_lat, box_lon), st.tuples(any_lat, any_lon)), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None)
@given(points)
def test_forward_matches_reference(pts: list[tuple[float, float]]) -> None:
    result = transform("gcj02", [p[0] for p in pts], [p[1] for p in pts])
    assert result.datum is Datum.GCJ02
    for i, (lat, lon) in enumerate(pts):
        expected = ref_forward(lat, lon)
        if expected is None:
            assert result.error[i] == ErrorCode.OUTSIDE_DATUM_AREA
            assert not result.ok[i]
            assert math.isnan(result.lat[i]) and math.isnan(result.lon[i])
        else:
            assert result.ok[i] and result.error[i] == ErrorCode.OK
            assert result.lat[i] == pytest.approx(expected[0], abs=1e-12)
            assert result.lon[i] == pytest.approx(expected[1], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(points)
def test_inverse_matches_reference(pts: list[tuple[float, float]]) -> None:
    result = transform_back("gcj02", [p[0] for p in pts], [p[1] for p in pts])
    assert result.datum is Datum.WGS84
    for i, (lat, lon) in enumerate(pts):
        expected = ref_inverse(lat, lon)
        if expected is None:
            assert result.error[i] == ErrorCode.OUTSIDE_DATUM_AREA
            assert math.isnan(result.lat[i]) and math.isnan(result.lon[i])
        else:
            assert result.ok[i]
            assert result.lat[i] == pytest.approx(expected[0], abs=1e-10)
            assert result.lon[i] == pytest.approx(expected[1], abs=1e-10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(box_lat, box_lon), min_size=1, max_size=40))
def test_round_trip_and_exact_inverse(pts: list[tuple[float, float]]) -> None:
    w_lat = np.array([p[0] for p in pts])
    w_lon = np.array([p[1] for p in pts])
    g_lat, g_lon = wgs84_to_gcj02(w_lat, w_lon)
    b_lat, b_lon = gcj02_to_wgs84(g_lat, g_lon)
    # Rows whose WGS-84 position is inside the box always come back, to 1e-9 deg.
    assert np.abs(b_lat - w_lat).max() <= 1e-9
    assert np.abs(b_lon - w_lon).max() <= 1e-9
    # And the forward transform of the inverse reproduces the GCJ-02 input to 1e-9 deg.
    f_lat, f_lon = wgs84_to_gcj02(b_lat, b_lon)
    assert np.abs(f_lat - g_lat).max() <= 1e-9
    assert np.abs(f_lon - g_lon).max() <= 1e-9


def test_inverse_beats_one_step_approximation() -> None:
    rng = np.random.default_rng(3)
    w_lat = rng.uniform(0.8293, 55.8271, 2000)
    w_lon = rng.uniform(72.004, 137.8347, 2000)
    g_lat, g_lon = wgs84_to_gcj02(w_lat, w_lon)
    one_step = np.array(
        [
            (la - ref_offset(la, lo)[0] - wl, lo - ref_offset(la, lo)[1] - wo)
            for la, lo, wl, wo in zip(g_lat, g_lon, w_lat, w_lon, strict=True)
        ]
    )
    # The one-step answer is off by metres somewhere (1e-5 deg ~ 1 m); ours is exact.
    assert np.abs(one_step).max() > 2e-5
    b_lat, b_lon = gcj02_to_wgs84(g_lat, g_lon)
    assert np.abs(b_lat - w_lat).max() <= 1e-9
    assert np.abs(b_lon - w_lon).max() <= 1e-9


def test_a_row_does_not_depend_on_its_batch() -> None:
    rng = np.random.default_rng(5)
    lat = rng.uniform(0.8293, 55.8271, 300)
    lon = rng.uniform(72.004, 137.8347, 300)
    batch = transform_back("gcj02", lat, lon)
    for i in range(0, 300, 37):
        alone = transform_back("gcj02", lat[i], lon[i])
        assert alone.lat[0] == batch.lat[i] and alone.lon[0] == batch.lon[i]


# --- the box: fail closed ---------------------------------------------------------------------


def test_box_edges_are_inside_and_beyond_is_reported() -> None:
    lat = [0.8293, 55.8271, 30.0, 30.0, 0.8292, 55.8272, 30.0, 30.0, 48.85, -33.9]
    lon = [100.0, 100.0, 72.004, 137.8347, 100.0, 100.0, 72.0039, 137.8348, 2.35, 151.2]
    result = transform("gcj02", lat, lon)
    assert result.ok.tolist() == [True] * 4 + [False] * 6
    assert (result.error[~result.ok] == ErrorCode.OUTSIDE_DATUM_AREA).all()
    assert np.isnan(result.lat[~result.ok]).all() and np.isnan(result.lon[~result.ok]).all()
    # The convenient form is NaN too: never WGS-84 passed through.
    g_lat, g_lon = wgs84_to_gcj02(lat, lon)
    assert np.isnan(g_lat[4:]).all() and np.isnan(g_lon[4:]).all()


def test_inverse_refuses_positions_the_forward_never_produces() -> None:
    # Just west of the box: the raw formula gives a GCJ-02-looking position whose preimage is
    # outside the box, so the forward transform would never have produced it.
    w_lat, w_lon = 30.0, 72.0035
    d_lat, d_lon = ref_offset(w_lat, w_lon)
    g_lat, g_lon = w_lat + d_lat, w_lon + d_lon
    assert not ref_out_of_box(g_lat, g_lon)  # the GCJ-02 position itself is inside the box
    result = transform_back("gcj02", [g_lat, 48.85, 30.0], [g_lon, 2.35, 100.0])
    assert result.error.tolist() == [
        ErrorCode.OUTSIDE_DATUM_AREA,
        ErrorCode.OUTSIDE_DATUM_AREA,
        ErrorCode.OK,
    ]
    assert np.isnan(result.lat[:2]).all()


def test_inverse_accepts_positions_just_outside_the_box_whose_preimage_is_inside() -> None:
    # Near the eastern edge GCJ-02 shifts east: the image of an edge point lies outside the box.
    w_lat, w_lon = 30.0, 137.8347
    g_lat, g_lon = wgs84_to_gcj02(w_lat, w_lon)
    assert ref_out_of_box(g_lat, g_lon)
    assert gcj02_to_wgs84(g_lat, g_lon) == pytest.approx((w_lat, w_lon), abs=1e-9)


# --- bad input: never raises, NaN and a code ----------------------------------------------------

BAD = [
    (None, 116.4, ErrorCode.MISSING_COORDINATE),
    (39.9, None, ErrorCode.MISSING_COORDINATE),
    ("39.9", 116.4, ErrorCode.NON_NUMERIC_COORDINATE),
    (True, 116.4, ErrorCode.NON_NUMERIC_COORDINATE),
    (math.nan, 116.4, ErrorCode.NON_FINITE_COORDINATE),
    (39.9, math.inf, ErrorCode.NON_FINITE_COORDINATE),
    (-math.inf, 116.4, ErrorCode.NON_FINITE_COORDINATE),
    (90.5, 116.4, ErrorCode.COORDINATE_OUT_OF_RANGE),
    (39.9, -180.5, ErrorCode.COORDINATE_OUT_OF_RANGE),
    (39.9, 116.4, ErrorCode.OK),
]


@pytest.mark.parametrize("name", ["forward", "inverse"])
def test_every_bad_input_is_reported(name: str) -> None:
    lat = np.array([b[0] for b in BAD], dtype=object)
    lon = np.array([b[1] for b in BAD], dtype=object)
    run = transform if name == "forward" else transform_back
    result = run("gcj02", lat, lon)
    assert result.error.tolist() == [int(b[2]) for b in BAD]
    assert result.ok.tolist() == [b[2] == ErrorCode.OK for b in BAD]
    assert np.isnan(result.lat[:-1]).all() and np.isnan(result.lon[:-1]).all()
    convenient = wgs84_to_gcj02 if name == "forward" else gcj02_to_wgs84
    c_lat, c_lon = convenient(lat, lon)
    assert np.isnan(c_lat[:-1]).all() and np.isnan(c_lon[:-1]).all()
    assert c_lat[-1] == result.lat[-1]


def test_scalar_in_floats_out_arrays_in_arrays_out() -> None:
    lat, lon = wgs84_to_gcj02(39.915, 116.404)
    assert type(lat) is float and type(lon) is float
    lat, lon = gcj02_to_wgs84(np.float64(39.9), np.int64(116))
    assert type(lat) is float and type(lon) is float
    lat, lon = wgs84_to_gcj02(None, 116.4)
    assert type(lat) is float and math.isnan(lat) and math.isnan(lon)
    arr_lat, arr_lon = wgs84_to_gcj02([39.915], [116.404])
    assert isinstance(arr_lat, np.ndarray) and arr_lat.shape == (1,)
    assert isinstance(arr_lon, np.ndarray) and arr_lon.dtype == np.float64
    empty = transform("gcj02", [], [])
    assert len(empty) == 0 and empty.error.dtype == np.uint16


def test_package_exports_the_transforms() -> None:
    assert gateway.wgs84_to_gcj02 is wgs84_to_gcj02
    assert gateway.gcj02_to_wgs84 is gcj02_to_wgs84


# --- the registry ------------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Isolate registrations made by a test from the module-wide registry."""
    monkeypatch.setattr(datum, "_registry", dict(datum._registry))


def shift(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A toy plug-in: +1 deg latitude, refuses rows east of 120 (code OUTSIDE_DATUM_AREA)."""
    error = np.where(lon > 120.0, ErrorCode.OUTSIDE_DATUM_AREA, ErrorCode.OK).astype(np.uint16)
    return lat + 1.0, lon.copy(), error


def unshift(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return lat - 1.0, lon.copy(), np.zeros(lat.size, dtype=np.uint16)


def test_builtin_is_registered() -> None:
    assert "gcj02" in available_transforms()
    entry = get_transform("gcj02")
    assert entry.name == "gcj02" and entry.datum is Datum.GCJ02


def test_unknown_name_raises_datum_error() -> None:
    with pytest.raises(DatumError, match="certified"):
        get_transform("certified")
    with pytest.raises(DatumError):
        transform("certified", 39.9, 116.4)
    with pytest.raises(DatumError):
        transform_back("certified", 39.9, 116.4)


@pytest.mark.usefixtures("registry")
def test_plugin_is_used_and_its_refusals_fail_closed() -> None:
    register_transform("toy", shift, unshift)
    assert "toy" in available_transforms()
    result = transform("toy", [10.0, 20.0, None], [100.0, 121.0, 100.0])
    assert isinstance(result, DatumResult)
    assert result.error.tolist() == [
        ErrorCode.OK,
        ErrorCode.OUTSIDE_DATUM_AREA,
        ErrorCode.MISSING_COORDINATE,
    ]
    # The refused row is NaN although the plug-in returned a number for it.
    assert result.lat[0] == 11.0 and np.isnan(result.lat[1:]).all()
    assert transform_back("toy", 11.0, 100.0).lat[0] == 10.0


@pytest.mark.usefixtures("registry")
def test_plugin_sees_only_valid_rows() -> None:
    seen: list[int] = []

    def spy(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seen.append(lat.size)
        assert np.isfinite(lat).all() and np.isfinite(lon).all()
        return lat, lon, np.zeros(lat.size, dtype=np.uint16)

    register_transform("spy", spy, spy)
    transform("spy", [1.0, math.nan, 2.0, None], [1.0, 1.0, 1.0, 1.0])
    transform("spy", [math.nan], [1.0])
    assert seen == [2]


@pytest.mark.usefixtures("registry")
def test_registration_never_silently_shadows() -> None:
    with pytest.raises(DatumError, match="already registered"):
        register_transform("gcj02", shift, unshift)
    assert get_transform("gcj02").forward is not shift
    register_transform("gcj02", shift, unshift, replace=True)
    assert get_transform("gcj02").forward is shift
    with pytest.raises(DatumError):
        register_transform("", shift, unshift)
    with pytest.raises(DatumError):
        register_transform("none", shift, unshift, datum=Datum.NONE)


@pytest.mark.usefixtures("registry")
def test_misbehaving_plugins() -> None:
    def silent_nan(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.full(lat.size, np.nan), lon, np.zeros(lat.size, dtype=np.uint16)

    def short(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return lat[:-1], lon[:-1], np.zeros(lat.size - 1, dtype=np.uint16)

    register_transform("nan", silent_nan, silent_nan)
    register_transform("short", short, short)
    result = transform("nan", [10.0], [100.0])
    assert result.error[0] == ErrorCode.NON_FINITE_COORDINATE and not result.ok[0]
    with pytest.raises(DatumError, match="short"):
        transform("short", [10.0, 11.0], [100.0, 100.0])
