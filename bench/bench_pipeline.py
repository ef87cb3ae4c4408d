"""The pipeline's cost per input without MQTT: ``Gateway.process`` on the fleet's messages.

    python -m bench.bench_pipeline [--vehicles 10000] [--messages 40000] [--drive-seconds 60]
                                   [--batch 100] [--zones 10000] [--profile FILE]

The gateway of ``bench_e2e`` (default policy with ``--zones`` zones, one consent per
vehicle, SQLite store on disk, audit log on) built in this process, and the fleet's messages
(a sample every 10 s, GB/T 32960's usual period) handed to :meth:`Gateway.process` in
micro-batches of ``--batch`` envelopes, as the ingest queue hands them: decode, batch stage,
classify, geo, decide, shape, commit. Nothing is published (the drainer's hand-off is
replaced by a counter), so the figure is the pipeline thread's share of the end-to-end cost
per input, which ``bench_e2e`` measures whole. The fleet first drives ``--drive-seconds``
(not timed), so every subscriber is past its trip-start trim; then ``--messages`` are timed
(process CPU time and wall time). ``--profile FILE`` writes a cProfile of the timed part.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import os
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import e2e_gateway as gw
from bench.common import machine
from bench.mqtt_load import peak_rss_mb
from gateway.config import load_config
from gateway.model import Envelope
from gateway.service import Gateway
from simulators.fleet import Fleet, FleetConfig, Message


def _envelopes(messages: Sequence[Message]) -> list[Envelope]:
    now = time.time()
    return [Envelope(m.topic, m.payload, now) for m in messages]


def build(workdir: Path, vehicles: int, zones: int, fleet: Fleet) -> Gateway:
    """A gateway on the benchmark's bundle and a fresh SQLite store in ``workdir``."""
    gw.write_bundle(workdir / "policies", zones=zones, consenting_vins=fleet.consenting_vins)
    gw.init_keys(workdir / "keys")
    path = gw.write_config(workdir, broker_url="mqtt://127.0.0.1:1", out_inflight=100)
    config = load_config(path, overrides={("metrics", "enabled"): False})
    gateway = Gateway(config)
    sent = [0]

    def submit(rows: object) -> None:
        sent[0] += len(rows)  # type: ignore[arg-type]

    gateway.drainer.submit = submit  # type: ignore[method-assign]
    return gateway


def run(args: argparse.Namespace) -> str:
    """Drive, then time; the report's lines."""
    start = datetime.now(UTC).replace(microsecond=0)
    fleet = Fleet(FleetConfig(vehicles=args.vehicles, start=start), args.seed)
    drive = args.vehicles * max(1, math.ceil(args.drive_seconds / args.sample_period))
    stream = fleet.messages(duration=36_000.0, rate=1.0 / args.sample_period)
    messages = [next(stream) for _ in range(drive + args.messages)]
    with tempfile.TemporaryDirectory(prefix="icvgw-bench-pipeline-") as tmp:
        gateway = build(Path(tmp), args.vehicles, args.zones, fleet)
        try:
            for i in range(0, drive, args.batch):
                gateway.process(_envelopes(messages[i : i + args.batch]))
            views0 = gateway.totals.views
            gc.collect()
            prof = cProfile.Profile() if args.profile else None
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            for i in range(drive, drive + args.messages, args.batch):
                gateway.process(_envelopes(messages[i : i + args.batch]))
            if prof:
                prof.disable()
                prof.dump_stats(args.profile)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            views = gateway.totals.views - views0
        finally:
            gateway.store.close()
    n = args.messages
    return "\n".join(
        [
            f"Machine: {machine()}",
            f"{args.vehicles:,} vehicles, {args.zones:,} zones, {drive:,} messages driven "
            f"first, {n:,} timed in batches of {args.batch}",
            f"- {cpu / n * 1e6:,.0f} µs CPU per input ({wall / n * 1e6:,.0f} µs wall), "
            f"{n / wall:,.0f} inputs/s on one core",
            f"- {views / n:.2f} views per input ({views:,} views)",
            f"- peak RSS {peak_rss_mb(os.getpid()) or 0:,.0f} MiB (the fleet's messages included)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run and print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--drive-seconds", type=float, default=60.0)
    parser.add_argument("--sample-period", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", default=None, help="write a cProfile of the timed part")
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
