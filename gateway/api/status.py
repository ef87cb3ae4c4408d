"""Operators' view of the subscribers (``admin`` keys): is each one getting its views?

``GET /v1/subscribers`` — every subscriber of the policy in force;
``GET /v1/subscribers/{subscriber_id}`` — one of them (404 if the policy has no such id).

Per subscriber: its channel; its views in the store; those pending (neither confirmed by
the MQTT drainer or the webhook sink nor given up on — ``http_stream`` views are read, not
confirmed, and never pending), the oldest one's age, and those the webhook sink gave up on;
the last confirmation; and for a reader of the feed or pull routes, its last read and its
lag (its views after the cursor it reached). All from one snapshot of the store.
"""

from __future__ import annotations

from fastapi import Depends, Response
from pydantic import BaseModel, Field

from gateway.api.auth import context
from gateway.api.auth import router as _router
from gateway.api.context import ApiContext
from gateway.api.cursors import decode_cursor
from gateway.api.problems import problem, problem_response
from gateway.apikeys import Role
from gateway.policy.bundle import PolicyBundle
from gateway.store.outbox import OutboxStats, count_views_after, outbox_stats
from gateway.store.session import Reader
from gateway.store.subscriber_reads import SubscriberRead, get_read, list_reads

__all__ = ["LastRead", "SubscriberList", "SubscriberStatus", "router"]

router = _router(Role.ADMIN)
_NONE = OutboxStats(0, 0, 0, None, None)


class LastRead(BaseModel):
    """Where the subscriber last got to on the feed or pull routes."""

    cursor: str = Field(description="The cursor it reached")
    read_ms: int = Field(description="When (Unix ms; recorded at most every few seconds)")
    views: int = Field(description="Views it has read over HTTP in all")


class SubscriberStatus(BaseModel):
    """One subscriber's delivery state."""

    id: str
    name: str
    channel: str = Field(description="mqtt, http_stream or webhook (the policy's)")
    views: int = Field(description="Its views in the store (kept rules.retention.outbox_days)")
    pending: int = Field(description="Views not yet confirmed by the MQTT or webhook sink")
    failed: int = Field(description="Views the webhook sink gave up on")
    oldest_pending_age_s: float | None = Field(description="Age of the oldest pending view")
    last_delivered_ms: int | None = Field(description="Latest confirmation (Unix ms)")
    last_read: LastRead | None = Field(description="Its last read over HTTP, if any")
    lag: int | None = Field(description="Its views after its last read's cursor")


class SubscriberList(BaseModel):
    """Every subscriber of the policy in force, by id."""

    subscribers: list[SubscriberStatus]


def _lag(rd: Reader, subscriber: str, read: SubscriberRead) -> int:
    at = decode_cursor(read.cursor)
    return sum(count_views_after(rd, subscriber, s.shard, at.get(s.shard, -1)) for s in rd.shards())


def _fields(read: SubscriberRead) -> dict[str, object]:
    return {"cursor": read.cursor, "read_ms": read.read_ms, "views": read.views}


def _status(
    rd: Reader,
    bundle: PolicyBundle,
    subscriber: str,
    stats: OutboxStats,
    read: SubscriberRead | None,
    now_ms: int,
) -> SubscriberStatus:
    sub = bundle.subscribers[subscriber]
    oldest = stats.oldest_pending_ms
    return SubscriberStatus(
        id=subscriber,
        name=sub.name,
        channel=sub.view.delivery.channel.value,
        views=stats.views,
        pending=stats.pending,
        failed=stats.failed,
        oldest_pending_age_s=None if oldest is None else max(0, now_ms - oldest) / 1000,
        last_delivered_ms=stats.last_delivered_ms,
        last_read=None if read is None else LastRead(**_fields(read)),
        lag=None if read is None else _lag(rd, subscriber, read),
    )


@router.get(
    "/v1/subscribers",
    summary="Every subscriber's delivery state",
    response_model=SubscriberList,
)
def subscribers(ctx: ApiContext = Depends(context)) -> SubscriberList:  # noqa: B008
    """Per subscriber of the policy in force: channel, views, pending, failed, oldest
    pending age, last confirmation, last read and lag."""
    bundle = ctx.bundle()
    now_ms = round(ctx.clock() * 1000)
    with ctx.store.snapshot() as rd:
        stats, reads = outbox_stats(rd), list_reads(rd)
        return SubscriberList(
            subscribers=[
                _status(rd, bundle, sid, stats.get(sid, _NONE), reads.get(sid), now_ms)
                for sid in sorted(bundle.subscribers)
            ]
        )


@router.get(
    "/v1/subscribers/{subscriber_id}",
    summary="One subscriber's delivery state",
    response_model=SubscriberStatus,
    responses={404: problem_response("The policy in force has no such subscriber")},
)
def subscriber(
    subscriber_id: str,
    ctx: ApiContext = Depends(context),  # noqa: B008
) -> Response | SubscriberStatus:
    """As in ``/v1/subscribers``, for one subscriber."""
    bundle = ctx.bundle()
    if subscriber_id not in bundle.subscribers:
        return problem(404, "the policy in force has no such subscriber")
    now_ms = round(ctx.clock() * 1000)
    with ctx.store.snapshot() as rd:
        stats = outbox_stats(rd, subscriber_id).get(subscriber_id, _NONE)
        return _status(rd, bundle, subscriber_id, stats, get_read(rd, subscriber_id), now_ms)
