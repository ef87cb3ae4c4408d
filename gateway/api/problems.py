"""Errors of a route as RFC 9457 problems, and request validation that echoes nothing sent.

FastAPI answers a request that does not validate with the values it was sent: a consent
body missing its expiry would come back with its VIN. A router whose routes are
:class:`ProblemRoute` answers such a request with ``application/problem+json`` naming each
bad place (``loc``), what is wrong (``msg``, ``type``) and never the value; a route raises
:class:`ProblemError` for a 4xx of its own, and documents both with :func:`problems`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException  # FastAPI's own is a subclass

__all__ = [
    "AUTH_RESPONSES",
    "PROBLEM",
    "ProblemError",
    "ProblemRoute",
    "problem",
    "problem_response",
    "problem_router",
    "problems",
]

PROBLEM = "application/problem+json"

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "status", "detail"],
    "properties": {
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "line": {"type": ["integer", "null"]},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}

_WHY = {
    400: "The request body cannot be read (not the encoding its content type says)",
    404: "No such thing",
    409: "The request conflicts with the store's state",
    413: "The request body is too large",
    422: "The request is not valid: each bad place named, the values sent not repeated",
}


class ProblemError(Exception):
    """A 4xx answer of a route: ``status``, a ``detail`` that repeats no VIN, and extra
    members (``errors``)."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


def problem(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """An ``application/problem+json`` response."""
    body = {"title": detail, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` documenting these problem statuses (400 and 422 always: FastAPI
    documents its own 422 otherwise)."""
    return {
        s: {"description": _WHY.get(s, "A problem"), "content": {PROBLEM: {"schema": _SCHEMA}}}
        for s in sorted({*statuses, 400, 422})
    }


def problem_response(description: str) -> dict[str, Any]:
    """The OpenAPI ``responses`` entry of one problem status."""
    return {"description": description, "content": {PROBLEM: {"schema": _SCHEMA}}}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: problem_response(why)
    for status, why in (
        (401, "No usable API key (missing, unknown, revoked)"),
        (403, "An API key of another role"),
        (429, "The key's rate limit is exceeded (Retry-After says when to retry)"),
    )
}
"""What :class:`gateway.api.auth.Authorise` answers before a route runs, documented."""


def problem_router(router: APIRouter) -> APIRouter:
    """``router`` with :class:`ProblemRoute` routes and its keys' refusals documented."""
    router.route_class = ProblemRoute
    router.responses = {**AUTH_RESPONSES, **router.responses}
    return router


def _quiet(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the values that failed (``input``, ``ctx``)."""
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]


class ProblemRoute(APIRoute):
    """A route whose validation errors and :class:`ProblemError` become problems."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ProblemError as exc:
                return problem(exc.status, exc.detail, **exc.extra)
            except RequestValidationError as exc:
                return problem(422, "the request is not valid", errors=_quiet(exc.errors()))
            except HTTPException as exc:
                if exc.status_code != 400:  # the keys' refusals: as auth answers them
                    raise
                return problem(400, str(exc.detail))

        return handle
