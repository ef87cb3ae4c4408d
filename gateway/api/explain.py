"""``POST /v1/policy/explain`` (admin): what each subscriber would receive for a record.

The body is a record as a vehicle publishes it (a JSON object, or an array read as a
trace); :func:`gateway.explain.explain` runs the real pipeline on it with a fresh state and
writes nothing, as ``icvgw policy explain`` does. Pseudonyms come from an ephemeral key
unless ``real_pseudonyms`` asks for the gateway's. The VINs of the body never come back: a
view that shares the VIN, and any other string holding one, shows the vehicle's keyed
reference in its place.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from gateway.api.auth import context
from gateway.api.context import ApiContext
from gateway.api.problems import ProblemError, problems
from gateway.api.routes import RouteSet
from gateway.explain import Explained, parse_time
from gateway.explain import explain as run_explain
from gateway.policy.codes import is_vin_shaped

__all__ = ["routes"]

routes = RouteSet()
"""``POST /v1/policy/explain`` (for the admin router)."""


class Explanation(BaseModel):
    """One record for one subscriber: the decision (a held record with the decision it
    gets when released), the rules that fired, the output (None when blocked)."""

    record: int
    subscriber: str
    decision: str
    held: bool
    rules: list[str]
    precision_m: float | None
    datum: str | None
    reason: str | None
    transforms: dict[str, Any]
    output: dict[str, Any] | None


class ExplainResult(BaseModel):
    """The explanations, record by record then subscriber by subscriber."""

    policy: str
    decided_at: str
    records: int
    ephemeral_pseudonyms: bool
    items: list[Explanation]


def _vins(doc: Any, found: set[str]) -> set[str]:
    """Every VIN-shaped string value in a JSON document (walked with a stack, not by
    recursion: a body may nest as deep as the JSON parser allows, beyond Python's limit)."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if is_vin_shaped(item):
                found.add(item.strip())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _masked(doc: Any, refs: dict[str, str]) -> Any:
    """``doc`` with every VIN of ``refs`` replaced by its keyed reference."""
    if isinstance(doc, str):
        for vin, ref in refs.items():
            doc = doc.replace(vin, ref)
        return doc
    if isinstance(doc, dict):
        return {_masked(k, refs): _masked(v, refs) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_masked(v, refs) for v in doc]
    return doc


def _run(
    ctx: ApiContext,
    payload: bytes,
    subscribers: list[str] | None,
    at: str | None,
    trip_start: bool,
    real_pseudonyms: bool,
) -> dict[str, Any]:
    bundle = ctx.bundle()
    unknown = [s for s in subscribers or () if s not in bundle.subscribers]
    if unknown:
        raise ProblemError(422, f"subscriber: not in the policy ({', '.join(bundle.subscribers)})")
    when = None
    if at is not None:
        try:
            when = parse_time(at)
        except (ValueError, OverflowError):
            raise ProblemError(
                422, "at: not an ISO 8601 time with an offset, nor seconds"
            ) from None
    keys = ctx.keys if real_pseudonyms else None
    result: Explained = run_explain(
        bundle, payload, subscribers=subscribers or None, keys=keys, at=when, trip_start=trip_start
    )
    if result.dead is not None:
        raise ProblemError(422, f"the record is unusable: {result.dead.reason}")
    try:
        vins = _vins(orjson.loads(payload), set())
    except orjson.JSONDecodeError:  # pragma: no cover - decoded above
        vins = set()
    refs = {v: ctx.keys.vehicle_ref(v) for v in sorted(vins, key=len, reverse=True)}
    refs.update({v.upper(): ref for v, ref in list(refs.items())})
    try:
        decided = datetime.fromtimestamp(result.now, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        decided = str(result.now)
    return {
        "policy": bundle.version,
        "decided_at": decided,
        "records": result.records,
        "ephemeral_pseudonyms": result.ephemeral,
        "items": _masked(
            [
                {
                    "record": i.record,
                    "subscriber": i.subscriber,
                    "decision": i.decision,
                    "held": i.held,
                    "rules": list(i.rules),
                    "precision_m": i.precision_m,
                    "datum": i.datum,
                    "reason": i.reason,
                    "transforms": i.transforms,
                    "output": i.output,
                }
                for i in result.items
            ],
            refs,
        ),
    }


_BODY = {
    "requestBody": {
        "required": True,
        "description": "A record as a vehicle publishes it: a JSON object, or an array.",
        "content": {
            "application/json": {
                "schema": {"anyOf": [{"type": "object"}, {"type": "array"}]},
            }
        },
    }
}


@routes.route(
    "POST",
    "/v1/policy/explain",
    summary="What each subscriber would receive for a record, and why",
    response_model=ExplainResult,
    responses=problems(413),
    openapi_extra=_BODY,
)
async def explain(
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    subscriber: Annotated[
        list[str] | None, Query(max_length=64, description="Only these subscribers.")
    ] = None,
    at: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Decision time: ISO 8601 with offset, or Unix seconds.",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    trip_start: Annotated[
        bool, Query(description="Each vehicle's first record starts a trip.")
    ] = False,
    real_pseudonyms: Annotated[
        bool, Query(description="The gateway's pseudonyms, not an ephemeral key's.")
    ] = False,
) -> dict[str, Any]:
    """Each subscriber's decision and output for the record in the body (nothing is
    written). 422 if the body is unusable as a whole (not JSON, not an object or array)."""
    payload = await request.body()
    return await run_in_threadpool(_run, ctx, payload, subscriber, at, trip_start, real_pseudonyms)
