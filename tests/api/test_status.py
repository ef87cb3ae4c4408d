"""Operators' view of the subscribers: views, pending, failed, last delivery, reads and lag,
against a store the real pipeline filled (one subscriber per channel)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.apikeys import Role
from gateway.resources import default_policy_dir
from gateway.service import origin_of
from gateway.store.outbox import mark_delivered
from tests.api.conftest import api_config
from tests.api.test_feed import Live, batches, envelopes, live_api, pull_all, views_of

CHANNELS = {
    "mapco-nav": "mqtt",
    "insureco-ubi": "mqtt",
    "sh-traffic": "http_stream",
    "oem-hq-de": "webhook",
}


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Live]:
    """The API on a pipeline whose policy sends sh-traffic's views to HTTP readers and
    oem-hq-de's to a webhook."""
    policy = tmp_path / "policy"
    shutil.copytree(default_policy_dir(), policy)
    subs = policy / "subscribers.yaml"
    text = subs.read_text()
    for sid, delivery in (
        ("sh-traffic", "channel: http_stream\n"),
        ("oem-hq-de", "channel: webhook\n        url: https://hq.example.de/icvgw\n"),
    ):
        old = f"channel: mqtt\n        topic: share/{sid}\n"
        assert old in text
        text = text.replace(old, delivery)
    subs.write_text(text)
    with live_api(api_config(tmp_path, policies=str(policy))) as live:
        yield live


def _status(ops: Live, admin: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = ops.api.client.get("/v1/subscribers", headers=admin)
    assert r.status_code == 200, r.text
    listed = r.json()["subscribers"]
    assert [s["id"] for s in listed] == sorted(CHANNELS)
    return {s["id"]: s for s in listed}


def test_each_subscribers_delivery_state(ops: Live) -> None:
    gw = ops.gateway()
    for b in batches(envelopes()):
        gw.process(b)
    shard = origin_of(ops.config.worker)
    views = {sid: views_of(ops.store, sid).get(shard, []) for sid in CHANNELS}
    assert all(views[sid] for sid in CHANNELS), {sid: len(v) for sid, v in views.items()}
    mapco, oem = views["mapco-nav"], views["oem-hq-de"]
    t = mapco[0].created_ms
    with ops.store.transaction() as tx:  # what the drainer and the webhook sink record
        mark_delivered(tx, shard, [r.seq for r in mapco[:10]], t + 500)
        mark_delivered(tx, shard, [oem[0].seq], t + 700)
        tx.execute(
            "update outbox set failed_ms = ?, attempts = 8 where shard = ? and seq = ?",
            (t + 900, shard, oem[1].seq),
        )
    ops.api.ctx.clock = lambda: (t + 60_000) / 1000
    admin = ops.api.headers(ops.api.key(Role.ADMIN))
    status = _status(ops, admin)

    def age(rows: list[Any]) -> float:
        return (t + 60_000 - min(r.created_ms for r in rows)) / 1000

    assert {sid: s["channel"] for sid, s in status.items()} == CHANNELS
    assert {sid: s["views"] for sid, s in status.items()} == {
        sid: len(v) for sid, v in views.items()
    }
    assert status["mapco-nav"] | {"name": ""} == {
        "id": "mapco-nav",
        "name": "",
        "channel": "mqtt",
        "views": len(mapco),
        "pending": len(mapco) - 10,
        "failed": 0,
        "oldest_pending_age_s": age(mapco[10:]),
        "last_delivered_ms": t + 500,
        "last_read": None,
        "lag": None,
    }
    assert (status["oem-hq-de"]["pending"], status["oem-hq-de"]["failed"]) == (len(oem) - 2, 1)
    assert status["oem-hq-de"]["last_delivered_ms"] == t + 700
    reader = status["sh-traffic"]  # read, never confirmed: nothing pending
    assert (reader["pending"], reader["oldest_pending_age_s"], reader["last_delivered_ms"]) == (
        0,
        None,
        None,
    )
    insurer = status["insureco-ubi"]
    assert insurer["pending"] == len(views["insureco-ubi"]) and insurer["failed"] == 0
    assert (
        ops.api.client.get("/v1/subscribers/mapco-nav", headers=admin).json()
        == (status["mapco-nav"])
    )


def test_an_http_readers_last_read_and_lag(ops: Live) -> None:
    gw = ops.gateway()
    for b in batches(envelopes()):
        gw.process(b)
    sid = "sh-traffic"
    total = sum(len(rows) for rows in views_of(ops.store, sid).values())
    reader = ops.headers(sid)
    page = ops.api.client.get("/v1/records", params={"limit": 5}, headers=reader).json()
    admin = ops.api.headers(ops.api.key(Role.ADMIN))
    one = ops.api.client.get(f"/v1/subscribers/{sid}", headers=admin).json()
    assert one["last_read"]["cursor"] == page["next"]
    assert one["last_read"]["views"] == 5
    assert one["lag"] == total - 5 > 0
    # An MQTT subscriber replaying everything over HTTP: no lag left, its views counted.
    mapco = ops.headers("mapco-nav")
    replayed = pull_all(ops.api.client, mapco, None, limit=1000)
    status = _status(ops, admin)
    assert status["mapco-nav"]["lag"] == 0
    assert status["mapco-nav"]["last_read"]["views"] == len(replayed) > 0
    assert status["sh-traffic"]["lag"] == total - 5  # the other reader is where it was
    more = [r for b in batches(envelopes(7))[4:] for r in gw.process(b).outbox]
    lag = _status(ops, admin)["mapco-nav"]["lag"]
    assert lag == sum(1 for r in more if r.subscriber == "mapco-nav") > 0


def test_a_policy_without_the_subscriber_is_a_404_problem(ops: Live) -> None:
    admin = ops.api.headers(ops.api.key(Role.ADMIN))
    for sid in ("nobody", "MAPCO-NAV", "mapco-nav%20", "a..b", "%00"):
        r = ops.api.client.get(f"/v1/subscribers/{sid}", headers=admin)
        assert r.status_code == 404, sid
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 404


def test_an_empty_store_reports_every_subscriber_with_nothing_yet(ops: Live) -> None:
    admin = ops.api.headers(ops.api.key(Role.ADMIN))
    for s in _status(ops, admin).values():
        assert (s["views"], s["pending"], s["failed"], s["lag"]) == (0, 0, 0, None)
        assert s["oldest_pending_age_s"] is s["last_delivered_ms"] is s["last_read"] is None
