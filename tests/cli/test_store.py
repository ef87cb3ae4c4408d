"""``icvgw deadletter`` and ``icvgw vehicle erase`` against a store a real gateway wrote."""

from __future__ import annotations

import sqlite3
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from gateway.audit.verify import verify_store
from gateway.cli.main import app
from gateway.config import GatewayConfig
from gateway.keys import KeyRing, init_keys
from gateway.model import Envelope
from gateway.service import Gateway, origin_of
from gateway.store import Reader, open_store
from gateway.store.audit import AuditQuery
from gateway.testing import offline_config
from simulators.fleet import Fleet, FleetConfig

WORKER = "gw-1"
SHARD = origin_of(WORKER)


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    return offline_config(tmp_path, worker=WORKER)


def run_gateway(config: GatewayConfig, envelopes: list[Envelope]) -> None:
    gw = Gateway(config)
    try:
        for i in range(0, len(envelopes), 50):
            gw.process(envelopes[i : i + 50])
    finally:
        gw.store.close()


def fleet(vehicles: int, seconds: float) -> tuple[list[Envelope], list[str]]:
    f = Fleet(FleetConfig(vehicles=vehicles), seed=7)
    msgs = list(f.messages(seconds, 1.0))
    vins = sorted({m.topic.split("/")[1] for m in msgs})
    return [Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(msgs)], vins


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def rows_of(config: GatewayConfig, refs: list[str]) -> Counter[str]:
    """Rows each working table holds of the vehicle with references ``refs``."""
    marks = ",".join("?" for _ in refs)
    via_audit = f"(shard, seq) in (select shard, seq from audit_entries where vehicle in ({marks}))"
    out: Counter[str] = Counter()
    with open_store(config.store, migrate=False) as s, s.snapshot() as rd:
        for table, where in (
            ("vehicle_state", f"vehicle in ({marks})"),
            ("dedup", f"vehicle in ({marks})"),
            ("outbox", via_audit),
            ("deadletters", via_audit),
        ):
            out[table] = rd.fetch_one(f"select count(*) from {table} where {where}", refs)[0]
    return out


def test_deadletters_are_listed_without_content_and_shown_with_the_keys(
    config: GatewayConfig,
) -> None:
    vin = "LSVAU2180N2183294"
    bad = Envelope(f"vehicles/{vin}/telemetry", b'{"lat": 31.2304412', 0.0, 1)
    run_gateway(config, [bad])
    listed = cli("deadletter", "list", "--store", config.store)
    ref = KeyRing.load(config.keys).vehicle_ref(vin)
    assert "not-json" in listed and ref in listed and "18 B" in listed
    assert vin not in listed and "31.23" not in listed
    seq = listed.split()[0]
    shown = cli("deadletter", "show", "--store", config.store, "--keys", str(config.keys), seq)
    assert f"topic: vehicles/{vin}/telemetry" in shown and '{"lat": 31.2304412' in shown
    with open_store(config.store, migrate=False) as s, s.snapshot() as rd:
        reads = list(rd.query(AuditQuery(kind="admin", decision="deadletter.read")))
    assert len(reads) == 1


def test_erasing_a_vehicle_removes_its_data_and_nothing_else(config: GatewayConfig) -> None:
    envelopes, vins = fleet(3, 120)
    gone, kept = vins[0], vins[1:]
    bad = Envelope(f"vehicles/{gone}/telemetry", b"not json", 0.0, 9999)
    run_gateway(config, [*envelopes, bad])
    ring = KeyRing.load(config.keys)
    cli(
        "consent", "grant", "--store", config.store, "--keys", str(config.keys), "--vin", gone,
        "--purpose", "navigation-map", "--expires", "2099-01-01T00:00:00+08:00", "--id", "c-gone",
    )  # fmt: skip
    before = {v: rows_of(config, ring.vehicle_refs(v)) for v in vins}
    assert all(before[gone][t] > 0 for t in ("vehicle_state", "dedup", "outbox", "deadletters"))
    with open_store(config.store, migrate=False) as s, s.snapshot() as rd:
        entries_before = rd.shard_state(SHARD)

    out = cli(
        "vehicle", "erase", "--store", config.store, "--keys", str(config.keys), "--vin", gone
    )
    assert ring.vehicle_ref(gone) in out and gone not in out
    assert "warning" not in out  # compacted: no older copy of the erased pages remains

    assert rows_of(config, ring.vehicle_refs(gone)) == Counter(
        {"vehicle_state": 0, "dedup": 0, "outbox": 0, "deadletters": 0}
    )
    assert {v: rows_of(config, ring.vehicle_refs(v)) for v in kept} == {v: before[v] for v in kept}
    with open_store(config.store, migrate=False) as s, s.snapshot() as rd:
        assert entries_before is not None
        erased = list(rd.query(AuditQuery(kind="admin", decision="vehicle.erased")))
        assert len(erased) == 1 and erased[0].body is not None
        assert ring.vehicle_ref(gone).encode() in erased[0].body
        assert gone.encode() not in erased[0].body
        consent = rd.consent("c-gone")
        assert consent is not None and consent.revoked is not None
        # The log keeps the vehicle's earlier entries, and still verifies.
        head = rd.shard_state(SHARD)
        assert head is not None and head.size > entries_before.size
    with open_store(config.store, migrate=False) as s:
        reports = verify_store(s, ring.verifiers(SHARD), shards=[SHARD])
    assert reports and all(r.error is None for r in reports), reports
    # A restarted gateway finds no state of the erased vehicle, the others' intact.
    gw = Gateway(config)
    try:
        assert gone not in gw.state.trips and set(kept) <= set(gw.state.trips)
    finally:
        gw.store.close()


def _needles(envelopes: list[Envelope], vins: list[str]) -> dict[bytes, str]:
    """The run's VINs (any case) and every input coordinate as JSON, as 5 and 4 decimals and
    as a float64 either way round."""
    out = {b: f"VIN {v}" for v in vins for b in (v.encode(), v.lower().encode())}
    for env in envelopes:
        doc = orjson.loads(env.payload)
        for name in ("Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"):
            v = doc[name]
            for form in (
                orjson.dumps(v),
                f"{v:.5f}".encode(),
                f"{v:.4f}".encode(),
                struct.pack("<d", v),
                struct.pack(">d", v),
            ):
                out[form] = f"coordinate {v}"
    return out


def _every_value(rd: Reader, kind: str) -> list[tuple[str, bytes]]:
    """(table, value as bytes) for every value of every table of the store."""
    if kind == "sqlite":
        tables = [r[0] for r in rd.fetch_all("select name from sqlite_master where type = 'table'")]
    else:
        tables = [
            r[0]
            for r in rd.fetch_all(
                "select table_name from information_schema.tables "
                "where table_schema = current_schema()"
            )
        ]
    out: list[tuple[str, bytes]] = []
    for table in tables:
        for row in rd.fetch_all(f"select * from {table}"):
            out += [(table, _as_bytes(v)) for v in row if v is not None]
    return out


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    if isinstance(v, float):
        return repr(v).encode() + struct.pack("<d", v)
    return str(v).encode()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_no_table_holds_a_vin_or_an_input_coordinate(
    config: GatewayConfig, backend: str, request: pytest.FixtureRequest
) -> None:
    """Every column of every table, on both databases, after a run with views, held
    views, dead letters (one whose topic names no vehicle), a consent and an erasure."""
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        config = config.model_copy(update={"store": url})
    envelopes, vins = fleet(3, 120)
    gone = vins[0]
    first = envelopes[0].payload
    bad = [
        Envelope(f"vehicles/{vins[1]}/telemetry", first[:-9], 0.0, 9001),  # cut short
        Envelope("fleet/upload", first, 0.0, 9002),  # no vehicle in the topic
        Envelope(f"vehicles/{vins[2]}/telemetry", first, 0.0, 9003),  # another vehicle's
    ]
    run_gateway(config, [*envelopes, *bad])
    cli(
        "consent", "grant", "--store", config.store, "--keys", str(config.keys), "--vin",
        vins[1], "--purpose", "navigation-map", "--expires", "2099-01-01T00:00:00+08:00",
    )  # fmt: skip
    cli("vehicle", "erase", "--store", config.store, "--keys", str(config.keys), "--vin", gone)
    needles = _needles(envelopes, vins)
    with open_store(config.store, migrate=False) as s, s.snapshot() as rd:
        values = _every_value(rd, backend)
        assert rd.fetch_one("select count(*) from deadletters")[0] > 0
    assert {t for t, _ in values} >= {"vehicle_state", "outbox", "dedup", "audit_entries"}
    found = {f"{t}: {what}" for t, data in values for n, what in needles.items() if n in data}
    assert found == set()


def test_a_dead_letter_written_out_is_readable_by_its_owner_only(
    config: GatewayConfig, tmp_path: Path
) -> None:
    vin = "LSVAU2180N2183294"
    run_gateway(config, [Envelope(f"vehicles/{vin}/telemetry", b'{"lat": 31.2304412', 0.0, 1)])
    seq = cli("deadletter", "list", "--store", config.store).split()[0]
    out = tmp_path / "letter.bin"
    out.write_bytes(b"")
    out.chmod(0o644)  # an existing file keeps no wider mode either
    cli("deadletter", "show", "--store", config.store, "--keys", str(config.keys), seq,
        "--out", str(out))  # fmt: skip
    assert out.read_bytes() == b'{"lat": 31.2304412'
    assert out.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("rotated", [False, True])
def test_erase_counts_the_held_views_it_deletes(tmp_path: Path, rotated: bool) -> None:
    """Also when the VIN is typed in lower case, or the state is still stored under the
    reference of an older HMAC key (rotated while the worker was stopped)."""
    from gateway.cli.store import erase
    from gateway.keys import KeyKind, rotate_keys
    from gateway.store.vehicle_states import save_vehicle_state

    vin = "LSVAU2180N2183294"
    held = ["s", 0.0, 1.0, 31.2304412, 121.4737021, "m1", "share", [], {}, None, None, {}]
    doc = orjson.dumps({"v": 1, "trip": None, "last_sent": {}, "held": [held, held]})
    ring = init_keys(tmp_path / "keys")
    url = f"sqlite:///{tmp_path / 's.db'}"
    with open_store(url, shard=SHARD, keys=ring) as s, s.transaction() as tx:
        save_vehicle_state(tx, {vin: doc}, 5)
    if rotated:
        ring = rotate_keys(ring.directory, [KeyKind.HMAC])
    with open_store(url, shard=SHARD, keys=ring) as s, s.transaction() as tx:
        details = erase(tx, ring, vin.lower(), at=1e9, instance=WORKER)
    assert details["vehicle_state"] == 1 and details["held_views"] == 2


@pytest.mark.parametrize("vin", ["LSVAU2180N218329", "LSVAU2180N2183294X", "LSVAU2180N21832O4", ""])
def test_erase_refuses_what_is_not_a_vin_and_audits_nothing(
    config: GatewayConfig, vin: str
) -> None:
    """A mistyped VIN erases nothing: it must not be reported (and audited) as an erasure."""
    Gateway(config).store.close()  # a store to erase from
    result = CliRunner().invoke(
        app, ["vehicle", "erase", "--store", config.store, "--keys", str(config.keys), "--vin", vin]
    )
    assert result.exit_code == 2, result.output
    assert "not a VIN" in result.output and "Traceback" not in result.output
    with sqlite3.connect(config.store.removeprefix("sqlite:///")) as con:
        bodies = [b for (b,) in con.execute("select body from audit_entries where kind='admin'")]
    assert not any(b"vehicle.erased" in bytes(b) for b in bodies)
