"""What a commit keeps of hostile input, over the real SQLite store: one copy of a dead
payload per message, a bounded summary of an oversize one, a bounded topic."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import orjson
import pytest

from gateway.config import GatewayConfig, load_config
from gateway.keys import init_keys
from gateway.model import Envelope
from gateway.pipeline.decode import LATITUDE, LONGITUDE, TIMESTAMP, VIN
from gateway.service import Gateway
from gateway.testing import make_vin

V1 = make_vin(1)


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    init_keys(tmp_path / "keys")
    return load_config(
        None,
        overrides={
            ("broker", "url"): "mqtt://127.0.0.1:9",  # never connected in these tests
            ("broker", "protocol"): "5",
            ("store",): f"sqlite:///{tmp_path / 'gw.sqlite'}",
            ("keys",): str(tmp_path / "keys"),
        },
        environ={},
    )


def db(config: GatewayConfig) -> sqlite3.Connection:
    return sqlite3.connect(config.store.removeprefix("sqlite:///"))


def record(vin: str = V1, **extra: object) -> dict[str, object]:
    return {VIN: vin, TIMESTAMP: 1795867200.0, LATITUDE: 31.23, LONGITUDE: 121.47, **extra}


def run(config: GatewayConfig, envelopes: list[Envelope]) -> Gateway:
    gw = Gateway(config)
    try:
        gw.process(envelopes)
    finally:
        gw.store.close()
    return gw


def test_a_hostile_topic_is_dead_lettered_once_and_never_echoed(config: GatewayConfig) -> None:
    hostile = "<b>" + "x" * 30_000 + "</b>"
    topic = f"vehicles/{hostile}/telemetry"
    payload = orjson.dumps([record(hostile)] * 3)
    run(config, [Envelope(topic, payload, 0.0, 1)])
    con = db(config)
    rows = list(con.execute("select reason, topic from deadletters"))
    assert [r for r, _ in rows] == ["invalid-topic-vin"]
    assert len(rows[0][1]) <= 128 and rows[0][1].startswith("vehicles/<b>xxx")
    notices = list(con.execute("select topic, payload from outbox"))
    assert [t for t, _ in notices] == ["gateway/deadletter/invalid-topic-vin"]
    assert len(notices[0][1]) < 300 and b"xxx" not in notices[0][1]
    assert orjson.loads(notices[0][1])["vehicle"] is None  # a hostile id is no vehicle
    audited = list(con.execute("select body from audit_entries where kind = 'decision'"))
    assert len(audited) == 1 and b"xxx" not in bytes(audited[0][0])


def test_a_payload_of_many_bad_records_is_kept_once(config: GatewayConfig) -> None:
    bad = [record(**{LATITUDE: "31.2", "pad": "y" * 50}) for _ in range(1000)]
    payload = orjson.dumps(bad)
    run(config, [Envelope(f"vehicles/{V1}/telemetry", payload, 0.0, 1)])
    con = db(config)
    rows = list(con.execute("select reason, length(payload) from deadletters order by seq"))
    assert len(rows) == 1000  # every bad record has its own dead letter and audit entry
    assert {r for r, _ in rows} == {"non-numeric-coordinate"}
    assert sum(n for _, n in rows) == len(payload)  # ... and the payload is kept once
    digests = {
        orjson.loads(bytes(b))["digest"]
        for (b,) in con.execute("select body from audit_entries where kind = 'decision'")
    }
    assert len(digests) == 1  # every entry names the one payload kept


def test_an_oversize_payload_keeps_its_size_digest_and_a_prefix(config: GatewayConfig) -> None:
    payload = orjson.dumps(record(pad="z" * 10_000_000))
    run(config, [Envelope(f"vehicles/{V1}/telemetry", payload, 0.0, 1)])
    con = db(config)
    [(reason, kept)] = list(con.execute("select reason, payload from deadletters"))
    assert reason == "oversize"
    assert len(kept) < 6000  # 4096 bytes of prefix, base64, and the size and digest
    summary = orjson.loads(kept)
    assert summary["size"] == len(payload)
    assert base64.b64decode(summary["prefix_base64"]) == payload[:4096]
    [(body,)] = list(con.execute("select body from audit_entries where kind = 'decision'"))
    assert orjson.loads(bytes(body))["digest"] == summary["digest"]
