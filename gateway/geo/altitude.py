"""Altitude coarsening: drop altitude, or round it to a policy-given step.

Rounding is to the *nearest* multiple of the step, halves going up
(``floor(alt / step + 0.5) * step``): each reported value is the centre of its bucket
``[v - step/2, v + step/2)``, like the grid reports the centre of a cell. The error is at most
``step / 2`` and has no systematic bias, whereas flooring would shift every altitude down by
``step / 2`` on average (and with it any gradient or height-above-ground derived from it).
The buckets are fixed and half-open, so the same altitude always lands in the same bucket.
Both choices reveal exactly one bucket per value; neither is finer than the step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gateway.errors import GeoError
from gateway.geo.coords import as_float_array
from gateway.model import FloatArray

__all__ = ["coarsen_altitude"]


def coarsen_altitude(alt: Any, step_m: float | None) -> FloatArray:
    """Altitudes rounded to the nearest multiple of ``step_m``; NaN where dropped or bad.

    ``step_m`` ``None`` or ``0`` drops altitude: every row becomes NaN. Missing, non-numeric,
    NaN and infinite values become NaN and never raise. Returns a new 1-d float64 array (a
    scalar is treated as one row). Raises :class:`~gateway.errors.GeoError` for a negative
    or non-finite step.
    """
    values, _ = as_float_array(alt)
    if step_m is None or step_m == 0:
        return np.full(values.size, np.nan)
    step = float(step_m)
    if not (math.isfinite(step) and step > 0):
        raise GeoError(f"altitude step must be a positive number of metres or None, got {step_m}")
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.floor(values / step + 0.5) * step
    out[~np.isfinite(out)] = np.nan
    return out + 0.0  # turn -0.0 into 0.0
