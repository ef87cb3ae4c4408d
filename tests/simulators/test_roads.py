"""The road network: local frame, ring-and-radial graph, routes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.roads import SHANGHAI, LocalFrame, RoadNetwork

R = 6_371_008.8


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * R * math.asin(math.sqrt(a))


@settings(max_examples=100)
@given(
    st.floats(-30_000, 30_000),
    st.floats(-30_000, 30_000),
    st.floats(0, 2 * math.pi),
)
def test_frame_round_trip_and_true_ground_scale(x: float, y: float, angle: float) -> None:
    frame = LocalFrame(*SHANGHAI)
    lat, lon = frame.to_latlon(x, y)
    x2, y2 = frame.to_xy(lat, lon)
    assert float(x2) == pytest.approx(x, abs=1e-6)
    assert float(y2) == pytest.approx(y, abs=1e-6)
    # a 10 m step in any direction, scaled by east_scale, is 10 m on the ground
    ux, uy = math.sin(angle), math.cos(angle)
    k = float(frame.east_scale(lat))
    scale = math.hypot(ux * k, uy)
    lat2, lon2 = frame.to_latlon(x + ux * 10 / scale, y + uy * 10 / scale)
    assert haversine_m(float(lat), float(lon), float(lat2), float(lon2)) == pytest.approx(
        10.0, abs=2e-3
    )


def test_ring_radial_is_connected_and_two_way() -> None:
    net = RoadNetwork.ring_radial()
    assert net.n_nodes == 1 + 5 * 12
    assert net.n_edges == 2 * (12 * 5 + 5 * 12)
    for e in range(net.n_edges):
        assert net.edge_from[net.reverse_of(e)] == net.edge_to[e]
    assert net.reachable_nodes(0, None) == list(range(net.n_nodes))
    radius_km = np.hypot(net.node_x, net.node_y).max() / 1000
    assert 20 < radius_km < 24
    assert set(np.round(net.edge_limit * 3.6).tolist()) == {50, 60, 70, 80}
    again = RoadNetwork.ring_radial()
    assert np.array_equal(again.node_x, net.node_x)


@settings(max_examples=60)
@given(st.integers(0, 239), st.integers(0, 60))
def test_shortest_path_is_a_connected_route_without_u_turns(start: int, goal: int) -> None:
    net = RoadNetwork.ring_radial()
    path = net.shortest_path(start, goal)
    assert path is not None
    if net.edge_to[start] == goal:
        assert path == []
        return
    assert net.edge_to[path[-1]] == goal
    previous = start
    for e in path:
        assert net.edge_from[e] == net.edge_to[previous]
        assert net.edge_to[e] != net.edge_from[previous]  # no U-turn
        previous = e


def test_allowed_segments_restrict_routes() -> None:
    net = RoadNetwork.ring_radial(rings_km=(2.0, 5.0), radials=4)
    centre_spokes = [e for e in range(net.n_edges) if 0 in (net.edge_from[e], net.edge_to[e])]
    allowed = np.ones(net.n_edges, dtype=bool)
    allowed[centre_spokes] = False
    start = next(e for e in range(net.n_edges) if allowed[e])
    assert 0 not in net.reachable_nodes(start, allowed)
    assert net.shortest_path(start, 0, allowed) is None
    path = net.shortest_path(start, int(net.edge_from[start]), allowed)
    assert path is not None and all(allowed[e] for e in path)


def test_spurs_link_new_nodes_to_their_nearest_nodes() -> None:
    net = RoadNetwork.ring_radial(rings_km=(2.0, 5.0), radials=4)
    bigger, (node,) = net.with_spurs([(1000.0, 1000.0)])
    assert node == net.n_nodes
    assert bigger.n_edges == net.n_edges + 4
    assert (bigger.node_x[node], bigger.node_y[node]) == (1000.0, 1000.0)
    neighbours = {int(bigger.edge_to[e]) for e in bigger.out_edges[node]}
    distances = np.hypot(net.node_x - 1000, net.node_y - 1000)
    assert neighbours == set(np.argsort(distances)[:2].tolist())


def test_bad_networks() -> None:
    with pytest.raises(ValueError, match="3 radials"):
        RoadNetwork.ring_radial(radials=2)
    with pytest.raises(ValueError, match="longer than 1 m"):
        RoadNetwork.from_roads(LocalFrame(*SHANGHAI), [0, 0.5], [0, 0], [0, 0], [(0, 1, 10.0)])
