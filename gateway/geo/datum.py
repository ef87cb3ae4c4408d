"""Datum transforms: WGS-84 to a shared datum and back, vectorised and pluggable.

The built-in transform ``"gcj02"`` is the public WGS-84 → GCJ-02 formula (Krasovsky-like
ellipsoid ``a = 6378245.0``, ``ee = 0.00669342162296594323``). It is the widely used open
approximation, **not** a state-certified confidentiality plug-in; a deployment that must use
a certified one registers it under its own name with :func:`register_transform` and names
it in the policy.

Fail closed: a row is transformed only when its coordinates are valid (see
:func:`gateway.geo.coords.check_coordinates`) and inside the transform's area. For the
built-in transform that area is the conventional box, longitude 72.004–137.8347 and latitude
0.8293–55.8271 (edges included). Every other row comes back as NaN with an error code
(``OUTSIDE_DATUM_AREA`` for outside the box), so nothing can pass through as silent WGS-84.

* :func:`transform` / :func:`transform_back` return a :class:`DatumResult` with the per-row
  ``ok`` mask and error code; use them in the pipeline.
* :func:`wgs84_to_gcj02` / :func:`gcj02_to_wgs84` are the convenient forms: ``(lat, lon)``
  with NaN for rows not transformed. A scalar pair in gives two Python floats out; anything
  else gives two 1-d float64 arrays.

The inverse is exact: it iterates until the forward transform reproduces the input to better
than 1e-9 degrees (the one-step approximation that many libraries ship is off by metres). A
GCJ-02 position has a WGS-84 inverse only if that inverse lies inside the box (otherwise the
forward transform would not have produced it): such rows get ``OUTSIDE_DATUM_AREA`` too. An
answer that misses the box by rounding noise (under 5e-10 degrees) is clamped onto its edge,
so positions on the edge survive the round trip.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.errors import DatumError
from gateway.geo.coords import check_coordinates
from gateway.model import BoolArray, Datum, ErrorCode, FloatArray

__all__ = [
    "GCJ02_A",
    "GCJ02_BOX",
    "GCJ02_EE",
    "DatumResult",
    "DatumTransform",
    "RowTransform",
    "available_transforms",
    "gcj02_to_wgs84",
    "get_transform",
    "register_transform",
    "transform",
    "transform_back",
    "wgs84_to_gcj02",
]

ErrorArray = npt.NDArray[np.uint16]

RowTransform = Callable[[FloatArray, FloatArray], tuple[FloatArray, FloatArray, ErrorArray]]
"""A plug-in direction: ``f(lat, lon) -> (lat, lon, error)`` on float64 arrays.

It receives only rows whose coordinates are valid, and must return arrays of the same
length. Rows it cannot transform get a non-zero :class:`~gateway.model.ErrorCode`; their
coordinates are replaced by NaN whatever the plug-in returned.
"""

GCJ02_A = 6378245.0
GCJ02_EE = 0.00669342162296594323
GCJ02_BOX = (0.8293, 55.8271, 72.004, 137.8347)
"""``(lat_min, lat_max, lon_min, lon_max)`` of the conventional GCJ-02 area, edges included."""

_INVERSE_TOL_DEG = 1e-11  # the forward transform of the answer reproduces the input to this
_INVERSE_MAX_ITER = 30  # the iteration contracts by ~1e-2 per step; 5 steps are typical
_INVERSE_EDGE_DEG = 5e-10  # answers this close outside the box are clamped onto its edge
_INVERSE_MARGIN_DEG = 0.1  # GCJ-02 offsets stay well under 0.01 deg; cheaper early rejection


@dataclass(frozen=True, slots=True)
class DatumResult:
    """Per-row outcome of a datum transform.

    ``lat``/``lon`` are float64, NaN wherever ``ok`` is false; ``error`` holds the
    :class:`~gateway.model.ErrorCode` of each row (``OK`` exactly where ``ok``). ``datum``
    is the datum the transformed rows are in.
    """

    lat: FloatArray
    lon: FloatArray
    ok: BoolArray
    error: ErrorArray
    datum: Datum

    def __len__(self) -> int:
        return len(self.lat)


@dataclass(frozen=True, slots=True)
class DatumTransform:
    """A named pair of directions: ``forward`` WGS-84 → ``datum``, ``inverse`` back."""

    name: str
    forward: RowTransform
    inverse: RowTransform
    datum: Datum


_registry: dict[str, DatumTransform] = {}
_registry_lock = threading.Lock()


def register_transform(
    name: str,
    forward: RowTransform,
    inverse: RowTransform,
    *,
    datum: Datum = Datum.GCJ02,
    replace: bool = False,
) -> DatumTransform:
    """Register a datum transform under ``name`` and return it.

    Raises :class:`~gateway.errors.DatumError` if the name is empty or already taken and
    ``replace`` is false, so a plug-in never silently shadows another one.
    """
    if not name:
        raise DatumError("a datum transform needs a non-empty name")
    if datum is Datum.NONE:
        raise DatumError(f"datum transform {name!r}: target datum cannot be NONE")
    entry = DatumTransform(name=name, forward=forward, inverse=inverse, datum=datum)
    with _registry_lock:
        if name in _registry and not replace:
            raise DatumError(f"datum transform {name!r} is already registered")
        _registry[name] = entry
    return entry


def get_transform(name: str) -> DatumTransform:
    """The transform registered as ``name``; :class:`~gateway.errors.DatumError` if none is."""
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise DatumError(f"unknown datum transform {name!r} (known: {known})") from None


def available_transforms() -> tuple[str, ...]:
    """Names of the registered transforms, sorted."""
    return tuple(sorted(_registry))


def transform(name: str, lat: Any, lon: Any) -> DatumResult:
    """Transform WGS-84 ``lat``/``lon`` to the datum of transform ``name``, row by row.

    Never raises for bad rows: invalid coordinates keep the code from
    :func:`~gateway.geo.coords.check_coordinates`, rows the transform refuses get its code;
    all of them are NaN with ``ok`` false. Raises :class:`~gateway.errors.DatumError` for an
    unknown name or a plug-in that returns malformed arrays.
    """
    entry = get_transform(name)
    return _apply(entry, entry.forward, lat, lon, entry.datum)


def transform_back(name: str, lat: Any, lon: Any) -> DatumResult:
    """Transform ``lat``/``lon`` in the datum of ``name`` back to WGS-84, row by row.

    Same row contract as :func:`transform`; ``datum`` of the result is ``WGS84``.
    """
    entry = get_transform(name)
    return _apply(entry, entry.inverse, lat, lon, Datum.WGS84)


def wgs84_to_gcj02(lat: Any, lon: Any) -> tuple[Any, Any]:
    """WGS-84 → GCJ-02 as ``(lat, lon)``; NaN for every row not transformed.

    Rows outside the GCJ-02 box or with invalid coordinates are NaN, never passed through.
    Scalar input gives floats; array-like input gives 1-d float64 arrays. Use
    :func:`transform` to learn why a row was not transformed.
    """
    result = transform("gcj02", lat, lon)
    return _shape_like(lat, lon, result)


def gcj02_to_wgs84(lat: Any, lon: Any) -> tuple[Any, Any]:
    """GCJ-02 → WGS-84 as ``(lat, lon)``, exact to 1e-9 deg; NaN for rows not transformed.

    The answer's forward transform reproduces the input to better than 1e-9 degrees. Scalar
    input gives floats; array-like input gives 1-d float64 arrays.
    """
    result = transform_back("gcj02", lat, lon)
    return _shape_like(lat, lon, result)


def _shape_like(lat: Any, lon: Any, result: DatumResult) -> tuple[Any, Any]:
    if np.ndim(lat) == 0 and np.ndim(lon) == 0 and len(result) == 1:
        return float(result.lat[0]), float(result.lon[0])
    return result.lat, result.lon


def _apply(
    entry: DatumTransform, direction: RowTransform, lat: Any, lon: Any, datum: Datum
) -> DatumResult:
    lat_a, lon_a, error = check_coordinates(lat, lon)
    n = lat_a.size
    out_lat = np.full(n, np.nan)
    out_lon = np.full(n, np.nan)
    valid = np.flatnonzero(error == ErrorCode.OK)
    if valid.size:
        t_lat, t_lon, t_err = direction(lat_a[valid], lon_a[valid])
        t_lat = np.asarray(t_lat, dtype=np.float64)
        t_lon = np.asarray(t_lon, dtype=np.float64)
        t_err = np.asarray(t_err)
        if not (t_lat.shape == t_lon.shape == t_err.shape == (valid.size,)):
            raise DatumError(
                f"datum transform {entry.name!r} returned shapes "
                f"{t_lat.shape}, {t_lon.shape}, {t_err.shape} for {valid.size} rows"
            )
        t_err = t_err.astype(np.uint16)
        # A plug-in that returns a non-finite position without saying why fails closed.
        silent = (t_err == ErrorCode.OK) & ~(np.isfinite(t_lat) & np.isfinite(t_lon))
        t_err[silent] = ErrorCode.NON_FINITE_COORDINATE
        good = t_err == ErrorCode.OK
        error[valid] = t_err
        out_lat[valid[good]] = t_lat[good]
        out_lon[valid[good]] = t_lon[good]
    ok = error == ErrorCode.OK
    return DatumResult(lat=out_lat, lon=out_lon, ok=ok, error=error, datum=datum)


# --- the built-in GCJ-02 formula -------------------------------------------------------------


def _in_box(lat: FloatArray, lon: FloatArray, margin: float = 0.0) -> BoolArray:
    lat_min, lat_max, lon_min, lon_max = GCJ02_BOX
    return (
        (lon >= lon_min - margin)
        & (lon <= lon_max + margin)
        & (lat >= lat_min - margin)
        & (lat <= lat_max + margin)
    )


def _gcj02_offset(lat: FloatArray, lon: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The GCJ-02 offset ``(dlat, dlon)`` in degrees at WGS-84 ``lat``/``lon`` (no box test)."""
    x = lon - 105.0
    y = lat - 35.0
    pi = math.pi
    common = (20.0 * np.sin(6.0 * x * pi) + 20.0 * np.sin(2.0 * x * pi)) * 2.0 / 3.0
    sqrt_abs_x = np.sqrt(np.abs(x))
    t_lat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * sqrt_abs_x
    t_lat += common
    t_lat += (20.0 * np.sin(y * pi) + 40.0 * np.sin(y / 3.0 * pi)) * 2.0 / 3.0
    t_lat += (160.0 * np.sin(y / 12.0 * pi) + 320.0 * np.sin(y * pi / 30.0)) * 2.0 / 3.0
    t_lon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * sqrt_abs_x
    t_lon += common
    t_lon += (20.0 * np.sin(x * pi) + 40.0 * np.sin(x / 3.0 * pi)) * 2.0 / 3.0
    t_lon += (150.0 * np.sin(x / 12.0 * pi) + 300.0 * np.sin(x / 30.0 * pi)) * 2.0 / 3.0
    rad_lat = lat / 180.0 * pi
    magic = 1.0 - GCJ02_EE * np.sin(rad_lat) ** 2
    sqrt_magic = np.sqrt(magic)
    d_lat = (t_lat * 180.0) / ((GCJ02_A * (1.0 - GCJ02_EE)) / (magic * sqrt_magic) * pi)
    d_lon = (t_lon * 180.0) / (GCJ02_A / sqrt_magic * np.cos(rad_lat) * pi)
    return d_lat, d_lon


def _gcj02_forward(lat: FloatArray, lon: FloatArray) -> tuple[FloatArray, FloatArray, ErrorArray]:
    inside = _in_box(lat, lon)
    error = np.where(inside, ErrorCode.OK, ErrorCode.OUTSIDE_DATUM_AREA).astype(np.uint16)
    d_lat, d_lon = _gcj02_offset(lat[inside], lon[inside])
    out_lat = np.full(lat.size, np.nan)
    out_lon = np.full(lat.size, np.nan)
    out_lat[inside] = lat[inside] + d_lat
    out_lon[inside] = lon[inside] + d_lon
    return out_lat, out_lon, error


def _gcj02_inverse(lat: FloatArray, lon: FloatArray) -> tuple[FloatArray, FloatArray, ErrorArray]:
    """Solve ``forward(w) == g`` by fixed-point iteration, each row until it converges.

    A row stops iterating as soon as it has converged, so its answer does not depend on the
    other rows of the batch.
    """
    n = lat.size
    error = np.full(n, ErrorCode.OUTSIDE_DATUM_AREA, dtype=np.uint16)
    w_lat = lat.copy()
    w_lon = lon.copy()
    active = np.flatnonzero(_in_box(lat, lon, _INVERSE_MARGIN_DEG))
    converged = np.zeros(n, dtype=bool)
    for _ in range(_INVERSE_MAX_ITER):
        if active.size == 0:
            break
        a_lat = w_lat[active]
        a_lon = w_lon[active]
        d_lat, d_lon = _gcj02_offset(a_lat, a_lon)
        r_lat = a_lat + d_lat - lat[active]
        r_lon = a_lon + d_lon - lon[active]
        done = (np.abs(r_lat) <= _INVERSE_TOL_DEG) & (np.abs(r_lon) <= _INVERSE_TOL_DEG)
        converged[active[done]] = True
        step = ~done
        w_lat[active[step]] = a_lat[step] - r_lat[step]
        w_lon[active[step]] = a_lon[step] - r_lon[step]
        active = active[step]
    # A GCJ-02 position is in the image of the forward transform only if its preimage is in
    # the box: anything else was never produced by the forward transform. An answer within
    # rounding distance of the box edge is clamped onto it, so a point on the edge survives
    # the round trip and the clamped answer still reproduces the input to 1e-9 deg.
    good = converged & _in_box(w_lat, w_lon, _INVERSE_EDGE_DEG)
    lat_min, lat_max, lon_min, lon_max = GCJ02_BOX
    w_lat = np.clip(w_lat, lat_min, lat_max)
    w_lon = np.clip(w_lon, lon_min, lon_max)
    error[good] = ErrorCode.OK
    out_lat = np.where(good, w_lat, np.nan)
    out_lon = np.where(good, w_lon, np.nan)
    return out_lat, out_lon, error


register_transform("gcj02", _gcj02_forward, _gcj02_inverse, datum=Datum.GCJ02)
