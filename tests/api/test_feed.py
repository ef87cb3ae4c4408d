"""A subscriber's feed (SSE), pull and schema: its own views only, byte for byte, resumable.

The views are made by the real pipeline (:class:`gateway.service.Gateway`) on the API's
store; the SSE tests run the app in a real uvicorn server and read it with httpx2.
"""

from __future__ import annotations

import base64
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient

from gateway.api import create_app, feed
from gateway.api.context import open_context
from gateway.api.feed import ReadTracker, decode_cursor, encode_cursor
from gateway.apikeys import Role, revoke
from gateway.config import GatewayConfig
from gateway.model import Envelope
from gateway.resources import default_policy_dir
from gateway.service import Gateway, origin_of
from gateway.store import Store
from gateway.store.outbox import OutboxRow, outbox_rows
from gateway.store.subscriber_reads import SubscriberRead, get_read
from gateway.testing import free_port
from simulators.fleet import Fleet, FleetConfig
from tests.api.conftest import Api, api_config
from tests.test_service import START

SUB, OTHER = "mapco-nav", "sh-traffic"
QUIET = 4
"""The fleet's first batches have no view for SUB (its trips' first 200 m are trimmed)."""


def envelopes(seed: int = 3, vehicles: int = 8, seconds: float = 60) -> list[Envelope]:
    """A fleet's messages in time order (another seed: other vehicles)."""
    fleet = Fleet(FleetConfig(vehicles=vehicles, start=START), seed=seed)
    return [
        Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(fleet.messages(seconds, 1.0))
    ]


def batches(items: Sequence[Envelope], size: int = 40) -> list[Sequence[Envelope]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def warmed(gw: Gateway) -> list[Sequence[Envelope]]:
    """The fleet's batches after its first :data:`QUIET` ones, which ``gw`` has processed."""
    parts = batches(envelopes())
    for b in parts[:QUIET]:
        assert not mine(gw.process(b).outbox)
    return parts[QUIET:]


@dataclass
class Live:
    """The pipeline (one gateway per worker) and the API on one store."""

    api: Api
    config: GatewayConfig
    gateways: list[Gateway] = field(default_factory=list)

    def gateway(self, worker: str | None = None) -> Gateway:
        """A gateway on the API's store (another worker: another audit shard)."""
        config = (
            self.config if worker is None else self.config.model_copy(update={"worker": worker})
        )
        gw = Gateway(config)
        self.gateways.append(gw)
        return gw

    @property
    def store(self) -> Store:
        return self.api.ctx.store

    def headers(self, subscriber: str = SUB) -> dict[str, str]:
        return self.api.headers(self.api.key(Role.SUBSCRIBER, subscriber))


@contextmanager
def live_api(config: GatewayConfig) -> Iterator[Live]:
    """The API (a TestClient) on ``config``'s store, and the gateways made on it."""
    ctx = open_context(config)
    with TestClient(create_app(ctx, sinks=False)) as client:
        live = Live(Api(ctx, client), config)
        yield live
    for gw in live.gateways:
        gw.store.close()
    ctx.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with live_api(api_config(tmp_path)) as live:
        yield live


def views_of(store: Store, subscriber: str) -> dict[str, list[OutboxRow]]:
    """Every view of ``subscriber`` in the store, per shard in audit order."""
    with store.snapshot() as rd:
        shards = [s.shard for s in rd.shards()]
        out = {s: [r for r, _ in outbox_rows(rd, s) if r.subscriber == subscriber] for s in shards}
    return {s: rows for s, rows in out.items() if rows}


def mine(rows: Sequence[OutboxRow], subscriber: str = SUB) -> list[OutboxRow]:
    return [r for r in rows if r.subscriber == subscriber]


def pull_all(
    client: TestClient, headers: dict[str, str], after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Every record after ``after``, page by page."""
    out: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {"limit": limit} | ({} if after is None else {"after": after})
        page = client.get("/v1/records", params=params, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["records"]) <= limit
        out.extend(body["records"])
        if body["records"]:  # next is at or past the last record in every shard
            last, at = decode_cursor(body["records"][-1]["cursor"]), decode_cursor(body["next"])
            assert all(at[shard] >= seq for shard, seq in last.items())
        after = body["next"]
        if not body["more"]:
            return out


# --- SSE through a real server -----------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One dispatched SSE block: ``id`` is the last event id after it; ``kind`` is
    ``view``, ``""`` for a block without data (an id alone) or ``"keepalive"``."""

    id: str | None
    kind: str
    data: bytes = b""


def sse(lines: Iterator[str]) -> Iterator[Event]:
    """The blocks of an event stream, parsed as the SSE specification says."""
    last_id: str | None = None
    kind, data = "", []
    for line in lines:
        if line == "":
            yield Event(last_id, kind, b"\n".join(data)) if data else Event(last_id, "")
            kind, data = "", []
        elif line.startswith(":"):
            yield Event(last_id, "keepalive")
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                last_id = value
            elif name == "event":
                kind = value
            elif name == "data":
                data.append(value.encode())


def views(events: Iterator[Event], n: int) -> list[Event]:
    """The next ``n`` view events (other blocks skipped)."""
    return [next(e for e in events if e.kind == "view") for _ in range(n)]


@contextmanager
def serving(live: Live, **options: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """The app on a free port of a real uvicorn server, in a thread."""
    port = free_port()
    app = live.api.client.app
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="off", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test")
    thread.start()
    try:
        wait_for(lambda: server.started, "the server to start")
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "the server did not stop"


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.01)


def test_views_arrive_as_the_pipeline_commits_them(live: Live) -> None:
    gw = live.gateway()
    shard = origin_of(live.config.worker)
    waits = []
    with (
        serving(live) as (url, _),
        httpx2.Client(timeout=10) as client,
        client.stream("GET", f"{url}/v1/feed", headers=live.headers()) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.iter_lines())
        start = next(events)
        assert start.kind == "" and start.id is not None  # the live end, as an id
        seen = 0
        for batch in batches(envelopes()):
            committed = mine(gw.process(batch).outbox)
            t0 = time.monotonic()
            got = views(events, len(committed))
            if committed:
                waits.append(time.monotonic() - t0)
            assert [e.data for e in got] == [row.payload for row in committed]
            for e, row in zip(got, committed, strict=True):
                assert decode_cursor(e.id or "")[shard] == row.seq
            seen += len(got)
    assert seen == len(views_of(live.store, SUB)[shard]) > 20
    assert max(waits) < 3 * feed.POLL_S + 1.0  # polled, not batched up for long


def test_a_client_that_disconnects_resumes_with_last_event_id_missing_nothing(
    live: Live,
) -> None:
    gw = live.gateway()
    parts = warmed(gw)
    headers = live.headers()
    with serving(live) as (url, server), httpx2.Client(timeout=10) as client:
        with client.stream("GET", f"{url}/v1/feed", headers=headers) as r:
            events = sse(r.iter_lines())
            next(events)
            committed = [row for b in parts[:2] for row in mine(gw.process(b).outbox)]
            first = views(events, len(committed) // 2)  # then the client goes
        wait_for(lambda: not server.server_state.tasks, "the feed's task to end")
        missed = [row for b in parts[2:5] for row in mine(gw.process(b).outbox)]
        resumed = {**headers, "Last-Event-ID": first[-1].id or ""}
        with client.stream("GET", f"{url}/v1/feed?max_seconds=2", headers=resumed) as r:
            events = sse(r.iter_lines())
            assert next(events).id == first[-1].id  # it starts where the client was
            later = [row for b in parts[5:] for row in mine(gw.process(b).outbox)]
            rest = [e for e in events if e.kind == "view"]  # to the end: nothing more
    received = [e.data for e in [*first, *rest]]
    assert len(first) > 10 and missed and later
    assert received == [row.payload for row in [*committed, *missed, *later]]
    assert len(set(received)) == len(received)


def test_the_feed_ends_when_its_client_goes_and_records_where_it_got_to(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "WRITE_EVERY_S", 3600.0)  # only the first read and the last
    gw = live.gateway()
    parts = warmed(gw)
    with serving(live) as (url, server), httpx2.Client(timeout=10) as client:
        with client.stream("GET", f"{url}/v1/feed", headers=live.headers()) as r:
            events = sse(r.iter_lines())
            next(events)
            a = views(events, len(mine(gw.process(parts[0]).outbox)))
            b = views(events, len(mine(gw.process(parts[1]).outbox)))
            with live.store.snapshot() as rd:
                read = get_read(rd, SUB)
            assert read is not None and read.views == len(a) > 0  # b's not yet written
        wait_for(lambda: not server.server_state.tasks, "the feed's task to end")
        assert not server.server_state.connections
        with live.store.snapshot() as rd:
            read = get_read(rd, SUB)
        assert read is not None and read.views == len(a) + len(b)
        assert decode_cursor(read.cursor)[origin_of(live.config.worker)] >= max(
            decode_cursor(e.id or "")[origin_of(live.config.worker)] for e in b
        )


def test_a_stopping_server_ends_open_feeds(live: Live) -> None:
    with (
        serving(live, timeout_graceful_shutdown=1) as (url, server),
        httpx2.Client(timeout=10) as client,
    ):
        with client.stream("GET", f"{url}/v1/feed", headers=live.headers()) as r:
            events = sse(r.iter_lines())
            next(events)
            server.should_exit = True
            t0 = time.monotonic()
            with pytest.raises(httpx2.RemoteProtocolError):
                for _ in events:
                    pass
            assert time.monotonic() - t0 < 5
        wait_for(lambda: not server.server_state.tasks, "the feed's task to end")


def _ends_by_itself(live: Live, headers: dict[str, str], act: Callable[[], object]) -> float:
    """Seconds an open feed took to end after ``act`` (a real server)."""
    with (
        serving(live) as (url, _),
        httpx2.Client(timeout=10) as client,
        client.stream("GET", f"{url}/v1/feed", headers=headers) as r,
    ):
        events = sse(r.iter_lines())
        next(events)
        act()
        t0 = time.monotonic()
        for _ in events:  # to its end, without an error
            pass
        return time.monotonic() - t0


def test_revoking_a_key_ends_its_open_feed(live: Live) -> None:
    token = live.api.key(Role.SUBSCRIBER, SUB)
    key_id = token.split("_")[1]
    shard, worker = live.api.ctx.shard, live.api.ctx.worker
    took = _ends_by_itself(
        live,
        live.api.headers(token),
        lambda: revoke(live.store, key_id, shard=shard, instance=worker),
    )
    assert took < 2 * feed.POLL_S + 1


def test_a_subscriber_leaving_the_policy_ends_its_open_feed(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(default_policy_dir(), policy)
    subs = policy / "subscribers.yaml"
    renamed = subs.read_text().replace("  - id: sh-traffic", "  - id: city-traffic")
    with live_api(api_config(tmp_path, policies=str(policy))) as live:
        took = _ends_by_itself(live, live.headers(OTHER), lambda: subs.write_text(renamed))
    assert took < 5  # the policy files are looked at every 2 s


# --- the rest through the TestClient ------------------------------------------------------


def test_pulling_page_by_page_after_an_outage_gets_every_view_once_in_order(live: Live) -> None:
    one, two = live.gateway(), live.gateway("gw-2")  # two workers: two audit shards
    ones, twos = batches(envelopes(3)), batches(envelopes(5))
    for a, b in zip(ones[:-3], twos, strict=False):  # nobody reads meanwhile
        one.process(a)
        two.process(b)
    stored = views_of(live.store, SUB)
    assert len(stored) == 2 and all(len(rows) > 20 for rows in stored.values())
    headers = live.headers()
    got = pull_all(live.api.client, headers, None, limit=7)
    shard_of = {row.message_id: shard for shard, rows in stored.items() for row in rows}
    assert sorted(r["message_id"] for r in got) == sorted(shard_of)  # each exactly once
    for shard, rows in stored.items():
        assert [r["message_id"] for r in got if shard_of[r["message_id"]] == shard] == [
            row.message_id for row in rows
        ]  # in audit order within its shard
    assert {r["view"]["subscriber"] for r in got} == {SUB}
    # From the middle: the rest; after more batches, from the last cursor: only the new.
    middle = len(got) // 2
    assert (
        pull_all(live.api.client, headers, got[middle]["cursor"], limit=1000) == got[middle + 1 :]
    )
    more = [row for b in ones[-3:] for row in mine(one.process(b).outbox)]
    assert more
    assert [r["message_id"] for r in pull_all(live.api.client, headers, got[-1]["cursor"], 5)] == [
        row.message_id for row in more
    ]


def test_a_record_is_the_view_byte_for_byte(live: Live) -> None:
    gw = live.gateway()
    for b in batches(envelopes()):
        gw.process(b)
    page = live.api.client.get("/v1/records", params={"limit": 1000}, headers=live.headers())
    raw = page.content
    for row in next(iter(views_of(live.store, SUB).values())):
        assert b'"view":' + row.payload + b"}" in raw


def test_a_subscriber_never_sees_another_subscribers_views(live: Live) -> None:
    gw = live.gateway()
    for b in batches(envelopes()):
        gw.process(b)
    for sub in (SUB, OTHER):
        stored = {row.message_id for rows in views_of(live.store, sub).values() for row in rows}
        headers = live.headers(sub)
        pulled = pull_all(live.api.client, headers, None, limit=1000)
        assert {r["message_id"] for r in pulled} == stored and stored
        assert {r["view"]["subscriber"] for r in pulled} == {sub}
        streamed = live.api.client.get("/v1/feed?from=start&max_seconds=0.2", headers=headers)
        events = [e for e in sse(iter(streamed.text.split("\n"))) if e.kind == "view"]
        assert {orjson.loads(e.data)["message_id"] for e in events} == stored


def test_feed_ids_and_record_cursors_resume_each_other(live: Live) -> None:
    gw = live.gateway()
    for b in batches(envelopes()):
        gw.process(b)
    headers = live.headers()
    streamed = live.api.client.get("/v1/feed?from=start&max_seconds=0.2", headers=headers)
    events = [e for e in sse(iter(streamed.text.split("\n"))) if e.kind == "view"]
    pulled = pull_all(live.api.client, headers, None, limit=1000)
    assert [e.id for e in events] == [r["cursor"] for r in pulled]
    k = len(events) // 3
    after_event = pull_all(live.api.client, headers, events[k].id, limit=1000)
    assert [r["message_id"] for r in after_event] == [r["message_id"] for r in pulled[k + 1 :]]
    resumed = live.api.client.get(
        "/v1/feed?max_seconds=0.2", headers={**headers, "Last-Event-ID": pulled[k]["cursor"]}
    )
    again = [e for e in sse(iter(resumed.text.split("\n"))) if e.kind == "view"]
    assert [e.data for e in again] == [e.data for e in events[k + 1 :]]


def test_the_feed_starts_at_the_live_end_unless_asked_otherwise(live: Live) -> None:
    gw = live.gateway()
    for b in batches(envelopes())[:5]:
        gw.process(b)
    headers = live.headers()
    stored = next(iter(views_of(live.store, SUB).values()))
    text = live.api.client.get("/v1/feed?max_seconds=0.2", headers=headers).text
    assert "event: view" not in text
    first_id = next(iter(sse(iter(text.split("\n"))))).id
    assert decode_cursor(first_id or "")[origin_of(live.config.worker)] >= stored[-1].seq
    after = stored[2].seq
    cursor = encode_cursor({origin_of(live.config.worker): after})
    text = live.api.client.get(f"/v1/feed?max_seconds=0.2&after={cursor}", headers=headers).text
    data = [e.data for e in sse(iter(text.split("\n"))) if e.kind == "view"]
    assert data == [row.payload for row in stored[3:]]


def test_an_idle_feed_sends_keepalive_comments(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "KEEPALIVE_S", 0.1)
    monkeypatch.setattr(feed, "POLL_S", 0.02)
    text = live.api.client.get("/v1/feed?max_seconds=0.5", headers=live.headers()).text
    assert text.count(": keepalive\n\n") >= 3
    monkeypatch.setattr(feed, "KEEPALIVE_S", 60.0)
    text = live.api.client.get("/v1/feed?max_seconds=0.3", headers=live.headers()).text
    assert ": keepalive" not in text


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


MALFORMED = [
    "",
    "not a cursor!",
    "%%%",
    "a",  # base64 of no whole byte
    _b64(b"\xff\xfe"),  # not UTF-8
    _b64(b"[1, 2]"),
    _b64(b'{"s": -1}'),
    _b64(b'{"s": 1.5}'),
    _b64(b'{"s": true}'),
    _b64(b'{"s": "3"}'),
    _b64(b'{"s": 9223372036854775808}'),
    _b64(orjson.dumps({f"s{i}": 1 for i in range(300)})),
    "A" * 5000,
]


@pytest.mark.parametrize("cursor", MALFORMED)
def test_a_malformed_cursor_is_a_400_problem(live: Live, cursor: str) -> None:
    headers = live.headers()
    responses = [
        live.api.client.get("/v1/records", params={"after": cursor}, headers=headers),
        live.api.client.get("/v1/feed", params={"after": cursor}, headers=headers),
    ]
    if cursor:  # an empty Last-Event-ID is no id (SSE): the live end
        responses.append(
            live.api.client.get("/v1/feed", headers={**headers, "Last-Event-ID": cursor})
        )
    for r in responses:
        assert r.status_code == 400, (cursor, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 400


def test_a_cursor_of_an_unknown_shard_reads_every_known_shard_from_its_start(live: Live) -> None:
    gw = live.gateway()
    for b in batches(envelopes())[:4]:
        gw.process(b)
    headers = live.headers()
    cursor = encode_cursor({"elsewhere/audit/w9": 12})
    got = pull_all(live.api.client, headers, cursor, limit=1000)
    assert [r["message_id"] for r in got] == [
        r["message_id"] for r in pull_all(live.api.client, headers, None, 1000)
    ]
    assert all(decode_cursor(r["cursor"])["elsewhere/audit/w9"] == 12 for r in got)


@pytest.mark.parametrize("limit", [0, 1001, -1])
def test_a_page_size_out_of_bounds_is_refused(live: Live, limit: int) -> None:
    r = live.api.client.get("/v1/records", params={"limit": limit}, headers=live.headers())
    assert r.status_code == 422


def test_an_empty_store_pulls_an_empty_page_with_a_cursor_that_resumes(live: Live) -> None:
    headers = live.headers()
    body = live.api.client.get("/v1/records", headers=headers).json()
    assert body["records"] == [] and body["more"] is False
    gw = live.gateway()
    committed = [row for b in batches(envelopes()) for row in mine(gw.process(b).outbox)]
    again = pull_all(live.api.client, headers, body["next"], limit=1000)
    assert [r["message_id"] for r in again] == [row.message_id for row in committed]


def test_pulls_record_where_the_subscriber_got_to_at_most_every_few_seconds(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = live.gateway()
    for b in batches(envelopes()):
        gw.process(b)
    headers = live.headers()
    first = live.api.client.get("/v1/records", params={"limit": 5}, headers=headers).json()
    second = live.api.client.get(
        "/v1/records", params={"limit": 5, "after": first["next"]}, headers=headers
    ).json()
    with live.store.snapshot() as rd:
        read = get_read(rd, SUB)
    assert read is not None and (read.cursor, read.views) == (first["next"], 5)  # not yet
    monkeypatch.setattr(feed, "WRITE_EVERY_S", 0.0)
    third = live.api.client.get(
        "/v1/records", params={"limit": 5, "after": second["next"]}, headers=headers
    ).json()
    with live.store.snapshot() as rd:
        read = get_read(rd, SUB)
    assert read is not None and (read.cursor, read.views) == (third["next"], 15)
    assert read.read_ms == pytest.approx(time.time() * 1000, abs=10_000)
    with live.store.snapshot() as rd:
        assert get_read(rd, OTHER) is None


def test_the_schema_describes_the_callers_views(live: Live) -> None:
    gw = live.gateway()
    for b in batches(envelopes()):
        gw.process(b)
    for sub in (SUB, OTHER):
        headers = live.headers(sub)
        schema = live.api.client.get("/v1/schema", headers=headers).json()
        assert schema["properties"]["subscriber"]["const"] == sub
        for r in pull_all(live.api.client, headers, None, limit=1000):
            assert set(r["view"]) <= set(schema["properties"])
            assert set(schema["required"]) <= set(r["view"])


def test_cursors_are_short_opaque_and_round_trip() -> None:
    positions = {"icv-gateway/gw-1": 123456, "icv-gateway/gw-2": 0}
    text = encode_cursor(positions)
    assert decode_cursor(text) == positions
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert encode_cursor(dict(reversed(positions.items()))) == text  # one cursor per position
    assert decode_cursor(encode_cursor({})) == {}


def test_reads_the_store_refuses_are_kept_and_written_later(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = ReadTracker(live.store)
    with live.store.transaction() as tx:
        tx.execute("alter table subscriber_reads rename to gone")
    tracker.note(SUB, "c1", 1000, 3)
    with caplog.at_level(logging.WARNING, logger="gateway.api.feed"):
        tracker.flush(SUB)  # refused: told, not raised
    assert "subscriber reads not recorded" in caplog.text
    with live.store.transaction() as tx:
        tx.execute("alter table gone rename to subscriber_reads")
    tracker.note(SUB, "c2", 2000, 4)
    tracker.flush()  # due: nothing was written for SUB yet
    with live.store.snapshot() as rd:
        assert get_read(rd, SUB) == SubscriberRead(SUB, "c2", 2000, 7)
    tracker.note(SUB, "c3", 3000, 1)
    tracker.flush()  # not due for another WRITE_EVERY_S
    with live.store.snapshot() as rd:
        assert get_read(rd, SUB) == SubscriberRead(SUB, "c2", 2000, 7)
    tracker.flush(SUB)  # its feed ends: written now
    with live.store.snapshot() as rd:
        assert get_read(rd, SUB) == SubscriberRead(SUB, "c3", 3000, 8)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/records", {"limit": "LSVAU2180N2183294"}),
        ("/v1/feed", {"max_seconds": "LSVAU2180N2183294"}),
        ("/v1/feed", {"from": "LSVAU2180N2183294"}),
    ],
)
def test_a_query_that_does_not_validate_is_a_problem_that_repeats_nothing_sent(
    api: Api, path: str, params: dict[str, str]
) -> None:
    headers = api.headers(api.key(Role.SUBSCRIBER, SUB))
    r = api.client.get(path, params=params, headers=headers)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert "LSVAU2180N2183294" not in r.text
    assert r.json()["errors"][0]["loc"] == ["query", next(iter(params))]
