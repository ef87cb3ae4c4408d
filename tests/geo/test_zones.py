"""Restricted zones: strict loading, geodesic buffers, vectorised point and cell tests.

The vectorised queries are compared with per-point references written here: a shapely
``Point`` and a loop over zones for positions, a ``shapely.box`` and a loop over zones
projected independently (finer densification) for cells.
"""

from __future__ import annotations

import copy
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod, Transformer

from gateway.errors import GeoError, ZoneFileError
from gateway.geo.coords import check_coordinates
from gateway.geo.grid import GridResult, snap
from gateway.geo.zones import (
    MAX_BUFFER_M,
    MaskResult,
    ZoneLevel,
    ZoneSet,
    load_zones,
)
from gateway.model import ErrorCode

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "zones_sample.geojson"
GEOD = Geod(ellps="WGS84")


# --------------------------------------------------------------------------- helpers


def square(lon: float, lat: float, half: float) -> list[list[float]]:
    """A closed lon/lat ring: square of half-side ``half`` degrees around (lon, lat)."""
    return [
        [lon - half, lat - half],
        [lon + half, lat - half],
        [lon + half, lat + half],
        [lon - half, lat + half],
        [lon - half, lat - half],
    ]


def hexagon(lon: float, lat: float, radius_m: float) -> list[list[float]]:
    """A closed ring through six points ``radius_m`` (geodesic) from the centre."""
    az = np.arange(6) * 60.0
    lo, la, _ = GEOD.fwd(np.full(6, lon), np.full(6, lat), az, np.full(6, radius_m))
    ring = np.c_[lo, la].tolist()
    return [*ring, ring[0]]


def feature(
    zone_id: Any,
    rings: Any,
    *,
    level: Any = "prohibited",
    buffer_m: Any = 0.0,
    kind: str = "Polygon",
    **props: Any,
) -> dict[str, Any]:
    properties = {"id": zone_id, "level": level, "buffer_m": buffer_m, **props}
    return {
        "type": "Feature",
        "properties": properties,
        "geometry": {"type": kind, "coordinates": rings},
    }


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def pairs(result: MaskResult) -> set[tuple[int, str]]:
    return {
        (int(r), result.zone_set.ids[z]) for r, z in zip(result.rows, result.zones, strict=True)
    }


def ref_levels(n: int, hits: set[tuple[int, str]], zs: ZoneSet, error: Any) -> np.ndarray:
    out = np.zeros(n, dtype=np.int8)
    for row, zone_id in hits:
        out[row] = max(out[row], int(zs[zone_id].level))
    out[np.asarray(error) != 0] = ZoneLevel.PROHIBITED
    return out


# The zone set the property tests run against: around the 120°E UTM band edge (bands
# 32650/32651), overlapping zones of both levels, a hole, a MultiPolygon, several buffers.
EDGE_ZONES = collection(
    feature("a", [square(119.99, 31.02, 0.012)], level="prohibited", buffer_m=30),
    feature(
        "b",
        [square(120.01, 31.03, 0.015), square(120.01, 31.03, 0.006)],
        level="sensitive",
    ),
    feature(
        "c",
        [[square(120.03, 31.06, 0.004)], [square(120.05, 31.06, 0.004)]],
        kind="MultiPolygon",
        level="sensitive",
        buffer_m=75,
    ),
    feature("d", [hexagon(120.0, 31.07, 900)], level="prohibited", buffer_m=5),
    feature("e", [square(119.97, 31.05, 0.003)], level="sensitive", buffer_m=250),
)
ZONES = ZoneSet.from_geojson(EDGE_ZONES, source="edge.geojson")
ZONE_VERTICES = shapely.get_coordinates(
    np.array([z.buffered for z in ZONES] + [z.geometry for z in ZONES], dtype=object)
)
LAT_RANGE = (30.99, 31.09)
LON_RANGE = (119.94, 120.07)

_REF_PROJECTED: dict[tuple[int, int], list[shapely.Geometry]] = {}
_REF_LOCK = threading.Lock()


def projected_reference(zs: ZoneSet, band: int) -> list[shapely.Geometry]:
    """Each buffered zone projected into ``band`` by the test itself, densified to 0.0005°."""
    with _REF_LOCK:
        key = (id(zs), band)
        if key not in _REF_PROJECTED:
            to_band = Transformer.from_crs(4326, band, always_xy=True)
            out = []
            for zone in zs:
                fine = shapely.segmentize(zone.buffered, 0.0005)
                out.append(
                    shapely.transform(fine, lambda xy: np.column_stack(to_band.transform(*xy.T)))
                )
            _REF_PROJECTED[key] = out
        return _REF_PROJECTED[key]


def reference_cells(zs: ZoneSet, grid: GridResult) -> list[list[tuple[str, float]]]:
    """Per row: (zone id, distance from the cell square to the zone) for every zone."""
    out: list[list[tuple[str, float]]] = []
    for row in range(len(grid)):
        if grid.error[row] != ErrorCode.OK:
            out.append([])
            continue
        ix, iy, side = int(grid.ix[row]), int(grid.iy[row]), grid.side
        cell = shapely.box(ix * side, iy * side, (ix + 1) * side, (iy + 1) * side)
        zones = projected_reference(zs, int(grid.band[row]))
        out.append([(z.id, cell.distance(g)) for z, g in zip(zs, zones, strict=True)])
    return out


# --------------------------------------------------------------------------- loading


def test_sample_file_loads_with_every_field() -> None:
    zs = load_zones(SAMPLE)
    assert zs.ids == ("depot", "park", "twin")
    depot, park, twin = zs
    assert depot.level is ZoneLevel.PROHIBITED
    assert (depot.buffer_m, depot.name, depot.source, depot.feature) == (
        100.0,
        "Depot",
        str(SAMPLE),
        0,
    )
    assert park.level is ZoneLevel.SENSITIVE and park.buffer_m == 0.0 and park.name is None
    assert park.buffered is park.geometry  # no buffer: used exactly as written
    assert len(park.geometry.interiors) == 1
    assert twin.geometry.geom_type == "MultiPolygon" and twin.feature == 2
    assert twin.buffered.contains(twin.geometry)
    assert zs.levels.tolist() == [2, 1, 1]
    assert zs["twin"] is twin and zs.index["park"] == 1 and len(zs) == 3


def test_from_geojson_accepts_text_and_bytes() -> None:
    text = SAMPLE.read_text()
    for obj in (text, text.encode()):
        assert ZoneSet.from_geojson(obj, source="s").ids == ("depot", "park", "twin")


def test_several_files_make_one_set(tmp_path: Path) -> None:
    other = tmp_path / "other.geojson"
    other.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
        '{"id": "x", "level": "sensitive"}, "geometry": {"type": "Polygon", "coordinates": '
        "[[[121, 31], [121.01, 31], [121.01, 31.01], [121, 31]]]}}]}"
    )
    zs = load_zones([SAMPLE, other])
    assert zs.ids == ("depot", "park", "twin", "x")
    assert zs["x"].source == str(other) and zs["x"].feature == 0


def test_empty_collection_is_an_empty_set() -> None:
    zs = ZoneSet.from_geojson(collection())
    assert len(zs) == 0
    result = zs.points_in_zones([31.0, math.nan], [121.0, 121.0])
    assert result.level.tolist() == [ZoneLevel.NONE, ZoneLevel.PROHIBITED]
    assert zs.mask_cells(snap([31.0], [121.0])).level.tolist() == [ZoneLevel.NONE]


def test_crs84_member_is_accepted_and_others_refused() -> None:
    ok = collection(feature("a", [square(121, 31, 0.01)]))
    ok["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}
    assert ZoneSet.from_geojson(ok).ids == ("a",)
    ok["crs"] = {"type": "name", "properties": {"name": "EPSG:3857"}}
    with pytest.raises(ZoneFileError, match="WGS-84") as info:
        ZoneSet.from_geojson(ok, source="merc.geojson")
    assert info.value.file == "merc.geojson" and info.value.feature is None


def _bowtie() -> list[list[float]]:
    return [[121.0, 31.0], [121.01, 31.01], [121.01, 31.0], [121.0, 31.01], [121.0, 31.0]]


GOOD = feature("good", [square(121.0, 31.0, 0.01)])

# (what is wrong, the bad feature placed at index 1, a fragment of the message)
BAD_FEATURES: list[tuple[str, Any, str]] = [
    ("missing id", feature(None, [square(121, 31, 0.01)]), "'id'"),
    ("empty id", feature("  ", [square(121, 31, 0.01)]), "'id'"),
    ("numeric id", feature(7, [square(121, 31, 0.01)]), "'id'"),
    ("duplicate id", feature("good", [square(121.1, 31, 0.01)]), "duplicate zone id 'good'"),
    ("unknown level", feature("x", [square(121, 31, 0.01)], level="secret"), "'level'"),
    ("missing level", feature("x", [square(121, 31, 0.01)], level=None), "'level'"),
    ("negative buffer", feature("x", [square(121, 31, 0.01)], buffer_m=-1), "buffer_m"),
    ("nan buffer", feature("x", [square(121, 31, 0.01)], buffer_m=math.nan), "buffer_m"),
    ("huge buffer", feature("x", [square(121, 31, 0.01)], buffer_m=MAX_BUFFER_M + 1), "buffer_m"),
    ("bool buffer", feature("x", [square(121, 31, 0.01)], buffer_m=True), "buffer_m"),
    ("text buffer", feature("x", [square(121, 31, 0.01)], buffer_m="100"), "buffer_m"),
    ("unknown property", feature("x", [square(121, 31, 0.01)], buffer=100), "unknown properties"),
    ("name not text", feature("x", [square(121, 31, 0.01)], name=3), "'name'"),
    ("point geometry", feature("x", [121.0, 31.0], kind="Point"), "Polygon or MultiPolygon"),
    ("line geometry", feature("x", [[121, 31], [122, 31]], kind="LineString"), "Polygon"),
    ("empty polygon", feature("x", []), "empty Polygon"),
    ("empty multipolygon", feature("x", [], kind="MultiPolygon"), "empty MultiPolygon"),
    ("empty multipolygon part", feature("x", [[]], kind="MultiPolygon"), "polygon 0: empty"),
    ("unclosed ring", feature("x", [[*square(121, 31, 0.01)[:-1], [121.0, 31.0]]]), "not closed"),
    ("short ring", feature("x", [[[121, 31], [121.01, 31], [121, 31]]]), "at least 4"),
    ("latitude out of range", feature("x", [square(121, 89.995, 0.01)]), "out of range"),
    ("longitude out of range", feature("x", [square(179.995, 31, 0.01)]), "out of range"),
    ("text coordinates", feature("x", [[["121", "31"]] * 4]), "number pairs"),
    ("ragged position", feature("x", [[[121, 31], [121.01], [121, 31.01], [121, 31]]]), "pairs"),
    ("one number positions", feature("x", [[[121], [122], [121], [121]]]), "number pairs"),
    ("self-intersection", feature("x", [_bowtie()]), "Self-intersection"),
    (
        "hole outside shell",
        feature("x", [square(121, 31, 0.01), square(121.05, 31, 0.001)]),
        "invalid Polygon",
    ),
    (
        "overlapping parts",
        feature("x", [[square(121, 31, 0.01)], [square(121.005, 31, 0.01)]], kind="MultiPolygon"),
        "invalid MultiPolygon",
    ),
    (
        "zero area",
        feature("x", [[[121, 31], [121.01, 31], [121.02, 31], [121, 31]]]),
        "invalid Polygon",
    ),
    ("no geometry", {**feature("x", []), "geometry": None}, "geometry is missing"),
    ("null properties", {**feature("x", []), "properties": None}, "'properties'"),
    ("not a feature", {"type": "Polygon", "coordinates": []}, "Feature"),
    ("feature id differs", {**feature("x", [square(121, 31, 0.01)]), "id": "y"}, "differs"),
]


@pytest.mark.parametrize(
    ("bad", "fragment"), [pytest.param(b, f, id=name) for name, b, f in BAD_FEATURES]
)
def test_every_invalid_feature_names_file_and_index(bad: Any, fragment: str) -> None:
    obj = collection(GOOD, bad, feature("after", [square(121.2, 31, 0.01)]))
    with pytest.raises(ZoneFileError) as info:
        ZoneSet.from_geojson(obj, source="zones/bad.geojson")
    assert info.value.file == "zones/bad.geojson"
    assert info.value.feature == 1
    assert str(info.value).startswith("zones/bad.geojson: feature 1: ")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"type": "Feature"}', "FeatureCollection"),
        (b"[]", "FeatureCollection"),
        (b'{"type": "FeatureCollection", "features": {}}', "'features'"),
        (b'{"type": "FeatureCollection", "features": [], "crs": 4326}', "WGS-84"),
    ],
)
def test_invalid_file_names_the_file(tmp_path: Path, text: bytes, fragment: str) -> None:
    path = tmp_path / "z.geojson"
    path.write_bytes(text)
    with pytest.raises(ZoneFileError) as info:
        load_zones(path)
    assert info.value.file == str(path) and info.value.feature is None
    assert fragment in str(info.value)


def test_unreadable_file_is_a_zone_file_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.geojson"
    with pytest.raises(ZoneFileError, match="cannot read") as info:
        load_zones([SAMPLE, missing])
    assert info.value.file == str(missing)
    assert isinstance(info.value, GeoError)


def test_duplicate_id_across_files_names_the_second(tmp_path: Path) -> None:
    copy_path = tmp_path / "copy.geojson"
    copy_path.write_bytes(SAMPLE.read_bytes())
    with pytest.raises(ZoneFileError) as info:
        load_zones([SAMPLE, copy_path])
    assert info.value.file == str(copy_path) and info.value.feature == 0
    assert "duplicate zone id 'depot'" in str(info.value) and str(SAMPLE) in str(info.value)


def test_feature_level_id_equal_to_property_is_fine() -> None:
    obj = collection({**feature("x", [square(121, 31, 0.01)]), "id": "x"})
    assert ZoneSet.from_geojson(obj).ids == ("x",)


def test_input_mapping_is_not_modified() -> None:
    before = copy.deepcopy(EDGE_ZONES)
    ZoneSet.from_geojson(EDGE_ZONES)
    assert before == EDGE_ZONES


# --------------------------------------------------------------------------- buffers

BUFFER_SITES = [
    (121.47, 31.2),  # Shanghai
    (126.65, 45.75),  # Harbin
    (109.5, 18.25),  # Sanya
    (122.375, 52.97),  # Mohe: far north, centre half-way between two buffering meridians
]


@pytest.mark.parametrize(("lon", "lat"), BUFFER_SITES)
@pytest.mark.parametrize(
    ("radius_m", "buffer_m"), [(1000, 5), (1000, 50), (3000, 500), (5000, 5000)]
)
def test_buffer_holds_every_point_within_the_distance_and_little_more(
    lon: float, lat: float, radius_m: float, buffer_m: float
) -> None:
    ring = hexagon(lon, lat, radius_m)
    zs = ZoneSet.from_geojson(collection(feature("h", [ring], buffer_m=buffer_m)))
    corners = np.array(ring[:-1])
    mids = (corners + np.roll(corners, -1, axis=0)) / 2
    starts, azimuths = [], []
    for k, (vx, vy) in enumerate(corners):
        # Around a corner of a convex polygon, every direction between the normals of its
        # two edges has the corner as nearest point of the polygon.
        centre_az = 60.0 * k
        for offset in np.linspace(-29.0, 29.0, 7):
            starts.append((vx, vy))
            azimuths.append(centre_az + offset)
    for k, (mx, my) in enumerate(mids):
        starts.append((mx, my))
        azimuths.append(GEOD.inv(lon, lat, mx, my)[0])
        assert abs(((azimuths[-1] - (60.0 * k + 30.0)) + 180) % 360 - 180) < 0.5
    sx, sy = np.array(starts).T
    az = np.array(azimuths)
    for distance, inside in ((buffer_m - 0.02, True), (buffer_m + 2.0, False)):
        px, py, _ = GEOD.fwd(sx, sy, az, np.full(len(az), distance))
        result = zs.points_in_zones(py, px)
        assert (result.level == ZoneLevel.PROHIBITED).tolist() == [inside] * len(az), distance


def test_buffer_of_a_hole_shrinks_it_and_keeps_its_middle_outside() -> None:
    outer = hexagon(121.3, 31.0, 3000)
    hole = hexagon(121.3, 31.0, 1000)[::-1]
    zs = ZoneSet.from_geojson(collection(feature("ring", [outer, hole], buffer_m=100)))
    lon, lat = 121.3, 31.0
    # Along azimuth 30° the hole's edge is 866 m away (the hexagon's apothem).
    apothem = 1000 * math.cos(math.radians(30))
    distances = np.array([0.0, 500.0, apothem - 150, apothem - 95, apothem - 50])
    px, py, _ = GEOD.fwd(np.full(5, lon), np.full(5, lat), np.full(5, 30.0), distances)
    assert zs.points_in_zones(py, px).masked.tolist() == [False, False, False, True, True]


def test_unbuffered_hole_is_outside_and_its_edge_inside() -> None:
    zs = load_zones(SAMPLE)
    lat = [31.115, 31.105, 31.11, 31.115]
    lon = [121.42, 121.42, 121.42, 121.41]  # hole centre, ring, hole edge, hole corner edge
    result = zs.points_in_zones(lat, lon)
    assert result.level.tolist() == [0, 1, 1, 1]
    assert [result.zone_ids(i) for i in range(4)] == [(), ("park",), ("park",), ("park",)]


def test_multipolygon_parts_are_each_a_zone_and_the_gap_is_not() -> None:
    zs = load_zones(SAMPLE)
    lat = [31.3025, 31.3025, 31.3025, 31.3025]
    # first part, second part, half-way between them, 40 m beyond the second part's edge
    east, _, _ = GEOD.fwd(121.525, 31.3025, 90.0, 40.0)
    lon = [121.5025, 121.5225, 121.5125, east]
    result = zs.points_in_zones(lat, lon)
    assert result.level.tolist() == [1, 1, 0, 1]


# --------------------------------------------------------------------------- point queries


@st.composite
def positions(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    """Positions around the edge zones, some on zone vertices, some invalid."""
    n = draw(st.integers(min_value=0, max_value=40))
    lat: list[Any] = []
    lon: list[Any] = []
    for _ in range(n):
        kind = draw(st.sampled_from(["free", "free", "free", "vertex", "bad"]))
        if kind == "vertex":
            x, y = ZONE_VERTICES[draw(st.integers(0, len(ZONE_VERTICES) - 1))]
            lat.append(float(y))
            lon.append(float(x))
        elif kind == "bad":
            lat.append(draw(st.sampled_from([math.nan, math.inf, 95.0, None, 31.0])))
            lon.append(draw(st.sampled_from([120.0, -math.inf, 181.0, None, "east"])))
        else:
            lat.append(draw(st.floats(min_value=LAT_RANGE[0], max_value=LAT_RANGE[1])))
            lon.append(draw(st.floats(min_value=LON_RANGE[0], max_value=LON_RANGE[1])))
    return lat, lon


def reference_points(zs: ZoneSet, lat: list[Any], lon: list[Any]) -> set[tuple[int, str]]:
    _, _, error = check_coordinates(np.array(lat, dtype=object), np.array(lon, dtype=object))
    hits = set()
    for row, (y, x) in enumerate(zip(lat, lon, strict=True)):
        if error[row] != 0:
            continue
        point = shapely.Point(x, y)
        for zone in zs:
            if zone.buffered.intersects(point):
                hits.add((row, zone.id))
    return hits


@settings(max_examples=60)
@given(positions())
def test_points_in_zones_matches_per_point_reference(data: tuple[list[Any], list[Any]]) -> None:
    lat, lon = data
    lat_o, lon_o = np.array(lat, dtype=object), np.array(lon, dtype=object)
    result = ZONES.points_in_zones(lat_o, lon_o)
    _, _, error = check_coordinates(lat_o, lon_o)
    expected = reference_points(ZONES, lat, lon)
    assert pairs(result) == expected
    assert result.error.tolist() == error.tolist()
    assert result.level.tolist() == ref_levels(len(lat), expected, ZONES, error).tolist()
    assert np.all(np.diff(result.rows) >= 0)


@settings(max_examples=40)
@given(positions(), st.sets(st.sampled_from([*ZONES.ids, "unknown"])))
def test_levels_excluding_matches_reference(
    data: tuple[list[Any], list[Any]], authorised: set[str]
) -> None:
    lat, lon = data
    lat_o, lon_o = np.array(lat, dtype=object), np.array(lon, dtype=object)
    result = ZONES.points_in_zones(lat_o, lon_o)
    _, _, error = check_coordinates(lat_o, lon_o)
    remaining = {(r, z) for r, z in reference_points(ZONES, lat, lon) if z not in authorised}
    expected = ref_levels(len(lat), remaining, ZONES, error)
    assert result.levels_excluding(authorised).tolist() == expected.tolist()


def test_authorisation_for_one_zone_does_not_lift_another() -> None:
    zs = ZoneSet.from_geojson(
        collection(
            feature("A", [square(121.0, 31.0, 0.01)], level="prohibited"),
            feature("B", [square(121.005, 31.0, 0.01)], level="sensitive"),
            feature("C", [square(121.002, 31.0, 0.02)], level="prohibited"),
        )
    )
    lat = [31.0, 31.0, 31.0, math.nan]
    lon = [121.003, 120.985, 121.014, 121.0]  # in A+B+C, in C only, in B+C, bad
    result = zs.points_in_zones(lat, lon)
    assert result.level.tolist() == [2, 2, 2, 2]
    assert [result.zone_ids(i) for i in range(4)] == [("A", "B", "C"), ("C",), ("B", "C"), ()]
    assert result.levels_excluding(["A", "C"]).tolist() == [1, 0, 1, 2]
    assert result.levels_excluding(["A", "B", "C"]).tolist() == [0, 0, 0, 2]
    assert result.levels_excluding(["nope"]).tolist() == [2, 2, 2, 2]
    assert result.levels_excluding([]).tolist() == [2, 2, 2, 2]
    with pytest.raises(TypeError):
        result.levels_excluding("AB")


def test_bad_coordinates_never_raise_and_come_back_masked() -> None:
    lat = np.array([None, math.nan, math.inf, 91.0, 31.0, "31", 31.0], dtype=object)
    lon = np.array([121.0, 121.0, 121.0, 121.0, -181.0, 121.0, 121.61], dtype=object)
    result = load_zones(SAMPLE).points_in_zones(lat, lon)
    assert result.error.tolist() == [
        ErrorCode.MISSING_COORDINATE,
        ErrorCode.NON_FINITE_COORDINATE,
        ErrorCode.NON_FINITE_COORDINATE,
        ErrorCode.COORDINATE_OUT_OF_RANGE,
        ErrorCode.COORDINATE_OUT_OF_RANGE,
        ErrorCode.NON_NUMERIC_COORDINATE,
        ErrorCode.OK,
    ]
    assert result.level.tolist() == [2] * 6 + [0]
    assert result.masked.tolist() == [True] * 6 + [False]
    assert result.bad.tolist() == [True] * 6 + [False]
    assert result.rows.size == 0
    assert result.levels_excluding(["depot", "park", "twin"]).tolist() == [2] * 6 + [0]


def test_scalar_position_is_one_row() -> None:
    result = load_zones(SAMPLE).points_in_zones(31.21, 121.61)
    assert len(result) == 1 and result.zone_ids(0) == ("depot",)


# --------------------------------------------------------------------------- cell test


@settings(max_examples=40)
@given(positions(), st.sampled_from([10.0, 50.0, 200.0, 1000.0]))
def test_mask_cells_never_misses_a_touching_cell(
    data: tuple[list[Any], list[Any]], size_m: float
) -> None:
    lat, lon = data
    grid = snap(np.array(lat, dtype=object), np.array(lon, dtype=object), size_m)
    result = ZONES.mask_cells(grid)
    got = pairs(result)
    reference = reference_cells(ZONES, grid)
    for row, distances in enumerate(reference):
        for zone_id, distance in distances:
            if distance == 0.0:
                assert (row, zone_id) in got, (row, zone_id)
            elif (row, zone_id) in got:
                assert distance < 0.02, (row, zone_id, distance)  # documented 1 cm slack
    assert result.error.tolist() == grid.error.tolist()
    assert result.level.tolist() == ref_levels(len(lat), got, ZONES, grid.error).tolist()


@settings(max_examples=30)
@given(positions(), st.sampled_from([25.0, 50.0, 500.0]))
def test_cell_test_covers_the_point_test(data: tuple[list[Any], list[Any]], size_m: float) -> None:
    lat, lon = data
    lat_o, lon_o = np.array(lat, dtype=object), np.array(lon, dtype=object)
    cells = ZONES.mask_cells(snap(lat_o, lon_o, size_m))
    points = ZONES.points_in_zones(lat_o, lon_o)
    assert pairs(points) <= pairs(cells)
    assert np.all(cells.level >= points.level)


def _cell_with_inner_zone(size_m: float) -> tuple[ZoneSet, GridResult, Transformer]:
    """A 4 m square zone in the middle of the 50 m cell that holds (31.2, 121.5)."""
    grid = snap(31.2, 121.5, size_m)
    band, ix, iy, side = int(grid.band[0]), int(grid.ix[0]), int(grid.iy[0]), grid.side
    to_wgs = Transformer.from_crs(band, 4326, always_xy=True)
    cx, cy = (ix + 0.5) * side, (iy + 0.5) * side
    xs = np.array([cx - 2, cx + 2, cx + 2, cx - 2, cx - 2])
    ys = np.array([cy - 2, cy - 2, cy + 2, cy + 2, cy - 2])
    lo, la = to_wgs.transform(xs, ys)
    zs = ZoneSet.from_geojson(collection(feature("inner", [np.c_[lo, la].tolist()])))
    return zs, grid, to_wgs


def test_point_outside_the_zone_is_masked_when_its_cell_touches_it() -> None:
    zs, grid, to_wgs = _cell_with_inner_zone(50.0)
    ix, iy, side = int(grid.ix[0]), int(grid.iy[0]), grid.side
    # same cell, 20 m from the zone; the neighbouring cells to the west and south
    xs = np.array([ix * side + 1.0, ix * side - 1.0, ix * side + 1.0])
    ys = np.array([iy * side + 1.0, iy * side + 1.0, iy * side - 1.0])
    lon, lat = to_wgs.transform(xs, ys)
    points = zs.points_in_zones(lat, lon)
    assert points.level.tolist() == [0, 0, 0]
    cells = zs.mask_cells(snap(lat, lon, 50.0))
    assert cells.level.tolist() == [ZoneLevel.PROHIBITED, 0, 0]
    assert cells.zone_ids(0) == ("inner",) and cells.zone_ids(1) == ()
    assert cells.levels_excluding(["inner"]).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("gap_m", "touches"),
    [(0.0, True), (0.005, True), (0.05, False)],  # a gap under 1 cm counts: fail closed
)
def test_a_cell_sharing_only_an_edge_with_a_zone_touches_it(gap_m: float, touches: bool) -> None:
    grid = snap(31.2, 121.5, 100.0)
    band, ix, iy, side = int(grid.band[0]), int(grid.ix[0]), int(grid.iy[0]), grid.side
    to_wgs = Transformer.from_crs(band, 4326, always_xy=True)
    # A zone whose west edge is the cell's east edge (in the band's projected CRS), or
    # ``gap_m`` east of it.
    x0, y0 = (ix + 1) * side + gap_m, iy * side
    lo, la = to_wgs.transform(
        np.array([x0, x0 + side, x0 + side, x0, x0]), np.array([y0, y0, y0 + side, y0 + side, y0])
    )
    zs = ZoneSet.from_geojson(
        collection(feature("east", [np.c_[lo, la].tolist()], level="sensitive"))
    )
    px, py = to_wgs.transform(
        np.array([ix * side + 1.0, (ix - 1) * side + 1.0]), np.array([y0 + 1.0] * 2)
    )
    result = zs.mask_cells(snap(py, px, 100.0))
    assert result.level.tolist() == [ZoneLevel.SENSITIVE if touches else 0, ZoneLevel.NONE]


@settings(max_examples=30)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.floats(0.0, 1.0, exclude_max=True)),
        min_size=1,
        max_size=20,
    )
)
def test_every_point_of_one_cell_gets_the_same_answer(offsets: list[tuple[float, float]]) -> None:
    zs, grid, to_wgs = _cell_with_inner_zone(50.0)
    ix, iy, side = int(grid.ix[0]), int(grid.iy[0]), grid.side
    fx, fy = np.array(offsets).T
    lon, lat = to_wgs.transform(ix * side + fx * side, iy * side + fy * side)
    snapped = snap(lat, lon, 50.0)
    inside = snapped.cell == grid.cell[0]  # float round trip can move a border point out
    result = zs.mask_cells(snapped)
    assert result.level[inside].tolist() == [ZoneLevel.PROHIBITED] * int(inside.sum())


def test_mask_cells_reports_grid_errors_as_prohibited() -> None:
    zs = load_zones(SAMPLE)
    grid = snap(
        np.array([31.21, None, math.nan, 95.0, 31.0], dtype=object),
        np.array([121.61, 121.0, 121.0, 121.0, 121.0], dtype=object),
        50.0,
    )
    result = zs.mask_cells(grid)
    assert result.error.tolist() == grid.error.tolist()
    assert result.bad.tolist() == [False, True, True, True, False]
    assert result.level.tolist() == [2, 2, 2, 2, 0]
    assert result.levels_excluding(zs.ids).tolist() == [0, 2, 2, 2, 0]
    assert [result.zone_ids(i) for i in range(5)] == [("depot",), (), (), (), ()]


def test_mask_cells_on_an_empty_grid() -> None:
    result = load_zones(SAMPLE).mask_cells(snap(np.array([]), np.array([]), 50.0))
    assert len(result) == 0 and result.rows.size == 0


def test_zones_far_from_a_band_are_left_out_of_it() -> None:
    far = ZoneSet.from_geojson(collection(feature("urumqi", [square(87.6, 43.8, 0.01)])))
    result = far.mask_cells(snap([31.2, 43.8], [121.5, 87.6], 50.0))
    assert result.level.tolist() == [0, 2]


def test_warm_builds_the_bands_near_the_zones_and_changes_no_answer() -> None:
    zs = ZoneSet.from_geojson(EDGE_ZONES)
    assert zs.warm() == (32650, 32651)
    lat = np.linspace(*LAT_RANGE, 300)
    lon = np.linspace(*LON_RANGE, 300)
    assert pairs(zs.mask_cells(snap(lat, lon, 50.0))) == pairs(
        ZONES.mask_cells(snap(lat, lon, 50.0))
    )
    south = ZoneSet.from_geojson(collection(feature("s", [square(-70.0, -0.5, 0.6)])))
    assert south.warm() == (32618, 32619, 32718, 32719)


def test_a_new_zone_set_can_be_warmed_with_the_bands_another_used() -> None:
    """What a policy reload does: build the bands the set in force has needed, only."""
    used = ZoneSet.from_geojson(EDGE_ZONES)
    assert used.bands_built() == ()
    used.mask_cells(snap([31.2], [121.5], 50.0))
    assert used.bands_built() == (32651,)
    fresh = ZoneSet.from_geojson(EDGE_ZONES)
    assert fresh.warm(used.bands_built()) == (32651,)
    assert fresh.bands_built() == (32651,)  # not every band near the zones


def test_concurrent_first_use_of_a_band_gives_one_answer() -> None:
    zs = ZoneSet.from_geojson(EDGE_ZONES)
    rng = np.random.default_rng(7)
    lat = rng.uniform(*LAT_RANGE, 2000)
    lon = rng.uniform(*LON_RANGE, 2000)
    expected = pairs(ZONES.mask_cells(snap(lat, lon, 50.0)))
    found: list[set[tuple[int, str]]] = []

    expected_points = pairs(ZONES.points_in_zones(lat, lon))
    found_points: list[set[tuple[int, str]]] = []

    def work() -> None:
        found.append(pairs(zs.mask_cells(snap(lat, lon, 50.0))))
        found_points.append(pairs(zs.points_in_zones(lat, lon)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == [expected] * 4
    assert found_points == [expected_points] * 4
    assert len(expected) > len(expected_points) > 0


def test_geo_package_exports_the_zone_api() -> None:
    import gateway.geo as geo

    for name in ("ZoneSet", "Zone", "ZoneLevel", "MaskResult", "load_zones"):
        assert name in geo.__all__
    assert geo.ZoneSet is ZoneSet and geo.load_zones is load_zones


@pytest.mark.parametrize("lon_0", [121.5, -70.25, 0.0, 179.75])
def test_local_transverse_mercator_matches_the_crs_definition(lon_0: float) -> None:
    """The buffering projection, written as a PROJ pipeline for speed, gives exactly what
    the CRS it stands for gives."""
    from pyproj import Transformer

    from gateway.geo.zones import _local_tm

    crs = f"+proj=tmerc +lat_0=0 +lon_0={lon_0!r} +k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m"
    by_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    back_by_crs = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    forward, inverse = _local_tm(lon_0)
    rng = np.random.default_rng(3)
    lon = rng.uniform(lon_0 - 3, lon_0 + 3, 2000)
    lat = rng.uniform(-80, 80, 2000)
    xy = np.array(forward.transform(lon, lat))
    assert np.array_equal(xy, np.array(by_crs.transform(lon, lat)))
    assert np.array_equal(np.array(inverse.transform(*xy)), np.array(back_by_crs.transform(*xy)))
