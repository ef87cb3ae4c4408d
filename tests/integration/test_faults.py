"""Faults, each with a count check: the gateway killed with SIGKILL mid-stream and restarted;
the broker stopped gracefully and restarted mid-stream; messages published while the gateway
is down; a malformed and spoofed flood mixed into valid traffic; the policy edited and
reloaded mid-stream.

After each: every accepted record is audited exactly once per subscriber (or still held
back by trip-end trimming), every unusable input is dead-lettered, every committed view
reached its subscriber byte for byte, a view arrived twice only if it was in flight at a
crash (and then under the same message id, identical), no VIN and no WGS-84 position
reached anyone not qualified for it, the outbox is drained and the audit log verifies.

What these tests do not cover, by the broker's nature: Mosquitto killed with SIGKILL loses
whatever it had not yet saved to its persistence file (``autosave_interval``, 1 s here):
messages it had acknowledged to the publisher, or accepted from the gateway, and not yet
written or delivered are gone, and no counter reports them. A graceful stop saves
everything, which is what :func:`test_broker_restarted_mid_stream` relies on.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from gateway.config import load_config
from gateway.keys import init_keys
from gateway.pipeline.shape import record_part
from gateway.service import Gateway
from gateway.testing import MosquittoBroker, free_port
from simulators.fleet import Fleet, Kind, Message
from simulators.scenario import Batches, Faults, load_scenario
from tests.integration.conftest import MIXED, make_fleet
from tests.integration.harness import (
    LATITUDE,
    LONGITUDE,
    TIMESTAMP,
    VIN,
    BackgroundPublisher,
    Collector,
    Deployment,
    Expected,
    GatewayProcess,
    OutboxRow,
    Record,
    StoreState,
    as_messages,
    broker_counter,
    check_audit,
    check_delivery,
    check_no_leaks,
    merged,
    publish,
    read_store,
    settled,
    usable,
    verify_audit,
    wait_for,
)

pytestmark = pytest.mark.integration

VEHICLES, RATE, DURATION = 20, 2.0, 20.0
ALL = ("share/#", "gateway/deadletter/#")

MakeCollector = Callable[[str, Sequence[str]], Collector]


def traffic(seed: int) -> tuple[Fleet, list[Message]]:
    """20 vehicles at 2 Hz for 20 s of the mixed scenario."""
    fleet = make_fleet(VEHICLES, seed)
    return fleet, list(fleet.messages(DURATION, RATE))


def finish(
    gw: GatewayProcess,
    dep: Deployment,
    expected: Expected,
    out: Collector,
    *,
    may_repeat: set[int] | None = None,
    crashed: bool = False,
) -> tuple[int, int]:
    """Wait until settled, stop the gateway gracefully, run every check; return the repeated
    deliveries and the repeated dead letters."""
    settled(dep.store, expected, [out])
    assert gw.alive(), gw.tail()
    assert gw.terminate() == 0, gw.tail()
    state = read_store(dep.store)
    ring = dep.ring()
    fig = check_audit(
        state,
        expected,
        ring,
        dead_repeats_max=0,  # unusable inputs are de-duplicated like records
    )
    assert fig.views["mapco-nav"] > 0, "the qualified subscriber got nothing"
    views, notices = merged([out])
    repeats = check_delivery(state, views, notices, may_repeat=may_repeat or set())
    check_no_leaks(views, notices, expected, ring)
    verify_audit(dep)
    assert broker_counter(dep.broker, "publish/messages/dropped") == 0
    return repeats, fig.dead_repeats


@dataclass
class MidStream:
    """A gateway process deciding the first half of the traffic, published in the
    background, with a third of all accepted records decided already."""

    expected: Expected
    dep: Deployment
    out: Collector
    gw: GatewayProcess
    publisher: BackgroundPublisher
    rest: list[Message]


def mid_stream(
    seed: int,
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> MidStream:
    fleet, messages = traffic(seed)
    expected = Expected.of(messages)
    dep = deployment(fleet)
    out = collector("it-subscriber", ALL)
    gw = gateway_process(dep)
    gw.start()
    first, rest = messages[: len(messages) // 2], messages[len(messages) // 2 :]
    pub = BackgroundPublisher(broker, first, speedup=4)
    third = len(expected.accepted) // 3
    wait_for(lambda: True if read_store(dep.store).seen >= third else None, 60, "a third decided")
    return MidStream(expected, dep, out, gw, pub, rest)


def test_gateway_killed_mid_stream_and_restarted(
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> None:
    run = mid_stream(11, broker, deployment, gateway_process, collector)
    run.gw.kill()
    at_kill = read_store(run.dep.store)
    # Views committed and not confirmed at the kill: the only ones that may arrive twice.
    in_flight = {r.seq for r in at_kill.pending}
    assert 0 < at_kill.seen < len(run.expected.accepted)
    run.publisher.join()
    publish(broker, run.rest)  # while the gateway is dead: queued in its session
    run.gw.start()
    repeats, _ = finish(run.gw, run.dep, run.expected, run.out, may_repeat=in_flight, crashed=True)
    assert repeats <= len(in_flight)


def test_broker_restarted_mid_stream(
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> None:
    fleet, messages = traffic(seed=12)
    expected = Expected.of(messages)
    dep = deployment(fleet)
    out = collector("it-subscriber", ALL)
    gw = gateway_process(dep)
    gw.start()
    cut = len(messages) * 3 // 5
    publish(broker, messages[:cut])
    wait_for(lambda: True if read_store(dep.store).outbox else None, 60, "first outputs")
    broker.stop()  # graceful: Mosquitto saves sessions, queues and retained messages
    stopped_ms = time.time() * 1000
    assert read_store(dep.store).seen < len(expected.accepted)
    broker.start()
    publish(broker, messages[cut:])
    state = read_store(dep.store)
    # Only outputs committed before the stop can have been in flight at that moment.
    before_stop = {r.seq for r in state.outbox if r.created_ms <= stopped_ms}
    finish(gw, dep, expected, out, may_repeat=before_stop, crashed=True)


def _rows_of(
    state: StoreState, ids: dict[str, dict[str, Record]], keys: set[tuple[str, str]]
) -> list[OutboxRow]:
    """The committed views of these records."""
    return [r for r in state.outbox if r.subscriber and ids[r.subscriber][r.message_id].key in keys]


def test_broker_killed_loses_only_what_it_had_not_saved(
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> None:
    """SIGKILL on the broker loses what it had not saved (inputs it had confirmed, outputs
    it had confirmed to the gateway, sessions younger than the last autosave): the gateway
    cannot get those back. What still holds: nothing is audited twice, every record the
    gateway saw is decided for every subscriber alike, whatever arrives is exactly what was
    committed, and everything published once the broker is back goes through in full."""
    fleet, messages = traffic(seed=15)
    first, second = messages[: len(messages) // 2], messages[len(messages) // 2 :]
    dep = deployment(fleet)
    out = collector("it-subscriber", ALL)
    gw = gateway_process(dep)
    gw.start()
    publish(broker, first)
    wait_for(lambda: True if read_store(dep.store).outbox else None, 60, "first outputs")
    broker.kill()
    killed_ms = time.time() * 1000
    broker.start()
    wait_for(lambda: True if out.sessions >= 2 else None, 30, "the subscriber to be back")
    # Probe until the gateway is demonstrably reading again (its session may be gone).
    ring = dep.ring()
    template = orjson.loads(second[0].payload)
    template = template[0] if isinstance(template, list) else template
    vin = str(template[VIN])
    accepted = usable(template, vin)
    assert accepted is not None
    stamp = accepted.time  # every probe is a copy of the template under another msg_id
    probes: list[Message] = []

    def probe() -> bool | None:
        n = len(probes)
        probes.extend(
            as_messages(
                [(f"vehicles/{vin}/telemetry", orjson.dumps({**template, "msg_id": f"probe-{n}"}))],
                Kind.VALID,
            )
        )
        publish(broker, probes[-1:])
        seen = read_store(dep.store).seen_keys
        return (
            True
            if any(
                (ring.vehicle_ref(vin), ring.record_key(record_part(f"probe-{i}", stamp))) in seen
                for i in range(n + 1)
            )
            else None
        )

    wait_for(probe, 60, "the gateway to read again", interval=0.3)
    publish(broker, second)
    expected = Expected.of([*first, *probes, *second])
    # Records first published after the restart (not duplicates of earlier ones).
    must = set(Expected.of(second).accepted) - set(Expected.of(first).accepted)
    ids = expected.ids(ring)

    def through() -> bool | None:
        state = read_store(dep.store)
        decided = {ids["mapco-nav"][m].key for m in state.held.get("mapco-nav", [])}
        decided |= {
            ids["mapco-nav"][e.message_id].key for e in state.entries if e.subscriber == "mapco-nav"
        }
        if not must <= decided or state.pending:
            return None
        views, _ = out.snapshot()
        return True if all(r.message_id in views for r in _rows_of(state, ids, must)) else None

    wait_for(through, 120, "everything published after the restart to go through", 0.1)
    assert gw.alive(), gw.tail()
    assert gw.terminate() == 0, gw.tail()
    state = read_store(dep.store)
    fig = check_audit(state, expected, ring, dead_repeats_max=0, complete=False)
    assert must <= fig.decided
    views, notices = merged([out])
    before_kill = {r.seq for r in state.outbox if r.created_ms <= killed_ms}
    check_delivery(state, views, notices, may_repeat=before_kill, complete=False)
    lost = [r.seq for r in _rows_of(state, ids, must) if r.message_id not in views]
    assert not lost, f"views of records published after the restart lost: {lost}"
    check_no_leaks(views, notices, expected, ring)
    verify_audit(dep)


def test_broker_counts_what_it_drops(tmp_path: Path) -> None:
    """Mosquitto 2.0 publishes ``$SYS/broker/publish/messages/dropped``, messages dropped by
    queue or in-flight limits (here an offline persistent session with room for 5); the
    gateway exports it. The fault tests assert it is 0. (What a SIGKILLed broker loses is
    counted nowhere.)"""
    with MosquittoBroker(
        workdir=tmp_path / "small", extra_config="sys_interval 1\nmax_queued_messages 5"
    ) as small:
        away = Collector(small, "it-away", ["share/#"])
        away.close()
        publish(
            small, as_messages([(f"share/x/{i}/telemetry", b"{}") for i in range(20)], Kind.VALID)
        )
        dropped = wait_for(
            lambda: n if (n := broker_counter(small, "publish/messages/dropped")) >= 15 else None,
            30,
            "the drop counter",
            interval=0.5,
        )
        assert dropped == 15
        # ... and the gateway exports it as icvgw_broker_dropped_messages.
        init_keys(tmp_path / "keys")
        cfg = load_config(
            None,
            overrides={
                ("broker", "url"): small.url,
                ("broker", "protocol"): "5",
                ("store",): f"sqlite:///{tmp_path / 'gw.sqlite'}",
                ("keys",): str(tmp_path / "keys"),
            },
            environ={},
        )
        gw = Gateway(cfg)
        gw.start(timeout=10)
        try:
            gauge = wait_for(
                lambda: (
                    gw.metrics.registry.get_sample_value("icvgw_broker_dropped_messages") or None
                ),
                30,
                "the exported drop counter",
                interval=0.2,
            )
        finally:
            gw.stop()
            gw.shutdown(drain_timeout=1)
        assert gauge == 15


def test_messages_published_while_gateway_is_down(
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> None:
    fleet, messages = traffic(seed=13)
    cut = len(messages) // 2
    dep = deployment(fleet)
    out = collector("it-subscriber", ALL)
    gw = gateway_process(dep)
    gw.start()
    publish(broker, messages[:cut])
    settled(dep.store, Expected.of(messages[:cut]), [out])
    assert gw.terminate() == 0, gw.tail()
    publish(broker, messages[cut:])  # nobody is reading: the broker queues them
    gw.start()
    # A graceful stop leaves nothing in flight: no repeat of any kind is allowed.
    repeats, dead_repeats = finish(gw, dep, Expected.of(messages), out)
    assert (repeats, dead_repeats) == (0, 0)


def _flood(fleet: Fleet, messages: list[Message], seed: int) -> list[Message]:
    """The fleet's own (already messy) traffic with hand-made garbage mixed in."""
    rng = np.random.default_rng(seed)
    vins = fleet.vins
    samples: list[dict[str, object]] = []
    for m in messages:
        if m.kind is Kind.VALID:
            doc = orjson.loads(m.payload)
            samples.extend(doc if isinstance(doc, list) else [doc])

    def topic(vin: str) -> str:
        return f"vehicles/{vin}/telemetry"

    def sample() -> dict[str, object]:
        return dict(samples[int(rng.integers(len(samples)))])

    def fresh(s: dict[str, object], tag: str) -> dict[str, object]:
        return {**s, "msg_id": f"{s['msg_id']}-{tag}"}

    bad: list[tuple[str, bytes]] = []
    for _ in range(20):  # binary noise
        bad.append(
            (topic(vins[int(rng.integers(len(vins)))]), rng.bytes(int(rng.integers(1, 400))))
        )
    bad.append((topic(vins[0]), b'{"pad": "' + b"x" * 300_000 + b'"}'))  # oversize
    bad.append((topic(vins[1]), b"[" * 3000 + b"]" * 3000))  # nested beyond any parser limit
    bad.append((topic(vins[2]), b'{"Vehicle.Speed": NaN}'))  # not JSON
    bad.append((topic(vins[3]), b"[]"))  # empty
    bad.append((topic(vins[4]), b"true"))  # not an object
    # More records in one payload than the bundle allows (rules.yaml max_records_per_payload).
    s0 = sample()
    many = [{VIN: s0[VIN], TIMESTAMP: s0[TIMESTAMP], "msg_id": f"many-{i}"} for i in range(1001)]
    bad.append((topic(str(s0[VIN])), orjson.dumps(many)))
    record_breakers: list[Callable[[dict[str, object]], dict[str, object]]] = [
        lambda s: {**s, LATITUDE: True},
        lambda s: {**s, LATITUDE: "31.2"},
        lambda s: {k: v for k, v in s.items() if k != LONGITUDE},
        lambda s: {**s, LONGITUDE: 181.0},
        lambda s: {**s, TIMESTAMP: str(s[TIMESTAMP]).rstrip("Z")},  # no UTC offset
        lambda s: {**s, TIMESTAMP: 1e12},
        lambda s: {**s, VIN: ""},
        lambda s: {**s, VIN: 12345},
    ]
    for i in range(40):
        s = sample()
        broken = record_breakers[i % len(record_breakers)](fresh(s, f"bad{i}"))
        bad.append((topic(str(s[VIN])), orjson.dumps(broken)))
        # a batch with one broken record among good ones (the good ones are accepted)
        good = fresh(sample(), f"mix{i}")
        bad.append((topic(str(good[VIN])), orjson.dumps([good, {**broken, VIN: good[VIN]}])))
    for i in range(60):  # spoofed: one vehicle publishing for another
        s = fresh(sample(), f"spoof{i}")
        other = vins[(vins.index(str(s[VIN])) + 1 + int(rng.integers(len(vins) - 1))) % len(vins)]
        bad.append((topic(other), orjson.dumps(s)))
    s = fresh(sample(), "no-topic-vin")
    bad.append(("vehicles//telemetry", orjson.dumps(s)))
    # A vehicle nobody registered (a valid VIN, in no consent): usable, and never disclosed.
    stranger = "LSGUNREG8N9000042"
    s = {**sample(), VIN: stranger, "msg_id": "stranger-1"}
    bad.append((topic(stranger), orjson.dumps(s)))
    out = list(messages)
    for item in as_messages(bad, Kind.MALFORMED):
        out.insert(int(rng.integers(len(out) + 1)), item)
    # Replays of real records carrying an unclassified field with the VIN, sent before the
    # original: the replay is the copy decided, so the field must be stripped from every view.
    for _ in range(30):
        index = int(rng.integers(len(out)))
        m = out[index]
        if m.kind is not Kind.VALID:
            continue
        doc = orjson.loads(m.payload)
        first = doc[0] if isinstance(doc, list) else doc
        replay = {**first, "OEM.Debug.Owner": f"owner of {first[VIN]}"}
        out.insert(index, Message(m.topic, orjson.dumps(replay), Kind.DUPLICATE, m.at, 1))
    return out


def test_malformed_and_spoofed_flood(
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> None:
    scenario = load_scenario(MIXED).model_copy(
        update={
            "faults": Faults(malformed=0.15, spoofed_vin=0.15, duplicate=0.1, out_of_order=0.05),
            "batches": Batches(share=0.2, size=(2, 10)),
        }
    )
    fleet = make_fleet(VEHICLES, 14, scenario)
    messages = _flood(fleet, list(fleet.messages(DURATION, RATE)), seed=14)
    expected = Expected.of(messages)
    assert sum(expected.dead.values()) > len(messages) // 5  # a flood indeed
    dep = deployment(fleet)
    out = collector("it-subscriber", ALL)
    gw = gateway_process(dep)
    gw.start()
    # A batch holding nothing but one unusable payload: no record at all to decide.
    lone = as_messages([(f"vehicles/{fleet.vins[0]}/telemetry", b"\x00garbage")], Kind.MALFORMED)
    publish(broker, lone)
    wait_for(lambda: True if read_store(dep.store).entries else None, 30, "the lone dead letter")
    publish(broker, messages)
    repeats, dead_repeats = finish(gw, dep, Expected.of([*lone, *messages]), out)
    assert (repeats, dead_repeats) == (0, 0)
    _, notices = out.snapshot()
    reasons = {copies[0].topic.removeprefix("gateway/deadletter/") for copies in notices.values()}
    assert reasons >= {
        "oversize",
        "not-json",
        "not-object",
        "empty",
        "too-many-records",
        "vehicle-id-mismatch",
        "missing-vehicle-id",
        "bad-timestamp",
        "non-numeric-coordinate",
        "missing-coordinate",
        "coordinate-out-of-range",
    }, reasons


def test_policy_reloaded_mid_stream(
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> None:
    """An operator edits the bundle and sends SIGHUP while vehicles drive: the new version
    comes into force between two batches, audited, and nothing is lost or repeated."""
    run = mid_stream(17, broker, deployment, gateway_process, collector)
    rules = run.dep.policies / "rules.yaml"
    text = rules.read_text(encoding="utf-8")
    assert "dedup_window_s: 86400" in text
    # A new version that decides every record alike: the counts below stay exact.
    rules.write_text(text.replace("dedup_window_s: 86400", "dedup_window_s: 86401"))
    run.gw.reload()
    # The rest is published once the new version is in force (loaded in a child process).
    wait_for(lambda: True if len(_loaded(run.dep)) == 2 else None, 60, "the new version")
    run.publisher.join()
    publish(broker, run.rest)
    repeats, _ = finish(run.gw, run.dep, run.expected, run.out)
    assert repeats == 0
    loaded = _loaded(run.dep)
    with closing(sqlite3.connect(f"file:{run.dep.store}?mode=ro", uri=True)) as db:
        used = [
            orjson.loads(body)["policy"]
            for (body,) in db.execute(
                "select body from audit_entries where kind = 'decision' order by seq"
            )
        ]
    assert len(loaded) == 2 and loaded[0] != loaded[1], loaded
    # Decisions name the version in force when they were made: the first, then the second.
    switch = used.index(loaded[1])
    assert set(used[:switch]) == {loaded[0]} and set(used[switch:]) == {loaded[1]}


def _loaded(dep: Deployment) -> list[str]:
    """The policy versions audited as loaded, in order."""
    with closing(sqlite3.connect(f"file:{dep.store}?mode=ro", uri=True, timeout=30)) as db:
        bodies = db.execute("select body from audit_entries where kind = 'admin' order by seq")
        docs = [orjson.loads(body) for (body,) in bodies]
    return [d["subject"] for d in docs if d["action"] == "policy.loaded"]


def test_a_broker_that_cannot_be_reached_is_named_and_sigterm_stops_the_wait(
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
) -> None:
    dep = deployment(make_fleet(2, 1))
    closed = f"mqtt://127.0.0.1:{free_port()}"
    dep.config.write_text(dep.config.read_text().replace(dep.broker.url, closed))
    gw = gateway_process(dep)
    gw.launch()
    assert gw.log is not None and gw.proc is not None
    log = gw.log
    wait_for(
        lambda: True if b"connection refused by 127.0.0.1" in log.read_bytes() else None,
        20,
        "the reason in the log",
    )
    t0 = time.monotonic()
    assert gw.terminate(10) == 0
    assert time.monotonic() - t0 < 3
    assert b"stopped while connecting" in log.read_bytes()
    assert b"Traceback" not in log.read_bytes()


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[Path]:
    """A ``size_mb`` MB tmpfs mounted at ``path`` (the tests run as root, as in CI)."""
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(disk: Path) -> Path:
    """Write a file on ``disk`` until the disk is full; return it (delete it to free)."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * (1 << 16))
    finally:
        os.close(fd)
    return ballast


def test_store_disk_full_holds_input_and_resumes_when_space_returns(
    tmp_path: Path,
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> None:
    fleet, messages = traffic(seed=17)
    expected = Expected.of(messages)
    dep = deployment(fleet)
    with small_disk(tmp_path / "disk", 64) as disk:
        dep = replace(dep, store=disk / "store.sqlite")
        (disk / "keys").symlink_to(dep.keys)  # where read_store looks: beside the store
        text = dep.config.read_text()
        dep.config.write_text(text.replace("sqlite:///store.sqlite", f"sqlite:///{dep.store}"))
        out = collector("it-subscriber", ALL)
        gw = gateway_process(dep)
        gw.start()
        half = len(messages) // 2
        publish(broker, messages[:half])
        wait_for(lambda: True if read_store(dep.store).seen > 0 else None, 60, "first records")
        ballast = fill_disk(disk)
        publish(broker, messages[half:])  # the broker confirms: it holds what is not acked
        assert gw.log is not None
        log = gw.log
        wait_for(lambda: True if b"store failing:" in log.read_bytes() else None, 60, "failing")
        seen = read_store(dep.store).seen
        time.sleep(3.0)
        assert gw.alive(), gw.tail()
        assert read_store(dep.store).seen == seen, "records committed on a full disk"
        assert seen < len(expected.accepted)
        ballast.unlink()  # space returns: the gateway resumes by itself
        finish(gw, dep, expected, out)
        text = log.read_text()
        assert text.count("store failing:") == 1, gw.tail(60)
        assert "store takes writes again" in text
        assert "Traceback" not in text, gw.tail(60)
        with contextlib.closing(sqlite3.connect(dep.store)) as con:
            (size,) = con.execute("select max(seq) + 1 from audit_entries").fetchone()
            (covered,) = con.execute("select max(size) from audit_checkpoints").fetchone()
        assert covered == size, "the final checkpoint does not cover the log"


def test_stopped_while_the_store_disk_is_full_then_restarted(
    tmp_path: Path,
    broker: MosquittoBroker,
    deployment: Callable[[Fleet], Deployment],
    gateway_process: Callable[[Deployment], GatewayProcess],
    collector: MakeCollector,
) -> None:
    fleet, messages = traffic(seed=18)
    expected = Expected.of(messages)
    dep = deployment(fleet)
    with small_disk(tmp_path / "disk", 64) as disk:
        dep = replace(dep, store=disk / "store.sqlite")
        (disk / "keys").symlink_to(dep.keys)  # where read_store looks: beside the store
        text = dep.config.read_text()
        dep.config.write_text(text.replace("sqlite:///store.sqlite", f"sqlite:///{dep.store}"))
        out = collector("it-subscriber", ALL)
        gw = gateway_process(dep)
        gw.start()
        half = len(messages) // 2
        publish(broker, messages[:half])
        wait_for(lambda: True if read_store(dep.store).seen > 0 else None, 60, "first records")
        ballast = fill_disk(disk)
        publish(broker, messages[half:])
        assert gw.log is not None
        log = gw.log
        wait_for(lambda: True if b"store failing:" in log.read_bytes() else None, 60, "failing")
        t0 = time.monotonic()
        code = gw.terminate(60)
        assert time.monotonic() - t0 < 20
        text = log.read_text()
        # A small write may still fit on a full disk (SQLite reuses its log file): the final
        # checkpoint is then written (exit 0); if not, one line says so (exit 1).
        assert text.count("final checkpoint not written") == code, gw.tail(60)
        assert "Traceback" not in text, gw.tail(60)
        # Views whose confirmation could not be recorded are sent again, same message id.
        unmarked = {r.seq for r in read_store(dep.store).pending}
        ballast.unlink()
        gw.start()  # nothing acknowledged was lost: the broker redelivers the rest
        repeats, _ = finish(gw, dep, expected, out, may_repeat=unmarked)
        assert repeats <= len(unmarked)
        assert "Traceback" not in gw.tail(10_000)
