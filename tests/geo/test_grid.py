"""The metric grid: per-point reference, geodesic guarantees, band edges, determinism."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod, Proj, Transformer

from gateway.errors import GeoError
from gateway.geo import grid
from gateway.geo.grid import (
    K_MAX,
    K_MIN,
    MAX_SIZE_M,
    band_crs,
    band_of,
    band_transformers,
    cell_centres,
    cell_corners,
    cell_id,
    cell_projected_bounds,
    cell_side,
    format_cell_id,
    parse_cell_id,
    snap,
    split_cell_id,
)
from gateway.model import ErrorCode

GEOD = Geod(ellps="WGS84")

# UTM band edges crossing China's extent (zones 43..53).
BAND_EDGES = [72.0, 78.0, 84.0, 90.0, 96.0, 102.0, 108.0, 114.0, 120.0, 126.0, 132.0, 138.0]


def reference_snap(lat: float, lon: float, size_m: float) -> tuple[int, int, int, float, float]:
    """One point at a time: (band, ix, iy, centre lat, centre lon) with math + scalar pyproj."""
    zone = min(math.floor((lon + 180.0) / 6.0), 59) + 1
    band = (32700 if lat < 0 else 32600) + zone
    fwd = Transformer.from_crs(4326, band, always_xy=True)
    inv = Transformer.from_crs(band, 4326, always_xy=True)
    x, y = fwd.transform(lon, lat)
    side = size_m * K_MAX
    ix = math.floor(x / side)
    iy = math.floor(y / side)
    c_lon, c_lat = inv.transform((ix + 0.5) * side, (iy + 0.5) * side)
    return band, ix, iy, c_lat, c_lon


def china_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random points over China's extent, half of them within 2 m of a band edge."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(0.8293, 55.8271, n)
    lon = rng.uniform(72.004, 137.8347, n)
    half = n // 2
    edges = rng.choice(BAND_EDGES[1:-1], half)
    # 2 m either side of the edge, and points exactly on it.
    offsets = rng.uniform(-2e-5, 2e-5, half)
    offsets[::7] = 0.0
    lon[:half] = edges + offsets
    return lat, lon


def geodesic(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    _, _, dist = GEOD.inv(lon1, lat1, lon2, lat2)
    return np.asarray(dist)


# --- reference comparison -------------------------------------------------------------------

lat_st = st.floats(min_value=-89.9, max_value=89.9, allow_nan=False)
lon_st = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)
size_st = st.sampled_from([1.0, 10.0, 50.0, 333.3, 1000.0, 20_000.0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(lat_st, lon_st), min_size=1, max_size=30), size_st)
def test_snap_matches_per_point_reference(points: list[tuple[float, float]], size: float) -> None:
    lat = np.array([p[0] for p in points])
    lon = np.array([p[1] for p in points])
    result = snap(lat, lon, size)
    assert result.ok.all()
    for i, (la, lo) in enumerate(points):
        band, ix, iy, c_lat, c_lon = reference_snap(la, lo, size)
        assert (result.band[i], result.ix[i], result.iy[i]) == (band, ix, iy)
        assert result.lat[i] == pytest.approx(c_lat, abs=1e-12)
        assert result.lon[i] == pytest.approx(c_lon, abs=1e-12)
        assert format_cell_id(int(result.cell[i])) == f"{band}:{ix}:{iy}"


@settings(max_examples=30, deadline=None)
@given(
    st.floats(min_value=0.8293, max_value=55.8271),
    st.sampled_from(BAND_EDGES),
    st.floats(min_value=-1e-6, max_value=1e-6),
)
def test_band_edges_follow_six_degree_bands(lat: float, edge: float, offset: float) -> None:
    lon = edge + offset
    expected = 32600 + min(math.floor((lon + 180.0) / 6.0), 59) + 1
    assert band_of(lat, lon)[0] == expected
    assert snap(lat, lon).band[0] == expected


def test_band_names_hemisphere_and_antimeridian() -> None:
    bands = band_of([39.9, -33.9, 0.0, -0.0, 10.0, 10.0], [116.4, 151.2, 18.0, 18.0, 180.0, -180.0])
    assert bands.tolist() == [32650, 32756, 32634, 32634, 32660, 32601]
    assert band_crs(32650).to_epsg() == 32650
    assert "UTM zone 50N" in band_crs(32650).name


# --- geodesic guarantees across China, band edges included -----------------------------------


@pytest.mark.parametrize("size", [1.0, 50.0, 500.0, 5000.0, MAX_SIZE_M])
def test_no_cell_side_shorter_than_size_and_bounded_move(size: float) -> None:
    lat, lon = china_points(4000, seed=int(size))
    result = snap(lat, lon, size)
    assert result.ok.all()
    c_lat, c_lon = cell_corners(result.band, result.ix, result.iy, size)
    sides = np.stack(
        [
            geodesic(c_lat[:, k], c_lon[:, k], c_lat[:, (k + 1) % 4], c_lon[:, (k + 1) % 4])
            for k in range(4)
        ]
    )
    assert sides.min() >= size
    # The cells are not wastefully large either: within the UTM scale range.
    assert sides.max() <= size * K_MAX / K_MIN * (1 + 1e-6)
    diagonals = np.maximum(
        geodesic(c_lat[:, 0], c_lon[:, 0], c_lat[:, 2], c_lon[:, 2]),
        geodesic(c_lat[:, 1], c_lon[:, 1], c_lat[:, 3], c_lon[:, 3]),
    )
    moved = geodesic(lat, lon, result.lat, result.lon)
    assert (moved <= diagonals / 2 * (1 + 1e-6)).all()
    assert moved.max() <= size * K_MAX / K_MIN / math.sqrt(2) <= 0.7083 * size


def test_south_and_equator_cells_are_big_enough() -> None:
    # The largest scale factor of a band is on the equator at its edge.
    lat = np.array([0.0, 1e-9, -1e-9, -0.5, 0.5, -45.0])
    lon = np.array([114.0 - 1e-9, 113.99999, 108.0, 119.9999999, 120.0, 150.0])
    for size in (50.0, MAX_SIZE_M):
        result = snap(lat, lon, size)
        c_lat, c_lon = cell_corners(result.band, result.ix, result.iy, size)
        for k in range(4):
            side = geodesic(c_lat[:, k], c_lon[:, k], c_lat[:, (k + 1) % 4], c_lon[:, (k + 1) % 4])
            assert side.min() >= size


def test_k_max_bounds_the_utm_scale_wherever_a_cell_reaches() -> None:
    # Farthest a cell reaches from the central meridian: band edge plus one side, on the equator.
    reach_deg = 3.0 + MAX_SIZE_M * K_MAX / 110_574.0
    factors = Proj("EPSG:32650").get_factors(117.0 + reach_deg, 0.0)
    assert factors.meridional_scale < K_MAX
    assert factors.parallel_scale < K_MAX


# --- one cell, one output ---------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    st.floats(min_value=0.8293, max_value=55.8271),
    st.one_of(st.floats(min_value=72.004, max_value=137.8347), st.sampled_from(BAND_EDGES[1:-1])),
    st.sampled_from([1.0, 50.0, 1000.0]),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_every_point_of_a_cell_maps_to_the_same_output(
    lat: float, lon: float, size: float, seed: int
) -> None:
    first = snap(lat, lon, size)
    band, ix, iy = int(first.band[0]), int(first.ix[0]), int(first.iy[0])
    xmin, ymin, xmax, ymax = (float(v[0]) for v in cell_projected_bounds(ix, iy, size))
    rng = np.random.default_rng(seed)
    px = rng.uniform(xmin, xmax, 200)
    py = rng.uniform(ymin, ymax, 200)
    # Include the corners and edges that belong to the cell (half-open square).
    px[:4] = [xmin, xmin, np.nextafter(xmax, xmin), np.nextafter(xmax, xmin)]
    py[:4] = [ymin, np.nextafter(ymax, ymin), ymin, np.nextafter(ymax, ymin)]
    _, to_wgs84 = band_transformers(band)
    p_lon, p_lat = to_wgs84.transform(px, py)
    # Points of the square that lie in the neighbouring band belong to that band's cells.
    mine = band_of(p_lat, p_lon) == band
    result = snap(p_lat[mine], p_lon[mine], size)
    # Round-tripping through WGS-84 may move a point by ~1e-9 m: only points well inside
    # the square are required to come back to it.
    inner = (
        (px[mine] > xmin + 1e-6)
        & (px[mine] < xmax - 1e-6)
        & (py[mine] > ymin + 1e-6)
        & (py[mine] < ymax - 1e-6)
    )
    assert (result.cell[inner] == first.cell[0]).all()
    assert (result.lat[inner] == first.lat[0]).all()
    assert (result.lon[inner] == first.lon[0]).all()
    # And whatever maps to this cell id gets exactly this centre.
    same = result.cell == first.cell[0]
    assert (result.lat[same] == first.lat[0]).all()
    assert (result.lon[same] == first.lon[0]).all()


def test_cell_centres_are_what_snap_reports() -> None:
    lat, lon = china_points(500, seed=7)
    result = snap(lat, lon, 50.0)
    c_lat, c_lon = cell_centres(result.band, result.ix, result.iy, 50.0)
    assert np.array_equal(c_lat, result.lat)
    assert np.array_equal(c_lon, result.lon)


def test_projected_coordinates_lie_in_the_reported_square() -> None:
    lat, lon = china_points(2000, seed=11)
    result = snap(lat, lon, 50.0)
    xmin, ymin, xmax, ymax = cell_projected_bounds(result.ix, result.iy, 50.0)
    assert ((result.x >= xmin) & (result.x < xmax)).all()
    assert ((result.y >= ymin) & (result.y < ymax)).all()
    assert result.side == cell_side(50.0) == pytest.approx(50.0 * K_MAX)


# --- determinism --------------------------------------------------------------------------------

_SUBPROCESS = textwrap.dedent(
    """
    import numpy as np
    from gateway.geo.grid import snap
    rng = np.random.default_rng(2024)
    lat = rng.uniform(0.8293, 55.8271, 5000)
    lon = rng.uniform(72.004, 137.8347, 5000)
    r = snap(lat, lon, 50.0)
    print(r.cell.tobytes().hex())
    print(r.lat.tobytes().hex())
    print(r.lon.tobytes().hex())
    """
)


def test_ids_are_deterministic_across_processes() -> None:
    rng = np.random.default_rng(2024)
    lat = rng.uniform(0.8293, 55.8271, 5000)
    lon = rng.uniform(72.004, 137.8347, 5000)
    here = snap(lat, lon, 50.0)
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [
        here.cell.tobytes().hex(),
        here.lat.tobytes().hex(),
        here.lon.tobytes().hex(),
    ]
    # Batch composition does not matter either: a row's result is its own.
    again = snap(lat[::-1], lon[::-1], 50.0)
    assert np.array_equal(again.cell[::-1], here.cell)


# --- cell ids -------------------------------------------------------------------------------------


def test_cell_id_round_trips() -> None:
    ids = cell_id([32650, 32756, 32601], [0, 123, 2**24 - 1], [2**24 - 1, 0, 99])
    band, ix, iy = split_cell_id(ids)
    assert band.tolist() == [32650, 32756, 32601]
    assert ix.tolist() == [0, 123, 2**24 - 1]
    assert iy.tolist() == [2**24 - 1, 0, 99]
    assert (ids > 0).all()
    assert len(set(ids.tolist())) == 3
    for c in ids.tolist():
        assert parse_cell_id(format_cell_id(c)) == c
    assert format_cell_id(int(ids[1])) == "32756:123:0"


@pytest.mark.parametrize("text", ["", "32650:1", "a:b:c", "32650:1:2:3", "12345:1:2", "32650:-1:2"])
def test_parse_cell_id_rejects_garbage(text: str) -> None:
    with pytest.raises(GeoError):
        parse_cell_id(text)


@pytest.mark.parametrize("band", [0, 32600, 32661, 32700, 32761, 4326])
def test_unknown_band_raises(band: int) -> None:
    with pytest.raises(GeoError):
        band_crs(band)
    with pytest.raises(GeoError):
        band_transformers(band)
    with pytest.raises(GeoError):
        cell_corners(band, 0, 0, 50.0)


@pytest.mark.parametrize("size", [0.0, -50.0, 0.5, math.nan, math.inf, MAX_SIZE_M * 1.01])
def test_bad_size_raises(size: float) -> None:
    with pytest.raises(GeoError):
        snap(39.9, 116.4, size)


# --- bad input ---------------------------------------------------------------------------------


def test_bad_rows_are_reported_not_raised() -> None:
    lat = [39.9, None, "x", math.nan, math.inf, -math.inf, 91.0, 39.9, True, 31.2]
    lon = [116.4, 116.4, 116.4, 116.4, 116.4, 116.4, 116.4, 181.0, 116.4, 121.5]
    result = snap(np.array(lat, dtype=object), np.array(lon, dtype=object), 50.0)
    assert result.error.tolist() == [
        ErrorCode.OK,
        ErrorCode.MISSING_COORDINATE,
        ErrorCode.NON_NUMERIC_COORDINATE,
        ErrorCode.NON_FINITE_COORDINATE,
        ErrorCode.NON_FINITE_COORDINATE,
        ErrorCode.NON_FINITE_COORDINATE,
        ErrorCode.COORDINATE_OUT_OF_RANGE,
        ErrorCode.COORDINATE_OUT_OF_RANGE,
        ErrorCode.NON_NUMERIC_COORDINATE,
        ErrorCode.OK,
    ]
    bad = ~result.ok
    assert np.isnan(result.lat[bad]).all() and np.isnan(result.lon[bad]).all()
    assert np.isnan(result.x[bad]).all() and np.isnan(result.y[bad]).all()
    assert (result.cell[bad] == -1).all() and (result.band[bad] == 0).all()
    assert (result.ix[bad] == -1).all() and (result.iy[bad] == -1).all()
    # Good rows are unaffected by their bad neighbours.
    alone = snap([39.9, 31.2], [116.4, 121.5], 50.0)
    assert result.cell[result.ok].tolist() == alone.cell.tolist()
    assert np.array_equal(result.lat[result.ok], alone.lat)


def test_scalar_and_empty_input() -> None:
    one = snap(39.9, 116.4)
    assert len(one) == 1 and one.ok.all() and one.size_m == 50.0
    empty = snap([], [], 50.0)
    assert len(empty) == 0 and empty.cell.dtype == np.int64
    assert band_of([], []).size == 0


def test_unprojectable_rows_fail_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.full(len(x), np.inf), np.full(len(y), np.inf)

    real = grid._transformers

    def fake(code: int) -> tuple[object, object]:
        return (Broken(), real(code)[1]) if code == 32651 else real(code)

    monkeypatch.setattr(grid, "_transformers", fake)
    result = snap([39.9, 31.2], [116.4, 121.5], 50.0)
    assert result.error.tolist() == [ErrorCode.OK, ErrorCode.COORDINATE_OUT_OF_RANGE]
    assert result.cell[1] == -1 and result.band[1] == 0 and math.isnan(result.lat[1])


def test_geo_package_exports_the_grid_api() -> None:
    import gateway.geo as geo

    for name in ("snap", "GridResult", "band_crs", "band_transformers", "cell_corners"):
        assert name in geo.__all__
    for name in geo.__all__:
        assert hasattr(geo, name), name
    assert geo.snap is snap
