"""Who may call what: API keys in the ``Authorization: Bearer`` header, roles per route,
a token bucket per key.

Every route declares its roles by the router it is on (:func:`router`), and the route
enumeration test (``tests/api/test_auth.py``) proves each one refuses a missing key, a key
of another role, a revoked key, and a subscriber key whose subscriber the policy does not
know. A route open to anyone (``/healthz``, ``/readyz``) says so with :func:`public_router`.
Failures are told apart only as 401 (no usable key) and 403 (a key, not for this route);
429 (with ``Retry-After``) when a key exceeds ``api.rate_per_s``. Requests that fail to
authenticate are limited as well, per client address, at the same rate: an address out of
tokens is answered 429 before its key is looked up (a flood of made-up keys costs the
store nothing), whatever key it sends, until a token comes back.
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
    """A token bucket per name (a key id, a client address): ``rate`` requests per second,
    bursts of ``burst``. At most ``max_keys`` buckets are kept: past that, the full ones
    (no different from new ones) are dropped, and all of them if none is full."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate, self.burst, self.clock, self.max_keys = rate, burst, clock, max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, key_id: str, now: float) -> _Bucket:
        """``key_id``'s bucket, refilled to ``now`` (made full if new); lock held."""
        b = self._buckets.get(key_id)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets = {
                    k: v
                    for k, v in self._buckets.items()
                    if v.tokens + (now - v.at) * self.rate < self.burst
                }
                if len(self._buckets) >= self.max_keys:
                    self._buckets.clear()
            b = self._buckets[key_id] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
        b.at = now
        return b

    def take(self, key_id: str) -> float:
        """Take one token for ``key_id``: 0 if granted, else the seconds until one is."""
        with self._lock:
            b = self._bucket(key_id, self.clock())
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            return (1.0 - b.tokens) / self.rate

    def waiting(self, key_id: str) -> float:
        """The seconds until ``key_id`` has a token (0: it has one); nothing is taken."""
        with self._lock:
            b = self._buckets.get(key_id)
            if b is None:
                return 0.0
            b = self._bucket(key_id, self.clock())
            return 0.0 if b.tokens >= 1.0 else (1.0 - b.tokens) / self.rate


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
        failures: RateLimiter = request.app.state.failures
        address = request.client.host if request.client is not None else "-"
        _limit(failures.waiting(address))
        key = None if credentials is None else verify_key(ctx.store, credentials.credentials)
        if key is None:
            _limit(failures.take(address))
            raise HTTPException(
                401, "a valid API key is needed", headers={"WWW-Authenticate": "Bearer"}
            )
        request.state.api_key = key  # the access log names its id
        if key.role not in self.roles:
            raise HTTPException(403, f"this route is for {', '.join(sorted(self.roles))} keys")
        if key.role is Role.SUBSCRIBER and key.subscriber not in ctx.bundle().subscribers:
            raise HTTPException(403, "the key's subscriber is not in the policy in force")
        _limit(request.app.state.limiter.take(key.key_id))
        return key


def _limit(wait: float) -> None:
    """429 (``Retry-After``) unless ``wait`` (seconds until a token) is 0."""
    if wait > 0:
        raise HTTPException(
            429, "rate limit exceeded", headers={"Retry-After": str(math.ceil(wait))}
        )


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
