"""The FastAPI application: one router per audience, the webhook sink in its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import __version__
from gateway.api import admin, audit, feed, health, limits, metrics, status, webhooks
from gateway.api.auth import RateLimiter
from gateway.api.context import ApiContext

__all__ = ["ROUTERS", "create_app"]

ROUTERS = (
    health.router,
    feed.router,
    audit.router,
    admin.router,
    status.router,
    metrics.router,
)
"""Every router of the app (each declares its roles; no prefixes: a route's path is its
whole template)."""


def create_app(ctx: ApiContext, *, sinks: bool = True) -> FastAPI:
    """The API on ``ctx``; with ``sinks``, the webhook sink runs while the app does."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = webhooks.start_sink(ctx) if sinks else None
        try:
            yield
        finally:
            if stop is not None:
                stop()

    app = FastAPI(
        title="icv-gateway API",
        version=__version__,
        description="Sanitised vehicle feeds, the audit log and the gateway's operations.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    api = ctx.config.api
    app.state.limiter = RateLimiter(api.rate_per_s, api.rate_burst)
    app.state.failures = RateLimiter(api.rate_per_s, api.rate_burst)  # per client address
    limits.install(app, max_body_bytes=api.max_body_bytes)
    for r in ROUTERS:
        app.include_router(r)
    return app
