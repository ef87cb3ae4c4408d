"""``/healthz`` (the process answers) and ``/readyz`` (it can do its job), for anyone.

Ready means: the pipeline answers on its metrics endpoint and says its broker is connected
and its store takes writes; the policy is loaded; the store takes a write from this
process too; the worker's signing key is in the key directory. A failing part is named in
the body (``{"ready": false, "failing": {"broker": "…"}}``, status 503); nothing else
about the gateway is told to an unauthenticated caller.
"""

from __future__ import annotations

import urllib.request

from fastapi import Depends
from fastapi.responses import JSONResponse
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.auth import context, public_router
from gateway.api.context import ApiContext
from gateway.errors import GatewayError

__all__ = ["pipeline_samples", "readiness", "router"]

router = public_router()
_PIPELINE_TIMEOUT_S = 1.0


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict[str, str]:
    """Always ``{"status": "ok"}`` while the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The gateway can do its job",
    responses={503: {"description": "Not ready: the failing parts, named"}},
)
def readyz(ctx: ApiContext = Depends(context)) -> JSONResponse:  # noqa: B008
    """200 if every part is ready; 503 naming each part that is not."""
    failing = readiness(ctx)
    body = {"ready": not failing, "failing": failing}
    return JSONResponse(body, status_code=503 if failing else 200)


def pipeline_samples(ctx: ApiContext) -> dict[str, float] | str:
    """The pipeline's unlabelled gauges by name, from its metrics endpoint; a reason if it
    cannot be read."""
    m = ctx.config.metrics
    if not m.enabled:
        return "the pipeline serves no metrics (metrics.enabled is false)"
    url = f"http://{m.host}:{m.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=_PIPELINE_TIMEOUT_S) as r:
            text = r.read().decode("utf-8")
    except OSError as exc:
        return f"the pipeline does not answer at {url}: {exc}"
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.labels:
                out[s.name] = s.value
    return out


def readiness(ctx: ApiContext) -> dict[str, str]:
    """Each part that is not ready, with why (empty: ready)."""
    failing: dict[str, str] = {}
    samples = pipeline_samples(ctx)
    if isinstance(samples, str):
        failing["pipeline"] = samples
    else:
        if samples.get("icvgw_broker_connected") != 1.0:
            failing["broker"] = "the pipeline is not connected to its broker"
        if samples.get("icvgw_store_ok") != 1.0:
            failing["store"] = "the pipeline's store commits fail (full disk? database gone?)"
    try:
        ctx.bundle()
    except GatewayError as exc:  # pragma: no cover - the holder keeps the last good bundle
        failing["policy"] = str(exc)
    try:
        with ctx.store.transaction() as tx:
            tx.execute(
                "insert into icvgw_meta (key, value) values ('api_probe', ?) "
                "on conflict (key) do update set value = excluded.value",
                (str(round(ctx.clock())),),
            )
    except GatewayError as exc:
        failing.setdefault("store", f"the store takes no writes: {exc}")
    if not ctx.keys.verifier_keys(ctx.shard):
        failing["signing_key"] = "no signing key in the key directory"
    return failing
