"""Metric grid coarsening: snap WGS-84 positions to square cells of at least N metres.

Projection. Each position is projected into the UTM zone of its 6° longitude band (WGS-84
ellipsoid, PROJ's exact transverse Mercator via pyproj), north or south by hemisphere. Plain
6° bands are used everywhere: no Norway/Svalbard exceptions. A band is named by its EPSG
code (``32601``–``32660`` north, ``32701``–``32760`` south), which :func:`band_crs` turns
into the CRS. Rounding degrees is never used: a degree of longitude shrinks with latitude.

Cell size. Transverse Mercator is conformal, so a small square stays a square on the
ground, scaled by the point scale factor ``k``. Inside its band UTM has
``0.9996 <= k <= 1.000981`` (the maximum is at the equator on the band edge); a cell of a
point near the band edge may reach up to one cell side past the edge, where ``k`` is a
little larger. The projected cell side is therefore ``side = size_m * K_MAX`` with
``K_MAX = 1.0012``, which bounds ``k`` everywhere a cell of up to ``MAX_SIZE_M`` (20 km) can
reach (``k`` is 1.00117 at 3.2° from the central meridian on the equator). The ground length
of a cell side is its projected length divided by ``k``, hence:

* no cell side is shorter than ``size_m`` on the ground (at the central meridian it is
  ``size_m * 1.0016``; the excess is the price of one constant for every band);
* a point moves at most half the cell diagonal, at most ``size_m * K_MAX / 0.9996 / sqrt(2)``
  (``0.7083 * size_m``) on the ground;
* every point of one cell maps to the same output, the cell centre (the inverse projection
  of the projected centre);
* the result depends only on the input and pyproj/PROJ: deterministic across processes.

Cell id. ``cell = band << 48 | iy << 24 | ix`` as an int64 (``ix``/``iy`` are the column and
row of the cell, ``floor(x / side)`` and ``floor(y / side)`` in the band's projected
coordinates; both fit in 24 bits for ``size_m >= MIN_SIZE_M``). Ids are only comparable at
the same ``size_m``. :func:`format_cell_id` writes ``"band:ix:iy"``; :func:`parse_cell_id`
reads it back.

Speed. Points are grouped by band; each band is one ``Transformer.transform`` call on whole
arrays each way. Transformers are cached per thread (pyproj transformers must not be shared
between threads).

Contract for geometry tests (restricted zones). A cell of band ``b`` is the projected square
``[ix*side, (ix+1)*side) x [iy*side, (iy+1)*side)`` in ``band_crs(b)``. To test whether a
reported cell touches a zone, transform the zone into the band's CRS
(:func:`band_transformers` gives the cached pair) and test the square from
:func:`cell_projected_bounds`; or use the WGS-84 corners from :func:`cell_corners` (the
projected square's corners; its edges are not geodesics, so the projected test is the exact
one). :class:`GridResult` exposes ``x``/``y`` (projected input), ``band``, ``ix``, ``iy`` and
``side`` for that purpose.

Bad input never raises: rows that fail :func:`gateway.geo.coords.check_coordinates` get its
error code, NaN coordinates, ``band = 0`` and ``cell = ix = iy = -1``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pyproj import CRS, Transformer

from gateway.errors import GeoError
from gateway.geo.coords import check_coordinates
from gateway.model import BoolArray, ErrorCode, FloatArray

__all__ = [
    "DEFAULT_SIZE_M",
    "K_MAX",
    "K_MIN",
    "MAX_SIZE_M",
    "MIN_SIZE_M",
    "GridResult",
    "band_crs",
    "band_of",
    "band_transformers",
    "cell_centres",
    "cell_corners",
    "cell_id",
    "cell_projected_bounds",
    "cell_side",
    "format_cell_id",
    "parse_cell_id",
    "snap",
    "split_cell_id",
]

IntArray = npt.NDArray[np.int64]
BandArray = npt.NDArray[np.int32]

DEFAULT_SIZE_M = 50.0
MIN_SIZE_M = 1.0
MAX_SIZE_M = 20_000.0
K_MAX = 1.0012
"""Upper bound of the UTM scale factor wherever a cell of at most ``MAX_SIZE_M`` reaches."""
K_MIN = 0.9996
"""UTM scale factor on the central meridian, its minimum."""

_NORTH = 32600
_SOUTH = 32700
_BITS = 24
_MASK = (1 << _BITS) - 1


@dataclass(frozen=True, slots=True)
class GridResult:
    """Per-row outcome of :func:`snap`.

    ``lat``/``lon``: cell centre (WGS-84); ``cell``: int64 cell id; ``band``: EPSG code of
    the band's CRS (int32); ``ix``/``iy``: cell column/row; ``x``/``y``: the input point in
    the band's projected CRS; ``error``: :class:`~gateway.model.ErrorCode` per row.
    ``size_m`` is the requested ground size, ``side`` the projected cell side. Rows with an
    error hold NaN, ``band == 0`` and ``-1`` ids.
    """

    lat: FloatArray
    lon: FloatArray
    cell: IntArray
    band: BandArray
    ix: IntArray
    iy: IntArray
    x: FloatArray
    y: FloatArray
    error: npt.NDArray[np.uint16]
    size_m: float
    side: float

    @property
    def ok(self) -> BoolArray:
        """Mask of rows that were snapped."""
        ok: BoolArray = self.error == ErrorCode.OK
        return ok

    def __len__(self) -> int:
        return len(self.lat)


def cell_side(size_m: float) -> float:
    """Projected cell side for ``size_m``: every cell side is at least ``size_m`` on the ground.

    Raises :class:`~gateway.errors.GeoError` unless ``MIN_SIZE_M <= size_m <= MAX_SIZE_M``.
    """
    size = float(size_m)
    if not (math.isfinite(size) and MIN_SIZE_M <= size <= MAX_SIZE_M):
        raise GeoError(f"grid size must be between {MIN_SIZE_M} and {MAX_SIZE_M} m, got {size_m}")
    return size * K_MAX


def band_of(lat: Any, lon: Any) -> BandArray:
    """EPSG code of the UTM band of each valid position; 0 for invalid rows.

    Bands are plain 6° longitude bands (``lon == 180`` belongs to zone 60); ``lat >= 0`` is
    north.
    """
    lat_a, lon_a, error = check_coordinates(lat, lon)
    return _bands(lat_a, lon_a, error == ErrorCode.OK)


def band_crs(band: int) -> CRS:
    """The projected CRS of ``band`` (an EPSG code from :func:`band_of`).

    Raises :class:`~gateway.errors.GeoError` for a code that is not a UTM band.
    """
    _check_band(band)
    return _crs(int(band))


def band_transformers(band: int) -> tuple[Transformer, Transformer]:
    """``(to_band, to_wgs84)`` transformers of ``band``, both with x = longitude/easting.

    Cached per thread: do not hand them to another thread. Raises
    :class:`~gateway.errors.GeoError` for a code that is not a UTM band.
    """
    _check_band(band)
    return _transformers(int(band))


def snap(lat: Any, lon: Any, size_m: float = DEFAULT_SIZE_M) -> GridResult:
    """Snap WGS-84 positions to the centre of their grid cell of ``size_m`` metres.

    Guarantees (see the module docstring): every cell side is at least ``size_m`` on the
    ground; a point moves at most half its cell's diagonal; points of one cell get the same
    centre and id; results are deterministic. Invalid rows are reported in ``error``, never
    raised. Scalars are accepted; the result always holds 1-d arrays.
    """
    side = cell_side(size_m)
    lat_a, lon_a, error = check_coordinates(lat, lon)
    n = lat_a.size
    valid = error == ErrorCode.OK
    band = _bands(lat_a, lon_a, valid)
    x = np.full(n, np.nan)
    y = np.full(n, np.nan)
    c_lat = np.full(n, np.nan)
    c_lon = np.full(n, np.nan)
    ix = np.full(n, -1, dtype=np.int64)
    iy = np.full(n, -1, dtype=np.int64)
    for code, rows in _group_by_band(band, valid):
        to_band, to_wgs84 = _transformers(code)
        bx, by = to_band.transform(lon_a[rows], lat_a[rows])
        bx = np.asarray(bx, dtype=np.float64)
        by = np.asarray(by, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            cx = np.floor(bx / side)
            cy = np.floor(by / side)
        fine = np.isfinite(cx) & np.isfinite(cy) & (cx >= 0) & (cy >= 0)
        fine &= (cx <= _MASK) & (cy <= _MASK)
        if not fine.all():
            # PROJ could not project these rows: never report a cell for them.
            error[rows[~fine]] = ErrorCode.COORDINATE_OUT_OF_RANGE
            band[rows[~fine]] = 0
            rows, bx, by, cx, cy = rows[fine], bx[fine], by[fine], cx[fine], cy[fine]
        x[rows] = bx
        y[rows] = by
        ix[rows] = cx.astype(np.int64)
        iy[rows] = cy.astype(np.int64)
        lo, la = to_wgs84.transform((cx + 0.5) * side, (cy + 0.5) * side)
        c_lon[rows] = lo
        c_lat[rows] = la
    ok = error == ErrorCode.OK
    cell = np.where(ok, _encode(band, ix, iy), np.int64(-1))
    return GridResult(
        lat=c_lat,
        lon=c_lon,
        cell=cell,
        band=band,
        ix=ix,
        iy=iy,
        x=x,
        y=y,
        error=error,
        size_m=float(size_m),
        side=side,
    )


def cell_id(band: Any, ix: Any, iy: Any) -> IntArray:
    """Encode ``(band, ix, iy)`` into int64 cell ids (``band << 48 | iy << 24 | ix``).

    Raises :class:`~gateway.errors.GeoError` if a component is out of its range.
    """
    b, cx, cy = _cells(band, ix, iy)
    return _encode(b, cx, cy)


def split_cell_id(cell: Any) -> tuple[BandArray, IntArray, IntArray]:
    """Decode int64 cell ids into ``(band, ix, iy)``; inverse of :func:`cell_id`."""
    c = np.atleast_1d(np.asarray(cell, dtype=np.int64))
    band = (c >> (2 * _BITS)).astype(np.int32)
    iy = (c >> _BITS) & _MASK
    ix = c & _MASK
    return band, ix, iy


def format_cell_id(cell: int) -> str:
    """``"band:ix:iy"`` for one cell id, e.g. ``"32650:9000:88000"``; stable across versions."""
    band, ix, iy = split_cell_id(cell)
    return f"{int(band[0])}:{int(ix[0])}:{int(iy[0])}"


def parse_cell_id(text: str) -> int:
    """The cell id written by :func:`format_cell_id`; :class:`~gateway.errors.GeoError` if bad."""
    parts = text.split(":")
    try:
        band, ix, iy = (int(p) for p in parts)
    except ValueError:
        raise GeoError(f"not a cell id: {text!r}") from None
    return int(cell_id(band, ix, iy)[0])


def cell_projected_bounds(
    ix: Any, iy: Any, size_m: float
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """``(xmin, ymin, xmax, ymax)`` of cells in their band's projected CRS (metres)."""
    side = cell_side(size_m)
    cx = np.atleast_1d(np.asarray(ix, dtype=np.float64))
    cy = np.atleast_1d(np.asarray(iy, dtype=np.float64))
    return cx * side, cy * side, (cx + 1.0) * side, (cy + 1.0) * side


def cell_centres(band: Any, ix: Any, iy: Any, size_m: float) -> tuple[FloatArray, FloatArray]:
    """WGS-84 ``(lat, lon)`` of cell centres; exactly what :func:`snap` reports for them."""
    side = cell_side(size_m)
    b, cx, cy = _cells(band, ix, iy)
    px = (cx + 0.5).astype(np.float64) * side
    py = (cy + 0.5).astype(np.float64) * side
    lon, lat = _to_wgs84(b, px, py)
    return lat, lon


def cell_corners(band: Any, ix: Any, iy: Any, size_m: float) -> tuple[FloatArray, FloatArray]:
    """WGS-84 ``(lat, lon)`` of cell corners, each of shape ``(n, 4)``.

    Corners are the projected square's, counter-clockwise from the lower left:
    ``(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)``.
    """
    side = cell_side(size_m)
    b, cx, cy = _cells(band, ix, iy)
    dx = np.array([0.0, 1.0, 1.0, 0.0])
    dy = np.array([0.0, 0.0, 1.0, 1.0])
    px = ((cx[:, None] + dx[None, :]) * side).reshape(-1)
    py = ((cy[:, None] + dy[None, :]) * side).reshape(-1)
    lon, lat = _to_wgs84(np.repeat(b, 4), px, py)
    return lat.reshape(-1, 4), lon.reshape(-1, 4)


# --- internals -------------------------------------------------------------------------------


def _bands(lat: FloatArray, lon: FloatArray, valid: BoolArray) -> BandArray:
    with np.errstate(invalid="ignore"):
        zone = np.clip(np.floor((lon + 180.0) / 6.0), 0, 59) + 1
    zone = np.where(valid, zone, 0).astype(np.int32)
    base = np.where(lat < 0, _SOUTH, _NORTH).astype(np.int32)
    return np.where(valid, base + zone, 0).astype(np.int32)


def _group_by_band(band: BandArray, valid: BoolArray) -> list[tuple[int, npt.NDArray[np.intp]]]:
    """Row indices of each band present, in increasing band order (one pass per band)."""
    present = np.flatnonzero(np.bincount(band[valid], minlength=1))
    return [(int(code), np.flatnonzero(valid & (band == code))) for code in present]


def _check_band(band: int) -> None:
    b = int(band)
    if not (_NORTH + 1 <= b <= _NORTH + 60 or _SOUTH + 1 <= b <= _SOUTH + 60):
        raise GeoError(f"not a UTM band: {band!r}")


def _cells(band: Any, ix: Any, iy: Any) -> tuple[BandArray, IntArray, IntArray]:
    b, cx, cy = np.broadcast_arrays(
        np.atleast_1d(np.asarray(band, dtype=np.int64)),
        np.atleast_1d(np.asarray(ix, dtype=np.int64)),
        np.atleast_1d(np.asarray(iy, dtype=np.int64)),
    )
    for code in np.unique(b):
        _check_band(int(code))
    if ((cx < 0) | (cx > _MASK) | (cy < 0) | (cy > _MASK)).any():
        raise GeoError(f"cell column/row must be within 0..{_MASK}")
    return b.astype(np.int32), cx.astype(np.int64), cy.astype(np.int64)


def _encode(band: BandArray, ix: IntArray, iy: IntArray) -> IntArray:
    return (band.astype(np.int64) << (2 * _BITS)) | (np.maximum(iy, 0) << _BITS) | np.maximum(ix, 0)


def _to_wgs84(band: BandArray, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    lon = np.full(x.size, np.nan)
    lat = np.full(x.size, np.nan)
    for code, rows in _group_by_band(band, np.ones(band.size, dtype=bool)):
        _, to_wgs84 = _transformers(code)
        lo, la = to_wgs84.transform(x[rows], y[rows])
        lon[rows] = lo
        lat[rows] = la
    return lon, lat


_CRS_CACHE: dict[int, CRS] = {}
_local = threading.local()


def _crs(code: int) -> CRS:
    crs = _CRS_CACHE.get(code)
    if crs is None:
        crs = _CRS_CACHE.setdefault(code, CRS.from_epsg(code))
    return crs


def _transformers(code: int) -> tuple[Transformer, Transformer]:
    cache: dict[int, tuple[Transformer, Transformer]] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = {}
        _local.cache = cache
    pair = cache.get(code)
    if pair is None:
        crs = _crs(code)
        pair = (
            Transformer.from_crs(4326, crs, always_xy=True),
            Transformer.from_crs(crs, 4326, always_xy=True),
        )
        cache[code] = pair
    return pair
