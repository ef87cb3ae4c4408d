"""Decision engine throughput: classify + geo + decide + shape, four subscribers, 10,000 zones.

    python -m bench.bench_decide [--vehicles 5000] [--seconds 20] [--zones 10000]
                                 [--sample 1000] [--repeats 3]

The default policy bundle (its four subscribers: raw for the qualified map provider, 1 km, 50 m
and 5 km grids for the others, trip trimming, down-sampling, consents, the cross-border gate)
with its zones replaced by ``--zones`` random 24-vertex polygons (``bench.common``: radius
100-800 m, two thirds prohibited) spread over a 2° x 2° box around Shanghai. The fleet drives
random walks at 12 m/s inside the same box and reports once a second; every micro-batch is one
second of the whole fleet (``--vehicles`` records). Half the vehicles have a consent for each
purpose. The state starts in steady state (every vehicle mid-trip, last-sent times spread over
each view's interval) and is carried from batch to batch as the service does
(``StateSnapshot.apply``). Each batch is decoded just before it is decided, outside the timings,
and it and everything made from it (decisions, outputs) are dropped before the next one, as in
the service; ``geo`` includes classify and the bundle's per-batch plan. Times are the process's
CPU time (``time.process_time``), so the figures are per core; the whole stream is replayed
``--repeats`` times from the same state and the fastest pass (decide + shape) is shown, since
other processes on a shared machine still slow a pass down through its caches. The garbage
collector runs with its defaults; its share is large (the outputs are many small Python objects,
and each full collection walks the loaded zones and policy), so two more lines show the same
passes after ``gc.freeze()`` (which a service can call once its policy is loaded) and with the
collector paused (the engine's own cost).

The reference is a simple per-record implementation of the same path on a sample: for each
record and subscriber, snap the point, build its cell polygon, query an STRtree of the zones,
look the consent up, transform the datum, make the pseudonym and message id, build the output
object. It has no trips, down-sampling or cross-border state, so it does less than the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from typing import Any

import numpy as np
import orjson
import shapely

from bench.common import machine, random_zones_geojson
from gateway.geo.datum import transform
from gateway.geo.grid import cell_corners, snap
from gateway.geo.zones import ZoneLevel, ZoneSet
from gateway.model import Consent
from gateway.pipeline.classify import classify
from gateway.pipeline.decide import Verdict, decide, plan
from gateway.pipeline.decode import decode_records
from gateway.pipeline.geo import locate
from gateway.pipeline.shape import keyed_pseudonym, message_id, shape
from gateway.policy.bundle import PolicyBundle
from gateway.policy.loader import load_bundle
from gateway.policy.schema import OutputDatum
from gateway.policy.view_schema import VIEW_SCHEMA
from gateway.state.snapshot import ConsentBook, StateSnapshot, TripState

BOX = (30.2, 32.2, 120.4, 122.4)  # lat_min, lat_max, lon_min, lon_max: around Shanghai
START = 1768435200.0  # 2026-01-15T00:00:00Z
SPEED_M_S = 12.0
PURPOSES = ("navigation-map", "usage-based-insurance", "traffic-management", "product-quality")


clock = time.process_time
"""CPU time of this process: the figures are per core, whatever else the machine runs."""


def keys(subscriber: str) -> bytes:
    return (b"bench-pseudonym-key:" + subscriber.encode()).ljust(32, b"_")[:32]


@dataclasses.dataclass
class Fleet:
    vins: list[str]
    records: list[list[dict[str, Any]]]
    payloads: list[bytes]
    state: StateSnapshot


def make_fleet(bundle: PolicyBundle, vehicles: int, seconds: int, seed: int = 5) -> Fleet:
    rng = np.random.default_rng(seed)
    lat_min, lat_max, lon_min, lon_max = BOX
    lat = rng.uniform(lat_min + 0.05, lat_max - 0.05, vehicles)
    lon = rng.uniform(lon_min + 0.05, lon_max - 0.05, vehicles)
    heading = rng.uniform(0, 360, vehicles)
    odometer = rng.uniform(1_000, 90_000, vehicles)
    vins = [f"LBENCH{i:011d}" for i in range(vehicles)]
    consents = [
        Consent(f"c{i}-{p}", vin, p, START - 1e7, START + 1e7)
        for i, vin in enumerate(vins)
        for p in PURPOSES
        if rng.random() < 0.5
    ]
    trips = {
        vin: TripState(START - 900, la - 0.05, lo, 1e4, START - 1, la, lo)
        for vin, la, lo in zip(vins, lat.tolist(), lon.tolist(), strict=True)
    }
    last_sent = {}
    for sub in bundle.subscribers.values():
        phase = rng.uniform(0, max(sub.view.min_interval_s, 1.0), vehicles)
        last_sent[sub.id] = dict(zip(vins, (START - phase).tolist(), strict=True))
    records: list[list[dict[str, Any]]] = []
    for second in range(seconds):
        heading = (heading + rng.normal(0, 8, vehicles)) % 360
        rad = np.radians(heading)
        lat = lat + SPEED_M_S * np.cos(rad) / 111_320
        lon = lon + SPEED_M_S * np.sin(rad) / (111_320 * np.cos(np.radians(lat)))
        odometer = odometer + SPEED_M_S / 1000
        t = START + second
        records.append(
            [
                {
                    "Vehicle.VehicleIdentification.VIN": vin,
                    "Vehicle.CurrentLocation.Timestamp": t,
                    "Vehicle.CurrentLocation.Latitude": la,
                    "Vehicle.CurrentLocation.Longitude": lo,
                    "Vehicle.CurrentLocation.Altitude": 8.5,
                    "Vehicle.CurrentLocation.Heading": h,
                    "Vehicle.Speed": 43.2,
                    "Vehicle.TraveledDistance": od,
                    "Vehicle.Acceleration.Longitudinal": 0.3,
                    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": 71.0,
                    "Vehicle.LowVoltageSystemState": "ON",
                    "Vehicle.IsMoving": True,
                    "oem_private": 1,
                    "msg_id": f"{vin}-{second}",
                }
                for vin, la, lo, h, od in zip(
                    vins, lat.tolist(), lon.tolist(), heading.tolist(), odometer.tolist(),
                    strict=True,
                )
            ]
        )  # fmt: skip
    state = StateSnapshot(
        now=START, consents=ConsentBook(consents), trips=trips, last_sent=last_sent
    )
    payloads = [orjson.dumps(r) for r in records]
    return Fleet(vins, records, payloads, state)


@dataclasses.dataclass
class Timing:
    geo: float = 0.0
    decide: float = 0.0
    shape: float = 0.0
    apply: float = 0.0
    records: int = 0
    views: int = 0
    held: int = 0
    verdicts: dict[str, int] = dataclasses.field(default_factory=dict)


def run_engine(bundle: PolicyBundle, fleet: Fleet, payloads: list[bytes]) -> Timing:
    """Run the stream through the engine; decoding (untimed) happens batch by batch, as in
    the service, so only the batch at hand is in memory."""
    timing = Timing()
    state = fleet.state
    for i, payload in enumerate(payloads):
        batch = decode_records(orjson.loads(payload), bundle.aliases)
        state = dataclasses.replace(state, now=START + i + 1)
        t0 = clock()
        the_plan = plan(bundle, state.now)
        classified = classify(batch, bundle)
        located = locate(batch, bundle.zones, the_plan.grids)
        t1 = clock()
        decisions = decide(batch, classified, located, the_plan, state)
        t2 = clock()
        shaped = shape(decisions, keys)
        t3 = clock()
        state = state.apply(decisions.delta, shaped.held)
        t4 = clock()
        timing.geo += t1 - t0
        timing.decide += t2 - t1
        timing.shape += t3 - t2
        timing.apply += t4 - t3
        timing.records += len(batch)
        timing.views += len(shaped) + len(decisions.delta.released)
        timing.held += len(shaped.held)
        for v in decisions.verdict.ravel().tolist():
            label = Verdict(v).label
            timing.verdicts[label] = timing.verdicts.get(label, 0) + 1
        # The service drops a batch and everything made from it once it is committed.
        del batch, classified, located, decisions, shaped
    return timing


def reference(bundle: PolicyBundle, fleet: Fleet, records: list[dict[str, Any]]) -> int:
    """One record, one subscriber at a time: what the engine replaces. Returns views made."""
    zones = bundle.zones
    tree = shapely.STRtree([z.buffered for z in zones])
    levels = [z.level for z in zones]
    the_plan = plan(bundle, fleet.state.now)
    made = 0
    for rec in records:
        vin = rec["Vehicle.VehicleIdentification.VIN"]
        t = rec["Vehicle.CurrentLocation.Timestamp"]
        lat = rec["Vehicle.CurrentLocation.Latitude"]
        lon = rec["Vehicle.CurrentLocation.Longitude"]
        for view in the_plan.views:
            sub = view.subscriber
            if view.grid_m == 0:
                shape_ = shapely.Point(lon, lat)
                centre = (lat, lon)
            else:
                g = snap(lat, lon, view.grid_m)
                ys, xs = cell_corners(g.band, g.ix, g.iy, view.grid_m)
                shape_ = shapely.Polygon(list(zip(xs[0].tolist(), ys[0].tolist(), strict=True)))
                centre = (float(g.lat[0]), float(g.lon[0]))
            hits = tree.query(shape_, predicate="intersects")
            worst = max(
                (levels[h] for h in hits.tolist() if zones.ids[h] not in view.authorised),
                default=ZoneLevel.NONE,
            )
            if worst == ZoneLevel.PROHIBITED:
                continue
            location = None
            if worst == ZoneLevel.NONE and fleet.state.consents.active(vin, sub.purposes, t):
                if view.datum is OutputDatum.GCJ02:
                    r = transform("gcj02", centre[0], centre[1])
                    centre = (float(r.lat[0]), float(r.lon[0]))
                location = {"datum": view.datum.value, "precision_m": view.grid_m,
                            "lat": centre[0], "lon": centre[1]}  # fmt: skip
            key = keys(sub.id)
            signals = {
                k: v for k, v in rec.items() if k in view.allowed and bundle.fields[k].category
                not in ("location", "altitude", "vehicle_id")
            }  # fmt: skip
            _ = {
                "schema": VIEW_SCHEMA,
                "subscriber": sub.id,
                "vehicle": keyed_pseudonym(key, vin),
                "message_id": message_id(key, sub.id, vin, rec["msg_id"], t),
                "time": t,
                "location": location,
                "signals": signals,
            }
            made += 1
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vehicles", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="passes; the fastest is shown")
    args = parser.parse_args()

    base = load_bundle()
    t0 = time.perf_counter()
    zones = ZoneSet.from_geojson(random_zones_geojson(args.zones, box=BOX), "bench")
    build = time.perf_counter() - t0
    bundle = dataclasses.replace(base, zones=zones)
    fleet = make_fleet(bundle, args.vehicles, args.seconds + 2)

    print(f"machine: {machine()}")
    print(
        f"fleet: {args.vehicles:,} vehicles x {args.seconds} s at 1 Hz, one micro-batch per "
        f"second; {args.zones:,} zones (built in {build:.1f} s); subscribers: "
        f"{', '.join(bundle.subscribers)}; one thread\n"
    )
    sample = [r for batch in fleet.records[2:] for r in batch][: args.sample]
    fleet.records = []  # the raw records only slow the garbage collector down from here
    gc.collect()
    run_engine(bundle, fleet, fleet.payloads[:2])  # warm-up: projects the zones per band
    runs = [run_engine(bundle, fleet, fleet.payloads[2:]) for _ in range(args.repeats)]
    timing = min(runs, key=lambda r: r.decide + r.shape)
    gc.collect()
    gc.freeze()  # what a long-running service can do once its policy and zones are loaded
    frozen = min(
        (run_engine(bundle, fleet, fleet.payloads[2:]) for _ in range(args.repeats)),
        key=lambda r: r.decide + r.shape,
    )
    gc.disable()  # the engine's own cost, without the collector
    paused = min(
        (run_engine(bundle, fleet, fleet.payloads[2:]) for _ in range(args.repeats)),
        key=lambda r: r.decide + r.shape,
    )
    gc.enable()
    gc.unfreeze()
    n = timing.records
    total = timing.geo + timing.decide + timing.shape
    t0 = clock()
    reference(bundle, fleet, sample)
    ref_rate = len(sample) / (clock() - t0)
    pairs = sum(timing.verdicts.values())
    mix = ", ".join(f"{k} {v / pairs:.0%}" for k, v in sorted(timing.verdicts.items()))

    print("| stage | µs / record | records/s |")
    print("|---|---:|---:|")
    for name, seconds in (
        ("classify + geo (3 grids + raw, 10k zones)", timing.geo),
        ("decide", timing.decide),
        ("shape", timing.shape),
        ("**decide + shape**", timing.decide + timing.shape),
        ("classify + geo + decide + shape", total),
    ):
        print(f"| {name} | {seconds / n * 1e6:.2f} | {n / seconds:,.0f} |")
    print(f"| per-record reference (sample of {len(sample):,}) | {1e6 / ref_rate:.1f} "
          f"| {ref_rate:,.0f} |")  # fmt: skip
    for label, run in (("after gc.freeze()", frozen), ("garbage collector paused", paused)):
        ds = run.decide + run.shape
        print(f"| decide + shape, {label} | {ds / n * 1e6:.2f} | {n / ds:,.0f} |")
    print()
    print(
        f"{n:,} records, {pairs:,} (record, subscriber) pairs: {mix}; "
        f"{timing.views / n:.2f} views sent per record, {timing.held / n:.2f} held; "
        f"state apply {timing.apply / n * 1e6:.2f} µs/record"
    )
    print(
        f"full path vs reference: {n / total / ref_rate:,.0f}x; "
        f"decide + shape target 100,000 records/s: "
        f"{'met' if n / (timing.decide + timing.shape) >= 100_000 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
