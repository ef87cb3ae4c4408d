"""What operators do with an ``admin`` key: the policy, consents and dead letters.

* ``GET /v1/policy`` — the policy in force: version, subscribers, a summary;
  ``POST /v1/policy/explain`` — what each subscriber would receive for a record (as
  ``icvgw policy explain``; nothing is written);
* consents — ``GET /v1/consents?vehicle=k<gen>:<hex>`` or ``POST /v1/consents/lookup``
  (a VIN in the body) list a vehicle's; ``POST /v1/consents/grant`` grants,
  ``POST /v1/consents/withdraw`` withdraws, ``POST /v1/consents/import`` records a CSV
  file (as ``icvgw consent grant|withdraw|import``, with the same checks). Every change is a
  ``consent.changed`` entry in the worker's shard, as the CLI writes it, and applies to the
  next batch the pipeline decides;
* dead letters — ``GET /v1/deadletters/reasons`` (counts), ``GET /v1/deadletters`` (seq,
  time, reason, vehicle reference, size), ``GET /v1/deadletters/{seq}`` opens one from the
  sealed store, audited as ``deadletter.read`` (the one answer that carries raw input).

A vehicle is named in a URL only by its keyed reference, and no answer repeats a VIN
(:mod:`gateway.api.problems` keeps rejected values out of errors too).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from pydantic import BaseModel

from gateway.api import consents, deadletters, explain
from gateway.api.auth import context
from gateway.api.auth import router as _router
from gateway.api.context import ApiContext
from gateway.api.problems import problem_router
from gateway.apikeys import Role
from gateway.policy.bundle import PolicyBundle
from gateway.policy.schema import LegalBasisKind, Subscriber

__all__ = ["router"]

router = problem_router(_router(Role.ADMIN))


class Location(BaseModel):
    """Whether a view carries a position, at which precision (0: raw) and datum."""

    shared: bool
    precision_m: float | None
    datum: str | None


class SubscriberInfo(BaseModel):
    """A subscriber: where it is, what its view shares, how it is delivered."""

    name: str
    region: str
    storage_region: str
    cross_border: bool
    purposes: list[str]
    channel: str
    identifier: str
    location: Location
    time_precision_s: float
    min_interval_s: float
    trip_trim_m: float
    legal_bases: list[str]


class Retention(BaseModel):
    """How long the store keeps what (``rules.retention``)."""

    audit_years: int
    outbox_days: float
    deadletter_days: float
    vehicle_state_days: float


class PolicySummary(BaseModel):
    """What the bundle holds, in numbers, and the limits it sets."""

    fields: int
    aliases: int
    subscribers: int
    zones: int
    consents: int
    rules: int
    purposes: list[str]
    grid_floor_m: float
    retention: Retention
    zones_by_level: dict[str, int]


class PolicyInfo(BaseModel):
    """The policy bundle in force."""

    version: str
    subscribers: dict[str, SubscriberInfo]
    summary: PolicySummary


def _location(sub: Subscriber) -> dict[str, Any]:
    """Whether the view carries a position, at which precision (0: raw) and datum."""
    view = sub.view
    approval = LegalBasisKind.GEODATA_EXPORT_APPROVAL
    if sub.cross_border and not any(b.kind is approval for b in sub.legal_bases):
        return {"shared": False, "precision_m": None, "datum": None}
    return {"shared": True, "precision_m": view.location_precision_m, "datum": str(view.datum)}


def _subscriber(sub: Subscriber) -> dict[str, Any]:
    view = sub.view
    return {
        "name": sub.name,
        "region": sub.region,
        "storage_region": sub.storage_region,
        "cross_border": sub.cross_border,
        "purposes": list(sub.purposes),
        "channel": view.delivery.channel.value,
        "identifier": str(view.identifier),
        "location": _location(sub),
        "time_precision_s": view.time_precision_s,
        "min_interval_s": view.min_interval_s,
        "trip_trim_m": view.trip_trim_m,
        "legal_bases": [str(b.kind) for b in sub.legal_bases],
    }


def _summary(bundle: PolicyBundle) -> dict[str, Any]:
    """What ``icvgw policy check`` and ``show`` count and state."""
    rules = bundle.rules
    return {
        "fields": len(bundle.fields),
        "aliases": len(bundle.aliases),
        "subscribers": len(bundle.subscribers),
        "zones": len(bundle.zones),
        "consents": len(bundle.consents),
        "rules": len(rules.catalogue),
        "purposes": list(bundle.purposes),
        "grid_floor_m": rules.geo.grid_floor_m,
        "retention": {
            "audit_years": rules.retention.audit_years,
            "outbox_days": rules.retention.outbox_days,
            "deadletter_days": rules.retention.deadletter_days,
            "vehicle_state_days": rules.retention.vehicle_state_days,
        },
        "zones_by_level": {
            level: sum(1 for z in bundle.zones if z.level.name.lower() == level)
            for level in sorted({z.level.name.lower() for z in bundle.zones})
        },
    }


@router.get("/v1/policy", summary="The policy bundle in force", response_model=PolicyInfo)
def policy(ctx: Annotated[ApiContext, Depends(context)]) -> dict[str, Any]:
    """Its version, per subscriber what its view shares and how it is delivered, and a
    summary (counts, purposes, grid floor, retention)."""
    bundle = ctx.bundle()
    return {
        "version": bundle.version,
        "subscribers": {sid: _subscriber(sub) for sid, sub in bundle.subscribers.items()},
        "summary": _summary(bundle),
    }


for _routes in (explain.routes, consents.routes, deadletters.routes):
    _routes.add_to(router)
