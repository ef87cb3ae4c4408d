"""Shared helpers for the benchmarks: the machine description and synthetic inputs."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SHANGHAI_BOX = (30.85, 31.65, 121.05, 121.95)  # lat_min, lat_max, lon_min, lon_max


def machine() -> str:
    """One line describing where the figures were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def best_of(repeats: int, fn: Callable[[], Any]) -> float:
    """Fastest wall time of ``repeats`` calls, in seconds."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def random_points(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions spread over the Shanghai box (WGS-84)."""
    rng = np.random.default_rng(seed)
    lat_min, lat_max, lon_min, lon_max = SHANGHAI_BOX
    return rng.uniform(lat_min, lat_max, n), rng.uniform(lon_min, lon_max, n)


def random_zones_geojson(
    n: int,
    seed: int = 2,
    vertices: int = 24,
    box: tuple[float, float, float, float] = SHANGHAI_BOX,
) -> dict[str, Any]:
    """``n`` random star-shaped polygons of ``vertices`` vertices (radius 100–800 m) in
    ``box`` (lat_min, lat_max, lon_min, lon_max; default Shanghai) as a zone
    FeatureCollection; a third sensitive, some with buffers."""
    rng = np.random.default_rng(seed)
    lat_min, lat_max, lon_min, lon_max = box
    features = []
    angles = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    for i in range(n):
        clat = rng.uniform(lat_min, lat_max)
        clon = rng.uniform(lon_min, lon_max)
        radius = rng.uniform(100, 800) * rng.uniform(0.6, 1.0, vertices)
        dlat = radius * np.sin(angles) / 111_320
        dlon = radius * np.cos(angles) / (111_320 * math.cos(math.radians(clat)))
        ring = [[float(clon + x), float(clat + y)] for x, y in zip(dlon, dlat, strict=True)]
        ring.append(ring[0])
        features.append(
            {
                "type": "Feature",
                "properties": {
                    "id": f"z{i}",
                    "level": "sensitive" if i % 3 == 0 else "prohibited",
                    "buffer_m": float(rng.choice([0.0, 0.0, 50.0, 200.0])),
                },
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    return {"type": "FeatureCollection", "features": features}
