"""Fixtures of the integration tests: a real Mosquitto on a free port, a deployed gateway
(bundle, keys, config, store), gateway processes and subscriber clients, all torn down
after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.testing import MosquittoBroker, find_mosquitto
from simulators.fleet import Fleet, FleetConfig
from simulators.scenario import Scenario, load_scenario
from tests.conftest import service_missing
from tests.integration.harness import (
    Collector,
    Deployment,
    GatewayProcess,
    deploy,
)

MIXED = Path(__file__).resolve().parents[2] / "simulators" / "scenarios" / "mixed.yaml"


def make_fleet(vehicles: int, seed: int, scenario: Scenario | None = None) -> Fleet:
    """A fleet in the mixed scenario (or ``scenario``) whose samples start a little before
    now, so consents, qualifications and authorisations are judged at a realistic time."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    return Fleet(
        FleetConfig(vehicles=vehicles, scenario=scenario or load_scenario(MIXED), start=start),
        seed=seed,
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto with persistence in the test's directory and $SYS counters every second."""
    if find_mosquitto() is None:
        service_missing("mosquitto binary (apt-get install mosquitto)")
    b = MosquittoBroker(workdir=tmp_path / "broker", extra_config="sys_interval 1")
    b.start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def deployment(tmp_path: Path, broker: MosquittoBroker) -> Callable[[Fleet], Deployment]:
    """Deploy a gateway for a fleet: ``deployment(fleet)``."""

    def make(fleet: Fleet) -> Deployment:
        root = tmp_path / "gw"
        root.mkdir()
        return deploy(root, broker, fleet)

    return make


@pytest.fixture
def gateway_process() -> Iterator[Callable[[Deployment], GatewayProcess]]:
    """``gateway_process(deployment)``: an unstarted gateway child, killed after the test
    if it still runs."""
    made: list[GatewayProcess] = []

    def make(dep: Deployment) -> GatewayProcess:
        gw = GatewayProcess(dep)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


@pytest.fixture
def collector(broker: MosquittoBroker) -> Iterator[Callable[[str, Sequence[str]], Collector]]:
    """``collector(name, topics)``: a subscribed persistent-session client, closed after."""
    made: list[Collector] = []

    def make(name: str, topics: Sequence[str]) -> Collector:
        c = Collector(broker, name, topics)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
