"""What auditors read with an ``auditor`` key: the log, its checkpoints, proofs, verification.

* ``GET /v1/audit/entries`` — the filters of ``icvgw audit query``, a page at a time
  (``?after=<cursor>&limit=``): each entry as the log holds it;
* ``GET /v1/audit/checkpoints`` — each shard's newest signed checkpoint;
  ``GET /v1/audit/checkpoint?shard=`` — one, as the signed note text
  (``text/plain; charset=utf-8``, C2SP tlog-checkpoint); a shard's name holds ``/``, so it
  is a query parameter;
* ``GET /v1/audit/proof/{seq}`` — an inclusion proof (as ``icvgw audit proof``) against the
  newest checkpoint or the one of ``tree_size`` entries; ``GET /v1/audit/consistency`` —
  between two sizes;
* ``GET /v1/audit/verify`` — :class:`~gateway.audit.incremental.IncrementalVerifier`'s last
  result: a bounded step at most every few seconds, never a scan of the log per request.

A vehicle is named by its keyed reference (``k<gen>:<hex>``), never a VIN.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, Path, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from gateway.api.auth import context
from gateway.api.auth import router as _router
from gateway.api.context import ApiContext
from gateway.api.cursors import MAX_CURSOR_CHARS, BadCursor, decode_cursor, encode_cursor
from gateway.api.problems import ProblemError, problem_router, problems
from gateway.apikeys import Role
from gateway.audit.incremental import IncrementalVerifier, VerifyStatus
from gateway.audit.proof import consistency_document, proof_document
from gateway.audit.query import entry_item
from gateway.errors import AuditError
from gateway.store import Reader
from gateway.store.audit import AuditQuery, StoredEntry
from gateway.tlog.checkpoint import checkpoint_of
from gateway.tlog.entries import Decision

__all__ = ["router", "verifier"]

router = problem_router(_router(Role.AUDITOR))

INT64 = 2**63 - 1
MAX_PAGE = 1000
VEHICLE_REF = r"^k[0-9]{1,9}:[0-9a-f]{32}$"
_TEXT = r"^[^\x00-\x1f\x7f]*$"  # printable: no control characters

Ctx = Annotated[ApiContext, Depends(context)]
Shard = Annotated[
    str | None,
    Query(
        max_length=256,
        pattern=_TEXT,
        description="The log shard (origin, e.g. icv-gateway/gw-1); default: the only one.",
    ),
]


class Entry(BaseModel):
    """One entry as the log holds it (``entry`` is None once pruned to its hash)."""

    shard: str
    seq: int
    pruned: bool
    entry: dict[str, Any] | None


class EntriesPage(BaseModel):
    """A page of entries, by shard then sequence number. ``next`` resumes after this page
    (``?after=``) in every shard, also once the log has grown: an auditor following the log
    keeps it; ``more`` says whether entries matching the filters follow already."""

    entries: list[Entry]
    next: str
    more: bool


RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _ms(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ProblemError(422, f"{name}: not a time (RFC 3339)") from None
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _time_query(what: str) -> Any:
    return Query(
        pattern=RFC3339,
        description=f"RFC 3339 date-time, {what}.",
        json_schema_extra={"format": "date-time"},
    )


@router.get(
    "/v1/audit/entries",
    summary="Audit entries by subscriber, vehicle, decision, rule, kind and time, a page at a time",
    response_model=EntriesPage,
    responses=problems(),
)
def entries(
    ctx: Ctx,
    subscriber: Annotated[str | None, Query(max_length=256, pattern=_TEXT)] = None,
    vehicle: Annotated[
        str | None,
        Query(pattern=VEHICLE_REF, description="A keyed vehicle reference k<gen>:<hex>."),
    ] = None,
    decision: Decision | None = None,
    rule: Annotated[str | None, Query(max_length=256, pattern=_TEXT)] = None,
    kind: Literal["decision", "admin"] | None = None,
    since: Annotated[str | None, _time_query("inclusive")] = None,
    until: Annotated[str | None, _time_query("exclusive")] = None,
    shard: Shard = None,
    after: Annotated[
        str | None, Query(max_length=MAX_CURSOR_CHARS, description="A page's next.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    """The entries matching every filter given, oldest first within each shard; every
    entry appears on exactly one page."""
    q = AuditQuery(
        subscriber=subscriber,
        vehicles=None if vehicle is None else [vehicle],
        decision=None if decision is None else decision.value,
        rule=rule,
        kind=kind,
        since_ms=_ms(since, "since"),
        until_ms=_ms(until, "until"),
    )
    try:
        positions = {} if after is None else decode_cursor(after)
    except BadCursor as exc:
        raise ProblemError(400, str(exc)) from None
    with ctx.store.snapshot() as r:
        names = [shard] if shard is not None else [s.shard for s in r.shards()]
        page, more = _page(r, q, names, positions, limit)
    for e in page:
        positions[e.shard] = e.seq
    return {
        "entries": [entry_item(e) for e in page],
        "next": encode_cursor(positions),
        "more": more,
    }


def _page(
    r: Reader, q: AuditQuery, names: list[str], positions: dict[str, int], limit: int
) -> tuple[list[StoredEntry], bool]:
    """Up to ``limit`` entries after ``positions``, shard by shard; whether more follow."""
    page: list[StoredEntry] = []
    for name in names:
        need = limit - len(page)
        after = (name, positions.get(name, -1))
        found = list(r.query(replace(q, shard=name, after=after, limit=need + 1)))
        page.extend(found[:need])
        if len(found) > need:
            return page, True
    return page, False


class CheckpointInfo(BaseModel):
    """A shard's newest signed checkpoint."""

    shard: str
    size: int
    root: str
    created: str
    note: str


class Checkpoints(BaseModel):
    """The newest checkpoint of every shard that has one."""

    checkpoints: list[CheckpointInfo]


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@router.get(
    "/v1/audit/checkpoints",
    summary="Each shard's newest signed checkpoint",
    response_model=Checkpoints,
)
def checkpoints(ctx: Ctx) -> dict[str, Any]:
    """Shard, size, root (base64), when it was signed and the signed note."""
    out = []
    with ctx.store.snapshot() as r:
        for st in r.shards():
            cp = r.latest_checkpoint(st.shard)
            if cp is None:
                continue
            out.append(
                {
                    "shard": cp.shard,
                    "size": cp.size,
                    "root": checkpoint_of(cp.note).root_b64,
                    "created": _time(cp.created_ms),
                    "note": cp.note.decode("utf-8"),
                }
            )
    return {"checkpoints": out}


def _shard_name(ctx: ApiContext, shard: str | None) -> str:
    if shard is not None:
        return shard
    with ctx.store.snapshot() as r:
        names = [s.shard for s in r.shards()]
    if not names:
        raise ProblemError(404, "the store holds no audit shard yet")
    if len(names) > 1:
        raise ProblemError(422, f"the store has {len(names)} shards: name one (?shard=)")
    return names[0]


@router.get(
    "/v1/audit/checkpoint",
    summary="A shard's newest checkpoint as its signed note (C2SP tlog-checkpoint)",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "The signed note, byte for byte as published",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **problems(404),
    },
)
def checkpoint(ctx: Ctx, shard: Shard = None) -> PlainTextResponse:
    """``text/plain; charset=utf-8``: the checkpoint body, a blank line, the signatures."""
    name = _shard_name(ctx, shard)
    with ctx.store.snapshot() as r:
        cp = r.latest_checkpoint(name)
    if cp is None:
        raise ProblemError(404, "no checkpoint of this shard")
    return PlainTextResponse(cp.note, media_type="text/plain; charset=utf-8")


class InclusionProof(BaseModel):
    """As ``icvgw audit proof``: check it with ``icvgw audit check-proof``."""

    origin: str
    seq: int
    tree_size: int
    entry: str
    leaf_hash: str
    inclusion_proof: list[str]
    checkpoint: str


class ConsistencyProof(BaseModel):
    """RFC 9162 consistency proof from ``old_size`` to ``tree_size`` (the checkpoint's);
    ``old_checkpoint`` is the stored checkpoint of ``old_size`` entries, if any."""

    origin: str
    old_size: int
    tree_size: int
    consistency_proof: list[str]
    checkpoint: str
    old_checkpoint: str | None


@router.get(
    "/v1/audit/proof/{seq}",
    summary="Inclusion proof of one entry",
    response_model=InclusionProof,
    responses=problems(404),
)
def proof(
    ctx: Ctx,
    seq: Annotated[int, Path(ge=0, le=INT64)],
    shard: Shard = None,
    tree_size: Annotated[
        int | None,
        Query(ge=1, le=INT64, description="A checkpoint's size; default: the newest."),
    ] = None,
) -> dict[str, Any]:
    """Entry ``seq`` of the shard, with the path from its leaf to the root of the checkpoint
    (the newest, or the one of ``tree_size`` entries). 404 if the checkpoint does not
    exist or does not cover the entry, or the entry is pruned."""
    name = _shard_name(ctx, shard)
    try:
        return proof_document(ctx.store, seq, shard=name, tree_size=tree_size)
    except AuditError as exc:
        raise ProblemError(404, str(exc)) from None


@router.get(
    "/v1/audit/consistency",
    summary="Consistency proof between two tree sizes",
    response_model=ConsistencyProof,
    responses=problems(404),
)
def consistency(
    ctx: Ctx,
    from_size: Annotated[int, Query(ge=0, le=INT64, description="The older tree's size.")],
    to_size: Annotated[
        int | None,
        Query(ge=0, le=INT64, description="A checkpoint's size; default: the newest."),
    ] = None,
    shard: Shard = None,
) -> dict[str, Any]:
    """Proof that the checkpoint of ``to_size`` entries extends the tree of the first
    ``from_size`` entries (RFC 9162 §2.1.4). 404 without such a checkpoint, or if
    ``from_size`` is beyond it."""
    name = _shard_name(ctx, shard)
    try:
        return consistency_document(ctx.store, from_size, shard=name, new_size=to_size)
    except AuditError as exc:
        raise ProblemError(404, str(exc)) from None


class ShardVerification(BaseModel):
    """One shard: ``verified_size``/``root`` of the newest checkpoint recomputed from the
    entries; ``checked`` entries of the current pass; ``complete`` once it is at the
    shard's ``head``; ``error`` (with ``error_seq``, the first bad entry) if it failed."""

    shard: str
    ok: bool
    complete: bool
    verified_size: int
    root: str
    checked: int
    head: int
    newest_checkpoint_size: int
    rechecked: int | None
    full_pass_at: str | None
    error: str | None
    error_seq: int | None


class Verification(BaseModel):
    """The verifier's last step: when (``verified_at``), how many entries and checkpoints it
    checked (``items``, at most ``budget``), and every shard."""

    ok: bool
    complete: bool
    verified_at: str
    items: int
    budget: int
    shards: list[ShardVerification]


_VERIFIERS = threading.Lock()


def verifier(request: Request) -> IncrementalVerifier:
    """The app's incremental verifier (made on first use, kept in ``app.state``)."""
    state = request.app.state
    with _VERIFIERS:
        v: IncrementalVerifier | None = getattr(state, "audit_verifier", None)
        if v is None:
            ctx = context(request)
            v = state.audit_verifier = IncrementalVerifier(
                ctx.store, ctx.keys.verifiers, min_interval_s=5.0, clock=ctx.clock
            )
    return v


def _seconds(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


@router.get(
    "/v1/audit/verify",
    summary="The log's verification: bounded, cached, incremental",
    response_model=Verification,
)
def verify(v: Annotated[IncrementalVerifier, Depends(verifier)]) -> dict[str, Any]:
    """The last result, after one more bounded step if it is older than a few seconds."""
    status: VerifyStatus = v.status()
    return {
        "ok": status.ok,
        "complete": status.complete,
        "verified_at": _seconds(status.at),
        "items": status.items,
        "budget": status.budget,
        "shards": [
            {
                "shard": s.origin,
                "ok": s.ok,
                "complete": s.complete,
                "verified_size": s.verified_size,
                "root": base64.b64encode(s.root).decode(),
                "checked": s.checked,
                "head": s.head,
                "newest_checkpoint_size": s.newest_checkpoint_size,
                "rechecked": s.rechecked,
                "full_pass_at": _seconds(s.full_pass_at),
                "error": s.error,
                "error_seq": s.error_seq,
            }
            for s in status.shards
        ],
    }
