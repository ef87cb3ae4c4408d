"""The webhook sink against real HTTPS receivers (a local server with a test CA), on views the
real pipeline committed (``Gateway.process``) to the same store: retries with a stable
``webhook-id``, signatures that verify with ours and the reference implementation, order per
subscriber, dead-lettering with an audit entry and metrics, back-off on a fake clock."""

from __future__ import annotations

import http.server
import logging
import random
import shutil
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from gateway.api import create_app
from gateway.api.context import ApiContext, open_context
from gateway.api.webhooks import WebhookSink
from gateway.deliver.webhook import format_secret, verify
from gateway.errors import ConfigError
from gateway.keys import KeyKind, KeyRing, rotate_keys
from gateway.model import Envelope
from gateway.resources import default_policy_dir
from gateway.service import Gateway
from gateway.store.audit import AuditQuery
from simulators.fleet import Fleet, FleetConfig
from tests.api.conftest import api_config
from tests.ingest.tls_files import TlsFiles, make_tls_files

SUB = "mapco-nav"
START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, and the status it answered."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def msg_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """A real HTTPS server on a free port: ``answer(webhook-id, attempt number)`` is the
    status of each POST."""

    tls: TlsFiles
    answer: Callable[[str, int], int]
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    n = sum(r.msg_id == headers.get("webhook-id") for r in receiver.requests)
                    status = receiver.answer(headers.get("webhook-id", ""), n + 1)
                    receiver.requests.append(Received(headers, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server.server_address[1]}/hooks/icvgw?team=ops"

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@dataclass
class Setup:
    """Keys, a policy whose ``mapco-nav`` takes webhooks at ``url``, a store the pipeline
    committed views to."""

    root: Path
    tls: TlsFiles

    def config(self, url: str, **overrides: Any) -> Any:
        policy = self.root / "policy"
        if policy.exists():
            shutil.rmtree(policy)
        shutil.copytree(default_policy_dir(), policy)
        subs = policy / "subscribers.yaml"
        # Vehicles without consent get views without location at once (not held back as
        # per-trip pseudonyms until the trip leaves its trim behind).
        old = (
            "        channel: mqtt\n        topic: share/mapco-nav\n"
            "      no_consent: trip_pseudonym\n"
        )
        new = f"        channel: webhook\n        url: {url}\n      no_consent: drop_location\n"
        assert old in subs.read_text()
        subs.write_text(subs.read_text().replace(old, new))
        settings = {
            "broker__url": "mqtt://127.0.0.1:9",
            "policies": str(policy),
            "api__webhook__ca_file": str(self.tls.ca),
            "api__webhook__backoff_initial_s": 0.02,
            "api__webhook__backoff_max_s": 0.1,
            "api__webhook__timeout_s": 5.0,
            **overrides,
        }
        return api_config(self.root, **settings)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path, make_tls_files(tmp_path / "tls"))


@pytest.fixture
def receivers(setup: Setup) -> Iterator[Callable[[Callable[[str, int], int]], Receiver]]:
    made: list[Receiver] = []

    def make(answer: Callable[[str, int], int]) -> Receiver:
        made.append(Receiver(setup.tls, answer))
        return made[-1]

    yield make
    for r in made:
        r.close()


def commit_views(
    config: Any, vehicles: int = 3, seconds: float = 8, start: datetime = START
) -> list[tuple[int, str]]:
    """Run the pipeline on a short drive; the (seq, message id) of every webhook view
    committed so far, in audit order."""
    msgs = Fleet(FleetConfig(vehicles=vehicles, start=start), seed=3).messages(seconds, 1.0)
    gw = Gateway(config)
    try:
        gw.process([Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(msgs)])
    finally:
        gw.store.close()
    views = outbox(config)
    assert len(views) >= 10, "the drive gave too few webhook views to test with"
    return [(v["seq"], v["message_id"]) for v in views]


def outbox(config: Any) -> list[dict[str, Any]]:
    """The webhook rows of the outbox, in audit order."""
    ctx = open_context(config)
    try:
        with ctx.store.snapshot() as rd:
            rows = rd.fetch_all(
                "select seq, subscriber, message_id, attempts, next_attempt_ms, delivered_ms, "
                "failed_ms from outbox where channel = 'webhook' order by seq"
            )
    finally:
        ctx.close()
    names = ("seq", "subscriber", "message_id", "attempts", "next", "delivered", "failed")
    return [dict(zip(names, r, strict=True)) for r in rows]


def poll(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def sink_on(
    config: Any, clock: Callable[[], float] | None = None, rand: Callable[[], float] = random.random
) -> Iterator[tuple[ApiContext, WebhookSink]]:
    """A sink (not started: passes by hand) on an API context of ``config``."""
    ctx = open_context(config)
    if clock is not None:
        ctx.clock = clock
    sink = WebhookSink.from_context(ctx, rand=rand)
    try:
        yield ctx, sink
    finally:
        sink.stop()
        ctx.close()


def secret_of(config: Any) -> str:
    return format_secret(KeyRing.load(config.keys).webhook_secret(SUB))


def test_views_arrive_once_accepted_after_retries_signed_and_in_order(
    setup: Setup, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda _id, n: 500 if n <= 2 else 204)
    config = setup.config(receiver.url)
    views = commit_views(config)
    ctx = open_context(config)
    with TestClient(create_app(ctx)):  # the lifespan starts the sink and stops it
        poll(lambda: sum(r.status == 204 for r in receiver.received()) == len(views))
        poll(lambda: all(v["delivered"] is not None for v in outbox(config)))
    assert not [t for t in threading.enumerate() if t.name.startswith("icvgw-webhook")]
    got = receiver.received()
    accepted = [r.msg_id for r in got if r.status == 204]
    assert accepted == [mid for _, mid in views]  # each once, in audit order
    assert Counter(r.msg_id for r in got) == {mid: 3 for _, mid in views}
    # No view was tried before the one ahead of it was accepted.
    order = {mid: i for i, (_, mid) in enumerate(views)}
    assert [order[r.msg_id] for r in got] == sorted(order[r.msg_id] for r in got)
    secret = secret_of(config)
    for r in got:
        assert r.headers["content-type"] == "application/json"
        assert orjson.loads(r.body)["message_id"] == r.msg_id  # the same id in the view
        verify(secret, r.headers, r.body)
        Webhook(secret).verify(r.body, r.headers)
    bodies = {r.msg_id: {x.body for x in got if x.msg_id == r.msg_id} for r in got}
    assert all(len(b) == 1 for b in bodies.values())  # the same bytes on every attempt
    rows = outbox(config)
    assert all(v["attempts"] == 2 and v["failed"] is None for v in rows)
    sample = ctx.registry.get_sample_value
    labels = {"subscriber": SUB}
    assert sample("icvgw_webhook_deliveries_total", {**labels, "outcome": "delivered"}) == len(
        views
    )
    assert sample("icvgw_webhook_deliveries_total", {**labels, "outcome": "retried"}) == 2 * len(
        views
    )
    assert sample("icvgw_webhook_deliveries_total", {**labels, "outcome": "failed"}) == 0
    assert sample("icvgw_webhook_attempt_seconds_count") == 3 * len(views)
    ctx.close()


def test_a_receiver_that_always_fails_gets_each_view_n_times_then_it_is_given_up(
    setup: Setup, receivers: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # as `icvgw api --log-level debug` logs
    receiver = receivers(lambda _id, _n: 503)
    config = setup.config(receiver.url, api__webhook__attempts=3)
    views = commit_views(config, vehicles=2, seconds=6)
    ctx = open_context(config)
    with TestClient(create_app(ctx)):
        poll(lambda: all(v["failed"] is not None for v in outbox(config)))
    got = receiver.received()
    assert Counter(r.msg_id for r in got) == {mid: 3 for _, mid in views}
    assert all(v["attempts"] == 3 and v["delivered"] is None for v in outbox(config))
    with ctx.store.snapshot() as rd:
        entries = list(rd.query(AuditQuery(kind="admin", decision="webhook.failed")))
    bodies = [orjson.loads(e.body) for e in entries]
    assert [b["subject"] for b in bodies] == [mid for _, mid in views]
    for b in bodies:
        assert b["instance"] == config.worker
        assert b["details"] == {"subscriber": SUB, "attempts": 3, "last": "HTTP 503"}
    sample = ctx.registry.get_sample_value
    failed = {"subscriber": SUB, "outcome": "failed"}
    assert sample("icvgw_webhook_deliveries_total", failed) == len(views)
    # Nothing of the url (its query string could carry a token) reaches a log line.
    assert "given up after 3 attempts (HTTP 503)" in caplog.text
    assert "team=ops" not in caplog.text and "/hooks/" not in caplog.text
    ctx.close()


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_back_off_doubles_up_to_its_cap_with_jitter_and_nothing_is_sent_early(
    setup: Setup, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda _id, _n: 500)
    config = setup.config(
        receiver.url,
        api__webhook__attempts=7,
        api__webhook__backoff_initial_s=2.0,
        api__webhook__backoff_max_s=10.0,
    )
    views = commit_views(config)
    clock = FakeClock(time.time())
    with sink_on(config, clock, random.Random(11).random) as (_ctx, sink):
        waits = []
        for attempt in range(1, 8):
            sent = len(receiver.received())
            sink.deliver_due()
            head = outbox(config)[0]
            assert head["message_id"] == views[0][1] and head["attempts"] == attempt
            tried = [r.msg_id for r in receiver.received()[sent:]]
            if attempt == 7:  # given up: the next view goes at once (and fails, once)
                assert head["failed"] == round(clock.t * 1000)
                assert tried == [views[0][1], views[1][1]]
                break
            assert tried == [views[0][1]]  # only the head: nothing overtakes it
            wait_ms = head["next"] - round(clock.t * 1000)
            assert 0 <= wait_ms <= min(10_000, 2_000 * 2 ** (attempt - 1)), (attempt, wait_ms)
            waits.append(wait_ms)
            clock.t += (wait_ms - 1) / 1000  # a millisecond early: nothing is sent
            sink.deliver_due()
            assert len(receiver.received()) == sent + 1
            clock.t += 0.001
        assert len(set(waits)) == len(waits)  # jittered, not a fixed schedule
        assert waits[-1] < 10_000 and max(waits) > 2_000  # grew past the first cap, capped


def test_after_a_webhook_key_rotation_both_secrets_verify(
    setup: Setup, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda _id, _n: 200)
    config = setup.config(receiver.url)
    before = commit_views(config, vehicles=2, seconds=6)
    old = secret_of(config)
    with sink_on(config) as (_ctx, sink):
        sink.deliver_due()
        got = receiver.received()
        assert len(got) == len(before)
        assert all(len(r.headers["webhook-signature"].split(" ")) == 1 for r in got)
        rotate_keys(config.keys, [KeyKind.WEBHOOK])  # while the sink runs
        new = secret_of(config)
        assert new != old
        after = commit_views(config, vehicles=2, seconds=6, start=START + timedelta(minutes=1))
        sink.deliver_due()
        got = receiver.received()[len(before) :]
        assert [r.msg_id for r in got] == [mid for _, mid in after[len(before) :]]
        for r in got:
            assert len(r.headers["webhook-signature"].split(" ")) == 2
            verify(old, r.headers, r.body)
            verify(new, r.headers, r.body)
            Webhook(new).verify(r.body, r.headers)


def test_a_receiver_whose_certificate_the_system_does_not_trust_is_a_tls_failure(
    setup: Setup, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda _id, _n: 200)
    config = setup.config(receiver.url, api__webhook__ca_file=None, api__webhook__attempts=1)
    views = commit_views(config, vehicles=2, seconds=6)
    with sink_on(config) as (ctx, sink):
        sink.deliver_due()
        assert receiver.received() == []  # no request got through the handshake
        assert all(v["attempts"] == 1 and v["failed"] for v in outbox(config))
        with ctx.store.snapshot() as rd:
            entries = list(rd.query(AuditQuery(kind="admin", decision="webhook.failed")))
        assert len(entries) == len(views)
        assert all(orjson.loads(e.body)["details"]["last"] == "tls" for e in entries)


def test_the_sink_of_an_api_without_webhook_subscribers_stops_cleanly(tmp_path: Path) -> None:
    ctx: ApiContext = open_context(api_config(tmp_path))
    with TestClient(create_app(ctx)) as client:
        assert client.get("/healthz").status_code == 200
        assert any(t.name == "icvgw-webhooks" for t in threading.enumerate())
    assert not any(t.name == "icvgw-webhooks" for t in threading.enumerate())
    ctx.close()


@pytest.mark.parametrize("content", [None, b"not a certificate\n"])
def test_a_ca_file_that_is_no_ca_bundle_is_a_config_error(
    tmp_path: Path, content: bytes | None
) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    ctx = open_context(api_config(tmp_path, api__webhook__ca_file=str(ca)))
    try:
        with pytest.raises(ConfigError, match=r"api\.webhook\.ca_file: not a readable CA bundle"):
            WebhookSink.from_context(ctx)
    finally:
        ctx.close()
