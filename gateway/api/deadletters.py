"""Dead-letter routes for operators (admin): reasons and counts, a list, one opened.

What can be shown without opening a letter — its audit entry's seq, time, reason, keyed
vehicle reference, size — is listed freely (as ``icvgw deadletter list``). A payload comes
only through ``GET /v1/deadletters/{seq}``: opened from the sealed store with the store key
and recorded as a ``deadletter.read`` entry in the same transaction (as
``icvgw deadletter show``). It is raw input, VIN and position included, and the one answer
of the API that carries them: ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Response
from pydantic import BaseModel

from gateway.api.auth import context
from gateway.api.context import ApiContext
from gateway.api.problems import ProblemError, problems
from gateway.api.routes import RouteSet
from gateway.store.deadletters import deadletter_reasons, deadletters, read_deadletter

__all__ = ["routes"]

routes = RouteSet()
"""The dead-letter routes (for the admin router; ``reasons`` before ``{seq}``)."""

INT64 = 2**63 - 1
_TEXT = r"^[^\x00-\x1f\x7f]*$"

Ctx = Annotated[ApiContext, Depends(context)]
Shard = Annotated[
    str | None,
    Query(max_length=256, pattern=_TEXT, description="The shard; default: the worker's."),
]


class Reasons(BaseModel):
    """How many dead letters the shard keeps, by reason."""

    shard: str
    total: int
    reasons: dict[str, int]


class DeadLetter(BaseModel):
    """A dead letter, unopened: its audit entry's seq, when, why, the vehicle (keyed
    reference, if known) and the size kept."""

    seq: int
    time: str
    reason: str
    vehicle: str | None
    size: int


class DeadLetters(BaseModel):
    """The newest dead letters first; ``next_before`` pages on (``?before=``)."""

    shard: str
    deadletters: list[DeadLetter]
    next_before: int | None


class OpenedDeadLetter(BaseModel):
    """One dead letter opened: the topic and payload as received (``payload`` as text when
    it is UTF-8, ``payload_base64`` always)."""

    shard: str
    seq: int
    time: str
    reason: str
    topic: str
    size: int
    payload: str | None
    payload_base64: str


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@routes.route(
    "GET",
    "/v1/deadletters/reasons",
    summary="Dead letters by reason",
    response_model=Reasons,
    responses=problems(),
)
def reasons(ctx: Ctx, shard: Shard = None) -> dict[str, Any]:
    """Counts by reason (nothing opened)."""
    name = shard or ctx.shard
    with ctx.store.snapshot() as r:
        counts = deadletter_reasons(r, name)
    return {"shard": name, "total": sum(counts.values()), "reasons": counts}


@routes.route(
    "GET",
    "/v1/deadletters",
    summary="The newest dead letters, unopened",
    response_model=DeadLetters,
    responses=problems(),
)
def listed(
    ctx: Ctx,
    shard: Shard = None,
    before: Annotated[int | None, Query(ge=0, le=INT64, description="Only below this seq.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The newest dead letters (below ``before``), nothing of their content."""
    name = shard or ctx.shard
    with ctx.store.snapshot() as r:
        rows = deadletters(r, name, limit + 1, before_seq=before)
    page = rows[:limit]
    return {
        "shard": name,
        "deadletters": [
            {
                "seq": d.seq,
                "time": _time(d.ts_ms),
                "reason": d.reason,
                "vehicle": d.vehicle,
                "size": d.size,
            }
            for d in page
        ],
        "next_before": page[-1].seq if len(rows) > limit else None,
    }


@routes.route(
    "GET",
    "/v1/deadletters/{seq}",
    summary="One dead letter opened: topic and payload (audited)",
    response_model=OpenedDeadLetter,
    responses=problems(404),
)
def opened(
    ctx: Ctx,
    response: Response,
    seq: Annotated[int, Path(ge=0, le=INT64)],
    shard: Shard = None,
) -> dict[str, Any]:
    """Open one dead letter (audited as ``deadletter.read``); 404 if there is none."""
    name = shard or ctx.shard
    with ctx.store.transaction() as tx:
        row = read_deadletter(tx, name, seq, at=ctx.clock(), instance=ctx.worker)
    if row is None:
        raise ProblemError(404, f"no dead letter {seq} in this shard")
    response.headers["Cache-Control"] = "no-store"
    try:
        text: str | None = row.payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "shard": name,
        "seq": row.seq,
        "time": _time(row.ts_ms),
        "reason": row.reason,
        "topic": row.topic,
        "size": len(row.payload),
        "payload": text,
        "payload_base64": base64.b64encode(row.payload).decode(),
    }
