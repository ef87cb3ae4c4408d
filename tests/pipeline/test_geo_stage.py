"""The geo stage against a per-point reference: snap, zone test and datum transform per row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.geo.datum import transform
from gateway.geo.grid import snap
from gateway.geo.zones import ZoneLevel, ZoneSet
from gateway.model import Batch, ErrorCode, RowStatus
from gateway.pipeline.geo import GridSpec, Located, locate
from gateway.policy.loader import load_bundle

CENTRES = [
    (31.300, 121.552),  # example-prohibited-1
    (31.179, 121.400),  # example-sensitive-1 (its hole)
    (31.249, 121.329),  # example-sensitive-2
    (31.2304, 121.4737),  # the city centre
]
GRIDS = (
    GridSpec(0.0, frozenset({"gcj02"})),
    GridSpec(50.0, frozenset({"gcj02"})),
    GridSpec(1000.0, frozenset({"gcj02"})),
    GridSpec(5000.0),
)


@pytest.fixture(scope="module")
def zones() -> ZoneSet:
    return load_bundle().zones


def batch_of(
    points: list[tuple[float, float] | None], rejected: frozenset[int] | set[int] = frozenset()
) -> Batch:
    lat = [p[0] if p else np.nan for p in points]
    lon = [p[1] if p else np.nan for p in points]
    batch = Batch.from_columns(
        vehicle=["V"] * len(points), time=[0.0] * len(points), lat=lat, lon=lon
    )
    for i, p in enumerate(points):
        if p is None:
            batch.datum[i] = 0
    for i in rejected:
        batch.status[i] = RowStatus.REJECTED
        batch.error[i] = ErrorCode.MISSING_TIMESTAMP
    return batch


def reference_row(zones: ZoneSet, lat: float, lon: float, size: float) -> dict[str, Any]:
    """One point, the obvious way: snap it alone, test its cell (or itself), transform."""
    if size == 0:
        mask = zones.points_in_zones(lat, lon)
        out_lat, out_lon, cell = lat, lon, -1
    else:
        grid = snap(lat, lon, size)
        mask = zones.mask_cells(grid)
        out_lat, out_lon, cell = float(grid.lat[0]), float(grid.lon[0]), int(grid.cell[0])
    gcj = transform("gcj02", out_lat, out_lon)
    return {
        "lat": out_lat,
        "lon": out_lon,
        "cell": cell,
        "level": int(mask.level[0]),
        "zones": mask.zone_ids(0),
        "gcj": (float(gcj.lat[0]), float(gcj.lon[0]), bool(gcj.ok[0])),
    }


def check_against_reference(
    zones: ZoneSet, batch: Batch, located: Located, positioned: list[bool]
) -> None:
    assert located.positioned.tolist() == positioned
    for spec in GRIDS:
        layer = located.layer(spec.size_m)
        level = layer.level
        for row, has in enumerate(positioned):
            if not has:
                assert level[row] == ZoneLevel.NONE and layer.zone_ids(row) == ()
                assert np.isnan(layer.lat[row]) and layer.site[row] == -1
                continue
            ref = reference_row(zones, float(batch.lat[row]), float(batch.lon[row]), spec.size_m)
            assert layer.lat[row] == ref["lat"] and layer.lon[row] == ref["lon"]
            assert layer.cell[row] == ref["cell"]
            assert level[row] == ref["level"]
            assert layer.zone_ids(row) == ref["zones"]
            if "gcj02" in spec.transforms:
                out = layer.outputs["gcj02"]
                assert bool(out.ok[row]) == ref["gcj"][2]
                np.testing.assert_allclose(
                    [out.lat[row], out.lon[row]], ref["gcj"][:2], rtol=0, atol=1e-12
                )


offsets = st.tuples(
    st.floats(min_value=-0.03, max_value=0.03), st.floats(min_value=-0.03, max_value=0.03)
)


@settings(max_examples=25)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.tuples(st.sampled_from(CENTRES), offsets).map(
                lambda p: (p[0][0] + p[1][0], p[0][1] + p[1][1])
            ),
        ),
        min_size=1,
        max_size=30,
    ),
    st.sets(st.integers(min_value=0, max_value=29), max_size=3),
)
def test_layers_match_the_per_point_reference(
    zones: ZoneSet, points: list[tuple[float, float] | None], rejected: set[int]
) -> None:
    rejected = {i for i in rejected if i < len(points)}
    batch = batch_of(points, rejected)
    located = locate(batch, zones, GRIDS)
    positioned = [p is not None and i not in rejected for i, p in enumerate(points)]
    check_against_reference(zones, batch, located, positioned)


def test_every_zone_level_and_the_datum_area(zones: ZoneSet) -> None:
    points = [*CENTRES, (59.9, 30.3), None]
    batch = batch_of(points)
    located = locate(batch, zones, GRIDS)
    check_against_reference(zones, batch, located, [True] * 5 + [False])
    raw = located.layer(0)
    assert raw.level.tolist() == [2, 0, 1, 0, 0, 0]  # the hole of sensitive-1 is outside
    assert located.layer(1000).level[1] == ZoneLevel.SENSITIVE  # its 1 km cell reaches the ring
    assert raw.zone_ids(0) == ("example-prohibited-1",)
    assert located.layer(1000).zone_ids(2) == ("example-sensitive-2",)
    assert raw.hits_any(["example-sensitive-2"]).tolist() == [
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    authorised = located.layer(1000).levels_excluding(["example-sensitive-2"])
    assert authorised[2] == ZoneLevel.NONE
    assert not raw.outputs["gcj02"].ok[4]  # outside the GCJ-02 area
    assert located.layer(50).cell_ids(np.array([3]))[0].startswith("32651:")


def test_coarse_grids_test_each_distinct_cell_once(zones: ZoneSet) -> None:
    points = [(31.2304 + 1e-5 * i, 121.4737) for i in range(200)]
    located = locate(batch_of(points), zones, GRIDS)
    coarse = located.layer(5000)
    assert len(coarse.mask) == len(set(coarse.cell.tolist())) == 1
    assert (coarse.site == 0).all()


def test_an_empty_batch(zones: ZoneSet) -> None:
    located = locate(batch_of([]), zones, GRIDS)
    assert len(located.positioned) == 0
    assert all(len(layer.lat) == 0 for layer in located.layers.values())


def test_raw_only(zones: ZoneSet) -> None:
    batch = batch_of(list(CENTRES))
    located = locate(batch, zones, [GridSpec(0.0)])
    assert list(located.layers) == [0.0]
    assert located.layer(0).level.tolist() == [2, 0, 1, 0]
