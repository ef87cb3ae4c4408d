"""schemathesis against the live OpenAPI document of a real ``icvgw api``: no 5xx, no
response outside its documented schema, for any input it generates.

The server is the product's: ``python -m gateway api`` started as ``icvgw run`` starts it
(:mod:`gateway.api.child`), served by uvicorn on a free port, on a real SQLite store in
which the pipeline committed traffic (decisions, views, dead letters, checkpoints). Each
case is sent with a key of a role its route admits (the roles come from the app's own
routers), so the fuzzing reaches the routes' code, not only their 401/403; the rate limit is
raised so that it is not a 429 either. Auth itself is tested in ``test_auth.py``.

The endless ``/v1/feed`` (Server-Sent Events) is bounded by its own ``max_seconds`` query
parameter: a case for it without one, or with a larger number, is sent with 1 s (smaller,
negative or malformed values as generated); the rest of the case as generated; the client
gives up after 30 s. ``/readyz`` may answer its documented 503: no pipeline runs here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode

from gateway.api.app import ROUTERS
from gateway.api.auth import Authorise
from gateway.api.child import ApiChild, api_command
from gateway.apikeys import Role, create_api_key
from gateway.config import load_config
from gateway.keys import init_keys
from gateway.model import Envelope
from gateway.service import Gateway, origin_of
from gateway.store import open_store
from simulators.fleet import Fleet, FleetConfig

SUBSCRIBER = "sh-traffic"
FEED = "/v1/feed"
FEED_SECONDS = 1.0
EXAMPLES = 30
"""Cases per operation (hypothesis ``max_examples``): the whole run stays under ~2 minutes."""


@dataclass(frozen=True)
class Live:
    """The running API: its URL and a token per role."""

    url: str
    tokens: dict[Role, str]
    roles: dict[tuple[str, str], frozenset[Role]]

    def headers(self, path: str, method: str) -> dict[str, str]:
        """An Authorization header with a key the route admits (none for a public one)."""
        admitted = self.roles[(path, method.upper())]
        if not admitted:
            return {}
        role = min(admitted, key=list(Role).index)
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def _route_roles() -> dict[tuple[str, str], frozenset[Role]]:
    out: dict[tuple[str, str], frozenset[Role]] = {}
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            [auth] = [
                d.dependency for d in route.dependencies if isinstance(d.dependency, Authorise)
            ]
            for method in route.methods or ():
                out[(route.path, method)] = auth.roles
    return out


def _traffic(gw: Gateway) -> None:
    """Decisions, views and checkpoints of a small fleet, and some dead letters."""
    fleet = Fleet(FleetConfig(vehicles=6), seed=5)
    envelopes = [
        Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(fleet.messages(30, 1.0))
    ]
    envelopes += [
        Envelope(f"vehicles/{fleet.vins[0]}/telemetry", b"not json %d" % i, 0.0, 10_000 + i)
        for i in range(5)
    ]
    for start in range(0, len(envelopes), 50):
        gw.process(envelopes[start : start + 50])
    gw.audit.checkpoint()


def _deployment(root: Path) -> Path:
    init_keys(root / "keys")
    config = root / "gw.yaml"
    config.write_text(
        "worker: gw-fuzz\n"
        "broker: {url: 'mqtt://127.0.0.1:9', protocol: '5'}\n"  # never connected
        "store: sqlite:///gw.sqlite\n"
        "keys: keys\n"
        "metrics: {port: 9}\n"  # no pipeline serves metrics: /readyz says so (503)
        "api: {port: 0, rate_per_s: 100000, rate_burst: 1000000}\n",
        encoding="utf-8",
    )
    return config


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("openapi")
    config_file = _deployment(root)
    cfg = load_config(config_file, environ={})
    gw = Gateway(cfg, registry=CollectorRegistry())
    try:
        _traffic(gw)
    finally:
        gw.store.close()
    shard = origin_of(cfg.worker)
    with open_store(cfg.store) as store:
        tokens = {
            role: create_api_key(
                store,
                role,
                subscriber=SUBSCRIBER if role is Role.SUBSCRIBER else None,
                label="fuzz",
                shard=shard,
                instance=cfg.worker,
            )[1]
            for role in Role
        }
    command = api_command(cfg, config_file=config_file, log_level="WARNING", environ={})
    assert command is not None
    api = ApiChild(command, restart=False, stderr=root / "api.log")
    api.start()
    try:
        url = api.wait_listening(60)
        assert url is not None, (root / "api.log").read_text()
        yield Live(url, tokens, _route_roles())
    finally:
        api.stop()
    assert "Traceback" not in (root / "api.log").read_text()


@pytest.fixture(scope="module")
def openapi(live: Live) -> Any:
    """The live document, as the server serves it."""
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


ROUTES = _route_roles()
CHECKS = [
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
]
READYZ = "/readyz"
"""Its documented 503 ("not ready", naming the failing part) is an answer, not a server
error: no pipeline runs beside this API, so it is what /readyz must say here."""


def _checks(path: str) -> list[Any]:
    if path == READYZ:
        return [*CHECKS, _not_ready_is_said]
    return [schemathesis.checks.not_a_server_error, *CHECKS]


def _not_ready_is_said(ctx: Any, response: schemathesis.Response, case: Any) -> None:
    """/readyz here: 503, naming the pipeline as the part that fails."""
    assert response.status_code == 503, response.status_code
    assert set(response.json()["failing"]) == {"pipeline"}, response.text


def _bounded(case: Any) -> None:
    """A case for the endless feed, ending within :data:`FEED_SECONDS`: ``max_seconds``
    missing or above it becomes it; any other value (negative, not a number: a 4xx at once)
    is sent as generated."""
    query = dict(case.query or {})
    given = query.get("max_seconds")
    number = isinstance(given, int | float) and not isinstance(given, bool)
    if given is None or (number and given > FEED_SECONDS):
        query["max_seconds"] = FEED_SECONDS
    case.query = query


@pytest.mark.parametrize(("path", "method"), sorted(ROUTES), ids=lambda v: str(v))
def test_no_server_error_and_no_schema_violation(
    path: str, method: str, live: Live, openapi: Any
) -> None:
    """Valid and invalid cases (schemathesis' positive and negative generation) for one
    route, each answered without a 5xx and as documented (status, media type, schema)."""
    operation = openapi[path][method.lower()]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )
    headers = live.headers(path, method)

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same cases every run: a failure is reproducible
        database=None,
    )
    def fuzz(case: Any) -> None:
        if path == FEED:
            _bounded(case)
        case.call_and_validate(base_url=live.url, headers=headers, checks=_checks(path), timeout=30)

    fuzz()


def test_every_route_is_in_the_live_document(live: Live, openapi: Any) -> None:
    """The fuzzing above covers the whole app: the document lists every route."""
    documented = {
        (op.path, op.method.upper())
        for result in openapi.get_all_operations()
        for op in [result.ok()]
    }
    assert documented == set(live.roles)
