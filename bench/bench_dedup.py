"""The de-duplication window in a long-running gateway: forgetting expired records.

A gateway that has run longer than its window (the shipped one is a day) forgets as many
records as it remembers. This benchmark fills a SQLite store on disk with ``--rows``
records already seen: exactly one window of traffic at ``--rate`` records/s, ending when
the run starts, so from the first batch on records leave the window at the rate new ones
arrive (the steady state of an old gateway, not a catch-up after a pause). It then replays
``--minutes`` of traffic in batches of ``--batch`` records, each batch one transaction as
the service commits it (remember the batch's keys, synchronous=FULL), two ways in one run:

* **sweep**: the old way: nothing forgotten per batch, everything expired forgotten in
  one transaction at the end of every minute;
* **bounded**: the service's way: each batch forgets at most 16 + 2 per record, and the
  once-a-second tick up to 2,000.

Both forget the same records over whole minutes. Time is simulated (the run is not
paced): what is measured is how long each transaction holds the pipeline. Printed:
transactions, p50 / p99 / max ms, total seconds, and rows forgotten.

    python -m bench.bench_dedup [--rows 2000000] [--minutes 3]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine
from gateway.keys import init_keys
from gateway.service import FORGET_MIN, FORGET_PER_RECORD, FORGET_PER_TICK
from gateway.store import Store, open_store
from gateway.store.dedup import add_seen, prune_seen

SHARD = "bench"


def fill(store: Store, rows: int, rate: float, vehicles: list[str]) -> None:
    """``rows`` records seen at ``rate`` per second (a second's records share their time),
    ending at time 0 (ms)."""
    rng = np.random.default_rng(5)
    per_second = max(1, round(rate))
    chunk = 40 * per_second
    for start in range(0, rows, chunk):
        with store.transaction() as tx:
            for first in range(start, min(start + chunk, rows), per_second):
                n = min(per_second, rows - first)
                at = round((first - rows) * 1000 / rate)
                picks = rng.integers(0, len(vehicles), n)
                add_seen(tx, [(vehicles[v], f"m:{secrets.token_hex(16)}") for v in picks], at)


def replay(
    store: Store,
    *,
    minutes: float,
    rate: float,
    batch: int,
    window_ms: int,
    vehicles: list[str],
    bounded: bool,
) -> tuple[list[float], int]:
    """Per-transaction seconds and rows forgotten over ``minutes`` of simulated traffic."""
    rng = np.random.default_rng(9)
    times: list[float] = []
    forgotten = 0
    step_ms = batch * 1000 / rate
    batches = round(minutes * 60_000 / step_ms)
    next_tick, next_sweep = 1000.0, 60_000.0
    for k in range(1, batches + 1):
        now_ms = k * step_ms
        edge = round(now_ms) - window_ms
        picks = rng.integers(0, len(vehicles), batch)
        keys = [(vehicles[v], f"m:{secrets.token_hex(16)}") for v in picks]
        t0 = time.perf_counter()
        with store.transaction() as tx:
            add_seen(tx, keys, round(now_ms))
            if bounded:
                forgotten += prune_seen(tx, edge, FORGET_MIN + FORGET_PER_RECORD * batch)
        times.append(time.perf_counter() - t0)
        limit: int | None
        if bounded and now_ms >= next_tick:
            next_tick, limit = next_tick + 1000, FORGET_PER_TICK
        elif not bounded and now_ms >= next_sweep - 1e-6:
            next_sweep, limit = next_sweep + 60_000, None
        else:
            continue
        t0 = time.perf_counter()
        with store.transaction() as tx:
            forgotten += prune_seen(tx, edge, limit)
        times.append(time.perf_counter() - t0)
    return times, forgotten


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, default=1_200.0, help="records per second")
    parser.add_argument("--batch", type=int, default=12, help="records per transaction")
    parser.add_argument("--minutes", type=float, default=3.0, help="traffic replayed")
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores go")
    args = parser.parse_args()

    vehicles = [secrets.token_urlsafe(16) for _ in range(args.vehicles)]
    window_ms = round(args.rows * 1000 / args.rate)  # the filled rows are the window
    base = Path(tempfile.mkdtemp(dir=args.workdir))
    print(f"Machine: {machine()}")
    print(
        f"{args.rows:,} records in the window ({window_ms / 60_000:.0f} min at "
        f"{args.rate:,.0f}/s), {args.minutes:g} min replayed in batches of {args.batch}"
    )
    try:
        template = base / "filled.sqlite"
        ring = init_keys(base / "keys")  # record ids are stored as keyed digests
        t0 = time.perf_counter()
        with open_store(f"sqlite:///{template}", shard=SHARD, keys=ring) as store:
            fill(store, args.rows, args.rate, vehicles)
        size = template.stat().st_size / 1e6
        print(f"filled in {time.perf_counter() - t0:.0f} s ({size:.0f} MB)")
        print()
        print("| way | transactions | p50 ms | p99 ms | max ms | total s | forgotten |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, bounded in (("sweep", False), ("bounded", True)):
            path = base / f"{name}.sqlite"
            shutil.copy(template, path)
            with open_store(f"sqlite:///{path}", shard=SHARD, keys=ring) as store:
                times, forgotten = replay(
                    store,
                    minutes=args.minutes,
                    rate=args.rate,
                    batch=args.batch,
                    window_ms=window_ms,
                    vehicles=vehicles,
                    bounded=bounded,
                )
            ms = np.asarray(times) * 1000
            print(
                f"| {name} | {len(ms):,} | {np.percentile(ms, 50):.1f} | "
                f"{np.percentile(ms, 99):.1f} | {ms.max():.0f} | {ms.sum() / 1000:.1f} | "
                f"{forgotten:,} |"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
