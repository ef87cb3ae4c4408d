"""Audit log throughput: appends into SQLite (on disk, WAL, synchronous=FULL) and
PostgreSQL in micro-batches, then verification, export verification and proofs.

    python bench/bench_audit.py [--entries 200000] [--batch 500] [--postgres URL]

Entries are built before timing (the pipeline builds them); each batch is one transaction,
committed durably, as the service does per micro-batch. Prints entries/s per phase.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from gateway.audit.export import export_shard
from gateway.audit.log import AuditLog, CheckpointPolicy
from gateway.audit.proof import proof_document
from gateway.audit.verify import verify_export, verify_store
from gateway.keys import KeyRing, init_keys
from gateway.store import Store, open_store
from gateway.tlog.entries import Decision, DecisionEntry

ORIGIN = "bench.icvgw.example/audit/w1"


def make_batches(ring: KeyRing, entries: int, batch: int) -> list[list[DecisionEntry]]:
    """Realistic decision entries: every field of RULES.md §5 filled in."""
    vehicles = [ring.vehicle_ref(f"LSVBENCH{i:09d}") for i in range(1000)]
    digest = ring.payload_digest(b'{"lat":31.2,"lon":121.4}')
    out = []
    for b in range(0, entries, batch):
        out.append(
            [
                DecisionEntry(
                    time=1.74e9 + i / 1000,
                    instance="w1",
                    message_id=f"m-{i}",
                    decision=Decision.SHARED if i % 7 else Decision.REDACTED,
                    policy="sha256:" + "ab" * 32,
                    vehicle=vehicles[i % len(vehicles)],
                    subscriber=f"platform-{i % 4}",
                    region="CN-mainland",
                    rules=("geo.public.grid", "pi.pseudonym.per-subscriber"),
                    transforms={"datum": "GCJ-02", "grid_m": 50, "pseudonym": "per-subscriber"},
                    precision_m=50,
                    basis="consent:c-0042",
                    digest=digest,
                )
                for i in range(b, min(b + batch, entries))
            ]
        )
    return out


def bench_append(store: Store, batches: list[list[DecisionEntry]], ring: KeyRing) -> float:
    log = AuditLog.from_keyring(
        store, ring, origin=ORIGIN, policy=CheckpointPolicy(every_entries=10_000)
    )
    total = sum(len(b) for b in batches)
    start = time.perf_counter()
    for b in batches:
        with log.transaction() as tx:
            tx.append_audit(b, shard=ORIGIN)
    log.close()
    return total / (time.perf_counter() - start)


def bench_reads(store: Store, ring: KeyRing, tmp: Path, total: int) -> dict[str, float]:
    verifiers = ring.verifiers(ORIGIN)
    start = time.perf_counter()
    (report,) = verify_store(store, verifiers)
    verify_rate = report.entries / (time.perf_counter() - start)
    assert report.error is None and report.entries == total, report
    out = tmp / "export.jsonl"
    start = time.perf_counter()
    export_shard(store, ORIGIN, out)
    export_rate = total / (time.perf_counter() - start)
    start = time.perf_counter()
    exported = verify_export(out, verifiers)
    export_verify_rate = total / (time.perf_counter() - start)
    assert exported.error is None, exported.error
    times = []
    for seq in (0, total // 3, total // 2, total - 1):
        start = time.perf_counter()
        proof_document(store, seq, shard=ORIGIN)
        times.append(time.perf_counter() - start)
    return {
        "verify store (entries/s)": verify_rate,
        "export (entries/s)": export_rate,
        "verify export (entries/s)": export_verify_rate,
        "inclusion proof (ms, median)": statistics.median(times) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="append runs; best and median")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("ICVGW_BENCH_POSTGRES_URL"),
        help="PostgreSQL URL (a scratch schema is created and dropped)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ring = init_keys(tmp / "keys")
        batches = make_batches(ring, args.entries, args.batch)
        print(f"{args.entries} entries in batches of {args.batch}")
        rates = []
        for run in range(args.runs):
            db = tmp / f"bench{run}.db"
            with open_store(f"sqlite:///{db}") as store:
                rates.append(bench_append(store, batches, ring))
        print(
            f"sqlite append (WAL, synchronous=FULL): best {max(rates):,.0f} entries/s, "
            f"median {statistics.median(rates):,.0f}"
        )
        with open_store(f"sqlite:///{tmp / 'bench0.db'}") as store:
            for name, value in bench_reads(store, ring, tmp, args.entries).items():
                print(f"sqlite {name}: {value:,.1f}")
        if args.postgres:
            bench_postgres(args.postgres, batches, ring, tmp, args.entries, args.runs)


def bench_postgres(
    url: str, batches: list[list[DecisionEntry]], ring: KeyRing, tmp: Path, total: int, runs: int
) -> None:
    import psycopg

    rates = []
    for _ in range(runs):
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'create schema "{schema}"')
        sep = "&" if "?" in url else "?"
        try:
            with open_store(f"{url}{sep}options=-csearch_path%3D{schema}") as store:
                rates.append(bench_append(store, batches, ring))
                if len(rates) == 1:
                    reads = bench_reads(store, ring, tmp, total)
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'drop schema "{schema}" cascade')
    print(
        f"postgresql append: best {max(rates):,.0f} entries/s, "
        f"median {statistics.median(rates):,.0f}"
    )
    for name, value in reads.items():
        print(f"postgresql {name}: {value:,.1f}")


if __name__ == "__main__":
    main()
