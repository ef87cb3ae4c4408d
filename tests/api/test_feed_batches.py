"""The SSE feed of a batched subscriber (``delivery.batch_max_views`` > 1): each event a JSON
array of the stored views' exact bytes, its id the cursor after its last view, so that a
``Last-Event-ID`` from the middle of a stream resumes exactly; ``linger_ms``; the schema.

The views are made by the real pipeline on the API's store; the resume test reads a real
uvicorn server with httpx2 (the fixtures of :mod:`tests.api.test_feed`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jsonschema_rs
import orjson
import pytest

from gateway.api import feed
from gateway.deliver.batch import encode_batch
from gateway.policy import load_bundle
from gateway.policy.schema import Channel, Delivery
from gateway.policy.view_schema import batch_schema, view_schema
from gateway.resources import default_policy_dir
from gateway.store.outbox import OutboxRow
from tests.api.conftest import api_config
from tests.api.test_feed import (
    OTHER,
    SUB,
    Event,
    Live,
    batches,
    envelopes,
    live_api,
    mine,
    pull_all,
    serving,
    sse,
    views_of,
    wait_for,
    warmed,
)

SIZE = 5


def batched_policy(tmp_path: Path, max_views: int, linger_ms: int = 0) -> Path:
    """A copy of the shipped policy whose ``SUB`` takes batches."""
    policy = tmp_path / "policy"
    shutil.copytree(default_policy_dir(), policy)
    subs = policy / "subscribers.yaml"
    line = "        topic: share/mapco-nav\n"
    extra = f"        batch_max_views: {max_views}\n"
    if linger_ms:
        extra += f"        linger_ms: {linger_ms}\n"
    assert subs.read_text().count(line) == 1
    subs.write_text(subs.read_text().replace(line, line + extra))
    return policy


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    policy = batched_policy(tmp_path, SIZE)
    with live_api(api_config(tmp_path, policies=str(policy))) as live:
        yield live


def events_of(text: str, kind: str = "batch") -> list[Event]:
    return [e for e in sse(iter(text.split("\n"))) if e.kind == kind]


def ids_in(events: list[Event]) -> list[str]:
    """The message ids of the views the batch events carry, in order."""
    return [v["message_id"] for e in events for v in orjson.loads(e.data)]


def only_rows(live: Live) -> list[OutboxRow]:
    (rows,) = views_of(live.store, SUB).values()
    return rows


@pytest.mark.parametrize("page", [500, 7])  # 7: pages end inside a batch, which waits
def test_each_event_is_a_batch_of_the_stored_views_and_its_id_resumes_after_it(
    live: Live, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    monkeypatch.setattr(feed, "BATCH", page)
    gw = live.gateway()
    for b in batches(envelopes()):
        gw.process(b)
    rows, headers = only_rows(live), live.headers()
    text = live.api.client.get("/v1/feed?from=start&max_seconds=0.3", headers=headers).text
    events = events_of(text)
    assert "event: view" not in text
    sizes = [len(orjson.loads(e.data)) for e in events]
    full, rest = divmod(len(rows), SIZE)
    assert full > 5 and sizes == [SIZE] * full + ([rest] if rest else [])
    assert b"".join(e.data for e in events) == b"".join(
        encode_batch([r.payload for r in rows[i : i + SIZE]]) for i in range(0, len(rows), SIZE)
    )  # the stored bytes, in audit order
    # An event's id is the cursor after its last view, as /v1/records gives it.
    pulled = pull_all(live.api.client, headers, None, limit=1000)
    assert [e.id for e in events] == [
        pulled[min(i + SIZE, len(rows)) - 1]["cursor"] for i in range(0, len(rows), SIZE)
    ]
    schema = live.api.client.get("/v1/schema", headers=headers).json()
    assert schema == batch_schema(live.api.ctx.bundle(), SUB)
    validator = jsonschema_rs.Draft202012Validator(schema)
    for e in events:
        validator.validate(orjson.loads(e.data))
    # From the middle of the stream: exactly the views after that batch.
    k = len(events) // 2
    resumed = live.api.client.get(
        "/v1/feed?max_seconds=0.3", headers={**headers, "Last-Event-ID": events[k].id or ""}
    )
    again = events_of(resumed.text)
    assert ids_in(again) == [r.message_id for r in rows[(k + 1) * SIZE :]]


def test_an_unbatched_subscriber_beside_keeps_one_event_per_view(live: Live) -> None:
    gw = live.gateway()
    for b in batches(envelopes()):
        gw.process(b)
    headers = live.headers(OTHER)
    text = live.api.client.get("/v1/feed?from=start&max_seconds=0.3", headers=headers).text
    assert "event: batch" not in text
    (rows,) = views_of(live.store, OTHER).values()
    assert [e.data for e in events_of(text, "view")] == [r.payload for r in rows]
    schema = live.api.client.get("/v1/schema", headers=headers).json()
    assert schema == view_schema(live.api.ctx.bundle(), OTHER)


def test_a_client_gone_in_the_middle_resumes_with_last_event_id_missing_nothing(
    live: Live,
) -> None:
    gw = live.gateway()
    parts = warmed(gw)
    headers = live.headers()
    with serving(live) as (url, server), httpx2.Client(timeout=10) as client:
        with client.stream("GET", f"{url}/v1/feed", headers=headers) as r:
            stream = sse(r.iter_lines())
            next(stream)
            committed = [row for b in parts[:3] for row in mine(gw.process(b).outbox)]
            first: list[Event] = []
            while len(ids_in(first)) < len(committed) // 2:  # then the client goes
                first.append(next(e for e in stream if e.kind == "batch"))
        wait_for(lambda: not server.server_state.tasks, "the feed's task to end")
        missed = [row for b in parts[3:6] for row in mine(gw.process(b).outbox)]
        resumed = {**headers, "Last-Event-ID": first[-1].id or ""}
        with client.stream("GET", f"{url}/v1/feed?max_seconds=2", headers=resumed) as r:
            stream = sse(r.iter_lines())
            assert next(stream).id == first[-1].id  # it starts where the client was
            later = [row for b in parts[6:] for row in mine(gw.process(b).outbox)]
            rest = [e for e in stream if e.kind == "batch"]  # to the end: nothing more
    received = ids_in([*first, *rest])
    assert len(first) > 2 and missed and later
    assert received == [row.message_id for row in [*committed, *missed, *later]]
    assert all(1 <= len(orjson.loads(e.data)) <= SIZE for e in [*first, *rest])


def test_a_batch_not_full_waits_at_most_linger_ms(tmp_path: Path) -> None:
    policy = batched_policy(tmp_path, 1000, linger_ms=3000)
    with live_api(api_config(tmp_path, policies=str(policy))) as live:
        gw = live.gateway()
        for b in batches(envelopes())[:8]:
            gw.process(b)
        rows, headers = only_rows(live), live.headers()
        assert 10 < len(rows) < 1000
        now: dict[str, float] = {"t": rows[0].created_ms / 1000 + 2.9}
        live.api.ctx.clock = lambda: now["t"]

        def feed() -> Any:
            got = live.api.client.get("/v1/feed?from=start&max_seconds=0.2", headers=headers)
            return events_of(got.text)

        assert feed() == []  # the oldest view is 2.9 s old: the batch waits
        now["t"] = rows[0].created_ms / 1000 + 3.0
        (event,) = feed()
        assert ids_in([event]) == [r.message_id for r in rows]
        jsonschema_rs.Draft202012Validator(batch_schema(load_bundle(policy), SUB)).validate(
            orjson.loads(event.data)
        )


def test_a_batch_is_not_held_while_the_api_clock_is_behind_the_pipeline_clock(
    tmp_path: Path,
) -> None:
    """``created_ms`` is the pipeline's clock, ``linger_ms`` is measured on the API's: views
    that look committed in the future (another host's clock ahead, or this one stepped back)
    go at once, as the MQTT drainer sends them, not skew + linger later."""
    policy = batched_policy(tmp_path, 1000, linger_ms=3000)
    with live_api(api_config(tmp_path, policies=str(policy))) as live:
        gw = live.gateway()
        for b in batches(envelopes())[:8]:
            gw.process(b)
        rows, headers = only_rows(live), live.headers()
        assert 10 < len(rows) < 1000
        live.api.ctx.clock = lambda: rows[0].created_ms / 1000 - 60.0  # a minute behind
        got = live.api.client.get("/v1/feed?from=start&max_seconds=0.2", headers=headers)
        assert ids_in(events_of(got.text)) == [r.message_id for r in rows]


def test_a_batch_across_shards_waits_linger_ms_from_its_oldest_view_not_its_first() -> None:
    """A page lists shard by shard, so a batch's first view (the first shard's) may be newer
    than a later one (another worker's shard): the wait is the oldest view's."""
    newer = OutboxRow(7, SUB, "t", "m-a", b'{"a":1}', 3_500, "http_stream")
    older = OutboxRow(4, SUB, "t", "m-b", b'{"b":1}', 1_000, "http_stream")
    rows = [(newer, feed.encode_cursor({"a": 7})), (older, feed.encode_cursor({"a": 7, "b": 4}))]
    page = feed.Page(rows, {"a": 7, "b": 4}, more=False)
    delivery = Delivery(channel=Channel.HTTP_STREAM, batch_max_views=5, linger_ms=3000)
    events = feed.page_events(page, {}, delivery, now_ms=4_500)  # the older has waited 3.5 s
    assert events.views == 2 and events.positions == {"a": 7, "b": 4}
    assert events.data.endswith(b"data: " + encode_batch([newer.payload, older.payload]) + b"\n\n")
    held = feed.page_events(page, {}, delivery, now_ms=3_999)  # 3 s less a millisecond
    assert (held.views, held.positions, held.data, held.linger_s) == (0, {}, b"", 0.001)
