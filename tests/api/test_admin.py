"""``GET /v1/policy``: the version, subscribers and summary of the policy in force."""

from __future__ import annotations

from gateway.apikeys import Role
from tests.api.conftest import Api


def test_the_policy_in_force_with_its_summary(api: Api) -> None:
    r = api.client.get("/v1/policy", headers=api.headers(api.key(Role.ADMIN)))
    assert r.status_code == 200
    body = r.json()
    bundle = api.ctx.bundle()
    assert body["version"] == bundle.version
    assert list(body["subscribers"]) == list(bundle.subscribers)
    summary = body["summary"]
    assert (summary["subscribers"], summary["zones"], summary["consents"]) == (
        len(bundle.subscribers),
        len(bundle.zones),
        len(bundle.consents),
    )
    assert summary["rules"] == len(bundle.rules.catalogue) and summary["fields"] == len(
        bundle.fields
    )
    assert summary["retention"]["audit_years"] >= 3
    assert sum(summary["zones_by_level"].values()) == len(bundle.zones)
    mapco, oem = body["subscribers"]["mapco-nav"], body["subscribers"]["oem-hq-de"]
    assert mapco["location"] == {"shared": True, "precision_m": 0.0, "datum": "WGS-84"}
    assert mapco["channel"] == "mqtt" and mapco["purposes"] == ["navigation-map"]
    assert oem["cross_border"] is True
    sub = bundle.subscribers["oem-hq-de"]
    assert oem["location"]["shared"] is any(
        str(b.kind) == "geodata_export_approval" for b in sub.legal_bases
    )
