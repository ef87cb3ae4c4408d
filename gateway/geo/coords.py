"""Validation of coordinate columns, shared by every geographic function.

Bad coordinates never raise: each row gets an :class:`~gateway.model.ErrorCode`, and every
function of ``gateway.geo`` treats a row whose code is not ``OK`` as unshareable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.model import ErrorCode, FloatArray


def as_float_array(values: Any) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Coerce scalars, sequences or arrays to a 1-d float64 array.

    Entries that are not numbers (``None``, strings, booleans, objects) become NaN and are
    flagged in the second array, so callers can tell "missing/non-numeric" from "NaN was
    sent". Numeric numpy arrays take a fast path; Python sequences are checked per element,
    because numpy would otherwise turn ``["31.2", 31.23]`` into strings or ``True`` into 1.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        return values.astype(np.float64, copy=False).reshape(-1), np.zeros(values.size, bool)
    if isinstance(values, (int, float, np.integer, np.floating)) and not isinstance(
        values, (bool, np.bool_)
    ):
        return np.array([float(values)]), np.zeros(1, dtype=bool)
    flat = np.asarray(values, dtype=object).reshape(-1)
    out = np.full(flat.size, np.nan)
    bad = np.zeros(flat.size, dtype=bool)
    for i, v in enumerate(flat):
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
            v, (bool, np.bool_)
        ):
            out[i] = float(v)
        else:
            bad[i] = True
    return out, bad


def check_coordinates(lat: Any, lon: Any) -> tuple[FloatArray, FloatArray, npt.NDArray[np.uint16]]:
    """Return ``(lat, lon, error)`` as float64 arrays and a per-row error code.

    Codes: ``MISSING_COORDINATE`` / ``NON_NUMERIC_COORDINATE`` for absent or non-numbers
    (both become NaN), ``NON_FINITE_COORDINATE`` for NaN/inf, ``COORDINATE_OUT_OF_RANGE``
    for |lat| > 90 or |lon| > 180. Rows with a code other than ``OK`` hold NaN.
    """
    lat_a, lat_bad = as_float_array(lat)
    lon_a, lon_bad = as_float_array(lon)
    if lat_a.shape != lon_a.shape:
        raise ValueError(f"lat has {lat_a.size} rows, lon has {lon_a.size}")
    error = np.zeros(lat_a.size, dtype=np.uint16)
    missing = _missing(lat) | _missing(lon) if lat_bad.any() or lon_bad.any() else None
    non_numeric = lat_bad | lon_bad
    if missing is not None:
        error[non_numeric & missing] = ErrorCode.MISSING_COORDINATE
        error[non_numeric & ~missing] = ErrorCode.NON_NUMERIC_COORDINATE
    with np.errstate(invalid="ignore"):
        non_finite = ~non_numeric & ~(np.isfinite(lat_a) & np.isfinite(lon_a))
        out_of_range = ~non_numeric & ~non_finite & ((np.abs(lat_a) > 90) | (np.abs(lon_a) > 180))
    error[non_finite] = ErrorCode.NON_FINITE_COORDINATE
    error[out_of_range] = ErrorCode.COORDINATE_OUT_OF_RANGE
    bad = error != ErrorCode.OK
    if bad.any():
        lat_a = np.where(bad, np.nan, lat_a)
        lon_a = np.where(bad, np.nan, lon_a)
    return lat_a, lon_a, error


def _missing(values: Any) -> npt.NDArray[np.bool_]:
    arr = np.asarray(values, dtype=object).reshape(-1)
    return np.fromiter((v is None for v in arr), dtype=bool, count=arr.size)
