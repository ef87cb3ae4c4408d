"""The integration harness: a deployed gateway, its subscribers, and what must be true.

Everything here talks to real processes: a Mosquitto broker (``gateway.testing``), the
gateway as ``python -m gateway run`` (or in-process for the end-to-end test), MQTT 5
subscriber clients with persistent sessions, and the gateway's SQLite store read
read-only while the gateway writes it.

What the tests expect is computed here from the bytes they published, with a per-record
reference of the decode rules written independently of ``gateway.pipeline.decode``:
which records are accepted (unique ``(vehicle, msg_id)`` among usable records), which
payloads and records must be dead-lettered, and so, per subscriber, which output message
ids (``gateway.pipeline.shape.message_id``) must be in the audit log.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.keys import KeyRing, init_keys
from gateway.pipeline.shape import message_ids, record_part
from gateway.policy.codes import is_valid_vin
from gateway.resources import default_policy_dir
from gateway.service import origin_of
from gateway.store.sealing import row_aad
from gateway.testing import MosquittoBroker, free_port
from gateway.vss import LATITUDE, LONGITUDE, TIMESTAMP, VIN
from simulators.fleet import Fleet, Kind, Message
from simulators.publish import Publisher, PublishStats, publish_messages

WORKER = "gw-it"
ORIGIN = origin_of(WORKER)
SUBSCRIBERS = ("mapco-nav", "insureco-ubi", "sh-traffic", "oem-hq-de")
QUALIFIED = frozenset({"mapco-nav"})
"""The only subscriber of the default bundle allowed raw WGS-84 positions."""
PURPOSES = ("navigation-map", "usage-based-insurance", "traffic-management", "product-quality")
QUEUE_BOUND = 200
"""The gateway's ingest queue and MQTT 5 Receive Maximum: at most this many input messages
are unacknowledged at any moment, so at most these can be redelivered after a crash."""

_INGEST = yaml.safe_load((default_policy_dir() / "rules.yaml").read_text(encoding="utf-8"))[
    "ingest"
]
MAX_PAYLOAD: int = _INGEST["max_payload_bytes"]
MAX_RECORDS: int = _INGEST["max_records_per_payload"]

T = TypeVar("T")


# -- waiting -------------------------------------------------------------------------------


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- deployment ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """The files one gateway worker runs from: bundle, keys, config, store."""

    root: Path
    broker: MosquittoBroker
    config: Path
    keys: Path
    store: Path
    policies: Path

    @property
    def store_url(self) -> str:
        """The store as the gateway's config names it."""
        return f"sqlite:///{self.store}"

    def ring(self) -> KeyRing:
        """The gateway's key ring (the tests created it, so they may read it)."""
        return KeyRing.load(self.keys)


def deploy(root: Path, broker: MosquittoBroker, fleet: Fleet) -> Deployment:
    """Write a deployment under ``root``: the default bundle plus a consent for every purpose
    for each of the fleet's consenting vehicles (valid around the fleet's start), a fresh
    key directory, and a ``gateway.yaml`` reading ``broker`` over MQTT 5."""
    policies = root / "policies"
    shutil.copytree(default_policy_dir(), policies)
    consents_file = policies / "consents.yaml"
    doc = yaml.safe_load(consents_file.read_text(encoding="utf-8"))
    start = fleet.config.start
    for i, vin in enumerate(fleet.consenting_vins):
        for purpose in PURPOSES:
            doc["consents"].append(
                {
                    "id": f"it-{i}-{purpose}",
                    "vin": vin,
                    "purpose": purpose,
                    "granted": (start - timedelta(days=30)).isoformat(),
                    "expires": (start + timedelta(days=365)).isoformat(),
                }
            )
    consents_file.write_text(
        yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    keys = root / "keys"
    init_keys(keys)
    config = {
        "worker": WORKER,
        "broker": {"url": broker.url, "protocol": "5"},
        "input": {"queue_bound": QUEUE_BOUND, "batch_max": QUEUE_BOUND},
        "output": {"max_inflight": 200},
        "checkpoint": {"every_seconds": 2.0},
        "api": {"port": 0},  # icvgw run's API process on a free port, not the shared 8080
        "metrics": {"port": free_port()},  # nor the shared 9464
        "policies": "policies",
        "store": "sqlite:///store.sqlite",
        "keys": "keys",
    }
    path = root / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return Deployment(root, broker, path, keys, root / "store.sqlite", policies)


class GatewayProcess:
    """``python -m gateway run --config FILE`` as a child process of the test.

    Only this object's own child is ever signalled, by its pid.
    """

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log: Path | None = None

    def launch(self) -> None:
        """Start the gateway; do not wait for it."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.log = self.deployment.root / f"gateway-{self.starts}.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.deployment.config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.deployment.root,
            )

    def start(self, timeout: float = 60.0) -> None:
        """Start the gateway and wait until it is connected and subscribed."""
        self.launch()
        proc, log = self.proc, self.log
        assert proc is not None and log is not None

        def running() -> bool | None:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited with {proc.returncode}:\n{self.tail()}")
            return True if b"running; store" in log.read_bytes() else None

        wait_for(running, timeout, "the gateway to connect and subscribe")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final checkpoint, nothing flushed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def reload(self) -> None:
        """SIGHUP: load the policy bundle again (on the gateway's policy thread)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: finish the batch, drain the outbox, checkpoint); the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The end of the current run's log, for failure messages."""
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Kill the child if it is still running."""
        if self.alive():
            self.kill()


# -- subscribers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """One delivery of one message as a subscriber received it."""

    topic: str
    payload: bytes
    doc: dict[str, Any]


class Collector:
    """A subscriber client: persistent MQTT 5 session (``clean_start=False``, session
    expiry), QoS 1 subscriptions, automatic reconnects. Views are keyed by ``message_id``,
    dead-letter notices by ``audit_seq``; every copy is kept, so repeats are counted."""

    def __init__(self, broker: MosquittoBroker, name: str, topics: Sequence[str]) -> None:
        self.name = name
        self.topics = list(topics)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.views: dict[str, list[Copy]] = {}
        self.notices: dict[int, list[Copy]] = {}
        self.unparsed: list[tuple[str, bytes]] = []
        self.sessions = 0
        """How many times the client has been connected and subscribed (or found its
        session, subscriptions included, still on the broker)."""
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        props.ReceiveMaximum = 2000
        self.client.connect_async(
            broker.host, broker.port, clean_start=False, properties=props, keepalive=30
        )
        self.client.loop_start()
        if not self._subscribed.wait(15):
            self.close()
            raise AssertionError(f"subscriber {name} could not subscribe to {topics}")

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        if flags.session_present:  # the broker kept the session and its subscriptions
            self._ready()
        else:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _m: int, codes: Any, _p: Any) -> None:
        if not any(code.is_failure for code in codes):
            self._ready()

    def _ready(self) -> None:
        with self._lock:
            self.sessions += 1
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            doc = None
        with self._lock:
            if not isinstance(doc, dict):
                self.unparsed.append((msg.topic, payload))
            elif msg.topic.startswith("gateway/deadletter/"):
                self.notices.setdefault(int(doc["audit_seq"]), []).append(
                    Copy(msg.topic, payload, doc)
                )
            else:
                self.views.setdefault(str(doc.get("message_id")), []).append(
                    Copy(msg.topic, payload, doc)
                )

    def snapshot(self) -> tuple[dict[str, list[Copy]], dict[int, list[Copy]]]:
        """Copies of what arrived so far: views by message id, notices by audit seq."""
        with self._lock:
            return (
                {k: list(v) for k, v in self.views.items()},
                {k: list(v) for k, v in self.notices.items()},
            )

    def close(self) -> None:
        """Disconnect (the session stays on the broker until it expires)."""
        self.client.disconnect()
        self.client.loop_stop()


def merged(collectors: Iterable[Collector]) -> tuple[dict[str, list[Copy]], dict[int, list[Copy]]]:
    """Everything several collectors received, as one (and every output is a JSON object)."""
    views: dict[str, list[Copy]] = {}
    notices: dict[int, list[Copy]] = {}
    for c in collectors:
        assert not c.unparsed, f"{c.name} received an output that is not a JSON object"
        v, n = c.snapshot()
        for k, copies in v.items():
            views.setdefault(k, []).extend(copies)
        for s, copies in n.items():
            notices.setdefault(s, []).extend(copies)
    return views, notices


# -- publishing ----------------------------------------------------------------------------


def publish(
    broker: MosquittoBroker, messages: Sequence[Message], speedup: float = 0
) -> PublishStats:
    """Publish at QoS 1 with at most 200 unacknowledged messages; every one confirmed."""
    with Publisher(broker.url, max_inflight=200, timeout=60) as pub:
        stats = publish_messages(messages, pub, speedup=speedup)
    assert stats.messages == len(messages), f"broker confirmed {stats.messages}/{len(messages)}"
    assert stats.refused == 0
    return stats


class BackgroundPublisher:
    """:func:`publish` in a thread, so the test can crash things while traffic flows."""

    def __init__(self, broker: MosquittoBroker, messages: Sequence[Message], speedup: float):
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                publish(broker, messages, speedup)
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, name="it-publisher", daemon=True)
        self.thread.start()

    def join(self, timeout: float = 120.0) -> None:
        """Wait for every message to be confirmed; re-raise what went wrong."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "publisher did not finish"
        if self.error is not None:
            raise self.error


def as_messages(items: Iterable[tuple[str, bytes]], kind: Kind, at: float = 0.0) -> list[Message]:
    """Hand-made payloads as simulator messages (for the publisher's bookkeeping only)."""
    return [Message(topic, payload, kind, at, 0) for topic, payload in items]


# -- what must happen: a per-record reference of the decode rules ---------------------------


@dataclass(frozen=True)
class Record:
    """One accepted input record."""

    vin: str
    record_id: str | None
    time: float
    lat: float | None
    lon: float | None

    @property
    def key(self) -> tuple[str, str]:
        """The de-duplication key: vehicle, time and ``msg_id`` (a reused ``msg_id`` with
        another time is another record)."""
        return (self.vin, record_part(self.record_id, self.time))


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        v = float(value)
        return v if math.isfinite(v) and 0 <= v < 1e11 else None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed.timestamp() if parsed.tzinfo is not None else None
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def usable(item: Any, topic_vin: str | None) -> Record | None:
    """The record ``item`` if the gateway must accept it, else None (a dead letter)."""
    if not isinstance(item, dict):
        return None
    vin = item.get(VIN)
    if not isinstance(vin, str) or not is_valid_vin(vin) or vin != topic_vin:
        return None
    t = _timestamp(item.get(TIMESTAMP))
    if t is None:
        return None
    raw_lat, raw_lon = item.get(LATITUDE), item.get(LONGITUDE)
    lat = lon = None
    if raw_lat is not None or raw_lon is not None:
        lat, lon = _number(raw_lat), _number(raw_lon)
        if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
            return None
    mid = item.get("msg_id")
    record_id = str(mid) if isinstance(mid, (str, int)) and not isinstance(mid, bool) else None
    return Record(vin, record_id, t, lat, lon)


@dataclass
class Expected:
    """What the published inputs oblige the gateway to do."""

    accepted: dict[tuple[str, str], Record] = field(default_factory=dict)
    dead: Counter[bytes] = field(default_factory=Counter)
    """Unusable payloads, counted once per payload-level failure and once per bad record."""
    vins: set[str] = field(default_factory=set)
    coords: set[tuple[float, float]] = field(default_factory=set)
    most_dead_in_one: int = 0
    """The most dead letters one message causes."""
    published: set[tuple[str, bytes]] = field(default_factory=set)

    def add(self, topic: str, payload: bytes) -> None:
        """Account for one published message. The same bytes on the same topic again are a
        duplicate: an unusable input is dead-lettered once, like a record is decided once."""
        parts = topic.split("/")
        topic_vin = parts[1] if len(parts) >= 3 and parts[1] else None
        if topic_vin:
            self.vins.add(topic_vin)
        first = (topic, payload) not in self.published
        self.published.add((topic, payload))
        dead = self._dead_records(topic_vin, payload)
        if dead and first:
            self.dead[payload] += dead
            self.most_dead_in_one = max(self.most_dead_in_one, dead)

    def _dead_records(self, topic_vin: str | None, payload: bytes) -> int:
        if len(payload) > MAX_PAYLOAD:
            return 1
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return 1
        if (
            not isinstance(doc, (dict, list))
            or doc == []
            or (isinstance(doc, list) and len(doc) > MAX_RECORDS)
        ):
            return 1
        if topic_vin is not None and not is_valid_vin(topic_vin):
            return 1  # the whole message: its topic names no vehicle
        dead = 0
        for item in doc if isinstance(doc, list) else [doc]:
            if isinstance(item, dict) and isinstance(item.get(VIN), str) and item[VIN]:
                self.vins.add(item[VIN])
            rec = usable(item, topic_vin)
            if rec is None:
                dead += 1
                continue
            self.accepted.setdefault(rec.key, rec)
            if rec.lat is not None and rec.lon is not None:
                self.coords.add((rec.lat, rec.lon))
        return dead

    @classmethod
    def of(cls, messages: Iterable[Message | tuple[str, bytes]]) -> Expected:
        """The expectations of every message of ``messages``."""
        out = cls()
        for m in messages:
            out.add(m[0], m[1])
        return out

    def ids(self, ring: KeyRing) -> dict[str, dict[str, Record]]:
        """Per subscriber: output message id -> the accepted record it stands for."""
        records = list(self.accepted.values())
        vins: list[str | None] = [r.vin for r in records]
        rids = [r.record_id for r in records]
        times = [r.time for r in records]
        out: dict[str, dict[str, Record]] = {}
        for sub in SUBSCRIBERS:
            mids = message_ids(ring.pseudonym_key(sub), sub, vins, rids, times)
            out[sub] = dict(zip(mids, records, strict=True))
            assert len(out[sub]) == len(records), "message ids must be distinct per record"
        return out


# -- the store, read while the gateway writes it ----------------------------------------------


@dataclass(frozen=True)
class OutboxRow:
    """One committed output (``subscriber`` empty: a dead-letter notice)."""

    seq: int
    subscriber: str
    topic: str
    message_id: str
    payload: bytes
    created_ms: int
    delivered: bool


@dataclass(frozen=True)
class Entry:
    """One decision entry of the audit log."""

    seq: int
    subscriber: str | None
    decision: str
    message_id: str
    digest: str | None


@dataclass(frozen=True)
class StoreState:
    """The gateway's store at one moment."""

    entries: list[Entry]
    outbox: list[OutboxRow]
    held: dict[str, list[str]]
    seen_keys: set[tuple[str, str]]
    deadletter_rows: int

    @property
    def seen(self) -> int:
        """Records in the de-duplication window: decided once, never again (unusable
        inputs have their own ``dl:`` keys there, so that they are dead-lettered once)."""
        return sum(1 for _, record in self.seen_keys if not record.startswith("dl:"))

    @property
    def pending(self) -> list[OutboxRow]:
        """Outputs committed and not yet confirmed by the broker."""
        return [r for r in self.outbox if not r.delivered]

    def decisions(self) -> Counter[tuple[str, str]]:
        """(subscriber, decision) -> entries."""
        return Counter((e.subscriber or "", e.decision) for e in self.entries)

    def summary(self) -> str:
        """One line for failure messages."""
        return (
            f"{len(self.entries)} entries, {len(self.outbox)} outbox rows "
            f"({len(self.pending)} pending), {self.seen} records seen, "
            f"{sum(map(len, self.held.values()))} held"
        )


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def read_store(path: Path, keys: Path | None = None) -> StoreState:
    """Read the audit log, outbox, dead letters, dedup window and held views (one snapshot),
    opening sealed values with the deployment's key directory (``keys``, by default the
    ``keys`` directory beside the store)."""
    ring = KeyRing.load(keys or path.parent / "keys")
    with _read_only(path) as db:
        db.execute("begin")
        entries = []
        for seq, sub, decision, body in db.execute(
            "select seq, subscriber, decision, body from audit_entries "
            "where shard = ? and kind = 'decision' order by seq",
            (ORIGIN,),
        ):
            doc = orjson.loads(body)
            entries.append(Entry(int(seq), sub, decision, doc["msg"], doc.get("digest")))
        outbox = []
        for r in db.execute(
            "select seq, subscriber, sealed, message_id, created_ms, delivered_ms "
            "from outbox where shard = ? order by seq",
            (ORIGIN,),
        ):
            opened = ring.unseal(bytes(r[2]), row_aad("outbox", ORIGIN, r[0]))
            topic, _, payload = opened.partition(b"\0")
            outbox.append(
                OutboxRow(
                    int(r[0]), r[1], topic.decode(), r[3], payload, int(r[4]), r[5] is not None
                )
            )
        held: dict[str, list[str]] = {}
        for ref, state in db.execute("select vehicle, state from vehicle_state"):
            doc = ring.unseal(bytes(state), row_aad("vehicle_state", ref)).partition(b"\0")[2]
            for view in orjson.loads(doc)["held"]:
                held.setdefault(view[0], []).append(view[5])
        seen = {(r[0], r[1]) for r in db.execute("select vehicle, record from dedup")}
        letters = int(
            db.execute("select count(*) from deadletters where shard = ?", (ORIGIN,)).fetchone()[0]
        )
        db.execute("rollback")
    return StoreState(entries, outbox, held, seen, letters)


def settled(
    store: Path,
    expected: Expected,
    collectors: Sequence[Collector],
    timeout: float = 120.0,
    stall: float = 15.0,
) -> StoreState:
    """Wait until every accepted record is decided, every dead input audited, the outbox is
    drained and every output has arrived, and the counts stay the same on a second look.

    If nothing changes for ``stall`` seconds with the outbox drained and delivered, the
    state is returned as it is, for the checks to say precisely what is wrong.
    """
    want_dead = sum(expected.dead.values())
    last: list[tuple[tuple[int, int, int], float, StoreState]] = []

    def done() -> StoreState | None:
        state = read_store(store)
        counts = (len(state.entries), len(state.outbox), state.seen)
        if not last or last[0][0] != counts:
            last[:] = [(counts, time.monotonic(), state)]
        if state.pending:
            return None
        views, notices = merged(collectors)
        for row in state.outbox:
            if row.subscriber and row.message_id not in views:
                return None
            if not row.subscriber and row.seq not in notices:
                return None
        if time.monotonic() - last[0][1] > stall:
            return state  # stalled: let the checks report what is missing
        dead = sum(1 for e in state.entries if e.decision == "dead-lettered")
        if state.seen < len(expected.accepted) or dead < want_dead:
            return None
        return state

    try:
        first = wait_for(done, timeout, "the gateway to settle", interval=0.1)
        time.sleep(0.3)  # not a correctness check: gives a late extra output a chance to show
        again = wait_for(done, timeout, "the gateway to settle again", interval=0.1)
    except AssertionError as exc:
        summary = last[0][2].summary() if last else "no store"
        raise AssertionError(
            f"{exc}: {summary}; expected {len(expected.accepted)} records, {want_dead} dead inputs"
        ) from exc
    assert (len(first.entries), len(first.outbox)) == (len(again.entries), len(again.outbox)), (
        "the gateway kept writing after it had settled"
    )
    return again


# -- the checks ----------------------------------------------------------------------------


@dataclass
class Figures:
    """What one run produced, for the test's own assertions and its log."""

    accepted: int = 0
    decided: set[tuple[str, str]] = field(default_factory=set)
    dead: int = 0
    dead_repeats: int = 0
    entries: Counter[tuple[str, str]] = field(default_factory=Counter)
    views: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)
    repeats: int = 0


def check_audit(
    state: StoreState,
    expected: Expected,
    ring: KeyRing,
    *,
    dead_repeats_max: int = 0,
    complete: bool = True,
) -> Figures:
    """Every accepted record is audited exactly once per subscriber (or held back, then not
    yet audited); every unusable payload or record exactly once (after a crash, inputs that
    were unacknowledged at that moment may be dead-lettered again, at most
    ``dead_repeats_max`` entries); one outbox row per shared or redacted entry.

    ``complete=False`` (the broker lost inputs): records may be missing, but every record
    the gateway decided was published and is decided for every subscriber alike."""
    fig = Figures(accepted=len(expected.accepted))
    ids = expected.ids(ring)
    by_sub: dict[str, Counter[str]] = {s: Counter() for s in SUBSCRIBERS}
    decision_of: dict[tuple[str, str], str] = {}
    dead: Counter[str] = Counter()
    for e in state.entries:
        fig.entries[(e.subscriber or "", e.decision)] += 1
        if e.decision == "dead-lettered":
            assert e.subscriber is None, f"dead letter with a subscriber: {e}"
            assert e.digest is not None
            dead[e.digest] += 1
            continue
        assert e.subscriber in by_sub, f"entry for an unknown subscriber: {e}"
        by_sub[e.subscriber][e.message_id] += 1
        decision_of[(e.subscriber, e.message_id)] = e.decision
    for sub in SUBSCRIBERS:
        audited = by_sub[sub]
        twice = {m: n for m, n in audited.items() if n > 1}
        assert not twice, f"{sub}: {len(twice)} records audited more than once"
        held = Counter(state.held.get(sub, []))
        assert all(n == 1 for n in held.values()), f"{sub}: a view is held twice"
        both = set(audited) & set(held)
        assert not both, f"{sub}: {len(both)} records both audited and still held"
        fig.held[sub] = len(held)
        unknown = (set(audited) | set(held)) - set(ids[sub])
        assert not unknown, f"{sub}: {len(unknown)} audited records were never published"
        decided = {ids[sub][m].key for m in (*audited, *held)}
        if complete:
            missing = len(expected.accepted) - len(decided)
            assert not missing, (
                f"{sub}: {missing} of {len(ids[sub])} accepted records neither audited nor held"
            )
        elif sub == SUBSCRIBERS[0]:
            fig.decided = decided
        else:
            assert decided == fig.decided, f"{sub}: not the records decided for the others"
        # the counting rule itself: entries(sub) + held(sub) == accepted records
        assert sum(audited.values()) + len(held) == len(decided)
    if complete:
        fig.decided = set(expected.accepted)
    assert state.seen == len(fig.decided), "records seen but not decided, or the reverse"
    digest = ring.payload_digest
    want = Counter({digest(p): n for p, n in expected.dead.items()})
    short = want - dead
    extra = dead - want
    assert not short or not complete, f"{sum(short.values())} unusable inputs not dead-lettered"
    assert set(extra) <= set(want), "a dead letter for an input that was never published"
    assert sum(extra.values()) <= dead_repeats_max, (
        f"{sum(extra.values())} inputs dead-lettered again (allowed: {dead_repeats_max}): "
        + str([(e.seq, e.message_id) for e in state.entries if e.digest in extra][:12])
    )
    fig.dead = sum(want.values())
    fig.dead_repeats = sum(extra.values())
    assert state.deadletter_rows == sum(dead.values()), "a dead letter without its payload"
    notices = [r for r in state.outbox if not r.subscriber]
    assert len(notices) == sum(dead.values()), "a dead letter without its notice"
    for sub in SUBSCRIBERS:
        rows = [r for r in state.outbox if r.subscriber == sub]
        mids = Counter(r.message_id for r in rows)
        assert all(n == 1 for n in mids.values()), f"{sub}: two outbox rows for one record"
        for r in rows:
            assert decision_of.get((sub, r.message_id)) in ("shared", "redacted"), (
                f"{sub}: outbox row {r.seq} has no shared or redacted entry"
            )
        shared = fig.entries[(sub, "shared")] + fig.entries[(sub, "redacted")]
        assert len(rows) == shared, f"{sub}: {len(rows)} outbox rows for {shared} shared entries"
        fig.views[sub] = len(rows)
    return fig


def check_delivery(
    state: StoreState,
    views: Mapping[str, list[Copy]],
    notices: Mapping[int, list[Copy]],
    *,
    may_repeat: Collection[int] = (),
    complete: bool = True,
) -> int:
    """Every committed output reached its subscribers, byte for byte, on its topic, with
    nothing extra; an output arrived more than once only if its outbox ``seq`` is in
    ``may_repeat`` (in flight at a crash), each repeat identical. Returns the repeats.

    ``complete=False`` (the broker lost outputs it had confirmed): outputs may be missing."""
    assert not state.pending, f"{len(state.pending)} outputs never confirmed"
    rows = {r.message_id: r for r in state.outbox if r.subscriber}
    letters = {r.seq: r for r in state.outbox if not r.subscriber}
    missing = len(set(rows) - set(views))
    assert set(views) <= set(rows), f"{len(set(views) - set(rows))} unknown views received"
    assert not missing or not complete, f"{missing} views missing"
    assert set(notices) <= set(letters), "unknown dead-letter notices"
    assert set(notices) == set(letters) or not complete, "dead-letter notices missing"
    repeats = 0
    for mid, copies in views.items():
        row = rows[mid]
        for c in copies:
            assert (c.topic, c.payload) == (row.topic, row.payload), f"view {mid} altered"
        if len(copies) > 1:
            assert row.seq in may_repeat, f"view {mid} (seq {row.seq}) repeated without a crash"
            repeats += len(copies) - 1
    for seq, copies in notices.items():
        for c in copies:
            assert (c.topic, c.payload) == (letters[seq].topic, letters[seq].payload)
        if len(copies) > 1:
            assert seq in may_repeat, f"notice {seq} repeated without a crash"
            repeats += len(copies) - 1
    return repeats


def _keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from _keys(v)


def check_no_leaks(
    views: Mapping[str, list[Copy]],
    notices: Mapping[int, list[Copy]],
    expected: Expected,
    ring: KeyRing,
) -> None:
    """No VIN in any output; no WGS-84 coordinate for a subscriber without a qualification,
    and the qualified one's WGS-84 positions are the true ones of the record it names."""
    ids = expected.ids(ring)
    vins = [v.encode() for v in expected.vins]
    for mid, copies in views.items():
        c = copies[0]
        sub = c.doc["subscriber"]
        assert c.topic.startswith(f"share/{sub}/"), f"{sub}'s view on {c.topic}"
        for vin in vins:
            assert vin not in c.payload, f"a VIN in {sub}'s view {mid}"
        names = list(_keys(c.doc))
        for n in names:
            assert "Latitude" not in n and "Longitude" not in n and "VIN" not in n, (sub, n)
        loc = c.doc.get("location")
        if sub not in QUALIFIED:
            assert not any("wgs84" in n.lower() for n in names), f"WGS-84 name in {sub}: {names}"
            assert b"WGS-84" not in c.payload, f"WGS-84 datum in {sub}'s view {mid}"
            if loc:
                pair = (loc.get("lat_gcj02"), loc.get("lon_gcj02"))
                assert pair not in expected.coords, f"{sub} got a true position"
                assert loc["precision_m"] >= 50, f"{sub} got a position finer than the floor"
        elif loc and loc.get("datum") == "WGS-84":
            rec = ids[sub][mid]
            assert (loc["lat_wgs84"], loc["lon_wgs84"]) == (rec.lat, rec.lon)
    for copies in notices.values():
        for vin in vins:
            assert vin not in copies[0].payload, "a VIN in a dead-letter notice"


def verify_audit(deployment: Deployment, trusted: Sequence[Path] = ()) -> str:
    """``icvgw keys public`` then ``icvgw audit verify``: must exit 0 with every entry
    covered by a signed checkpoint. Returns the verifier's report."""
    public = deployment.root / "audit.pub"
    subprocess.run(
        [
            sys.executable, "-m", "gateway", "keys", "public",
            "--dir", str(deployment.keys), "--origin", ORIGIN, "--out", str(public),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    args = [
        sys.executable, "-m", "gateway", "audit", "verify",
        "--store", deployment.store_url, "--public-key", str(public),
    ]  # fmt: skip
    for t in trusted:
        args += ["--trusted-checkpoint", str(t)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, f"audit verify failed:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.startswith(f"OK {ORIGIN}:"), done.stdout
    assert " 0 not yet covered by a checkpoint" in done.stdout, done.stdout
    return done.stdout


def first_message(broker: MosquittoBroker, topic: str, timeout: float = 10.0) -> bytes:
    """The first message a fresh subscriber gets on ``topic`` (a retained one, or the next)."""
    got: list[bytes] = []
    ready = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        ready.set()

    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        assert ready.wait(timeout), f"nothing on {topic} within {timeout:g} s"
        return got[0]
    finally:
        client.disconnect()
        client.loop_stop()


def broker_counter(broker: MosquittoBroker, name: str, timeout: float = 10.0) -> int:
    """A ``$SYS/broker/...`` counter of Mosquitto (needs ``sys_interval`` set)."""
    return int(first_message(broker, f"$SYS/broker/{name}", timeout))
