"""The fleet simulator: vehicles driving a road network around Shanghai, as MQTT messages.

Generation is pure and deterministic: ``Fleet(config, seed).messages(duration, rate)``
yields :class:`Message` tuples ``(topic, payload, kind, at, samples)`` in the order they
are to be published, with no broker involved. The same config and seed give the same
bytes, every time; publishing (``simulators.publish``) is a separate step.

Motion
    Each vehicle follows segments of a :class:`~simulators.roads.RoadNetwork`, choosing a
    route to a random destination whenever its route runs out (no U-turns except at dead
    ends). Per step it aims for a speed (the segment's limit times a per-driver factor, less
    before a turn: the sharper the turn the slower, approached at a comfortable 1.5 m/s²),
    with acceleration limited to [-3, 2] m/s² and its change limited to 2.5 m/s³, so speed,
    acceleration and position are consistent from sample to sample. Heading is the true
    bearing of travel. Steps are at most 1 s (several per sample at low rates).

    The whole fleet advances as numpy columns; only vehicles reaching a node (a few per
    step) are handled one by one.

Trips
    Vehicles start mid-trip. At the end of a trip a vehicle brakes to a stop, sends one
    last sample with ``Vehicle.LowVoltageSystemState = "OFF"`` (every other sample says
    ``"ON"``), stays silent for the pause, then starts a new trip from where it parked.

Traffic mix (see :class:`~simulators.scenario.Scenario`)
    A message is malformed, spoofed (payload VIN ≠ topic VIN) or out of order (held back
    until 1–3 newer valid messages of the same vehicle went out), or valid; any message may be
    sent again later as a duplicate (same bytes, same ``msg_id``s). Batch payloads carry
    several consecutive samples of one vehicle. Motion uses its own random stream, so the
    traffic mix never changes the trajectories.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import shapely

from gateway import vss
from gateway.errors import ConfigError, Problem
from gateway.geo.zones import load_zones
from gateway.resources import default_policy_dir
from simulators import payload
from simulators.roads import LocalFrame, RoadNetwork
from simulators.scenario import Scenario
from simulators.vin import random_vins

__all__ = [
    "DEFAULT_START",
    "Fleet",
    "FleetConfig",
    "GenerationStats",
    "Kind",
    "Message",
    "Vehicle",
]

DEFAULT_START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

ACCEL_MAX = 2.0  # m/s², strongest acceleration
BRAKE_MAX = 3.0  # m/s², strongest braking
JERK_MAX = 2.5  # m/s³, largest change of acceleration per second
BRAKE_COMFORT = 1.5  # m/s², braking planned before turns and at trip end
SPEED_TAU = 2.0  # s, how quickly a driver closes the gap to the speed it aims for
MAX_STEP = 1.0  # s, longest physics step
BATTERY_PCT_PER_M = 0.3 / 1000  # state of charge used per metre (≈ 0.18 kWh/km of 60 kWh)


class Kind(StrEnum):
    """What a message is, from the gateway's point of view."""

    VALID = "valid"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    SPOOFED = "spoofed"
    OUT_OF_ORDER = "out-of-order"


class Message(NamedTuple):
    """One MQTT publish: ``at`` is when it is due, in seconds after the start; ``samples``
    is how many usable samples the payload carries."""

    topic: str
    payload: bytes
    kind: Kind
    at: float
    samples: int


@dataclass(frozen=True)
class Vehicle:
    """A simulated vehicle: its VIN, whether it is recorded as consenting, and whether its
    route crosses restricted zones."""

    vin: str
    consent: bool
    crosses_zones: bool


@dataclass(frozen=True)
class FleetConfig:
    """How many vehicles, in which scenario, from which start time (UTC). ``source``
    names the scenario in error messages (its file name). ``first_seq`` numbers each
    vehicle's first sample (``msg_id`` ``<VIN>-<first_seq>``): a fleet continued in a later
    run starts above the numbers it used, so its records are new, not duplicates."""

    vehicles: int = 10
    scenario: Scenario = field(default_factory=Scenario)
    start: datetime = DEFAULT_START
    source: str = "<scenario>"
    first_seq: int = 0


@dataclass
class GenerationStats:
    """Counts kept while messages are generated (filled in as the iterator advances)."""

    messages: Counter[Kind] = field(default_factory=Counter)
    samples: int = 0
    trips: int = 0
    key_offs: int = 0
    batch_messages: int = 0


class _State(IntEnum):
    DRIVING = 0
    STOPPING = 1
    PARKED = 2


class Fleet:
    """A deterministic fleet: vehicles, their road network and their traffic mix.

    Raises :class:`~gateway.errors.ConfigError` when the scenario asks for zone crossings
    but there is no zone and no target to cross, and
    :class:`~gateway.errors.ZoneFileError` when a zone file does not load.
    """

    def __init__(self, config: FleetConfig | None = None, seed: int = 0) -> None:
        self.config = config or FleetConfig()
        if self.config.vehicles < 1:
            raise ValueError("a fleet needs at least one vehicle")
        if self.config.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.seed = seed
        setup, self._motion_seed, self._traffic_seed = np.random.SeedSequence(seed).spawn(3)
        rng = np.random.default_rng(setup)
        scenario = self.config.scenario
        n = self.config.vehicles
        net = scenario.network
        base = RoadNetwork.ring_radial(
            (net.center.lat, net.center.lon), tuple(net.rings_km), net.radials, seed=0
        )
        self.frame: LocalFrame = base.frame
        crossing = scenario.zone_crossing
        self.zone_paths = self._zone_paths()
        zones = load_zones(self.zone_paths) if self.zone_paths else None
        zone_geoms = [self._to_frame(z.buffered) for z in zones] if zones else []
        target_xy = [
            (float(x), float(y))
            for x, y in (self.frame.to_xy(t.lat, t.lon) for t in crossing.targets)
        ]
        points = [_inner_point(g) for g in zone_geoms] + target_xy
        self.network, target_nodes = base.with_spurs(points) if points else (base, [])
        # Where each target node's area starts (None for plain target points).
        self._target_areas: list[Any] = [*zone_geoms, *([None] * len(target_xy))]
        self._target_nodes = target_nodes
        avoid = [g.buffer(crossing.clearance_m) for g in zone_geoms]
        region = shapely.union_all(avoid) if avoid else None
        self.allowed: npt.NDArray[np.bool_] = (
            ~shapely.intersects(self.network.segments(), region)
            if region is not None
            else np.ones(self.network.n_edges, dtype=bool)
        )
        """Segments vehicles that do not cross zones may use (clear of every zone)."""
        n_cross = round(crossing.share * n)
        if n_cross and not target_nodes:
            raise ConfigError(
                Problem(
                    self.config.source,
                    None,
                    "zone_crossing.share",
                    "vehicles should cross zones, but no zone file was found "
                    f"({', '.join(map(str, self.zone_paths)) or 'none'}) and no targets given",
                )
            )
        if not self.allowed.any() and n_cross < n:
            raise ConfigError(
                Problem(self.config.source, None, "zone_crossing", "every road crosses a zone")
            )
        vins = random_vins(rng, n)
        consenting = set(rng.permutation(n)[: round(scenario.consent.share * n)].tolist())
        crossers = set(rng.permutation(n)[:n_cross].tolist())
        self.vehicles: tuple[Vehicle, ...] = tuple(
            Vehicle(vin, i in consenting, i in crossers) for i, vin in enumerate(vins)
        )

    def _zone_paths(self) -> list[Path]:
        zones = self.config.scenario.zone_crossing.zones
        if zones is not None:
            return list(zones)
        return sorted(default_policy_dir().glob("zones*.geojson"))

    def _to_frame(self, geom: Any) -> Any:
        def move(lonlat: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            x, y = self.frame.to_xy(lonlat[:, 1], lonlat[:, 0])
            return np.column_stack([x, y])

        return shapely.transform(geom, move)

    @property
    def vins(self) -> list[str]:
        """Every VIN, in vehicle order."""
        return [v.vin for v in self.vehicles]

    @property
    def consenting_vins(self) -> list[str]:
        """VINs recorded as consenting (the scenario's ``consent.share``)."""
        return [v.vin for v in self.vehicles if v.consent]

    @property
    def non_consenting_vins(self) -> list[str]:
        """VINs without consent."""
        return [v.vin for v in self.vehicles if not v.consent]

    @property
    def zone_crossing_vins(self) -> list[str]:
        """VINs whose route crosses a restricted zone (or a target point)."""
        return [v.vin for v in self.vehicles if v.crosses_zones]

    def messages(
        self, duration: float, rate: float, stats: GenerationStats | None = None
    ) -> Iterator[Message]:
        """Every message of ``duration`` seconds of driving, sampled at ``rate`` Hz.

        Deterministic for the fleet's config and seed; each call starts afresh. Samples are
        taken at ``k / rate`` for every ``k`` with ``k / rate < duration``; messages held back
        (out-of-order, duplicates, unfinished batches) come out at the end. ``stats``, when
        given, is updated as messages are yielded.
        """
        if not (duration > 0 and math.isfinite(duration)):
            raise ValueError("duration must be a positive number of seconds")
        if not (0 < rate <= 100):
            raise ValueError("rate must be in (0, 100] Hz")
        run = _Run(self, rate, stats or GenerationStats())
        return run.messages(duration)


def _inner_point(geom: Any) -> tuple[float, float]:
    point = geom.point_on_surface()
    return float(point.x), float(point.y)


@dataclass
class _Held:
    """A message held back until ``wait`` newer valid messages of its vehicle went out."""

    message: Message
    wait: int
    overtaken: bool = False


class _Run:
    """The mutable state of one generation run (columns, one entry per vehicle)."""

    def __init__(self, fleet: Fleet, rate: float, stats: GenerationStats) -> None:
        self.fleet = fleet
        self.net = fleet.network
        self.stats = stats
        self.dt = 1.0 / rate
        self.substeps = max(1, math.ceil(self.dt / MAX_STEP - 1e-9))
        self.h = self.dt / self.substeps
        self.motion = np.random.default_rng(fleet._motion_seed)
        self.traffic = np.random.default_rng(fleet._traffic_seed)
        scenario = fleet.config.scenario
        self.scenario = scenario
        n = len(fleet.vehicles)
        self.n = n
        self.vins = fleet.vins
        self.topics = [payload.telemetry_topic(v) for v in self.vins]
        self.start_ms = round(fleet.config.start.timestamp() * 1000)
        self.phase = np.arange(n) / n * self.dt  # staggered sampling within a tick
        self.crosses = np.array([v.crosses_zones for v in fleet.vehicles], dtype=bool)
        m = self.motion
        self.factor = m.uniform(0.8, 1.05, n)
        self.edge = np.zeros(n, dtype=np.int64)
        self.s = np.zeros(n)
        self.routes: list[deque[int]] = [deque() for _ in range(n)]
        self.node_speed = np.zeros(n)  # speed aimed for at the end of the current segment
        # route planning caches: destinations and shortest paths per (segment, may cross)
        self._choices: dict[tuple[int, bool], list[int]] = {}
        self._paths: dict[tuple[int, int, bool], list[int] | None] = {}
        for i in range(n):
            self._spawn(i)
        self.v = self.factor * self.net.edge_limit[self.edge] * m.uniform(0.5, 1.0, n)
        self.a = np.zeros(n)
        self.odo = m.uniform(5_000_000.0, 80_000_000.0, n)  # metres
        self.soc = m.uniform(40.0, 95.0, n)
        self.state = np.full(n, _State.DRIVING, dtype=np.int8)
        # vehicles start somewhere in the middle of a trip
        self.trip_end = m.uniform(*scenario.trips.duration_s, n) * m.uniform(0.1, 1.0, n)
        # a crossing vehicle's first trip lasts until it has crossed
        self.trip_end[self.crosses] = np.maximum(self.trip_end[self.crosses], 180.0)
        self.resume = np.zeros(n)
        self.seq = np.full(n, fleet.config.first_seq, dtype=np.int64)
        stats.trips += n
        # traffic mix
        self.batch: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self.batch_size = np.zeros(n, dtype=np.int64)
        self.held: list[list[_Held]] = [[] for _ in range(n)]
        self.dup_due: dict[int, list[Message]] = {}

    # -- routes -----------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        net = self.net
        m = self.motion
        if self.crosses[i]:
            k = int(m.integers(len(self.fleet._target_nodes)))
            node = self.fleet._target_nodes[k]
            entries = [e for e in range(net.n_edges) if int(net.edge_to[e]) == node]
            edge = entries[int(m.integers(len(entries)))]
            enter = self._entry_distance(edge, self.fleet._target_areas[k])
            self.edge[i] = edge
            self.s[i] = max(0.0, enter - m.uniform(50.0, 300.0))
        else:
            candidates = np.flatnonzero(self.fleet.allowed)
            edge = int(candidates[int(m.integers(len(candidates)))])
            self.edge[i] = edge
            self.s[i] = m.uniform(0.0, float(net.edge_len[edge]))
        self._extend_route(i)
        self._update_node_speed(i)

    def _entry_distance(self, edge: int, area: Any) -> float:
        """Distance along ``edge`` where it first enters ``area`` (its end if no area)."""
        net = self.net
        length = float(net.edge_len[edge])
        if area is None:
            return length
        u, v = int(net.edge_from[edge]), int(net.edge_to[edge])
        line = shapely.LineString([(net.node_x[u], net.node_y[u]), (net.node_x[v], net.node_y[v])])
        inside = line.intersection(area)
        if inside.is_empty:
            return length
        coords = shapely.get_coordinates(inside)
        return float(min(line.project(shapely.Point(c)) for c in coords))

    def _extend_route(self, i: int) -> None:
        """Make sure vehicle ``i`` knows the segment after its current one."""
        route = self.routes[i]
        if route:
            return
        net = self.net
        free = bool(self.crosses[i])  # may use segments through zones
        allowed = None if free else self.fleet.allowed
        edge = int(self.edge[i])
        choices = self._choices.get((edge, free))
        if choices is None:
            reachable = net.reachable_nodes(edge, allowed)
            here = int(net.edge_to[edge])
            choices = [n for n in reachable if n != here] or reachable
            self._choices[(edge, free)] = choices
        for _ in range(4):
            goal = choices[int(self.motion.integers(len(choices)))]
            key = (edge, goal, free)
            if key not in self._paths:
                self._paths[key] = net.shortest_path(edge, goal, allowed)
            path = self._paths[key]
            if path:
                route.extend(path)
                return
        options = net._next_edges(edge, allowed)
        route.append(options[int(self.motion.integers(len(options)))])

    def _update_node_speed(self, i: int) -> None:
        nxt = self.routes[i][0]
        angle = self.net.turn_angle(int(self.edge[i]), nxt)
        turn_kmh = 10.0 + 60.0 * ((1.0 + math.cos(math.radians(angle))) / 2.0) ** 2
        self.node_speed[i] = min(
            turn_kmh / 3.6, float(self.net.edge_limit[nxt]) * float(self.factor[i])
        )

    # -- physics ----------------------------------------------------------------------

    def _step(self, t: float) -> None:
        """Advance every moving vehicle by one physics step of ``self.h`` seconds."""
        h = self.h
        net = self.net
        moving = self.state != _State.PARKED
        edge = self.edge
        remaining = np.maximum(net.edge_len[edge] - self.s - 2.0, 0.0)
        target = np.minimum(
            net.edge_limit[edge] * self.factor,
            np.sqrt(self.node_speed**2 + 2.0 * BRAKE_COMFORT * remaining),
        )
        wanted = np.clip((target - self.v) / SPEED_TAU, -BRAKE_MAX, ACCEL_MAX)
        stopping = self.state == _State.STOPPING
        wanted[stopping] = -BRAKE_COMFORT
        a = np.clip(wanted, self.a - JERK_MAX * h, self.a + JERK_MAX * h)
        a = np.clip(a, -BRAKE_MAX, ACCEL_MAX)
        v_new = np.maximum(self.v + a * h, 0.0)
        a = (v_new - self.v) / h
        ground = np.where(moving, (self.v + v_new) / 2.0 * h, 0.0)
        self.v = np.where(moving, v_new, 0.0)
        self.a = np.where(moving, a, 0.0)
        # ground metres -> frame metres along the segment, at the vehicle's latitude
        lat, _ = self._latlon()
        k = self.fleet.frame.east_scale(lat)
        scale = np.hypot(net.edge_ux[edge] * k, net.edge_uy[edge])
        self.s = self.s + ground / scale
        self.odo = self.odo + ground
        self.soc = np.maximum(self.soc - ground * BATTERY_PCT_PER_M, 5.0)
        for i in np.flatnonzero(self.s >= net.edge_len[edge]).tolist():
            self._next_segment(i)
        driving = self.state == _State.DRIVING
        self.state[driving & (t + h >= self.trip_end)] = _State.STOPPING

    def _next_segment(self, i: int) -> None:
        net = self.net
        while self.s[i] >= net.edge_len[self.edge[i]]:
            self.s[i] -= net.edge_len[self.edge[i]]
            self.edge[i] = self.routes[i].popleft()
            self._extend_route(i)
            self._update_node_speed(i)

    def _latlon(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        net = self.net
        u = net.edge_from[self.edge]
        x = net.node_x[u] + net.edge_ux[self.edge] * self.s
        y = net.node_y[u] + net.edge_uy[self.edge] * self.s
        return self.fleet.frame.to_latlon(x, y)

    # -- samples and messages -----------------------------------------------------------

    def messages(self, duration: float) -> Iterator[Message]:
        ticks = math.ceil(duration / self.dt - 1e-9)
        for k in range(ticks):
            t = k * self.dt
            yield from self._release_duplicates(k, t)
            self._resume(t)
            yield from self._sample(t)
            for j in range(self.substeps):
                self._step(t + j * self.h)
        yield from self._flush(ticks * self.dt)

    def _resume(self, t: float) -> None:
        due = np.flatnonzero((self.state == _State.PARKED) & (self.resume <= t + 1e-9))
        if due.size == 0:
            return
        trips = self.scenario.trips
        self.state[due] = _State.DRIVING
        self.trip_end[due] = t + self.motion.uniform(*trips.duration_s, due.size)
        low = due[self.soc[due] < 20.0]
        self.soc[low] = self.motion.uniform(80.0, 95.0, low.size)  # charged while parked
        self.stats.trips += int(due.size)

    def _sample(self, t: float) -> Iterator[Message]:
        active = np.flatnonzero(self.state != _State.PARKED)
        if active.size == 0:
            return
        lat, lon = self._latlon()
        net = self.net
        edge = self.edge
        k = self.fleet.frame.east_scale(lat)
        heading = np.degrees(np.arctan2(net.edge_ux[edge] * k, net.edge_uy[edge])) % 360.0
        frac = self.s / net.edge_len[edge]
        alt_from = net.node_alt[net.edge_from[edge]]
        alt = alt_from + (net.node_alt[net.edge_to[edge]] - alt_from) * frac
        key_off = (self.state == _State.STOPPING) & (self.v <= 0.0)
        times = self.start_ms + np.round((t + self.phase) * 1000.0).astype(np.int64)
        cols = zip(
            active.tolist(),
            times[active].tolist(),
            np.round(lat[active], 7).tolist(),
            np.round(lon[active], 7).tolist(),
            np.round(alt[active], 1).tolist(),
            np.round(heading[active], 1).tolist(),
            np.round(self.v[active] * 3.6, 2).tolist(),
            np.round(self.odo[active] / 1000.0, 4).tolist(),
            np.round(self.a[active], 2).tolist(),
            np.round(self.soc[active], 1).tolist(),
            key_off[active].tolist(),
            strict=True,
        )
        for i, ms, la, lo, al, hd, sp, od, ac, sc, off in cols:
            vin = self.vins[i]
            seq = int(self.seq[i])
            self.seq[i] = seq + 1
            sample = {
                vss.VIN: vin,
                vss.TIMESTAMP: payload.iso_timestamp(ms),
                vss.LATITUDE: la,
                vss.LONGITUDE: lo,
                vss.ALTITUDE: al,
                vss.HEADING: 0.0 if hd == 360.0 else hd,
                vss.SPEED: sp,
                vss.TRAVELED_DISTANCE: od,
                vss.ACCELERATION: ac,
                vss.STATE_OF_CHARGE: sc,
                vss.LOW_VOLTAGE_STATE: "OFF" if off else "ON",
                payload.MSG_ID: f"{vin}-{seq}",
            }
            self.stats.samples += 1
            at = t + float(self.phase[i])
            yield from self._collect(i, sample, at, flush=off)
            if off:
                self.state[i] = _State.PARKED
                self.v[i] = 0.0
                self.a[i] = 0.0
                self.resume[i] = t + self.motion.uniform(*self.scenario.trips.pause_s)
                self.stats.key_offs += 1

    def _collect(self, i: int, sample: dict[str, Any], at: float, flush: bool) -> Iterator[Message]:
        """Put ``sample`` into vehicle ``i``'s batch (or send it alone)."""
        batches = self.scenario.batches
        buf = self.batch[i]
        if not buf and batches.share > 0 and self.traffic.random() < batches.share:
            self.batch_size[i] = self.traffic.integers(batches.size[0], batches.size[1] + 1)
        buf.append(sample)
        if len(buf) >= max(1, int(self.batch_size[i])) or flush:
            as_array = self.batch_size[i] > 0
            self.batch[i] = []
            self.batch_size[i] = 0
            yield from self._send(i, buf, as_array, at)

    def _send(
        self, i: int, samples: list[dict[str, Any]], as_array: bool, at: float
    ) -> Iterator[Message]:
        """Turn samples into one message, applying the scenario's faults."""
        faults = self.scenario.faults
        topic = self.topics[i]
        if as_array:
            self.stats.batch_messages += 1
        u = self.traffic.random()
        held = False
        if u < faults.malformed:
            how = payload.MALFORMATIONS[int(self.traffic.integers(len(payload.MALFORMATIONS)))]
            body, usable = payload.malform(samples, as_array, how, self.traffic)
            msg = Message(topic, body, Kind.MALFORMED, at, usable)
        elif u < faults.malformed + faults.spoofed_vin:
            other = self._other_vin(i)
            spoofed = [{**s, vss.VIN: other} for s in samples]
            msg = Message(topic, payload.encode(spoofed, as_array), Kind.SPOOFED, at, len(samples))
        else:
            body = payload.encode(samples, as_array)
            held = u < faults.malformed + faults.spoofed_vin + faults.out_of_order
            msg = Message(topic, body, Kind.VALID, at, len(samples))
        waiting = self.held[i]
        if held:
            waiting.append(_Held(msg, int(self.traffic.integers(1, 4))))
            return
        yield from self._emit(msg)
        if msg.kind is not Kind.VALID:
            return
        # a newer valid message of this vehicle went out: held ones may follow, out of order
        still: list[_Held] = []
        for entry in waiting:
            entry.wait -= 1
            entry.overtaken = True
            if entry.wait <= 0:
                yield from self._emit(entry.message._replace(kind=Kind.OUT_OF_ORDER, at=at))
            else:
                still.append(entry)
        self.held[i] = still

    def _other_vin(self, i: int) -> str:
        if self.n > 1:
            j = int(self.traffic.integers(self.n - 1))
            return self.vins[j if j < i else j + 1]
        while True:
            vin = random_vins(self.traffic, 1)[0]
            if vin != self.vins[i]:
                return vin

    def _emit(self, msg: Message) -> Iterator[Message]:
        self.stats.messages[msg.kind] += 1
        yield msg
        duplicate = self.scenario.faults.duplicate
        if duplicate > 0 and self.traffic.random() < duplicate:
            delay = int(self.traffic.integers(0, 4))
            dup = msg._replace(kind=Kind.DUPLICATE)
            if delay == 0:
                self.stats.messages[Kind.DUPLICATE] += 1
                yield dup
            else:
                tick = round(msg.at / self.dt) + delay
                self.dup_due.setdefault(tick, []).append(dup)

    def _release_duplicates(self, k: int, t: float) -> Iterator[Message]:
        for dup in self.dup_due.pop(k, []):
            self.stats.messages[Kind.DUPLICATE] += 1
            yield dup._replace(at=t)

    def _flush(self, t: float) -> Iterator[Message]:
        """End of run: unfinished batches go out, then held messages (out of order only if
        a newer message of their vehicle went out before them), then pending duplicates."""
        for i in range(self.n):
            if self.batch[i]:
                buf, as_array = self.batch[i], self.batch_size[i] > 0
                self.batch[i] = []
                self.batch_size[i] = 0
                yield from self._send(i, buf, bool(as_array), t)
            for entry in self.held[i]:
                kind = Kind.OUT_OF_ORDER if entry.overtaken else entry.message.kind
                yield from self._emit(entry.message._replace(kind=kind, at=t))
            self.held[i] = []
        for tick in sorted(self.dup_due):
            for dup in self.dup_due[tick]:
                self.stats.messages[Kind.DUPLICATE] += 1
                yield dup._replace(at=t)
        self.dup_due.clear()
