"""Consent routes for operators (admin): list, grant, withdraw, import.

The same checks and the same audit entries as ``icvgw consent`` (:mod:`gateway.consents`):
each change is a ``consent.changed`` entry in the worker's shard (``ctx.shard``, instance
``ctx.worker``), committed with the change, and the next batch the pipeline decides applies
it. A vehicle is given as a VIN in a request body, or as its keyed reference in a query
parameter, never as a VIN in a URL; answers name it by its keyed reference only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway.api.auth import context
from gateway.api.context import ApiContext
from gateway.api.problems import ProblemError, problems
from gateway.api.routes import RouteSet
from gateway.consents import (
    MAX_IMPORT_ROWS,
    ConsentValueError,
    CsvBytes,
    check_consent,
    check_import,
    import_csv,
    new_consent_id,
)
from gateway.errors import ConfigError
from gateway.model import Consent

__all__ = ["routes"]

routes = RouteSet()
"""The consent routes (for the admin router)."""

VEHICLE_REF = r"^k[0-9]{1,9}:[0-9a-f]{32}$"
VIN = r"^[A-HJ-NPR-Z0-9]{17}$"  # ISO 3779's alphabet; the check digit is checked apart
_ID = r"^[^\x00-\x1f\x7f]+$"

Ctx = Annotated[ApiContext, Depends(context)]


class ConsentOut(BaseModel):
    """A consent as the store keeps it: the vehicle by keyed reference, times in UTC;
    ``active`` if in force now."""

    id: str
    vehicle: str
    purpose: str
    granted: str
    expires: str
    withdrawn: str | None
    active: bool


class ConsentList(BaseModel):
    """A vehicle's consents (under each of its keyed references), by id."""

    vehicles: list[str]
    consents: list[ConsentOut]


class VehicleBody(BaseModel):
    """A vehicle by VIN."""

    model_config = ConfigDict(extra="forbid")
    vin: str = Field(pattern=VIN)


class GrantBody(BaseModel):
    """A consent to record, as ``icvgw consent grant`` takes it (the VIN with its check
    digit as the ingest checks it, a purpose of the bundle's catalogue)."""

    model_config = ConfigDict(extra="forbid")
    vin: str = Field(pattern=VIN)
    purpose: str = Field(max_length=256)
    expires: str = Field(
        max_length=64,
        description="ISO 8601 with a UTC offset, in the future.",
        json_schema_extra={"format": "date-time"},
    )
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_ID)


class WithdrawBody(BaseModel):
    """The consent to withdraw."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)


class ImportResult(BaseModel):
    """Rows of the file, consents written, and those already recorded as they are."""

    rows: int
    written: int
    unchanged: int


def _time(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _out(c: Consent, now: float) -> dict[str, Any]:
    return {
        "id": c.id,
        "vehicle": c.vehicle,
        "purpose": c.purpose,
        "granted": _time(c.granted),
        "expires": _time(c.expires),
        "withdrawn": _time(c.revoked),
        "active": c.granted <= now < c.expires and (c.revoked is None or c.revoked > now),
    }


def _listed(ctx: ApiContext, refs: list[str]) -> dict[str, Any]:
    with ctx.store.snapshot() as r:
        found = r.consents_of(refs)
    now = ctx.clock()
    return {"vehicles": refs, "consents": [_out(c, now) for c in sorted(found, key=lambda c: c.id)]}


@routes.route(
    "GET",
    "/v1/consents",
    summary="A vehicle's consents, by keyed reference",
    response_model=ConsentList,
    responses=problems(),
)
def by_reference(
    ctx: Ctx,
    vehicle: Annotated[str, Query(pattern=VEHICLE_REF, description="A keyed reference.")],
) -> dict[str, Any]:
    """The consents recorded under one keyed vehicle reference (``k<gen>:<hex>``)."""
    return _listed(ctx, [vehicle])


@routes.route(
    "POST",
    "/v1/consents/lookup",
    summary="A vehicle's consents, by the VIN in the body",
    response_model=ConsentList,
    responses=problems(),
)
def by_vin(ctx: Ctx, body: VehicleBody) -> dict[str, Any]:
    """The consents of the vehicle whose VIN is in the body, under every generation of its
    keyed reference."""
    return _listed(ctx, ctx.keys.vehicle_refs(body.vin))


@routes.route(
    "POST",
    "/v1/consents/grant",
    status_code=201,
    summary="Grant a consent (audited)",
    response_model=ConsentOut,
    responses=problems(),
)
def grant(ctx: Ctx, body: GrantBody) -> dict[str, Any]:
    """Record a consent from now until ``expires`` (audited); an ``id`` already recorded
    is replaced, as ``icvgw consent grant --id`` does."""
    now = ctx.clock()
    try:
        end = check_consent(ctx.bundle(), body.vin, body.purpose, body.expires, now=now)
    except ConsentValueError as exc:
        raise ProblemError(422, f"{exc.field}: {exc.reason}") from None
    consent = Consent(
        body.id or new_consent_id(), ctx.keys.vehicle_ref(body.vin), body.purpose, now, end
    )
    with ctx.store.transaction() as tx:
        tx.put_consents([consent], at=now, instance=ctx.worker, shard=ctx.shard)
    return _out(consent, now)


@routes.route(
    "POST",
    "/v1/consents/withdraw",
    summary="Withdraw a consent (audited)",
    response_model=ConsentOut,
    responses=problems(404, 409),
)
def withdraw(ctx: Ctx, body: WithdrawBody) -> dict[str, Any]:
    """Withdraw a consent from now on (final; audited). 404 if unknown, 409 if withdrawn
    already."""
    now = ctx.clock()
    with ctx.store.transaction() as tx:
        current = tx.consent(body.id)
        if current is None:
            raise ProblemError(404, "no such consent")
        if current.revoked is not None:
            raise ProblemError(409, "the consent is withdrawn already")
        tx.withdraw_consent(body.id, at=now, instance=ctx.worker, shard=ctx.shard)
    return _out(current._replace(revoked=now), now)


def _import(ctx: ApiContext, data: bytes) -> dict[str, Any]:
    now = ctx.clock()
    bundle = ctx.bundle()
    source = CsvBytes("body", data)
    try:
        check_import(source, bundle, now=now, quote=False)
    except ConfigError as exc:
        first = exc.problems[0]
        where = f"line {first.line}: " if first.line is not None else ""
        raise ProblemError(
            422,
            f"nothing imported: {where}{first.message}",
            errors=[{"line": p.line, "msg": p.message} for p in exc.problems],
        ) from None
    result = import_csv(
        ctx.store,
        bundle,
        ctx.keys.vehicle_ref,
        source,
        now=now,
        instance=ctx.worker,
        shard=ctx.shard,
    )
    return {"rows": result.rows, "written": result.written, "unchanged": result.unchanged}


_CSV = {
    "requestBody": {
        "required": True,
        "description": f"CSV, header vin,purpose,expires[,id]; at most {MAX_IMPORT_ROWS:,} rows.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


@routes.route(
    "POST",
    "/v1/consents/import",
    summary="Import consents from a CSV file (audited)",
    response_model=ImportResult,
    responses=problems(413),
    openapi_extra=_CSV,
)
async def import_consents(request: Request, ctx: Ctx) -> dict[str, Any]:
    """Record the consents of a CSV file in the body (header ``vin,purpose,expires``, an
    ``id`` column optional), each row checked as a grant is. A bad row: 422 naming each bad
    line and why, and nothing imported. Importing the same file again changes nothing."""
    data = await request.body()
    return await run_in_threadpool(_import, ctx, data)
