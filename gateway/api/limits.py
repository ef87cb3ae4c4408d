"""What every request goes through: a bounded body, an access log line, errors as problems.

The access log names the route's template (``/v1/audit/proof/{seq}``), never the URL as
sent, so a VIN, a position or a key in a path or query string never reaches a log; the key
is named by its id. Bodies above ``api.max_body_bytes`` are refused with 413 before the
route reads them (by ``Content-Length``, or while reading a chunked body). Errors of the
gateway's tree become ``application/problem+json`` (RFC 9457) with a status that says
whose fault it is.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.problems import problem
from gateway.errors import AuditError, ConfigError, GatewayError, StoreError

__all__ = ["BodyLimit", "install"]

access_log = logging.getLogger("gateway.api.access")
log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """A request body exceeded the limit while it was read."""


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, bounded, send)
        except* BodyTooLarge:  # grouped by the task group of the access log's middleware
            await _too_large(self.limit)(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return problem(413, f"the request body exceeds {limit} bytes")


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods the access log names; any other token a client sends is logged as ``-``."""


def _template(request: Request) -> str:
    """The matched route's path template, or ``-`` when none matched (never the raw path)."""
    route = request.scope.get("route")
    return str(getattr(route, "path", "-")) if route is not None else "-"


def install(app: FastAPI, *, max_body_bytes: int) -> None:
    """Add the body limit, the access log and the error handlers to ``app``."""

    @app.middleware("http")
    async def _access(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            key = getattr(request.state, "api_key", None)
            access_log.info(
                "%s %s %d %.1fms key=%s",
                request.method if request.method in _METHODS else "-",
                _template(request),
                status,
                (time.perf_counter() - start) * 1000,
                key.key_id if key is not None else "-",
            )

    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(HTTPException)
    async def _http(_r: Request, exc: HTTPException) -> JSONResponse:
        # The keys' refusals (401, 403, 429), unknown paths and methods: problems too.
        return problem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(StoreError)
    async def _store(_r: Request, exc: StoreError) -> JSONResponse:
        log.error("the store does not answer: %s", exc)  # its text may carry stored values
        return problem(503, "the store does not answer")

    @app.exception_handler(ConfigError)
    async def _config(_r: Request, exc: ConfigError) -> JSONResponse:
        return problem(422, str(exc))

    @app.exception_handler(AuditError)
    async def _audit(_r: Request, exc: AuditError) -> JSONResponse:
        return problem(500, f"the audit log: {exc}")

    @app.exception_handler(GatewayError)
    async def _gateway(_r: Request, exc: GatewayError) -> JSONResponse:
        return problem(500, str(exc))
