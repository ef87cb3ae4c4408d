"""Webhook batches (``delivery.batch_max_views`` > 1) against a real HTTPS receiver, on views
the real pipeline committed: one POST carries a JSON array of the views' exact bytes,
``webhook-id`` the batch's id, signed over the array (checked with the reference Standard
Webhooks library); every view's message id kept, audit order kept, a failed batch retried
as it was (also after a restart), a batch given up audited with its views, ``linger_ms``."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from gateway.api import create_app
from gateway.api.context import open_context
from gateway.api.webhooks import cut_batches
from gateway.deliver.batch import batch_id, encode_batch
from gateway.deliver.webhook import verify
from gateway.policy import load_bundle
from gateway.policy.view_schema import batch_schema
from gateway.store.audit import AuditQuery
from gateway.store.outbox import OutboxRow, WebhookRow, outbox_rows
from tests.api.test_webhooks import (
    SUB,
    FakeClock,
    Receiver,
    Setup,
    commit_views,
    outbox,
    poll,
    secret_of,
    sink_on,
)
from tests.ingest.tls_files import make_tls_files


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


def batch_policy(config: Any, url: str, max_views: int, linger_ms: int = 0) -> None:
    """Make ``SUB``'s webhook view batched in ``config``'s policy copy."""
    subs = Path(config.policies) / "subscribers.yaml"
    line = f"        url: {url}\n"
    extra = f"        batch_max_views: {max_views}\n"
    if linger_ms:
        extra += f"        linger_ms: {linger_ms}\n"
    text = subs.read_text()
    assert text.count(line) == 1
    subs.write_text(text.replace(line, line + extra))


def stored(config: Any) -> list[OutboxRow]:
    """``SUB``'s views as committed (their exact bytes), in audit order."""
    ctx = open_context(config)
    try:
        with ctx.store.snapshot() as rd:
            rows = [r for r, _ in outbox_rows(rd, ctx.shard) if r.subscriber == SUB]
    finally:
        ctx.close()
    return rows


def validator(config: Any) -> jsonschema_rs.Validator:
    return jsonschema_rs.Draft202012Validator(batch_schema(load_bundle(config.policies), SUB))


def test_batches_arrive_signed_in_order_each_view_once_after_a_failed_attempt(
    setup: Setup, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda _id, n: 500 if n == 1 else 204)  # every batch fails once
    config = setup.config(receiver.url)
    batch_policy(config, receiver.url, max_views=4)
    views = commit_views(config)
    rows = {r.message_id: r for r in stored(config)}
    ctx = open_context(config)
    with TestClient(create_app(ctx)):
        poll(lambda: all(v["delivered"] is not None for v in outbox(config)))
    got = receiver.received()
    accepted = [r for r in got if r.status == 204]
    ids = [[v["message_id"] for v in orjson.loads(r.body)] for r in accepted]
    assert [mid for batch in ids for mid in batch] == [mid for _, mid in views]  # once, in order
    full, rest = divmod(len(views), 4)
    assert [len(b) for b in ids] == [4] * full + ([rest] if rest else [])
    secret, schema = secret_of(config), validator(config)
    for r, batch in zip(accepted, ids, strict=True):
        assert r.msg_id == batch_id(batch)
        assert r.body == encode_batch([rows[m].payload for m in batch])  # the stored bytes
        schema.validate(orjson.loads(r.body))
    for r in got:
        verify(secret, r.headers, r.body)
        Webhook(secret).verify(r.body, r.headers)
    # Each batch twice (500, then 204), the same bytes both times, none before the one ahead.
    assert Counter(r.msg_id for r in got) == {r.msg_id: 2 for r in accepted}
    assert all(len({x.body for x in got if x.msg_id == r.msg_id}) == 1 for r in accepted)
    order = [r.msg_id for r in accepted]
    assert [r.msg_id for r in got] == [m for m in order for _ in range(2)]
    assert all(v["attempts"] == 1 and v["failed"] is None for v in outbox(config))
    sample = ctx.registry.get_sample_value
    views_by = {"subscriber": SUB}
    assert sample("icvgw_webhook_deliveries_total", {**views_by, "outcome": "delivered"}) == len(
        views
    )
    assert sample("icvgw_webhook_deliveries_total", {**views_by, "outcome": "retried"}) == len(
        views
    )
    assert sample("icvgw_webhook_attempt_seconds_count") == 2 * len(accepted)
    ctx.close()


def test_a_batch_given_up_is_audited_with_the_seqs_and_message_ids_of_its_views(
    setup: Setup, receivers: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = receivers(lambda _id, _n: 503)
    config = setup.config(receiver.url, api__webhook__attempts=2)
    batch_policy(config, receiver.url, max_views=5)
    views = commit_views(config, vehicles=2, seconds=6)
    ctx = open_context(config)
    with TestClient(create_app(ctx)):
        poll(lambda: all(v["failed"] is not None for v in outbox(config)))
    got = receiver.received()
    tried = list(dict.fromkeys(r.msg_id for r in got))
    assert Counter(r.msg_id for r in got) == {b: 2 for b in tried}
    assert all(v["attempts"] == 2 and v["delivered"] is None for v in outbox(config))
    with ctx.store.snapshot() as rd:
        entries = list(rd.query(AuditQuery(kind="admin", decision="webhook.failed")))
    bodies = [orjson.loads(e.body or b"") for e in entries]
    assert [b["subject"] for b in bodies] == tried  # one entry per batch, named by its id
    seqs = [s for b in bodies for s in b["details"]["audit_seqs"]]
    mids = [m for b in bodies for m in b["details"]["message_ids"]]
    assert list(zip(seqs, mids, strict=True)) == views  # every view given up, in order
    for b in bodies:
        d = b["details"]
        assert batch_id(d["message_ids"]) == b["subject"] and 1 <= len(d["message_ids"]) <= 5
        assert {k: d[k] for k in ("subscriber", "attempts", "last")} == {
            "subscriber": SUB,
            "attempts": 2,
            "last": "HTTP 503",
        }
    # The audit seq named is the decision entry's (the one the view carries).
    payloads = {r.message_id: orjson.loads(r.payload) for r in stored(config)}
    assert all(payloads[m]["audit_seq"] == s for s, m in zip(seqs, mids, strict=True))
    failed = {"subscriber": SUB, "outcome": "failed"}
    assert ctx.registry.get_sample_value("icvgw_webhook_deliveries_total", failed) == len(views)
    assert "views" in caplog.text and "given up after 2 attempts (HTTP 503)" in caplog.text
    assert "team=ops" not in caplog.text and "/hooks/" not in caplog.text
    ctx.close()


def test_a_failed_batch_is_sent_again_as_it_was_after_a_restart(
    setup: Setup, receivers: Callable[..., Receiver]
) -> None:
    calls: list[str] = []

    def answer(webhook_id: str, _n: int) -> int:
        calls.append(webhook_id)
        return 500 if len(calls) == 1 else 200  # only the very first POST fails

    receiver = receivers(answer)
    config = setup.config(
        receiver.url, api__webhook__backoff_initial_s=5.0, api__webhook__backoff_max_s=5.0
    )
    batch_policy(config, receiver.url, max_views=3)
    views = commit_views(config)
    clock = FakeClock(max(r.created_ms for r in stored(config)) / 1000)
    with sink_on(config, clock, random.Random(5).random) as (_ctx, sink):
        sink.deliver_due()  # the first batch fails; nothing behind it is tried
    first = receiver.received()
    assert len(first) == 1 and first[0].status == 500
    assert [v["attempts"] for v in outbox(config)[:4]] == [1, 1, 1, 0]  # written on stop
    clock.t += 5.0
    with sink_on(config, clock, random.Random(5).random) as (_ctx, sink):  # a new process
        sink.deliver_due()
    again = receiver.received()[1:]
    assert again[0].msg_id == first[0].msg_id and again[0].body == first[0].body
    assert [m for r in again for m in (v["message_id"] for v in orjson.loads(r.body))] == [
        mid for _, mid in views
    ]
    assert all(v["delivered"] is not None for v in outbox(config))


def test_a_batch_not_full_waits_at_most_linger_ms_and_a_full_one_not_at_all(
    setup: Setup, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda _id, _n: 204)
    config = setup.config(receiver.url)
    views = commit_views(config)
    batch_policy(config, receiver.url, max_views=len(views) - 1, linger_ms=2000)
    tail = stored(config)[-1]
    clock = FakeClock(tail.created_ms / 1000 + 0.5)
    with sink_on(config, clock) as (_ctx, sink):
        sink.deliver_due()
        sizes = [len(orjson.loads(r.body)) for r in receiver.received()]
        assert sizes == [len(views) - 1]  # full: at once; the last view waits for more
        clock.t = tail.created_ms / 1000 + 1.999
        sink.deliver_due()
        assert len(receiver.received()) == 1
        clock.t = tail.created_ms / 1000 + 2.0
        sink.deliver_due()
    got = receiver.received()
    assert [len(orjson.loads(r.body)) for r in got] == [len(views) - 1, 1]
    assert orjson.loads(got[1].body)[0]["message_id"] == views[-1][1]
    assert all(v["delivered"] is not None for v in outbox(config))


def _row(seq: int, attempts: int = 0, next_ms: int = 0) -> WebhookRow:
    view = OutboxRow(seq, SUB, "t", f"m{seq}", b"{}", 0, "webhook")
    return WebhookRow(view, attempts, next_ms)


def test_batches_are_cut_in_order_with_a_retried_batch_as_it_was() -> None:
    rows = [_row(1, 2, 50), _row(2, 2, 50), _row(3), _row(4), _row(5), _row(6), _row(7)]
    cut = cut_batches(rows, 3)
    assert [[r.view.seq for r in b] for b in cut] == [[1, 2], [3, 4, 5], [6, 7]]
    assert [[r.view.seq for r in b] for b in cut_batches(rows[2:], 1)] == [[3], [4], [5], [6], [7]]
    assert cut_batches([], 5) == []


def test_a_batch_is_not_held_while_the_api_clock_is_behind_the_pipeline_clock(
    setup: Setup, receivers: Callable[..., Receiver]
) -> None:
    """``created_ms`` is the pipeline's clock, ``linger_ms`` is measured on the API's: a view
    that looks committed in the future (another host's clock ahead, or this one stepped
    back) goes at once, as the MQTT drainer sends it, not skew + linger later."""
    receiver = receivers(lambda _id, _n: 204)
    config = setup.config(receiver.url)
    views = commit_views(config)
    batch_policy(config, receiver.url, max_views=1000, linger_ms=50)
    clock = FakeClock(stored(config)[0].created_ms / 1000 - 60.0)  # a minute behind
    with sink_on(config, clock) as (_ctx, sink):
        sink.deliver_due()
    got = receiver.received()
    assert [[v["message_id"] for v in orjson.loads(r.body)] for r in got] == [
        [mid for _, mid in views]
    ]
    assert all(v["delivered"] is not None for v in outbox(config))
