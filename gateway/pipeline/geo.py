"""Geo: the position columns every view needs, computed once per batch and grid size.

For each grid size the views ask for (``0`` = the raw position), :func:`locate` computes one
:class:`GeoLayer`: the reported WGS-84 position of each row (its cell centre, or the position
itself), the cell ids, the restricted zones that row's *reported cell* touches (RULES.md §2:
masking works on cells, so a feed cannot reveal a zone edge more finely than its grid), and
the reported position transformed into every output datum the views of that size use.
Geometry always runs on the true WGS-84 position; the datum transform is the last step.

Only rows with a usable WGS-84 position (``positioned``) are located; a row without a
position has no zone hits and no output position. A row whose position the grid cannot place
is reported by :mod:`gateway.geo.zones` as ``PROHIBITED`` with its error: masked for everyone
(fail closed).

Zone hits are kept per *site* — a distinct cell of the layer (or, for raw positions, a point
that may lie in a zone) — and each row points at its site. Many rows share a cell, so a
coarse grid tests and stores a few hundred cells instead of every row.

Cost. The finest grid is snapped with :func:`gateway.geo.grid.snap` (one forward and one
inverse projection per row); coarser grids reuse its projected coordinates, so they need
only the inverse projection of their *distinct* cells, as do their zone tests and datum
transforms. The raw layer tests points only where the finest grid's cell touched a zone (a
point in a zone lies in a cell that touches it, and the cell test never misses a touching
cell).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.geo.datum import DatumResult, transform
from gateway.geo.grid import GridResult, cell_centres, cell_id, cell_side, snap
from gateway.geo.zones import MaskResult, ZoneLevel, ZoneSet
from gateway.model import Batch, BoolArray, Datum, ErrorCode, FloatArray

__all__ = ["GeoLayer", "GridSpec", "Located", "locate"]

IntArray = npt.NDArray[np.int64]
IntpArray = npt.NDArray[np.intp]
LevelArray = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class GridSpec:
    """One grid size a view needs (``0`` = raw) and the datum transforms of its output."""

    size_m: float
    transforms: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, eq=False)
class GeoLayer:
    """The located rows of a batch at one grid size (row arrays have one entry per row).

    ``lat``/``lon``: reported WGS-84 position (cell centre, or the position itself for
    ``size_m == 0``), NaN where the row has none or the grid could not place it. ``cell``,
    ``band``, ``ix``, ``iy``: the cell (``-1``/``0`` for raw layers and unplaced rows).
    ``mask``: zone hits per site; ``site``: each row's site (``-1``: no zone can be hit).
    ``outputs``: the reported position in each requested datum transform, by name.
    """

    size_m: float
    lat: FloatArray
    lon: FloatArray
    cell: IntArray
    band: npt.NDArray[np.int32]
    ix: IntArray
    iy: IntArray
    mask: MaskResult
    site: IntpArray
    outputs: Mapping[str, DatumResult] = field(default_factory=dict)

    @property
    def raw(self) -> bool:
        """True for the layer of raw positions (no grid)."""
        return self.size_m == 0

    def _per_row(self, per_site: LevelArray) -> LevelArray:
        out = np.zeros(len(self.site), dtype=np.int8)
        has = self.site >= 0
        out[has] = per_site[self.site[has]]
        return out

    @property
    def level(self) -> LevelArray:
        """Worst :class:`~gateway.geo.zones.ZoneLevel` per row (``PROHIBITED`` where the
        grid could not place the row)."""
        return self._per_row(self.mask.level)

    def levels_excluding(self, authorised: Iterable[str]) -> LevelArray:
        """Worst level per row among the zones not in ``authorised`` (zone ids)."""
        return self._per_row(self.mask.levels_excluding(authorised))

    def hits_any(self, zone_ids: Iterable[str]) -> BoolArray:
        """Rows whose site is hit by at least one of ``zone_ids``."""
        index = self.mask.zone_set.index
        wanted = np.fromiter((index[z] for z in set(zone_ids) if z in index), dtype=np.intp)
        per_site = np.zeros(len(self.mask), dtype=bool)
        per_site[self.mask.rows[np.isin(self.mask.zones, wanted)]] = True
        out = np.zeros(len(self.site), dtype=bool)
        has = self.site >= 0
        out[has] = per_site[self.site[has]]
        return out

    def zone_ids(self, row: int) -> tuple[str, ...]:
        """Ids of the zones ``row``'s reported cell (or point) touches, in zone order."""
        site = int(self.site[row])
        return self.mask.zone_ids(site) if site >= 0 else ()

    def cell_ids(self, rows: IntpArray) -> list[str]:
        """``"band:ix:iy"`` of ``rows`` (see :func:`gateway.geo.grid.format_cell_id`)."""
        return [
            f"{b}:{x}:{y}"
            for b, x, y in zip(
                self.band[rows].tolist(),
                self.ix[rows].tolist(),
                self.iy[rows].tolist(),
                strict=True,
            )
        ]


@dataclass(frozen=True, slots=True, eq=False)
class Located:
    """The geo stage's output: which rows have a position, and one layer per grid size."""

    positioned: BoolArray
    layers: Mapping[float, GeoLayer]

    def layer(self, size_m: float) -> GeoLayer:
        """The layer of ``size_m`` (``KeyError`` if it was not requested)."""
        return self.layers[float(size_m)]


def locate(batch: Batch, zones: ZoneSet, grids: Iterable[GridSpec]) -> Located:
    """Locate every positioned row of ``batch`` at each requested grid size.

    Guarantees: a layer's reported position is exactly :func:`gateway.geo.grid.snap`'s cell
    centre at that size (or the raw position); its zone hits are exactly
    :meth:`ZoneSet.mask_cells` (or :meth:`ZoneSet.points_in_zones` for raw) of that position;
    its outputs are exactly :func:`gateway.geo.datum.transform` of the reported position.
    Never raises on row content.
    """
    n = len(batch)
    with np.errstate(invalid="ignore"):
        positioned = (
            batch.ok
            & (batch.datum == Datum.WGS84)
            & np.isfinite(batch.lat)
            & np.isfinite(batch.lon)
        )
    rows = np.flatnonzero(positioned)
    lat = batch.lat[rows]
    lon = batch.lon[rows]
    wanted: dict[float, set[str]] = {}
    for spec in grids:
        wanted.setdefault(float(spec.size_m), set()).update(spec.transforms)
    sizes = sorted(s for s in wanted if s > 0)
    layers: dict[float, GeoLayer] = {}
    base: tuple[GridResult, LevelArray] | None = None
    for size in sizes:
        grid = snap(lat, lon, size) if base is None else _coarser(base[0], size)
        layer = _layer(n, rows, size, grid, zones, wanted[size])
        if base is None:
            base = (grid, layer.level[rows])
        layers[size] = layer
    if 0.0 in wanted:
        layers[0.0] = _raw_layer(n, rows, lat, lon, zones, base, wanted[0.0])
    return Located(positioned=positioned, layers=layers)


def _coarser(base: GridResult, size: float) -> GridResult:
    """The grid of ``size`` (>= base size) from the base grid's projected coordinates."""
    side = cell_side(size)
    ok = base.ok
    m = len(base)
    ix = np.full(m, -1, dtype=np.int64)
    iy = np.full(m, -1, dtype=np.int64)
    ix[ok] = np.floor(base.x[ok] / side).astype(np.int64)
    iy[ok] = np.floor(base.y[ok] / side).astype(np.int64)
    cell = np.full(m, -1, dtype=np.int64)
    c_lat = np.full(m, np.nan)
    c_lon = np.full(m, np.nan)
    if ok.any():
        cell[ok] = cell_id(base.band[ok], ix[ok], iy[ok])
        _, first, inverse = np.unique(cell[ok], return_index=True, return_inverse=True)
        placed = np.flatnonzero(ok)
        u_rows = placed[first]
        u_lat, u_lon = cell_centres(base.band[u_rows], ix[u_rows], iy[u_rows], size)
        c_lat[placed] = u_lat[inverse]
        c_lon[placed] = u_lon[inverse]
    return GridResult(
        lat=c_lat,
        lon=c_lon,
        cell=cell,
        band=np.where(ok, base.band, 0).astype(np.int32),
        ix=ix,
        iy=iy,
        x=base.x,
        y=base.y,
        error=base.error.copy(),
        size_m=float(size),
        side=side,
    )


def _sites(grid: GridResult) -> tuple[GridResult, IntpArray]:
    """One row per distinct cell (unplaced rows each keep their own), and each row's site."""
    key = np.where(grid.ok, grid.cell, -1 - np.arange(len(grid), dtype=np.int64))
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    sites = GridResult(
        lat=grid.lat[first],
        lon=grid.lon[first],
        cell=grid.cell[first],
        band=grid.band[first],
        ix=grid.ix[first],
        iy=grid.iy[first],
        x=grid.x[first],
        y=grid.y[first],
        error=grid.error[first],
        size_m=grid.size_m,
        side=grid.side,
    )
    return sites, inverse.astype(np.intp)


def _outputs(
    n: int,
    rows: IntpArray,
    lat: FloatArray,
    lon: FloatArray,
    cell: IntArray | None,
    names: Iterable[str],
) -> dict[str, DatumResult]:
    """Datum transforms of the reported positions, computed once per distinct cell."""
    out: dict[str, DatumResult] = {}
    for name in sorted(names):
        if cell is not None and len(cell):
            _, first, inverse = np.unique(cell, return_index=True, return_inverse=True)
            part = transform(name, lat[first], lon[first])
            p_lat, p_lon = part.lat[inverse], part.lon[inverse]
            p_ok, p_err = part.ok[inverse], part.error[inverse]
        else:
            part = transform(name, lat, lon)
            p_lat, p_lon, p_ok, p_err = part.lat, part.lon, part.ok, part.error
        f_lat = np.full(n, np.nan)
        f_lon = np.full(n, np.nan)
        f_ok = np.zeros(n, dtype=bool)
        f_err = np.full(n, ErrorCode.MISSING_COORDINATE, dtype=np.uint16)
        f_lat[rows] = p_lat
        f_lon[rows] = p_lon
        f_ok[rows] = p_ok
        f_err[rows] = p_err
        out[name] = DatumResult(lat=f_lat, lon=f_lon, ok=f_ok, error=f_err, datum=part.datum)
    return out


def _layer(
    n: int,
    rows: IntpArray,
    size: float,
    grid: GridResult,
    zones: ZoneSet,
    names: Iterable[str],
) -> GeoLayer:
    sites, inverse = _sites(grid)
    f_lat = np.full(n, np.nan)
    f_lon = np.full(n, np.nan)
    f_lat[rows] = grid.lat
    f_lon[rows] = grid.lon
    cell = np.full(n, -1, dtype=np.int64)
    band = np.zeros(n, dtype=np.int32)
    ix = np.full(n, -1, dtype=np.int64)
    iy = np.full(n, -1, dtype=np.int64)
    cell[rows] = grid.cell
    band[rows] = grid.band
    ix[rows] = grid.ix
    iy[rows] = grid.iy
    site = np.full(n, -1, dtype=np.intp)
    site[rows] = inverse
    return GeoLayer(
        size_m=size,
        lat=f_lat,
        lon=f_lon,
        cell=cell,
        band=band,
        ix=ix,
        iy=iy,
        mask=zones.mask_cells(sites),
        site=site,
        outputs=_outputs(n, rows, grid.lat, grid.lon, grid.cell, names),
    )


def _raw_layer(
    n: int,
    rows: IntpArray,
    lat: FloatArray,
    lon: FloatArray,
    zones: ZoneSet,
    base: tuple[GridResult, LevelArray] | None,
    names: Iterable[str],
) -> GeoLayer:
    if base is None:
        suspects = np.arange(len(lat), dtype=np.intp)
    else:
        # Only points whose finest cell touched a zone (or could not be placed) can be in one.
        grid, base_level = base
        suspects = np.flatnonzero((base_level != ZoneLevel.NONE) | ~grid.ok)
    mask = zones.points_in_zones(lat[suspects], lon[suspects])
    site = np.full(n, -1, dtype=np.intp)
    site[rows[suspects]] = np.arange(len(suspects), dtype=np.intp)
    f_lat = np.full(n, np.nan)
    f_lon = np.full(n, np.nan)
    f_lat[rows] = lat
    f_lon[rows] = lon
    return GeoLayer(
        size_m=0.0,
        lat=f_lat,
        lon=f_lon,
        cell=np.full(n, -1, dtype=np.int64),
        band=np.zeros(n, dtype=np.int32),
        ix=np.full(n, -1, dtype=np.int64),
        iy=np.full(n, -1, dtype=np.int64),
        mask=mask,
        site=site,
        outputs=_outputs(n, rows, lat, lon, None, names),
    )
