"""What a platform reads with its ``subscriber`` key: only its own views.

``GET /v1/schema`` — the JSON Schema of what one delivery carries (as ``icvgw policy
schema``): its view, or a batch of views;
``GET /v1/feed`` — its views as Server-Sent Events, live, resumable;
``GET /v1/records`` — the same views page by page, for replay after an outage.

A subscriber whose view sets ``delivery.batch_max_views`` above 1 gets its feed in batches:
one ``event: batch`` carries up to that many views as a JSON array of their exact bytes
(:func:`gateway.deliver.batch.encode_batch`), its id the cursor after its last view, so a
``Last-Event-ID`` resumes exactly after the batch. A batch not full waits at most
``linger_ms`` after its oldest view was committed (a stream that ends meanwhile leaves those
views to the next one, from its last id). The pull stays page by page, one view per record.

The feed and the pull read the durable outbox, whatever the subscriber's delivery channel
(an MQTT subscriber can replay through them too), for as long as the outbox keeps a view
(``rules.retention.outbox_days``); they never mark a view delivered. A position in them is a
*cursor*: base64url (unpadded) of the JSON map audit shard -> last seq read, so that each
worker's shard resumes where it was; a shard the map does not name is read from its start.
An SSE event's id and a record's cursor are the same kind of string: either resumes the
other. The API is another process than the pipeline and the outbox is its only contract
with it, so the feed polls the store (a few rows at a time, idle polls read one row per
shard); where a subscriber got to is written to ``subscriber_reads`` at most every few
seconds (:class:`ReadTracker`), since the pipeline shares SQLite's one writer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import orjson
from fastapi import Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from gateway.api.auth import caller, context
from gateway.api.auth import router as _router
from gateway.api.context import ApiContext
from gateway.api.cursors import BadCursor, decode_cursor, encode_cursor
from gateway.api.problems import problem, problem_response, problem_router, problems
from gateway.apikeys import ApiKey, Role
from gateway.deliver.batch import encode_batch
from gateway.errors import StoreError
from gateway.policy.schema import Delivery
from gateway.policy.view_schema import delivery_schema
from gateway.store import Store
from gateway.store.apikeys import get_api_key
from gateway.store.outbox import OutboxRow, subscriber_views
from gateway.store.subscriber_reads import record_read

__all__ = [
    "BadCursor",
    "Events",
    "Page",
    "ReadTracker",
    "decode_cursor",
    "encode_cursor",
    "live_end",
    "page_events",
    "read_page",
    "router",
]

log = logging.getLogger(__name__)
# A query that does not validate is a 422 problem that repeats no value (FastAPI's own
# answer would echo a VIN pasted into ?limit=).
router = problem_router(_router(Role.SUBSCRIBER))

POLL_S = 0.5
"""How often an idle feed looks for new views."""
KEEPALIVE_S = 15.0
"""An idle feed sends a ``: keepalive`` comment this often (proxies close silent streams)."""
BATCH = 500
"""Views per poll of the feed (it polls again at once while a poll comes back full)."""
WRITE_EVERY_S = 5.0
"""``subscriber_reads`` is written at most this often per subscriber."""


def live_end(store: Store) -> dict[str, int]:
    """The positions at the head of every shard: from there, only views committed later."""
    with store.snapshot() as rd:
        return {s.shard: s.size - 1 for s in rd.shards() if s.size > 0}


@dataclass(frozen=True, slots=True)
class Page:
    """Views after a cursor: each with the cursor just after it, the cursor after them all
    (at the head of each shard read to its end) and whether more views are waiting."""

    rows: list[tuple[OutboxRow, str]]
    positions: dict[str, int]
    more: bool


def read_page(store: Store, subscriber: str, positions: Mapping[str, int], limit: int) -> Page:
    """At most ``limit`` of ``subscriber``'s views after ``positions``, shard by shard, in
    audit order within each shard, from one snapshot. A shard whose head the cursor has
    reached is not queried (so an idle poll reads only the shards' heads)."""
    at = dict(positions)
    rows: list[tuple[OutboxRow, str]] = []
    more = False
    with store.snapshot() as rd:
        for state in rd.shards():
            head, after = state.size - 1, at.get(state.shard, -1)
            if head <= after:
                continue
            room = limit - len(rows)
            found = subscriber_views(rd, subscriber, state.shard, after_seq=after, limit=room + 1)
            if len(found) > room:
                more = True
            for row in found[:room]:
                at[state.shard] = row.seq
                rows.append((row, encode_cursor(at)))
            if len(found) <= room:
                # Read to the end in this snapshot, where the shard's head and its views
                # were committed together: nothing at or below the head can appear later.
                at[state.shard] = max(head, at.get(state.shard, -1))
    return Page(rows, at, more)


@dataclass
class _Unwritten:
    cursor: str
    read_ms: int
    views: int


@dataclass
class ReadTracker:
    """Where each subscriber got to, written to ``subscriber_reads`` at most every
    :data:`WRITE_EVERY_S` per subscriber (the last position always, when its feed ends).
    Called from the thread pool only: a write holds its lock."""

    store: Store
    _unwritten: dict[str, _Unwritten] = field(default_factory=dict)
    _written: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, subscriber: str, cursor: str, read_ms: int, views: int) -> None:
        """``subscriber`` was handed ``views`` views, up to ``cursor``, at ``read_ms``."""
        with self._lock:
            seen = self._unwritten.get(subscriber)
            total = views + (seen.views if seen is not None else 0)
            self._unwritten[subscriber] = _Unwritten(cursor, read_ms, total)

    def flush(self, now: str | None = None) -> None:
        """Write what is due (and ``now``'s position, due or not), in one transaction; a
        store that refuses is told in the log, and the positions are tried again later."""
        with self._lock:
            mono = time.monotonic()
            due = {
                sub: u
                for sub, u in self._unwritten.items()
                if sub == now or mono - self._written.get(sub, -WRITE_EVERY_S) >= WRITE_EVERY_S
            }
            if not due:
                return
            try:
                with self.store.transaction() as tx:
                    for sub, u in due.items():
                        record_read(tx, sub, u.cursor, u.read_ms, u.views)
            except StoreError as exc:
                log.warning("subscriber reads not recorded (tried again later): %s", exc)
                return
            for sub in due:
                del self._unwritten[sub]
                self._written[sub] = mono


_TRACKER_LOCK = threading.Lock()


def _tracker(request: Request) -> ReadTracker:
    """The app's read tracker (made with its first use)."""
    state = request.app.state
    with _TRACKER_LOCK:
        if not hasattr(state, "read_tracker"):
            state.read_tracker = ReadTracker(context(request).store)
        tracker: ReadTracker = state.read_tracker
    return tracker


def _positions(cursor: str) -> dict[str, int] | Response:
    """The positions of ``cursor``, or the 400 problem."""
    try:
        return decode_cursor(cursor)
    except BadCursor as exc:
        return problem(400, str(exc))


_CURSOR_DOC = (
    "A cursor from this API (an event id of /v1/feed or a cursor of /v1/records): "
    "base64url of the JSON map audit shard -> last seq read."
)
_EVENT_SCHEMA = {
    "type": "object",
    "description": (
        "One view, or one batch of views for a batched subscriber (the first block of a "
        "stream is its starting id alone)"
    ),
    "properties": {
        "id": {
            "type": "string",
            "description": "The cursor just after this view (a batch's: after its last view)",
        },
        "event": {"type": "string", "enum": ["view", "batch"]},
        "data": {
            "type": "string",
            "description": (
                "`view`: the view's JSON, as delivered; `batch` (a subscriber whose view sets "
                "delivery.batch_max_views above 1): a JSON array of up to that many views, "
                "each as delivered, in audit order. Either validates against /v1/schema."
            ),
            "contentMediaType": "application/json",
            "contentSchema": {"type": ["object", "array"]},
        },
    },
}
"""Each event, as OpenAPI 3.2 describes event streams (``itemSchema``; ``schema`` is then
the whole stream, read as an array of events)."""
_BAD_CURSOR: dict[int | str, dict[str, Any]] = {
    **problems(),
    400: problem_response("The cursor is not one this API made"),
}


@router.get("/v1/schema", summary="The JSON Schema of what one delivery to the caller carries")
def schema(
    ctx: ApiContext = Depends(context),  # noqa: B008
    key: ApiKey = Depends(caller),  # noqa: B008
) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one delivery to the caller (MQTT message, webhook POST,
    `/v1/feed` event's data): its view (an object, `icvgw.view/1`), or, if its view sets
    `delivery.batch_max_views` above 1, a batch: an array of 1 to `batch_max_views` views,
    each valid under `$defs/view`. A `/v1/records` record's `view` is always one view: the
    view schema, or the batch schema's `$defs/view`."""
    assert key.subscriber is not None  # a subscriber key always names one
    return delivery_schema(ctx.bundle(), key.subscriber)


class EventStream(StreamingResponse):
    """``text/event-stream`` whose generator is always closed when the response ends, the
    client gone or not (Starlette leaves a generator cancelled at a ``yield`` unclosed)."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


def _event(kind: bytes, payload: bytes, cursor: str) -> bytes:
    data = b"".join(b"data: " + line + b"\n" for line in payload.split(b"\n"))
    return b"id: " + cursor.encode() + b"\nevent: " + kind + b"\n" + data + b"\n"


@dataclass(frozen=True, slots=True)
class Events:
    """A page as events: their bytes, the position after the last (the next poll's start),
    how many views they carry, and the seconds a held batch may still wait (0: none)."""

    data: bytes
    positions: dict[str, int]
    views: int
    linger_s: float = 0.0


def page_events(page: Page, start: Mapping[str, int], delivery: Delivery, now_ms: int) -> Events:
    """``page`` (read from ``start``) as the events of a subscriber with ``delivery``: one
    ``view`` per view; batched, one ``batch`` per ``batch_max_views`` views, id the cursor
    after its last view. The last batch, not full, is held back (the next poll reads it
    again) while more views are waiting or its oldest view is younger than ``linger_ms``
    (a view committed after ``now_ms`` by the pipeline's clock is not waited for)."""
    if not delivery.batched:
        data = b"".join(_event(b"view", row.payload, c) for row, c in page.rows)
        return Events(data, page.positions, len(page.rows))
    size = delivery.batch_max_views
    batches = [page.rows[i : i + size] for i in range(0, len(page.rows), size)]
    positions, linger_s = page.positions, 0.0
    if batches and len(batches[-1]) < size:
        created = min(row.created_ms for row, _ in batches[-1])  # shards interleave in age
        linger_end = created + delivery.linger_ms
        # Committed "in the future" (the pipeline's clock ahead of the API's, or this one
        # stepped back): sent at once, not skew + linger later.
        if page.more or created <= now_ms < linger_end:
            batches.pop()
            positions = decode_cursor(batches[-1][-1][1]) if batches else dict(start)
            linger_s = 0.0 if page.more else (linger_end - now_ms) / 1000
    data = b"".join(
        _event(b"batch", encode_batch([row.payload for row, _ in b]), b[-1][1]) for b in batches
    )
    return Events(data, positions, sum(len(b) for b in batches), linger_s)


def _admitted(ctx: ApiContext, key: ApiKey) -> bool:
    """Whether ``key`` would still be admitted: not revoked, its subscriber in the policy."""
    with ctx.store.snapshot() as rd:
        stored = get_api_key(rd, key.key_id)
    return (
        stored is not None
        and stored.revoked_ms is None
        and key.subscriber in ctx.bundle().subscribers
    )


async def _stream(
    ctx: ApiContext, reads: ReadTracker, key: ApiKey, at: dict[str, int], seconds: float
) -> AsyncIterator[bytes]:
    """The feed's bytes: the starting cursor as an id (an event with no data, which sets a
    client's Last-Event-ID without dispatching anything), then views as they are committed,
    until ``seconds`` have passed, the client goes, or its key would no longer be admitted
    (revoked, or its subscriber gone from the policy)."""
    assert key.subscriber is not None  # a subscriber key always names one
    subscriber = key.subscriber
    deadline = time.monotonic() + seconds
    quiet_since = time.monotonic()
    yield f"id: {encode_cursor(at)}\n\n".encode()

    def poll(at: dict[str, int]) -> tuple[Events, bool] | None:
        sub = ctx.bundle().subscribers.get(subscriber)  # one bundle, even if one comes
        if sub is None or not _admitted(ctx, key):
            return None
        delivery = sub.view.delivery
        page = read_page(ctx.store, subscriber, at, max(BATCH, delivery.batch_max_views))
        now_ms = round(ctx.clock() * 1000)
        events = page_events(page, at, delivery, now_ms)
        if events.views:
            reads.note(subscriber, encode_cursor(events.positions), now_ms, events.views)
        reads.flush()
        return events, page.more

    try:
        while True:
            polled = await anyio.to_thread.run_sync(poll, at)
            if polled is None:
                return
            events, more = polled
            at = events.positions
            now = time.monotonic()
            if events.data:
                yield events.data
                quiet_since = now
            elif now - quiet_since >= KEEPALIVE_S:
                yield b": keepalive\n\n"
                quiet_since = now
            if now >= deadline:
                return
            if not more:
                await anyio.sleep(min(POLL_S, events.linger_s or POLL_S, deadline - now))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(reads.flush, subscriber)


@router.get(
    "/v1/feed",
    summary="The caller's views as Server-Sent Events",
    response_class=EventStream,
    responses={
        200: {
            "description": "An endless event stream (bounded by max_seconds)",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "array", "items": _EVENT_SCHEMA},  # the whole stream
                    "itemSchema": _EVENT_SCHEMA,
                }
            },
        },
        **_BAD_CURSOR,
    },
)
def feed(
    request: Request,
    after: str | None = Query(None, description=_CURSOR_DOC),
    start: Literal["start"] | None = Query(
        None, alias="from", description="`start`: from the oldest view the outbox keeps"
    ),
    max_seconds: float | None = Query(
        None, gt=0, description="End the stream after this many seconds (default: never)"
    ),
    last_event_id: str | None = Header(None, description=_CURSOR_DOC),
    ctx: ApiContext = Depends(context),  # noqa: B008
    key: ApiKey = Depends(caller),  # noqa: B008
) -> Response:
    """Each view as an event ``id: <cursor>``, ``event: view``, ``data: <the view's JSON,
        byte for byte as delivered>``, in audit order within each shard (for a subscriber
        whose view sets ``delivery.batch_max_views`` above 1: ``event: batch``, ``data:`` a
        JSON array of up to that many views, ``id:`` the cursor after its last view, waiting
        at most ``linger_ms`` to fill; see /v1/schema); a ``: keepalive``
        comment every 15 s when idle. The stream first sends ``id: <cursor>`` alone (its
        starting position, no event). It starts after the ``Last-Event-ID`` header's cursor
        (what an EventSource sends when it reconnects), else after ``?after=``, else at the
        oldest view kept with ``?from=start``, else at the live end (only views committed from
        now on). It ends when its key is revoked or its subscriber leaves the policy, and
    otherwise never by itself: ``?max_seconds=`` bounds it (tests, schemathesis)."""
    assert key.subscriber is not None  # a subscriber key always names one
    cursor = last_event_id if last_event_id else after  # an empty id is no id (SSE)
    if cursor is None:
        at: dict[str, int] | Response = {} if start == "start" else live_end(ctx.store)
    else:
        at = _positions(cursor)
    if isinstance(at, Response):
        return at
    seconds = float("inf") if max_seconds is None else max_seconds
    body = _stream(ctx, _tracker(request), key, at, seconds)
    return EventStream(body, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


class Record(BaseModel):
    """One view and where it is."""

    cursor: str = Field(description="Resumes just after this view (pull or feed)")
    message_id: str = Field(description="The view's message id (the same on every redelivery)")
    view: dict[str, Any] = Field(description="The view, as delivered (see /v1/schema)")


class RecordsPage(BaseModel):
    """A page of views after a cursor."""

    records: list[Record]
    next: str = Field(description="The cursor after this page (``after`` of the next one)")
    more: bool = Field(description="More views are waiting after ``next``")


@router.get(
    "/v1/records",
    summary="The caller's views after a cursor, page by page",
    response_model=RecordsPage,
    responses=_BAD_CURSOR,
)
def records(
    request: Request,
    after: str | None = Query(None, description=_CURSOR_DOC),
    limit: int = Query(100, ge=1, le=1000, description="Views per page"),
    ctx: ApiContext = Depends(context),  # noqa: B008
    key: ApiKey = Depends(caller),  # noqa: B008
) -> Response:
    """Views after ``after`` (from the oldest the outbox keeps without it), in audit order
    within each shard; ``next`` resumes after the last, ``more`` says whether to ask again
    at once. Views stay for ``rules.retention.outbox_days`` whatever was read."""
    assert key.subscriber is not None  # a subscriber key always names one
    at = {} if after is None else _positions(after)
    if isinstance(at, Response):
        return at
    page = read_page(ctx.store, key.subscriber, at, limit)
    next_cursor = encode_cursor(page.positions)
    reads = _tracker(request)
    if page.rows:
        reads.note(key.subscriber, next_cursor, round(ctx.clock() * 1000), len(page.rows))
    reads.flush()
    body = {
        "records": [
            {"cursor": c, "message_id": r.message_id, "view": orjson.Fragment(r.payload)}
            for r, c in page.rows
        ],
        "next": next_cursor,
        "more": page.more,
    }
    return Response(orjson.dumps(body), media_type="application/json")
