"""Geo engine throughput: datum transform + 50 m grid + cell-level zone mask.

Runs the columnar engine on 100,000 positions against 100, 1,000 and 10,000 random zones,
and a simple per-point reference (scalar maths, one shapely polygon per cell, a loop over
the zones) on a sample, in the same run. Prints a Markdown table.

    python bench/bench_geo.py [--points 100000] [--sample 300]
"""

from __future__ import annotations

import argparse
import functools
import math
import time

import numpy as np
import shapely

from bench.common import best_of, machine, random_points, random_zones_geojson
from gateway.geo.datum import transform
from gateway.geo.grid import cell_corners, snap
from gateway.geo.zones import ZoneSet

A = 6378245.0
EE = 0.00669342162296594323


def engine(zones: ZoneSet, lat: np.ndarray, lon: np.ndarray) -> int:
    grid = snap(lat, lon, 50.0)
    mask = zones.mask_cells(grid)
    out = transform("gcj02", grid.lat, grid.lon)
    return int((~mask.masked & out.ok).sum())


def _gcj(lat: float, lon: float) -> tuple[float, float]:
    x, y = lon - 105.0, lat - 35.0
    dlat = (
        -100.0
        + 2.0 * x
        + 3.0 * y
        + 0.2 * y * y
        + 0.1 * x * y
        + 0.2 * math.sqrt(abs(x))
        + (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2 / 3
        + (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2 / 3
        + (160.0 * math.sin(y / 12.0 * math.pi) + 320 * math.sin(y * math.pi / 30.0)) * 2 / 3
    )
    dlon = (
        300.0
        + x
        + 2.0 * y
        + 0.1 * x * x
        + 0.1 * x * y
        + 0.1 * math.sqrt(abs(x))
        + (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2 / 3
        + (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2 / 3
        + (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2 / 3
    )
    rad = lat / 180.0 * math.pi
    magic = 1 - EE * math.sin(rad) ** 2
    sq = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((A * (1 - EE)) / (magic * sq) * math.pi)
    dlon = (dlon * 180.0) / (A / sq * math.cos(rad) * math.pi)
    return lat + dlat, lon + dlon


def reference(zones: ZoneSet, lat: np.ndarray, lon: np.ndarray) -> int:
    """One point at a time: snap, build the cell polygon, loop over every zone, transform."""
    shared = 0
    geoms = [z.buffered for z in zones]
    for la, lo in zip(lat.tolist(), lon.tolist(), strict=True):
        g = snap(la, lo, 50.0)
        ys, xs = cell_corners(g.band, g.ix, g.iy, 50.0)
        cell = shapely.Polygon(list(zip(xs[0].tolist(), ys[0].tolist(), strict=True)))
        hit = any(geom.intersects(cell) for geom in geoms)
        _gcj(float(g.lat[0]), float(g.lon[0]))
        shared += not hit
    return shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=300)
    args = parser.parse_args()
    lat, lon = random_points(args.points)
    print(f"machine: {machine()}")
    print(f"points: {args.points:,}; reference sample: {args.sample}; one thread\n")
    print("| zones | build s | first call s | engine points/s | reference points/s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n_zones in (100, 1_000, 10_000):
        t0 = time.perf_counter()
        zones = ZoneSet.from_geojson(random_zones_geojson(n_zones), "bench")
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine(zones, lat, lon)  # first call projects the zones into the band (lazy)
        first = time.perf_counter() - t0
        warm = best_of(3, functools.partial(engine, zones, lat, lon))
        s_lat, s_lon = lat[: args.sample], lon[: args.sample]
        assert engine(zones, s_lat, s_lon) == reference(zones, s_lat, s_lon)
        ref = best_of(1, functools.partial(reference, zones, s_lat, s_lon))
        eng_rate = args.points / warm
        ref_rate = args.sample / ref
        print(
            f"| {n_zones:,} | {build:.2f} | {first:.2f} | {eng_rate:,.0f} | {ref_rate:,.0f} "
            f"| {eng_rate / ref_rate:,.0f}x |"
        )


if __name__ == "__main__":
    main()
