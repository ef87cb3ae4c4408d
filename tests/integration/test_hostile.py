"""A flood of hostile input through the real broker beside well-formed traffic: arrays of
1,000 bad records, oversize payloads and topics naming no VIN. Every well-formed record is
still decided, every bad input dead-lettered once; the store keeps each dead payload once
(an oversize one as a summary) and the gateway's memory stays bounded."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from gateway.store.sealing import row_aad
from gateway.testing import MosquittoBroker
from simulators.fleet import Fleet, Kind
from tests.integration.harness import (
    LATITUDE,
    LONGITUDE,
    MAX_PAYLOAD,
    ORIGIN,
    TIMESTAMP,
    VIN,
    Deployment,
    Expected,
    GatewayProcess,
    as_messages,
    publish,
    settled,
)
from tests.integration.test_faults import ALL, MakeCollector, finish, traffic

pytestmark = pytest.mark.integration

SUMMARY_MAX = 6_000  # an oversize payload's summary: 4 KB prefix in base64, size, digest


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def hostile(fleet: Fleet, t: float) -> list[tuple[str, bytes]]:
    """20 arrays of 1,000 bad records (~150 KB each), 10 oversize payloads of 900 KB,
    10 messages on 30 KB topics that name no VIN."""
    vin = fleet.vins[0]
    topic = f"vehicles/{vin}/telemetry"
    out: list[tuple[str, bytes]] = []
    for i in range(20):
        bad = [
            {VIN: vin, TIMESTAMP: t, LATITUDE: "x", LONGITUDE: 121.4, "msg_id": f"h{i}-{j}"}
            for j in range(1000)
        ]
        out.append((topic, orjson.dumps(bad)))
    out += [(topic, bytes([65 + i]) * 900_000) for i in range(10)]
    record = {VIN: vin, TIMESTAMP: t, LATITUDE: 31.2, LONGITUDE: 121.4}
    out += [(f"vehicles/{'<x>' * 10_000}{i}/telemetry", orjson.dumps(record)) for i in range(10)]
    return out


def test_hostile_flood_is_bounded_and_loses_nothing(
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> None:
    fleet, messages = traffic(seed=21)
    first = orjson.loads(next(m.payload for m in messages if m.kind is Kind.VALID))
    t = (first[0] if isinstance(first, list) else first)[TIMESTAMP]
    flood = as_messages(hostile(fleet, t), Kind.MALFORMED)
    mixed = [m for pair in zip(messages, flood, strict=False) for m in pair]
    mixed += messages[len(flood) :]
    expected = Expected.of(mixed)
    assert sum(expected.dead.values()) >= 20_000
    dep = deployment(fleet)
    out = collector("it-subscriber", ALL)
    gw = gateway_process(dep)
    gw.start()
    publish(broker, mixed)
    settled(dep.store, expected, [out], timeout=300)
    assert gw.proc is not None
    peak = peak_rss(gw.proc.pid)
    repeats, dead_repeats = finish(gw, dep, expected, out)  # nothing lost, nothing twice
    assert (repeats, dead_repeats) == (0, 0)
    ring = dep.ring()
    with closing(sqlite3.connect(dep.store)) as con:  # schema 4: topic and payload sealed
        rows = con.execute("select seq, sealed from deadletters where shard = ?", (ORIGIN,))
        opened = [
            ring.unseal(bytes(sealed), row_aad("deadletters", ORIGIN, seq)).partition(b"\0")
            for seq, sealed in rows
        ]
    kept_bytes = sum(len(payload) for _, _, payload in opened)
    longest_topic = max(len(topic.decode()) for topic, _, _ in opened)
    bound = sum(len(p) if len(p) <= MAX_PAYLOAD else SUMMARY_MAX for p in expected.dead)
    print(f"dead payload bytes kept {kept_bytes:,} (bound {bound:,}); peak RSS {peak:,}")
    assert kept_bytes <= bound  # each dead payload once, an oversize one as a summary
    assert longest_topic <= 128
    assert peak < 400 * 2**20
