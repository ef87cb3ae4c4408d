"""Consents live in the store at run time: seeded from the bundle, and a withdrawal made in
the store applies to the very next batch."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from gateway.config import GatewayConfig, load_config
from gateway.consents import seed
from gateway.keys import init_keys
from gateway.model import Consent, Envelope
from gateway.service import Gateway
from simulators.fleet import Fleet, FleetConfig

T0 = 1_795_867_200.0  # the fleet's default start, 2026-11-28T12:00Z


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    init_keys(tmp_path / "keys")
    return load_config(
        None,
        overrides={
            ("broker", "url"): "mqtt://127.0.0.1:9",
            ("broker", "protocol"): "5",
            ("store",): f"sqlite:///{tmp_path / 'gw.sqlite'}",
            ("keys",): str(tmp_path / "keys"),
        },
        environ={},
    )


def test_the_bundle_seeds_the_store_once(config: GatewayConfig) -> None:
    gw = Gateway(config)
    try:
        bundle = gw.holder.current
        with gw.store.snapshot() as rd:
            for c in bundle.consents:
                stored = rd.consent(c.id)
                assert stored is not None
                assert stored.vehicle == gw.vehicle_ref(c.vin)  # never the VIN
        again = seed(gw.store, bundle, gw.vehicle_ref, at=T0, instance="t")
        assert again == 0
    finally:
        gw.store.close()


def test_a_withdrawal_in_the_store_applies_to_the_next_batch(config: GatewayConfig) -> None:
    messages = list(Fleet(FleetConfig(vehicles=1), seed=5).messages(4, 1.0))
    vin = messages[0].topic.split("/")[1]
    envs = [Envelope(m.topic, m.payload, 0.0, i) for i, m in enumerate(messages)]
    gw = Gateway(config, clock=lambda: T0)
    try:
        ref = gw.vehicle_ref(vin)
        with gw.store.transaction() as tx:
            tx.put_consents(
                [Consent("c-test", ref, "navigation-map", T0 - 3600, T0 + 86400)],
                at=T0,
                instance="t",
            )
        gw.process(envs[:2])
        with gw.store.transaction() as tx:
            assert tx.withdraw_consent("c-test", at=T0 + 1.5, instance="t")
        gw.process(envs[2:])
    finally:
        gw.store.close()
    with sqlite3.connect(config.store.removeprefix("sqlite:///")) as con:
        rows = con.execute(
            "select body from audit_entries where subscriber = 'mapco-nav' order by seq"
        ).fetchall()
    entries = [orjson.loads(r[0]) for r in rows]
    assert len(entries) == 4
    with_consent = ["pi.trajectory-consent" in e["rules"] for e in entries]
    assert with_consent == [True, True, False, False]
    assert [e["basis"] for e in entries[:2]] == ["c-test", "c-test"]
