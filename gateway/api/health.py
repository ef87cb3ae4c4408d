"""``/healthz`` (the process answers) and ``/readyz`` (it can do its job), for anyone.

Ready means: the pipeline answers on its metrics endpoint and says its broker is connected
and its store takes writes; the policy is loaded; the store takes a write from this
process too; the worker's signing key is in the key directory. A failing part is named in
the body (``{"ready": false, "failing": {"broker": "…"}}``, status 503); nothing else
about the gateway is told to an unauthenticated caller.

The answer is computed at most once every :data:`READY_TTL_S` (callers meanwhile share it):
the probe is public, and each computation costs the pipeline a scrape and the store a write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from gateway.api.auth import context, public_router
from gateway.api.context import ApiContext
from gateway.api.metrics import read_pipeline
from gateway.errors import GatewayError

__all__ = ["READY_TTL_S", "pipeline_samples", "readiness", "router"]

log = logging.getLogger(__name__)
router = public_router()

READY_TTL_S = 1.0
"""Seconds a readiness answer is reused."""


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict[str, str]:
    """Always ``{"status": "ok"}`` while the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The gateway can do its job",
    responses={503: {"description": "Not ready: the failing parts, named"}},
)
def readyz(request: Request, ctx: ApiContext = Depends(context)) -> JSONResponse:  # noqa: B008
    """200 if every part is ready; 503 naming each part that is not."""
    cache: _Cached | None = getattr(request.app.state, "readiness", None)
    if cache is None:
        cache = request.app.state.readiness = _Cached()
    failing = cache.get(lambda: readiness(ctx))
    body = {"ready": not failing, "failing": failing}
    return JSONResponse(body, status_code=503 if failing else 200)


class _Cached:
    """The latest readiness answer, recomputed when older than :data:`READY_TTL_S`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -READY_TTL_S
        self._failing: dict[str, str] = {}

    def get(self, compute: Callable[[], dict[str, str]]) -> dict[str, str]:
        with self._lock:  # concurrent callers wait for one computation and share it
            if time.monotonic() - self._at >= READY_TTL_S:
                self._failing = compute()
                self._at = time.monotonic()
            return dict(self._failing)


def pipeline_samples(ctx: ApiContext) -> dict[str, float] | str:
    """The pipeline's unlabelled samples by name, from its metrics endpoint; a reason if it
    cannot be read."""
    families = read_pipeline(ctx.config.metrics)
    if isinstance(families, str):
        return families
    return {s.name: s.value for f in families for s in f.samples if not s.labels}


def readiness(ctx: ApiContext) -> dict[str, str]:
    """Each part that is not ready, with why (empty: ready)."""
    failing: dict[str, str] = {}
    samples = pipeline_samples(ctx)
    if isinstance(samples, str):  # the details (address, errno) only in the log: public
        log.warning("readiness: %s", samples)
        failing["pipeline"] = "the pipeline's metrics endpoint does not answer"
    else:
        if samples.get("icvgw_broker_connected") != 1.0:
            failing["broker"] = "the pipeline is not connected to its broker"
        if samples.get("icvgw_store_ok") != 1.0:
            failing["store"] = "the pipeline's store commits fail (full disk? database gone?)"
    try:
        ctx.bundle()
    except GatewayError as exc:  # pragma: no cover - the holder keeps the last good bundle
        log.warning("readiness: the policy does not load: %s", exc)
        failing["policy"] = "the policy does not load"
    try:
        with ctx.store.transaction() as tx:
            tx.execute(
                "insert into icvgw_meta (key, value) values ('api_probe', ?) "
                "on conflict (key) do update set value = excluded.value",
                (str(round(ctx.clock())),),
            )
    except GatewayError as exc:  # a database's message may name hosts, users, values
        log.warning("readiness: the store takes no writes: %s", exc)
        failing.setdefault("store", "the store takes no writes")
    if not ctx.keys.verifier_keys(ctx.shard):
        failing["signing_key"] = "no signing key in the key directory"
    return failing
