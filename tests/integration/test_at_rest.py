"""Data at rest: after a real run (fleet -> Mosquitto -> gateway), the store's files hold
none of the run's VINs and no coordinate of its input.

The database file and its write-ahead log are searched byte for byte, while the gateway
still runs (the log then holds the newest pages) and again after it stopped. What the
pipeline keeps raw between batches is sealed (:mod:`gateway.store.sealing`), so only the
key directory can open it.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import load_config
from gateway.service import Gateway
from simulators.fleet import Fleet, Message
from tests.integration.conftest import make_fleet
from tests.integration.harness import (
    LATITUDE,
    LONGITUDE,
    Collector,
    Deployment,
    Expected,
    publish,
    read_store,
    settled,
)

pytestmark = pytest.mark.integration

VEHICLES, RATE, DURATION = 10, 0.5, 240.0


def coordinate_texts(messages: Iterable[Message]) -> set[bytes]:
    """Every input latitude and longitude as published, as 5 and 4 decimals (about 1 m
    and 11 m) and as a float64 either way round: the ways a coordinate could be written
    down again."""
    found: set[bytes] = set()
    for m in messages:
        try:
            doc = orjson.loads(m.payload)
        except orjson.JSONDecodeError:
            continue
        for item in doc if isinstance(doc, list) else [doc]:
            if not isinstance(item, dict):
                continue
            for name in (LATITUDE, LONGITUDE):
                v = item.get(name)
                if isinstance(v, float) and abs(v) >= 1:
                    found.update(
                        {
                            orjson.dumps(v),
                            f"{v:.5f}".encode(),
                            f"{v:.4f}".encode(),
                            struct.pack("<d", v),
                            struct.pack(">d", v),
                        }
                    )
    return found


def leaks(store: Path, vins: Iterable[str], coords: set[bytes]) -> list[str]:
    """What of ``vins`` and ``coords`` the store's files contain (file: value)."""
    files = sorted(store.parent.glob(store.name + "*"))
    assert store in files
    out = []
    for f in files:
        data = f.read_bytes()
        upper = data.upper()  # a VIN in any case
        out += [f"{f.name}: VIN {v}" for v in vins if v.upper().encode() in upper]
        out += [f"{f.name}: coordinate {c!r}" for c in coords if c in data]
    return out


def test_the_store_holds_no_vin_and_no_input_coordinate(
    deployment: Callable[[Fleet], Deployment],
    collector: Callable[[str, Sequence[str]], Collector],
) -> None:
    fleet = make_fleet(VEHICLES, seed=11)
    messages = list(fleet.messages(DURATION, RATE))
    expected = Expected.of(messages)
    coords = coordinate_texts(messages)
    assert expected.vins and len(coords) > 100
    dep = deployment(fleet)
    everything = collector("it-all", ["share/#", "gateway/deadletter/#"])
    gw = Gateway(load_config(dep.config), registry=CollectorRegistry())
    gw.start()
    runner = threading.Thread(target=gw.run, name="at-rest-gateway")
    runner.start()
    try:
        publish(dep.broker, messages)
        settled(dep.store, expected, [everything])
        state = read_store(dep.store)
        # The run kept what must be kept: dead letters, views, held views.
        assert state.deadletter_rows > 0 and state.outbox and any(state.held.values())
        running = leaks(dep.store, expected.vins, coords)
    finally:
        gw.stop()
        runner.join(60)
    assert not runner.is_alive()
    assert running == []
    assert leaks(dep.store, expected.vins, coords) == []
