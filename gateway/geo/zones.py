"""Restricted zones: loading, geodesic buffers, and vectorised point and cell tests.

A zone file is a GeoJSON ``FeatureCollection`` in WGS-84 (RFC 7946: ``[lon, lat]``, edges
straight in longitude/latitude). Each feature is a ``Polygon`` or ``MultiPolygon`` (holes
allowed) with these properties, and no others (a misspelt ``buffer`` must not silently mean
0 m):

===============  ======================================================================
``id``           non-empty string, unique across every file of a :class:`ZoneSet`
``level``        ``"prohibited"`` or ``"sensitive"`` (RULES.md §2)
``buffer_m``     optional, metres on the ground, finite, ``0 <= buffer_m <= 100000``;
                 default 0
``name``         optional free text
``description``  optional free text
===============  ======================================================================

Anything else is a :class:`~gateway.errors.ZoneFileError` naming the file and the feature
index: a missing, empty or duplicate id, an unknown level, a negative buffer, a geometry
that is not a polygon, is empty, has unclosed rings or coordinates out of range, or is
invalid (self-intersection and the like, with shapely's explanation). Nothing is skipped.

Buffers
    A zone with ``buffer_m > 0`` is buffered in a transverse Mercator projection centred
    near the zone (central meridian rounded to 0.25°, scale 1, so the scale error inside a
    zone is a few parts per million). Its edges are first densified to 0.005° so the
    projected outline follows the lon/lat-straight edges (within 6 mm up to 55°N), then
    buffered with the distance raised by the largest projection scale over the zone and by
    the chord error of the round joins (GEOS splits a join into chords of up to 1.5
    quadrant quanta; ``quad_segs`` grows with the distance so chords overshoot by at most
    1 m), densified to 500 m and projected back. The buffered zone therefore *contains*
    every point within ``buffer_m`` (geodesic) of the zone, and exceeds that set by at
    most about 1.2 m for buffers up to 10 km (about 3.5 m at 50 km; measured against
    ``pyproj.Geod``). A zone without a buffer is used exactly as written.

Queries (all vectorised, no per-point Python)
    :meth:`ZoneSet.points_in_zones` tests positions against the buffered zones in lon/lat:
    one bounding-box ``STRtree.query`` on the points, then ``shapely.intersects_xy`` on the
    candidate pairs against prepared zones (measured faster than
    ``query(..., predicate="intersects")``, which prepares the points, not the zones).
    Closed sets: a point on an edge is inside.

    :meth:`ZoneSet.mask_cells` is the cell-level test of RULES.md §2: a row is masked when
    the grid cell it is reported in touches a buffered zone (closed cell ∩ closed zone ≠ ∅),
    so the feed cannot reveal a zone edge more finely than the grid. Cells are squares in
    the grid band's projected CRS (see :mod:`gateway.geo.grid`), so the test runs there:
    the buffered zones are projected once per band, on first use or by :meth:`ZoneSet.warm`
    (densified to 0.005° first, so each projected outline is within 6 mm of the true one),
    indexed in a per-band STRtree and tested with ``query(boxes, predicate="intersects")``
    against the cells as exact ``shapely.box`` squares, each grown by 1 cm to absorb that
    error. Only unique cells are tested (rows share cells) and the answer is mapped back to
    rows. The test never misses a touching cell; it may report a cell whose gap to the zone
    is under 1 cm.

    Chosen over WGS-84 cell polygons from the 4 corners (an inverse transform per corner,
    edges only approximately the cell's, and dearer to build) and over an exact Minkowski
    dilation of the zones by the cell square (cell centres could then be tested as points,
    faster per query, but seconds to build per band and cell size for 10,000 zones).

    The cost follows the number of (cell, zone) bounding-box candidates, so zones covering
    much of the area cost more. Throughput, and the alternatives' figures: ``bench/RESULTS.md``,
    "Geo engine" (``python -m bench.bench_geo``).

Bad rows
    Rows whose coordinates are missing, non-numeric, non-finite or out of range (see
    :func:`gateway.geo.coords.check_coordinates`), or that the grid could not place, are
    never raised on: they come back with their error code, level ``PROHIBITED`` and no zone
    ids — masked for everyone, authorisation or not (fail closed).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import shapely
from pyproj import Transformer
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

from gateway.errors import ZoneFileError
from gateway.geo.coords import check_coordinates
from gateway.geo.grid import GridResult, band_transformers
from gateway.model import ErrorCode, FloatArray

__all__ = [
    "MAX_BUFFER_M",
    "MaskResult",
    "Zone",
    "ZoneLevel",
    "ZoneSet",
    "load_zones",
]

IntpArray = npt.NDArray[np.intp]
LevelArray = npt.NDArray[np.int8]
ErrorArray = npt.NDArray[np.uint16]
GeometryArray = npt.NDArray[np.object_]
_Fail = Callable[[str], ZoneFileError]  # builds the error for the feature being parsed

MAX_BUFFER_M = 100_000.0
"""Largest buffer accepted; more is almost surely a unit mistake (km written as m)."""

_PROPERTIES = frozenset({"id", "level", "buffer_m", "name", "description"})
_LONLAT_SEGMENT_DEG = 0.005  # densify lon/lat edges before projecting: < 6 mm of bend
_PROJECTED_SEGMENT_M = 500.0  # densify buffered outlines before projecting back: < 6 mm
_ARC_TOLERANCE_M = 1.0  # round joins overshoot the true buffer by at most this
_BEND_MARGIN_M = 0.01  # added to every buffer: covers the densification bend above
_CELL_EPSILON_M = 0.01  # cells grow by this in the cell test: never miss a touch
_BAND_MARGIN_DEG = 3.0  # zones this close to a UTM band go into its index (cells reach 20 km)
_HEMISPHERE_MARGIN_DEG = 1.0  # same, across the equator
_TM_MERIDIAN_STEP_DEG = 0.25  # central meridians of the buffering projections
_MAX_QUAD_SEGS = 2048
_CRS84_NAMES = frozenset(
    {
        "urn:ogc:def:crs:OGC:1.3:CRS84",
        "urn:ogc:def:crs:OGC::CRS84",
        "EPSG:4326",
        "urn:ogc:def:crs:EPSG::4326",
    }
)


class ZoneLevel(IntEnum):
    """How restricted a zone is; the int8 values order rows by severity (worst = max)."""

    NONE = 0
    SENSITIVE = 1
    PROHIBITED = 2


_LEVEL_NAMES = {"sensitive": ZoneLevel.SENSITIVE, "prohibited": ZoneLevel.PROHIBITED}


@dataclass(frozen=True, slots=True, eq=False)
class Zone:
    """One restricted zone.

    ``geometry`` is the polygon as written (WGS-84, x = longitude); ``buffered`` contains
    every point within ``buffer_m`` metres (geodesic) of it and is what every query uses.
    ``source`` and ``feature`` say where the zone was read from.
    """

    id: str
    level: ZoneLevel
    buffer_m: float
    geometry: BaseGeometry
    buffered: BaseGeometry
    source: str
    feature: int
    name: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class MaskResult:
    """Which rows fall in (or whose cells touch) which zones.

    * ``level``: worst :class:`ZoneLevel` per row (int8); rows with an error are
      ``PROHIBITED``.
    * ``error``: :class:`~gateway.model.ErrorCode` per row (uint16), ``OK`` for good rows.
    * ``rows`` / ``zones``: the (row, zone index) hit pairs, sorted by row then zone; a zone
      index points into ``zone_set.zones``. Bad rows have no pairs.
    """

    level: LevelArray
    error: ErrorArray
    rows: IntpArray
    zones: IntpArray
    zone_set: ZoneSet = field(repr=False)

    def __len__(self) -> int:
        return len(self.level)

    @property
    def masked(self) -> npt.NDArray[np.bool_]:
        """Rows in or touching at least one zone, or with an error (never shareable as is)."""
        masked: npt.NDArray[np.bool_] = self.level != ZoneLevel.NONE
        return masked

    @property
    def bad(self) -> npt.NDArray[np.bool_]:
        """Rows whose position could not be tested (they are ``PROHIBITED``)."""
        bad: npt.NDArray[np.bool_] = self.error != ErrorCode.OK
        return bad

    def zone_ids(self, row: int) -> tuple[str, ...]:
        """Ids of the zones hit by ``row``, in zone order; empty for clean or bad rows."""
        lo, hi = np.searchsorted(self.rows, [row, row + 1])
        ids = self.zone_set.ids
        return tuple(ids[z] for z in self.zones[lo:hi])

    def levels_excluding(self, authorised: Iterable[str]) -> LevelArray:
        """Worst level per row among the zones *not* in ``authorised`` (ids).

        A subscriber authorised for zone A but not B is still masked for B. Ids that are
        not in the zone set authorise nothing. Bad rows stay ``PROHIBITED``. A bare
        string is refused (``TypeError``): it would be read as a set of one-letter ids.
        """
        if isinstance(authorised, str):
            raise TypeError("authorised must be a collection of zone ids, not one string")
        index = self.zone_set.index
        allowed = np.fromiter((index[z] for z in set(authorised) if z in index), dtype=np.intp)
        if allowed.size == 0:
            return self.level.copy()
        keep = ~np.isin(self.zones, allowed)
        return _worst_levels(
            len(self.level), self.rows[keep], self.zone_set.levels[self.zones[keep]], self.error
        )


def _worst_levels(n: int, rows: IntpArray, levels: LevelArray, error: ErrorArray) -> LevelArray:
    out = np.zeros(n, dtype=np.int8)
    out[rows[levels == ZoneLevel.SENSITIVE]] = ZoneLevel.SENSITIVE
    out[rows[levels == ZoneLevel.PROHIBITED]] = ZoneLevel.PROHIBITED
    out[error != ErrorCode.OK] = ZoneLevel.PROHIBITED
    return out


class ZoneSet:
    """An immutable, indexed set of zones with unique ids.

    Build it with :func:`load_zones` or :meth:`from_geojson`; the constructor takes zones
    already built (duplicate ids raise :class:`~gateway.errors.ZoneFileError` naming the
    second occurrence). Queries are thread-safe.
    """

    def __init__(self, zones: Iterable[Zone]) -> None:
        self.zones: tuple[Zone, ...] = tuple(zones)
        self.index: dict[str, int] = {}
        for i, zone in enumerate(self.zones):
            if zone.id in self.index:
                first = self.zones[self.index[zone.id]]
                raise ZoneFileError(
                    zone.source,
                    zone.feature,
                    f"duplicate zone id {zone.id!r} (first in {first.source}: "
                    f"feature {first.feature})",
                )
            self.index[zone.id] = i
        self.ids: tuple[str, ...] = tuple(z.id for z in self.zones)
        self.levels: LevelArray = np.array([int(z.level) for z in self.zones], dtype=np.int8)
        self.geometries: GeometryArray = np.array(
            [z.buffered for z in self.zones], dtype=object
        ).reshape(len(self.zones))
        self._bounds = shapely.bounds(self.geometries).reshape(-1, 4)
        shapely.prepare(self.geometries)  # point-in-polygon in O(log n) per candidate
        # GEOS builds a prepared geometry's point index on first use: build it now, so
        # concurrent queries only read it.
        shapely.intersects_xy(
            self.geometries,
            (self._bounds[:, 0] + self._bounds[:, 2]) / 2,
            (self._bounds[:, 1] + self._bounds[:, 3]) / 2,
        )
        self._tree = STRtree(self.geometries)
        self._bands: dict[int, tuple[STRtree, IntpArray]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_geojson(
        cls, obj: Mapping[str, Any] | str | bytes, source: str = "<geojson>"
    ) -> ZoneSet:
        """Zones of one GeoJSON FeatureCollection (parsed or as text); strict validation."""
        return cls(_parse_collection(obj, source))

    def __len__(self) -> int:
        return len(self.zones)

    def __reduce__(self) -> tuple[type[ZoneSet], tuple[tuple[Zone, ...]]]:
        """Pickled as its zones; the indexes are rebuilt on arrival (cheap beside the zones'
        buffering: ``bench/RESULTS.md``, policy reload)."""
        return type(self), (self.zones,)

    def __iter__(self) -> Iterator[Zone]:
        return iter(self.zones)

    def __getitem__(self, zone_id: str) -> Zone:
        return self.zones[self.index[zone_id]]

    def points_in_zones(self, lat: Any, lon: Any) -> MaskResult:
        """Which positions lie in which buffered zones (edges included).

        Never raises on bad coordinates: such rows come back with their error code and
        level ``PROHIBITED``.
        """
        lat_a, lon_a, error = check_coordinates(lat, lon)
        good = np.flatnonzero(error == ErrorCode.OK)
        if len(self.zones) == 0 or good.size == 0:
            empty = np.empty(0, dtype=np.intp)
            return self._result(len(error), empty, empty, error)
        x, y = lon_a[good], lat_a[good]
        cand = self._tree.query(shapely.points(x, y))  # bounding boxes only
        hit = shapely.intersects_xy(self.geometries[cand[1]], x[cand[0]], y[cand[0]])
        return self._result(len(error), good[cand[0][hit]], cand[1][hit], error)

    def mask_cells(self, grid: GridResult) -> MaskResult:
        """Which rows' grid cells touch which buffered zones (RULES.md §2).

        A row is hit by a zone when the closed square of the cell it is reported in
        intersects the closed buffered zone, so a point outside a zone is masked when its
        cell reaches into the zone. Never misses a touching cell (see the module docstring
        for the 1 cm tolerance). Rows the grid could not place keep its error code and come
        back ``PROHIBITED``.
        """
        error = grid.error.astype(np.uint16, copy=True)
        n = len(error)
        good = error == ErrorCode.OK
        rows_out: list[IntpArray] = []
        zones_out: list[IntpArray] = []
        if len(self.zones) and good.any():
            side = float(grid.side)
            for code in np.unique(grid.band[good]):
                rows = np.flatnonzero(good & (grid.band == code))
                cells, first, inverse = np.unique(
                    grid.cell[rows], return_index=True, return_inverse=True
                )
                tree, members = self._band_index(int(code))
                if len(members) == 0:
                    continue
                ix = grid.ix[rows[first]].astype(np.float64)
                iy = grid.iy[rows[first]].astype(np.float64)
                boxes = shapely.box(
                    ix * side - _CELL_EPSILON_M,
                    iy * side - _CELL_EPSILON_M,
                    (ix + 1) * side + _CELL_EPSILON_M,
                    (iy + 1) * side + _CELL_EPSILON_M,
                )
                hit_cell, hit_zone = tree.query(boxes, predicate="intersects")
                if hit_cell.size == 0:
                    continue
                pair_rows, pair_zones = _expand(rows, inverse, len(cells), hit_cell, hit_zone)
                rows_out.append(pair_rows)
                zones_out.append(members[pair_zones])
        if rows_out:
            return self._result(n, np.concatenate(rows_out), np.concatenate(zones_out), error)
        empty = np.empty(0, dtype=np.intp)
        return self._result(n, empty, empty, error)

    def bands_built(self) -> tuple[int, ...]:
        """The bands whose index has been built (by use or by :meth:`warm`); safe while
        another thread builds one."""
        with self._lock:
            return tuple(sorted(self._bands))

    def warm(self, bands: Iterable[int] | None = None) -> tuple[int, ...]:
        """Build now the per-band index of ``bands`` (default: every band a cell test
        could need); returns the bands built.

        :meth:`mask_cells` builds a band's index on first use (about 0.4 s for 10,000
        zones); a new zone set can be warmed with the bands its predecessor used, so the
        first batch after a policy reload does not pay for it.
        """
        if bands is not None:
            built = tuple(sorted(set(bands)))
            for band in built:
                self._band_index(band)
            return built
        wanted: set[int] = set()
        for west, south, east, north in self._bounds:
            first = int(np.clip(np.floor((west - _BAND_MARGIN_DEG + 180.0) / 6.0), 0, 59))
            last = int(np.clip(np.floor((east + _BAND_MARGIN_DEG + 180.0) / 6.0), 0, 59))
            for zone in range(first + 1, last + 2):
                if north >= -_HEMISPHERE_MARGIN_DEG:
                    wanted.add(32600 + zone)
                if south <= _HEMISPHERE_MARGIN_DEG:
                    wanted.add(32700 + zone)
        for band in sorted(wanted):
            self._band_index(band)
        return tuple(sorted(wanted))

    def _band_index(self, band: int) -> tuple[STRtree, IntpArray]:
        """STRtree of the buffered zones projected into ``band``'s CRS, and their indices.

        Built once per band on first use. Only zones whose bounds come within 3° of the
        band are projected: a cell reaches at most one side (≤ 20 km) past its band.
        """
        cached = self._bands.get(band)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._bands.get(band)
            if cached is not None:
                return cached
            to_band, _ = band_transformers(band)  # validates the code
            west = -180.0 + (band % 100 - 1) * 6.0
            east = west + 6.0
            b = self._bounds
            near = (b[:, 2] >= west - _BAND_MARGIN_DEG) & (b[:, 0] <= east + _BAND_MARGIN_DEG)
            if band < 32700:
                near &= b[:, 3] >= -_HEMISPHERE_MARGIN_DEG
            else:
                near &= b[:, 1] <= _HEMISPHERE_MARGIN_DEG
            members = np.flatnonzero(near)
            projected = _apply(
                to_band, shapely.segmentize(self.geometries[members], _LONLAT_SEGMENT_DEG)
            )
            projected = _repair(projected)
            entry = (STRtree(projected), members)
            self._bands[band] = entry
            return entry

    def _result(self, n: int, rows: IntpArray, zones: IntpArray, error: ErrorArray) -> MaskResult:
        rows = rows.astype(np.intp, copy=False)
        zones = zones.astype(np.intp, copy=False)
        if rows.size > 1:
            order = np.lexsort((zones, rows))
            rows, zones = rows[order], zones[order]
        level = _worst_levels(n, rows, self.levels[zones], error)
        return MaskResult(level=level, error=error, rows=rows, zones=zones, zone_set=self)


def load_zones(paths: str | Path | Iterable[str | Path]) -> ZoneSet:
    """Load one or more GeoJSON zone files into one :class:`ZoneSet`.

    Raises :class:`~gateway.errors.ZoneFileError` naming the file (and the feature index,
    when one feature is at fault) on any unreadable file or invalid content.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    zones: list[Zone] = []
    for path in paths:
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise ZoneFileError(path, None, f"cannot read: {exc.strerror or exc}") from exc
        zones.extend(_parse_collection(text, str(path)))
    return ZoneSet(zones)


# --------------------------------------------------------------------------- parsing


def _parse_collection(obj: Mapping[str, Any] | str | bytes, source: str) -> list[Zone]:
    if isinstance(obj, (str, bytes)):
        try:
            obj = orjson.loads(obj)
        except orjson.JSONDecodeError as exc:
            raise ZoneFileError(source, None, f"not valid JSON: {exc}") from exc
    if not isinstance(obj, Mapping) or obj.get("type") != "FeatureCollection":
        raise ZoneFileError(source, None, "expected a GeoJSON FeatureCollection")
    crs = obj.get("crs")
    if crs is not None:
        name = crs.get("properties", {}).get("name") if isinstance(crs, Mapping) else None
        if name not in _CRS84_NAMES:
            raise ZoneFileError(source, None, f"coordinates must be WGS-84 lon/lat, crs is {crs!r}")
    features = obj.get("features")
    if not isinstance(features, list):
        raise ZoneFileError(source, None, "'features' must be a list")
    parsed = [_parse_feature(f, source, i) for i, f in enumerate(features)]
    seen: dict[str, int] = {}
    for zone_id, _, _, _, i in parsed:
        if zone_id in seen:
            raise ZoneFileError(
                source, i, f"duplicate zone id {zone_id!r} (first at feature {seen[zone_id]})"
            )
        seen[zone_id] = i
    if not parsed:
        return []
    geoms = np.array([p[3] for p in parsed], dtype=object)
    buffers = np.array([p[2] for p in parsed], dtype=np.float64)
    buffered = _buffer_geodesic(geoms, buffers)
    return [
        Zone(
            id=zone_id,
            level=level,
            buffer_m=buf,
            geometry=geom,
            buffered=out,
            source=source,
            feature=i,
            name=_name(features[i]),
        )
        for (zone_id, level, buf, geom, i), out in zip(parsed, buffered, strict=True)
    ]


def _name(feature: Mapping[str, Any]) -> str | None:
    name = feature["properties"].get("name")
    return name if isinstance(name, str) else None


def _parse_feature(
    feature: Any, source: str, i: int
) -> tuple[str, ZoneLevel, float, BaseGeometry, int]:
    def fail(message: str) -> ZoneFileError:
        return ZoneFileError(source, i, message)

    if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
        raise fail("expected a GeoJSON Feature")
    props = feature.get("properties")
    if not isinstance(props, Mapping):
        raise fail("'properties' must be an object with id and level")
    unknown = sorted(set(props) - _PROPERTIES)
    if unknown:
        raise fail(f"unknown properties {unknown}; allowed: {sorted(_PROPERTIES)}")
    zone_id = props.get("id")
    if not isinstance(zone_id, str) or not zone_id.strip():
        raise fail("'id' must be a non-empty string")
    if "id" in feature and feature["id"] != zone_id:
        raise fail(f"feature id {feature['id']!r} differs from properties.id {zone_id!r}")
    level_name = props.get("level")
    if level_name not in _LEVEL_NAMES:
        raise fail(f"'level' must be one of {sorted(_LEVEL_NAMES)}, got {level_name!r}")
    buffer_m = props.get("buffer_m", 0)
    if isinstance(buffer_m, bool) or not isinstance(buffer_m, (int, float)):
        raise fail(f"'buffer_m' must be a number of metres, got {buffer_m!r}")
    buffer_m = float(buffer_m)
    if not math.isfinite(buffer_m) or buffer_m < 0 or buffer_m > MAX_BUFFER_M:
        raise fail(f"'buffer_m' must be between 0 and {MAX_BUFFER_M:g} m, got {buffer_m!r}")
    for key in ("name", "description"):
        if key in props and not isinstance(props[key], str):
            raise fail(f"'{key}' must be a string")
    geom = _parse_geometry(feature.get("geometry"), fail)
    return zone_id, _LEVEL_NAMES[level_name], buffer_m, geom, i


def _parse_geometry(obj: Any, fail: _Fail) -> BaseGeometry:
    if not isinstance(obj, Mapping):
        raise fail("geometry is missing (a Polygon or MultiPolygon is required)")
    kind = obj.get("type")
    coords = obj.get("coordinates")
    if kind not in ("Polygon", "MultiPolygon"):
        raise fail(f"geometry must be a Polygon or MultiPolygon, got {kind!r}")
    if not isinstance(coords, list) or not coords:
        raise fail(f"empty {kind}")
    if kind == "Polygon":
        geom: BaseGeometry = _polygon(coords, fail, "")
    else:
        parts = []
        for k, part in enumerate(coords):
            if not isinstance(part, list) or not part:
                raise fail(f"polygon {k}: empty")
            parts.append(_polygon(part, fail, f"polygon {k}: "))
        geom = shapely.MultiPolygon(parts)
    if geom.is_empty:
        raise fail(f"empty {kind}")
    if not geom.is_valid:
        raise fail(f"invalid {kind}: {shapely.is_valid_reason(geom)}")
    return geom


def _polygon(rings: list[Any], fail: _Fail, where: str) -> shapely.Polygon:
    arrays = [_ring(ring, fail, f"{where}ring {k}") for k, ring in enumerate(rings)]
    return shapely.Polygon(arrays[0], arrays[1:])


def _ring(ring: Any, fail: _Fail, where: str) -> FloatArray:
    try:
        raw = np.array(ring)
    except ValueError as exc:
        raise fail(f"{where}: positions must be [lon, lat] number pairs") from exc
    if raw.ndim != 2 or raw.shape[1] not in (2, 3) or raw.dtype.kind not in "iuf":
        raise fail(f"{where}: positions must be [lon, lat] number pairs")
    xy = raw[:, :2].astype(np.float64)
    if len(xy) < 4:
        raise fail(f"{where}: a ring needs at least 4 positions, got {len(xy)}")
    if not np.isfinite(xy).all():
        raise fail(f"{where}: non-finite coordinate")
    lon, lat = xy[:, 0], xy[:, 1]
    if (np.abs(lon) > 180).any() or (np.abs(lat) > 90).any():
        k = int(np.flatnonzero((np.abs(lon) > 180) | (np.abs(lat) > 90))[0])
        raise fail(f"{where}: position {k} {xy[k].tolist()} out of range (lon, lat)")
    if not np.array_equal(xy[0], xy[-1]):
        raise fail(f"{where}: ring is not closed (first and last positions differ)")
    return xy


# --------------------------------------------------------------------------- buffering


def _local_tm(lon_0: float) -> tuple[Transformer, Transformer]:
    """Transformers lon/lat (degrees) <-> a transverse Mercator (scale 1, metres) on
    ``lon_0``, made per call. Written as the PROJ pipeline that ``from_crs("EPSG:4326",
    "+proj=tmerc …")`` resolves to (same results to the bit), which builds about a hundred
    times faster than ``from_crs`` (``bench/RESULTS.md``, bundle load).
    """
    tm = f"+proj=tmerc +lat_0=0 +lon_0={lon_0!r} +k=1 +x_0=0 +y_0=0 +ellps=WGS84"
    return (
        Transformer.from_pipeline(
            f"+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad +step {tm}"
        ),
        Transformer.from_pipeline(
            f"+proj=pipeline +step +inv {tm} +step +proj=unitconvert +xy_in=rad +xy_out=deg"
        ),
    )


def _apply(transformer: Transformer, geoms: GeometryArray) -> GeometryArray:
    def move(xy: FloatArray) -> FloatArray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out: GeometryArray = shapely.transform(geoms, move)
    return out


def _buffer_geodesic(geoms: GeometryArray, buffers: FloatArray) -> GeometryArray:
    """Buffered copies of lon/lat ``geoms``, each containing its geodesic buffer."""
    out = geoms.copy()
    todo = np.flatnonzero(buffers > 0)
    if todo.size == 0:
        return out
    bounds = shapely.bounds(geoms[todo])
    centre = (bounds[:, 0] + bounds[:, 2]) / 2
    meridian = np.round(centre / _TM_MERIDIAN_STEP_DEG) * _TM_MERIDIAN_STEP_DEG
    distance = buffers[todo] * _max_tm_scale(bounds, meridian, buffers[todo]) + _BEND_MARGIN_M
    # GEOS splits a round join of angle A into round(A / quantum) chords, quantum = pi/2/quad,
    # so a chord spans less than 1.5 quanta and its midpoint lies at least
    # distance * cos(3 pi / (8 quad)) from the corner: raise the distance by that factor.
    quad = np.clip(
        np.ceil(3 * np.pi / (8 * np.arccos(1 / (1 + _ARC_TOLERANCE_M / distance)))),
        8,
        _MAX_QUAD_SEGS,
    ).astype(int)
    distance = distance / np.cos(3 * np.pi / (8 * quad))
    for lon_0 in np.unique(meridian):
        in_tm = meridian == lon_0
        forward, inverse = _local_tm(float(lon_0))
        projected = _apply(forward, shapely.segmentize(geoms[todo[in_tm]], _LONLAT_SEGMENT_DEG))
        buffered = np.empty(len(projected), dtype=object)
        for q in np.unique(quad[in_tm]):
            same = quad[in_tm] == q
            buffered[same] = shapely.buffer(
                projected[same], distance[in_tm][same], quad_segs=int(q)
            )
        back = _apply(inverse, shapely.segmentize(buffered, _PROJECTED_SEGMENT_M))
        out[todo[in_tm]] = _repair(back)
    return out


def _repair(geoms: GeometryArray) -> GeometryArray:
    """Make geometries valid that a projection left (barely) invalid; keeps their area."""
    broken = ~shapely.is_valid(geoms)
    if broken.any():
        geoms = geoms.copy()
        geoms[broken] = shapely.make_valid(geoms[broken])
    return geoms


def _expand(
    rows: IntpArray, inverse: IntpArray, n_cells: int, hit_cell: IntpArray, hit_zone: IntpArray
) -> tuple[IntpArray, IntpArray]:
    """(row, zone) pairs from (unique cell, zone) pairs; ``inverse`` maps rows to cells."""
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=n_cells)
    start = np.cumsum(counts) - counts
    repeat = counts[hit_cell]
    offsets = np.arange(int(repeat.sum())) - np.repeat(np.cumsum(repeat) - repeat, repeat)
    pair_rows = rows[order[np.repeat(start[hit_cell], repeat) + offsets]]
    return pair_rows, np.repeat(hit_zone, repeat)


def _max_tm_scale(bounds: FloatArray, meridian: FloatArray, buffers: FloatArray) -> FloatArray:
    """Upper bound of the transverse Mercator scale (k0 = 1) over each buffered bbox."""
    pad_lat = buffers / 110_000.0
    lat_lo = np.clip(bounds[:, 1] - pad_lat, -89.0, 89.0)
    lat_hi = np.clip(bounds[:, 3] + pad_lat, -89.0, 89.0)
    min_abs_lat = np.where(lat_lo * lat_hi <= 0, 0.0, np.minimum(np.abs(lat_lo), np.abs(lat_hi)))
    max_abs_lat = np.maximum(np.abs(lat_lo), np.abs(lat_hi))
    pad_lon = buffers / (111_000.0 * np.cos(np.radians(max_abs_lat)))
    dlon = np.maximum(
        np.abs(bounds[:, 0] - pad_lon - meridian), np.abs(bounds[:, 2] + pad_lon - meridian)
    )
    b = np.cos(np.radians(min_abs_lat)) * np.sin(np.radians(np.minimum(dlon, 60.0)))
    spherical = 1 / np.sqrt(1 - b * b)
    scale: FloatArray = 1 + (spherical - 1) * 1.01 + 1e-9  # ellipsoid: (1 + eta^2) < 1.01
    return scale
