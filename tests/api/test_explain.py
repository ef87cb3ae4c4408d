"""``POST /v1/policy/explain``: the decisions and outputs of ``icvgw policy explain`` for a
record in the body, written nowhere, and no VIN of the body in the answer."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.api import create_app
from gateway.api.context import open_context
from gateway.apikeys import Role
from gateway.explain import explain
from gateway.resources import default_policy_dir
from tests.api.conftest import Api, api_config
from tests.api.fleet import fleet_envelopes

URL = "/v1/policy/explain"


@pytest.fixture
def payload() -> bytes:
    """A record as a vehicle of the simulated fleet publishes it."""
    return next(e.payload for e in fleet_envelopes(3, 5) if e.payload.startswith(b"{"))


def _vin(payload: bytes) -> str:
    vin: str = orjson.loads(payload)["Vehicle.VehicleIdentification.VIN"]
    return vin


def _head(api: Api) -> int:
    with api.ctx.store.snapshot() as r:
        return sum(s.size for s in r.shards())


def _explain(api: Api, payload: bytes, status: int = 200, **params: Any) -> Any:
    headers = api.headers(api.key(Role.ADMIN))
    before = _head(api)
    r = api.client.post(URL, headers=headers, content=payload, params=params)
    assert r.status_code == status, r.text
    assert _head(api) == before  # nothing written
    return r.json()


def test_decisions_and_outputs_are_those_of_policy_explain(api: Api, payload: bytes) -> None:
    body = _explain(api, payload, real_pseudonyms=True)
    bundle = api.ctx.bundle()
    want = explain(bundle, payload, keys=api.ctx.keys)
    assert body["policy"] == bundle.version and body["records"] == 1
    assert body["ephemeral_pseudonyms"] is False
    assert [
        (i["subscriber"], i["decision"], i["held"], i["rules"], i["output"]) for i in body["items"]
    ] == [(w.subscriber, w.decision, w.held, list(w.rules), w.output) for w in want.items]
    assert _vin(payload) not in orjson.dumps(body).decode()


def test_options_select_subscribers_time_and_trip_start(api: Api, payload: bytes) -> None:
    body = _explain(
        api, payload, subscriber=["sh-traffic"], at="2030-01-01T00:00:00+08:00", trip_start=True
    )
    assert [i["subscriber"] for i in body["items"]] == ["sh-traffic"]
    assert body["decided_at"].startswith("2029-12-31T16:00:00")
    assert body["ephemeral_pseudonyms"] is True


@pytest.mark.parametrize(
    ("content", "params", "detail"),
    [
        (b"{not json", {}, "not-json"),
        (b"[]", {}, "empty"),
        (b"42", {}, "not-object"),
        (None, {"subscriber": "nobody"}, "subscriber: not in the policy"),
        (None, {"at": "soon"}, "at: not an ISO 8601 time"),
    ],
)
def test_an_unusable_request_is_a_problem(
    api: Api, payload: bytes, content: bytes | None, params: dict[str, Any], detail: str
) -> None:
    body = _explain(api, payload if content is None else content, 422, **params)
    assert detail in body["detail"]
    assert _vin(payload) not in orjson.dumps(body).decode()


@pytest.fixture
def vin_view(tmp_path: Path, payload: bytes) -> Iterator[Api]:
    """The API on a bundle whose mapco-nav view shares the VIN itself (with a consent for
    the record's vehicle: without one the view falls back to per-trip pseudonyms)."""
    bundle = tmp_path / "policies"
    shutil.copytree(default_policy_dir(), bundle)
    with (bundle / "consents.yaml").open("a", encoding="utf-8") as f:
        f.write(
            f"  - id: c-vin-view\n    vin: {_vin(payload)}\n    purpose: navigation-map\n"
            "    granted: 2020-01-01T00:00:00+08:00\n    expires: 2040-01-01T00:00:00+08:00\n"
        )
    subs = bundle / "subscribers.yaml"
    text = subs.read_text(encoding="utf-8")
    old = "      identifier: keyed_pseudonym\n      trip_trim_m: 0\n"
    assert old in text
    subs.write_text(
        text.replace(
            old,
            "      fields: [Vehicle.VehicleIdentification.VIN]\n"
            "      identifier: vin\n      trip_trim_m: 0\n",
            1,
        ),
        encoding="utf-8",
    )
    ctx = open_context(api_config(tmp_path, policies=str(bundle)))
    with TestClient(create_app(ctx, sinks=False)) as client:
        yield Api(ctx, client)
    ctx.close()


def test_a_view_that_shares_the_vin_shows_its_keyed_reference(
    vin_view: Api, payload: bytes
) -> None:
    vin = _vin(payload)
    want = explain(vin_view.ctx.bundle(), payload, subscribers=["mapco-nav"])
    assert vin in orjson.dumps([i.output for i in want.items]).decode()  # the CLI shows it
    body = _explain(vin_view, payload, subscriber=["mapco-nav"])
    text = orjson.dumps(body).decode()
    assert vin not in text and vin_view.ctx.keys.vehicle_ref(vin) in text


@pytest.mark.parametrize(
    "content",
    [b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000],
)
def test_a_body_nested_as_deep_as_json_allows_is_no_500(api: Api, content: bytes) -> None:
    r = api.client.post(URL, content=content, headers=api.headers(api.key(Role.ADMIN)))
    assert r.status_code in (200, 422), r.text
