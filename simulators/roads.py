"""A road-like network around Shanghai for the fleet simulator to drive on.

Geometry lives in a local metric frame: ``x = R·cos(lat0)·(lon − lon0)``,
``y = R·(lat − lat0)`` (radians, spherical Earth radius ``R``) around the network's centre.
Road segments are straight in that frame. The frame is not conformal away from ``lat0``
(east–west distances are off by ``cos(lat)/cos(lat0)``, 0.2 % at 20 km), so the simulator
converts every step with the true local scale: distances and headings it reports are
ground distances and true bearings at the vehicle's latitude.

The default network is a ring-and-radial graph (like Shanghai's Inner Ring, Middle Ring and
Outer Ring with radial expressways): nodes where radials meet rings, two-way segments
between them, and one node in the centre where the radials meet.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import shapely

__all__ = ["EARTH_RADIUS_M", "SHANGHAI", "LocalFrame", "RoadNetwork"]

EARTH_RADIUS_M = 6_371_008.8
SHANGHAI = (31.23, 121.47)
"""Centre of the default network (People's Square), WGS-84 lat, lon."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LocalFrame:
    """The local metric frame around ``(lat0, lon0)``; every method works on arrays."""

    lat0: float
    lon0: float

    @property
    def _cos0(self) -> float:
        return math.cos(math.radians(self.lat0))

    def to_xy(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Frame coordinates (metres) of WGS-84 positions."""
        lat_a = np.asarray(lat, dtype=np.float64)
        lon_a = np.asarray(lon, dtype=np.float64)
        x = EARTH_RADIUS_M * self._cos0 * np.radians(lon_a - self.lon0)
        y = EARTH_RADIUS_M * np.radians(lat_a - self.lat0)
        return x, y

    def to_latlon(self, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """WGS-84 positions of frame coordinates; exact inverse of :meth:`to_xy`."""
        lat = self.lat0 + np.degrees(np.asarray(y, dtype=np.float64) / EARTH_RADIUS_M)
        lon = self.lon0 + np.degrees(
            np.asarray(x, dtype=np.float64) / (EARTH_RADIUS_M * self._cos0)
        )
        return lat, lon

    def east_scale(self, lat: npt.ArrayLike) -> FloatArray:
        """Ground metres per frame metre in the east–west direction at ``lat``."""
        return np.cos(np.radians(np.asarray(lat, dtype=np.float64))) / self._cos0


@dataclass
class RoadNetwork:
    """Nodes and directed segments (every road is two-way: both directions are segments).

    ``node_x``/``node_y`` are frame metres, ``node_alt`` metres above the ellipsoid.
    Segment ``e`` runs from ``edge_from[e]`` to ``edge_to[e]`` with length ``edge_len[e]``
    (frame metres), unit direction ``edge_ux/edge_uy`` and speed limit ``edge_limit[e]`` (m/s).
    """

    frame: LocalFrame
    node_x: FloatArray
    node_y: FloatArray
    node_alt: FloatArray
    edge_from: IntArray
    edge_to: IntArray
    edge_limit: FloatArray
    edge_len: FloatArray = field(init=False)
    edge_ux: FloatArray = field(init=False)
    edge_uy: FloatArray = field(init=False)
    out_edges: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        dx = self.node_x[self.edge_to] - self.node_x[self.edge_from]
        dy = self.node_y[self.edge_to] - self.node_y[self.edge_from]
        self.edge_len = np.hypot(dx, dy)
        if np.any(self.edge_len <= 1.0):
            raise ValueError("road segments must be longer than 1 m")
        self.edge_ux = dx / self.edge_len
        self.edge_uy = dy / self.edge_len
        self.out_edges = [[] for _ in range(len(self.node_x))]
        for e, u in enumerate(self.edge_from.tolist()):
            self.out_edges[u].append(e)

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return len(self.node_x)

    @property
    def n_edges(self) -> int:
        """Number of directed segments."""
        return len(self.edge_from)

    @classmethod
    def ring_radial(
        cls,
        center: tuple[float, float] = SHANGHAI,
        rings_km: Sequence[float] = (2.5, 6.0, 10.0, 15.0, 22.0),
        radials: int = 12,
        seed: int = 0,
    ) -> RoadNetwork:
        """A ring-and-radial network: ``radials`` roads from the centre, crossing each ring.

        Rings are faster than radials (80 km/h on the outer rings, 60 on the inner); nodes
        are jittered slightly (deterministically from ``seed``) so the city is not a perfect
        spider web. Altitudes are a few metres, elevated on ring roads.
        """
        if radials < 3 or not rings_km or any(r <= 0 for r in rings_km):
            raise ValueError("need at least 3 radials and positive ring radii")
        rings = sorted(rings_km)
        rng = np.random.default_rng(seed)
        frame = LocalFrame(*center)
        xs, ys, alts = [0.0], [0.0], [4.0]
        index: dict[tuple[int, int], int] = {}
        for i, r_km in enumerate(rings):
            for j in range(radials):
                angle = 2 * math.pi * (j + rng.uniform(-0.08, 0.08)) / radials
                r = r_km * 1000.0 * (1 + rng.uniform(-0.04, 0.04))
                index[(i, j)] = len(xs)
                xs.append(r * math.sin(angle))
                ys.append(r * math.cos(angle))
                alts.append(float(rng.uniform(12.0, 22.0)))
        roads: list[tuple[int, int, float]] = []
        for j in range(radials):  # radials: centre -> ring 0 -> ring 1 ...
            prev = 0
            for i in range(len(rings)):
                roads.append((prev, index[(i, j)], 50 / 3.6 if i < 2 else 70 / 3.6))
                prev = index[(i, j)]
        for i in range(len(rings)):  # rings
            limit = (60 if i < 2 else 80) / 3.6
            for j in range(radials):
                roads.append((index[(i, j)], index[(i, (j + 1) % radials)], limit))
        return cls.from_roads(frame, xs, ys, alts, roads)

    @classmethod
    def from_roads(
        cls,
        frame: LocalFrame,
        xs: Sequence[float],
        ys: Sequence[float],
        alts: Sequence[float],
        roads: Iterable[tuple[int, int, float]],
    ) -> RoadNetwork:
        """A network from node coordinates and two-way roads ``(a, b, limit m/s)``."""
        frm: list[int] = []
        to: list[int] = []
        lim: list[float] = []
        for a, b, limit in roads:
            frm += [a, b]
            to += [b, a]
            lim += [limit, limit]
        return cls(
            frame=frame,
            node_x=np.asarray(xs, dtype=np.float64),
            node_y=np.asarray(ys, dtype=np.float64),
            node_alt=np.asarray(alts, dtype=np.float64),
            edge_from=np.asarray(frm, dtype=np.int64),
            edge_to=np.asarray(to, dtype=np.int64),
            edge_limit=np.asarray(lim, dtype=np.float64),
        )

    def segments(self) -> npt.NDArray[np.object_]:
        """Every segment as a shapely ``LineString`` in frame metres (index = segment id)."""
        start = np.column_stack([self.node_x[self.edge_from], self.node_y[self.edge_from]])
        end = np.column_stack([self.node_x[self.edge_to], self.node_y[self.edge_to]])
        lines: npt.NDArray[np.object_] = shapely.linestrings(np.stack([start, end], axis=1))
        return lines

    def with_spurs(
        self, points: Sequence[tuple[float, float]], links: int = 2, limit: float = 40 / 3.6
    ) -> tuple[RoadNetwork, list[int]]:
        """A copy with one new node per ``(x, y)`` point, linked to its ``links`` nearest
        existing nodes by two-way roads; returns the copy and the new node ids."""
        xs = self.node_x.tolist()
        ys = self.node_y.tolist()
        alts = self.node_alt.tolist()
        roads = [
            (int(a), int(b), float(lim))
            for a, b, lim in zip(self.edge_from, self.edge_to, self.edge_limit, strict=True)
            if a < b
        ]
        base_x, base_y = self.node_x.copy(), self.node_y.copy()
        new_ids: list[int] = []
        for px, py in points:
            nearest = np.argsort(np.hypot(base_x - px, base_y - py))[:links]
            node = len(xs)
            xs.append(px)
            ys.append(py)
            alts.append(5.0)
            roads += [(int(n), node, limit) for n in nearest]
            new_ids.append(node)
        return RoadNetwork.from_roads(self.frame, xs, ys, alts, roads), new_ids

    def reverse_of(self, edge: int) -> int:
        """The segment running the other way along the same road."""
        u, v = int(self.edge_from[edge]), int(self.edge_to[edge])
        for e in self.out_edges[v]:
            if int(self.edge_to[e]) == u:
                return e
        raise ValueError(f"segment {edge} has no reverse")

    def turn_angle(self, edge_in: int, edge_out: int) -> float:
        """Absolute change of direction (degrees, 0–180) from ``edge_in`` to ``edge_out``."""
        dot = self.edge_ux[edge_in] * self.edge_ux[edge_out] + (
            self.edge_uy[edge_in] * self.edge_uy[edge_out]
        )
        return math.degrees(math.acos(max(-1.0, min(1.0, float(dot)))))

    def shortest_path(
        self,
        start_edge: int,
        goal: int,
        allowed: npt.NDArray[np.bool_] | None = None,
    ) -> list[int] | None:
        """Segments (in order) from the end of ``start_edge`` to node ``goal``, by length,
        using only ``allowed`` segments and never U-turning at a node unless it is a dead
        end. ``None`` when ``goal`` cannot be reached; ``[]`` when already there."""
        start = int(self.edge_to[start_edge])
        if start == goal:
            return []
        # Dijkstra over segments (state = segment arrived by) to forbid U-turns.
        best: dict[int, float] = {start_edge: 0.0}
        prev: dict[int, int] = {}
        queue: list[tuple[float, int]] = [(0.0, start_edge)]
        while queue:
            dist, e = heapq.heappop(queue)
            if dist > best.get(e, math.inf):
                continue
            node = int(self.edge_to[e])
            if node == goal and e != start_edge:
                path = [e]
                while path[-1] in prev:
                    path.append(prev[path[-1]])
                path.pop()  # start_edge itself
                return path[::-1]
            for nxt in self._next_edges(e, allowed):
                nd = dist + float(self.edge_len[nxt])
                if nd < best.get(nxt, math.inf):
                    best[nxt] = nd
                    prev[nxt] = e
                    heapq.heappush(queue, (nd, nxt))
        return None

    def _next_edges(self, e: int, allowed: npt.NDArray[np.bool_] | None) -> list[int]:
        back = int(self.edge_from[e])
        options = self.out_edges[int(self.edge_to[e])]
        if allowed is not None:
            options = [o for o in options if allowed[o]]
        forward = [o for o in options if int(self.edge_to[o]) != back]
        return forward or options

    def reachable_nodes(self, start_edge: int, allowed: npt.NDArray[np.bool_] | None) -> list[int]:
        """Nodes reachable from the end of ``start_edge`` over ``allowed`` segments."""
        seen_edges = {start_edge}
        stack = [start_edge]
        nodes = {int(self.edge_to[start_edge])}
        while stack:
            e = stack.pop()
            for nxt in self._next_edges(e, allowed):
                if nxt not in seen_edges:
                    seen_edges.add(nxt)
                    nodes.add(int(self.edge_to[nxt]))
                    stack.append(nxt)
        return sorted(nodes)
