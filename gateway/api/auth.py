"""Who may call what: API keys in the ``Authorization: Bearer`` header, roles per route,
a token bucket per key.

Every route declares its roles by the router it is on (:func:`router`), and the route
enumeration test (``tests/api/test_auth.py``) proves each one refuses a missing key, a key
of another role, a revoked key, and a subscriber key whose subscriber the policy does not
know. A route open to anyone (``/healthz``, ``/readyz``) says so with :func:`public_router`.
Failures are told apart only as 401 (no usable key) and 403 (a key, not for this route);
429 (with ``Retry-After``) when a key exceeds ``api.rate_per_s``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.context import ApiContext
from gateway.api.problems import AUTH_RESPONSES, ProblemRoute
from gateway.apikeys import ApiKey, Role, verify_key

__all__ = ["Authorise", "RateLimiter", "caller", "context", "public_router", "router"]

_bearer = HTTPBearer(auto_error=False, description="icvgw_<id>_<secret> (icvgw apikey create)")


def context(request: Request) -> ApiContext:
    """The API process's context (set by :func:`gateway.api.app.create_app`)."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key id: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, _Bucket] = {}  # one per existing key: bounded by the table
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """Take one token for ``key_id``: 0 if granted, else the seconds until one is."""
        now = self.clock()
        with self._lock:
            b = self._buckets.get(key_id)
            if b is None:
                b = self._buckets[key_id] = _Bucket(float(self.burst), now)
            b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
            b.at = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            return (1.0 - b.tokens) / self.rate


class Authorise:
    """The dependency that admits a request to a route of ``roles`` (none: public)."""

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset(roles)

    def __call__(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
    ) -> ApiKey | None:
        if not self.roles:
            return None
        ctx = context(request)
        key = None if credentials is None else verify_key(ctx.store, credentials.credentials)
        if key is None:
            raise HTTPException(
                401, "a valid API key is needed", headers={"WWW-Authenticate": "Bearer"}
            )
        request.state.api_key = key  # the access log names its id
        if key.role not in self.roles:
            raise HTTPException(403, f"this route is for {', '.join(sorted(self.roles))} keys")
        if key.role is Role.SUBSCRIBER and key.subscriber not in ctx.bundle().subscribers:
            raise HTTPException(403, "the key's subscriber is not in the policy in force")
        wait = request.app.state.limiter.take(key.key_id)
        if wait > 0:
            raise HTTPException(
                429, "rate limit exceeded", headers={"Retry-After": str(math.ceil(wait))}
            )
        return key


def router(*roles: Role, prefix: str = "") -> APIRouter:
    """A router whose every route admits only keys of ``roles`` (its refusals documented)."""
    if not roles:
        raise ValueError("a router needs at least one role (public_router for none)")
    return APIRouter(
        prefix=prefix,
        dependencies=[Depends(Authorise(*roles))],
        responses=AUTH_RESPONSES,
        route_class=ProblemRoute,  # a request that does not validate: nothing sent echoed
    )


def public_router(prefix: str = "") -> APIRouter:
    """A router whose routes anyone may call (health probes)."""
    return APIRouter(prefix=prefix, dependencies=[Depends(Authorise())], route_class=ProblemRoute)


def caller(request: Request) -> ApiKey:
    """The key the request was admitted with (routes of :func:`router` only)."""
    key: ApiKey = request.state.api_key
    return key
