"""Every route declares its roles and refuses everyone else: enumerated from the app, so a
new route without a role, or with a hole, fails here."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi.routing import APIRoute

from gateway.api import auth
from gateway.api.app import ROUTERS
from gateway.api.auth import Authorise, RateLimiter
from gateway.apikeys import Role, parse_key, verify_key
from tests.api.conftest import Api

PUBLIC = {"/healthz", "/readyz"}
STREAMING = {"/v1/feed"}  # endless: the admitted case is tested in test_feed.py
VIN = "LSVAU2180N2183294"


def _routes(api: Api) -> list[tuple[APIRoute, frozenset[Role]]]:
    """Every route of the app's routers with the roles it admits; the app's OpenAPI
    document lists no operation that is not among them."""
    out = []
    for r in ROUTERS:
        for route in r.routes:
            assert isinstance(route, APIRoute)
            auths = [
                d.dependency for d in route.dependencies if isinstance(d.dependency, Authorise)
            ]
            assert len(auths) == 1, f"{route.path} declares no role (use auth.router)"
            out.append((route, auths[0].roles))
    documented = {
        (path, method.upper())
        for path, ops in api.client.get("/openapi.json").json()["paths"].items()
        for method in ops
    }
    assert documented == {(r.path, m) for r, _ in out for m in r.methods}
    return out


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_route_declares_a_role_and_only_probes_are_public(api: Api) -> None:
    routes = _routes(api)
    assert routes
    public = {r.path for r, roles in routes if not roles}
    assert public == PUBLIC


def test_every_route_refuses_missing_wrong_revoked_and_foreign_keys(api: Api) -> None:
    tokens = {
        role: api.key(role, "sh-traffic" if role is Role.SUBSCRIBER else None) for role in Role
    }
    revoked = {
        role: api.revoked(role, "sh-traffic" if role is Role.SUBSCRIBER else None) for role in Role
    }
    ghost = api.key(Role.SUBSCRIBER, "sh-traffic")
    checked = 0
    for route, roles in _routes(api):
        if not roles:
            continue
        for method in route.methods:
            url = _url(route.path)

            def call(token: str | None, method: str = method, url: str = url) -> int:
                headers = {} if token is None else api.headers(token)
                return api.client.request(method, url, headers=headers, json={}).status_code

            assert call(None) == 401, (method, url)
            assert call("icvgw_000000000000_" + "A" * 43) == 401, (method, url)
            assert call("not-a-key") == 401, (method, url)
            for role in Role:
                if role in roles:
                    assert call(revoked[role]) == 401, (method, url, role)
                    if route.path not in STREAMING:
                        assert call(tokens[role]) not in (401, 403), (method, url, role)
                else:
                    assert call(tokens[role]) == 403, (method, url, role)
            if Role.SUBSCRIBER in roles:
                with api.ctx.store.transaction() as tx:  # the policy no longer knows it
                    tx.execute(
                        "update api_keys set subscriber = 'gone' where key_id = ?",
                        (ghost.split("_")[1],),
                    )
                assert call(ghost) == 403, (method, url)
            checked += 1
    assert checked >= 1


def test_a_key_is_stored_only_as_a_salted_hash(api: Api) -> None:
    token = api.key(Role.AUDITOR)
    key_id, secret = parse_key(token) or ("", "")
    with api.ctx.store.snapshot() as rd:
        row = rd.fetch_one("select * from api_keys where key_id = ?", (key_id,))
    assert row is not None
    assert all(secret.encode() not in bytes(v) for v in row if isinstance(v, (bytes, memoryview)))
    assert all(secret not in v for v in row if isinstance(v, str))
    assert verify_key(api.ctx.store, token) is not None
    assert verify_key(api.ctx.store, token[:-1] + ("B" if token[-1] != "B" else "C")) is None


def test_creation_and_revocation_are_audited(api: Api) -> None:
    token = api.revoked(Role.ADMIN)
    key_id = token.split("_")[1]
    with api.ctx.store.snapshot() as rd:
        rows = rd.fetch_all(
            "select decision, body from audit_entries where kind = 'admin' order by seq"
        )
    actions = [r[0] for r in rows if key_id.encode() in bytes(r[1])]
    assert actions == ["apikey.created", "apikey.revoked"]
    assert all(token.split("_", 2)[2].encode() not in bytes(r[1]) for r in rows)


def test_rate_limit_per_key_says_when_to_retry(api: Api) -> None:
    clock = [0.0]
    api.client.app.state.limiter = RateLimiter(2.0, 3, clock=lambda: clock[0])  # type: ignore[attr-defined]
    route = next(r for r, roles in _routes(api) if Role.ADMIN in roles)
    a, b = api.key(Role.ADMIN), api.key(Role.ADMIN)
    url = _url(route.path)
    codes = [api.client.get(url, headers=api.headers(a)).status_code for _ in range(4)]
    assert codes[:3] != [429] * 3 and codes[3] == 429
    r = api.client.get(url, headers=api.headers(a))
    assert r.headers["Retry-After"] == "1"
    assert api.client.get(url, headers=api.headers(b)).status_code != 429  # its own bucket
    clock[0] += 0.5  # one token back
    assert api.client.get(url, headers=api.headers(a)).status_code != 429


def test_a_body_over_the_limit_is_refused_before_any_route(api: Api) -> None:
    limit = api.ctx.config.api.max_body_bytes
    r = api.client.post("/healthz", content=b"x" * (limit + 1))
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"


def test_the_access_log_names_templates_and_key_ids_never_what_was_sent(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    token = api.key(Role.ADMIN)
    caplog.set_level(logging.INFO, logger="gateway.api.access")
    api.client.get(f"/healthz?vin={VIN}&lat=31.2304", headers=api.headers(token))
    api.client.get(f"/v1/nothing/{VIN}", headers=api.headers(token))
    text = caplog.text
    assert "GET /healthz 200" in text and "GET - 404" in text
    assert VIN not in text and "31.2304" not in text and token.split("_", 2)[2] not in text


def test_failed_authentications_are_rate_limited_per_client_address(api: Api) -> None:
    clock = [0.0]
    app = api.client.app
    app.state.limiter = RateLimiter(2.0, 3, clock=lambda: clock[0])  # type: ignore[attr-defined]
    app.state.failures = RateLimiter(2.0, 3, clock=lambda: clock[0])  # type: ignore[attr-defined]
    good = api.headers(api.key(Role.ADMIN))
    looked_up: list[str] = []
    store_get = auth.verify_key

    def counting(store: object, token: str) -> object:
        looked_up.append(token)
        return store_get(store, token)  # type: ignore[arg-type]

    bad = {"Authorization": "Bearer icvgw_0123456789ab_" + "A" * 43}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth, "verify_key", counting)
        codes = [api.client.get("/v1/policy", headers=bad).status_code for _ in range(10)]
        assert codes[:3] == [401] * 3 and set(codes[3:]) == {429}
        assert len(looked_up) == 3  # a flood costs no store read once its bucket is empty
        r = api.client.get("/v1/policy", headers=bad)
        assert r.headers["Retry-After"] == "1"
        assert r.headers["content-type"] == "application/problem+json"
    clock[0] += 0.5  # a token back: the address may try again
    assert api.client.get("/v1/policy", headers=good).status_code == 200
    assert api.client.get("/v1/policy", headers=bad).status_code == 401


def test_the_failure_buckets_are_bounded_whatever_the_addresses() -> None:
    limiter = RateLimiter(1.0, 1, clock=lambda: 0.0, max_keys=100)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) <= 100
