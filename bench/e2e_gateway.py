"""The gateway side of the end-to-end benchmark: its policy bundle, key directory and config,
and how an output record is traced back to the input that caused it.

The bundle is a copy of the shipped default with the benchmark's scale: the default zones
plus random ones up to ``zones`` (spread over East China, so a few dozen lie on the fleet's
roads around Shanghai), and consents for the fleet's consenting vehicles. By default every
subscriber's delivery is set to MQTT (``share/<id>``, as the shipped bundle has it) so that
all four views leave through the broker, the fan-out the zero-work relay copies;
``delivery="as-is"`` keeps whatever channels the shipped bundle names. ``batch_views`` above
1 opts every MQTT subscriber's view into batched delivery (``batch_max_views``,
``linger_ms``): its views arrive as JSON arrays on ``<topic>/batch``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bench.common import random_zones_geojson
from gateway.resources import default_policy_dir
from gateway.testing import free_port

EAST_CHINA_BOX = (28.0, 34.0, 116.0, 122.5)  # lat_min, lat_max, lon_min, lon_max
CONSENT_PURPOSES = ("navigation-map", "usage-based-insurance")
"""Purposes the fleet's consenting vehicles may consent to, in the order they are used."""
OUTPUT_PREFIX = "share"


@dataclass(frozen=True)
class OutputSubscriber:
    """One subscriber of the policy: where its views arrive, and whether they are held back
    on purpose (trip trimming holds a view until the trip has moved on: not latency)."""

    id: str
    topic_filter: str | None
    trims_trips: bool


def write_bundle(
    out: Path,
    *,
    zones: int,
    consenting_vins: Iterable[str],
    purposes: Sequence[str] = CONSENT_PURPOSES[:1],
    delivery: str = "mqtt",
    batch_views: int = 1,
    linger_ms: int = 0,
    seed: int = 3,
) -> list[OutputSubscriber]:
    """Write the benchmark's policy bundle into ``out`` and return its subscribers.

    Guarantees: the bundle holds exactly ``zones`` zones (at least the shipped ones), the
    shipped subscribers, rules and fields, and the shipped consents plus one consent per
    vehicle and purpose of ``purposes``, valid for the whole run; with ``batch_views`` above
    1, every MQTT subscriber's view batches up to that many views, lingering ``linger_ms``.
    """
    src = default_policy_dir()
    shutil.copytree(src, out)
    shipped = json.loads((src / "zones.geojson").read_text(encoding="utf-8"))
    extra = max(0, zones - len(shipped["features"]))
    random = random_zones_geojson(extra, seed=seed, box=EAST_CHINA_BOX)
    shipped["features"].extend(random["features"])
    (out / "zones.geojson").write_text(json.dumps(shipped), encoding="utf-8")

    consents_doc = yaml.safe_load((src / "consents.yaml").read_text(encoding="utf-8"))
    now = datetime.now(UTC).replace(microsecond=0)
    granted = (now - timedelta(days=30)).isoformat()
    expires = (now + timedelta(days=365)).isoformat()
    consents = consents_doc["consents"]
    for i, vin in enumerate(consenting_vins):
        for purpose in purposes:
            consents.append(
                {
                    "id": f"bench-{i}-{purpose}",
                    "vin": vin,
                    "purpose": purpose,
                    "granted": granted,
                    "expires": expires,
                }
            )
    _dump(out / "consents.yaml", consents_doc)

    subs_doc = yaml.safe_load((src / "subscribers.yaml").read_text(encoding="utf-8"))
    result = []
    for sub in subs_doc["subscribers"]:
        view = sub["view"]
        if delivery == "mqtt":
            view["delivery"] = {"channel": "mqtt", "topic": f"{OUTPUT_PREFIX}/{sub['id']}"}
        channel = view["delivery"]
        if batch_views > 1 and channel["channel"] == "mqtt":
            channel.update(batch_max_views=batch_views, linger_ms=linger_ms)
        topic = channel.get("topic") if channel["channel"] == "mqtt" else None
        result.append(
            OutputSubscriber(
                id=sub["id"],
                topic_filter=f"{topic}/#" if topic else None,
                trims_trips=bool(view.get("trip_trim_m", 0)),
            )
        )
    _dump(out / "subscribers.yaml", subs_doc)
    return result


def _dump(path: Path, doc: Any) -> None:
    path.write_text(
        yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=1000), encoding="utf-8"
    )


SQLITE_STORE = "sqlite:///store.sqlite"
"""The gateway's store by default: a SQLite file beside its configuration."""


def write_config(
    out: Path,
    *,
    broker_url: str,
    out_inflight: int,
    worker: str = "bench-gw",
    store: str = SQLITE_STORE,
    api: bool = False,
) -> Path:
    """Write ``gateway.yaml`` for a gateway reading ``broker_url`` (MQTT 5) with its store at
    ``store`` (default: SQLite beside the file), at most ``out_inflight`` unacknowledged
    outputs, and its keys and bundle beside the file; return its path. With ``api``, ``icvgw
    run`` starts its HTTP API beside it on a free port of 127.0.0.1 (rate limits raised: the
    benchmark's client is no abuser); without, none."""
    config: dict[str, Any] = {
        "worker": worker,
        "broker": {"url": broker_url, "protocol": "5"},
        "output": {"topic_prefix": OUTPUT_PREFIX, "max_inflight": out_inflight},
        "metrics": {"host": "127.0.0.1", "port": free_port()},  # not a running gateway's
        "api": (
            {"host": "127.0.0.1", "port": 0, "rate_per_s": 10_000, "rate_burst": 10_000}
            if api
            else {"enabled": False}
        ),
        "policies": "policies",
        "store": store,
        "keys": "keys",
    }
    path = out / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def init_keys(out: Path) -> None:
    """Create the key directory with the gateway's own command (``icvgw keys init``)."""
    subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "init", "--out", str(out)],
        check=True,
        capture_output=True,
    )


def create_api_key(config: Path, role: str, subscriber: str | None = None) -> str:
    """A key made with the gateway's own command (``icvgw apikey create``); its token."""
    more = [] if subscriber is None else ["--subscriber", subscriber]
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "apikey", "create", "--config", str(config),
         "--role", role, "--label", "bench", *more],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    return done.stdout.strip()


def gateway_command(config: Path) -> list[str]:
    """The command that runs the gateway: ``python -m gateway run --config FILE``."""
    return [sys.executable, "-m", "gateway", "run", "--config", str(config)]


def output_keys(payload: bytes) -> list[str | None]:
    """The keys a subscriber records for one gateway output, ``subscriber/message_id`` of
    each view it carries: one for a view, one per element for a batch (a JSON array of
    views); ``[None]`` for anything else."""
    import orjson

    try:
        doc = orjson.loads(payload)
        views = doc if isinstance(doc, list) else [doc]
        return [f"{v['subscriber']}/{v['message_id']}" for v in views] or [None]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return [None]


class GatewayTrace:
    """Maps gateway output keys back to input ``msg_id``\\ s.

    The gateway's output ``message_id`` is a keyed MAC of (subscriber, VIN, the record's
    timestamp and ``msg_id``) under the subscriber's pseudonym key; the benchmark created the
    key directory and knows what it published, so it computes the same ids from the inputs.
    """

    def __init__(self, keys_dir: Path, subscribers: Iterable[OutputSubscriber]) -> None:
        from gateway.keys import KeyRing

        ring = KeyRing.load(keys_dir)
        self.keys = {s.id: ring.pseudonym_key(s.id) for s in subscribers}

    def index(self, records: Iterable[tuple[str, float]]) -> dict[str, str]:
        """``subscriber/message_id`` -> input ``msg_id`` for every subscriber and input
        ``(msg_id, record time in Unix seconds as the gateway reads it)``."""
        from gateway.pipeline.shape import message_ids

        pairs = list(records)
        mids: list[str | None] = [mid for mid, _ in pairs]
        vins: list[str | None] = [mid.rsplit("-", 1)[0] for mid, _ in pairs]
        times = [t for _, t in pairs]
        out: dict[str, str] = {}
        for sub, key in self.keys.items():
            ids = message_ids(key, sub, vins, mids, times)
            out.update((f"{sub}/{i}", mid) for i, (mid, _) in zip(ids, pairs, strict=True))
        return out


def subscriber_of(key: str) -> str:
    """The subscriber part of an output key."""
    return key.split("/", 1)[0]


def by_subscriber(keys: Iterable[str]) -> Mapping[str, int]:
    """How many output keys each subscriber received."""
    counts: dict[str, int] = {}
    for key in keys:
        sub = subscriber_of(key)
        counts[sub] = counts.get(sub, 0) + 1
    return counts


def outbox_commit_times(home: Path, store: str = SQLITE_STORE) -> dict[str, float] | None:
    """``subscriber/message_id`` -> when the gateway committed the view (Unix seconds), read
    from its outbox (the SQLite file in ``home``, or the PostgreSQL database ``store``); None
    if the store cannot be read that way."""
    query = "select subscriber, message_id, created_ms from outbox"
    if store.startswith(("postgresql://", "postgres://")):
        import psycopg

        try:
            with psycopg.connect(store) as conn:
                rows = conn.execute(query).fetchall()
        except psycopg.Error:
            return None
    else:
        try:
            with sqlite3.connect(f"file:{home / 'store.sqlite'}?mode=ro", uri=True) as db:
                rows = db.execute(query).fetchall()
        except sqlite3.Error:
            return None
    return {f"{sub}/{mid}": created / 1000.0 for sub, mid, created in rows}


def empty_postgres(store: str) -> None:
    """Drop every table of the PostgreSQL database ``store`` (given empty to the benchmark),
    so that the next gateway mode starts as the first did."""
    import psycopg

    with psycopg.connect(store, autocommit=True) as conn:
        tables = conn.execute(
            "select tablename from pg_tables where schemaname = current_schema()"
        ).fetchall()
        for (table,) in tables:
            conn.execute(f'drop table if exists "{table}" cascade')
