"""Consents through the API: listed by VIN in a body or by keyed reference, granted,
withdrawn and imported with the CLI's checks, audited as the CLI audits them, applied by
the pipeline's next batch, and never a VIN in an answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.store.audit import AuditQuery, StoredEntry
from gateway.testing import make_vin
from tests.api.fleet import Fed, fed_api, fleet_envelopes

EXPIRES = "2035-01-01T00:00:00+08:00"
PURPOSE = "usage-based-insurance"
NAV = "navigation-map"  # mapco-nav's purpose
NO_CONSENT = "pi.no-consent-trip-pseudonym"  # mapco-nav's view without a consent


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    with fed_api(tmp_path, vehicles=8, seconds=20) as f:
        yield f


def _post(fed: Fed, url: str, status: int, **kw: Any) -> Any:
    r = fed.api.client.post(url, headers=fed.admin, **kw)
    assert r.status_code == status, r.text
    for vin in fed.vins:
        assert vin not in r.text
    return r.json()


def _changes(fed: Fed, since: int) -> list[dict[str, Any]]:
    """The ``consent.changed`` entries of the worker's shard from ``since`` on."""
    with fed.api.ctx.store.snapshot() as r:
        found: list[StoredEntry] = list(r.query(AuditQuery(kind="admin", shard=fed.api.ctx.shard)))
    bodies = [orjson.loads(e.body or b"{}") for e in found if e.seq >= since]
    return [b for b in bodies if b["action"] == "consent.changed"]


def _head(fed: Fed) -> int:
    with fed.api.ctx.store.snapshot() as r:
        state = r.shard_state(fed.api.ctx.shard)
    assert state is not None
    return state.size


def _nav_rules(fed: Fed, ref: str, since_ms: int) -> list[list[str]]:
    """The rules of mapco-nav's decisions on ``ref``'s records from ``since_ms`` on."""
    with fed.api.ctx.store.snapshot() as r:
        found = list(r.query(AuditQuery(subscriber="mapco-nav", vehicles=[ref])))
    return [orjson.loads(e.body or b"{}")["rules"] for e in found if e.ts_ms >= since_ms]


def _unconsented(rules: list[str]) -> bool:
    """mapco-nav's treatment without a consent: per-trip pseudonyms, trimmed at the trip's
    ends (its view trims nothing when a consent lets it use its keyed pseudonym)."""
    return NO_CONSENT in rules or "pi.trip-trim" in rules


def _drive(fed: Fed, minutes_ago: float) -> int:
    """The fleet's records from ``minutes_ago`` on, decided; returns their first time (ms)."""
    start = round((time.time() - minutes_ago * 60 - 1) * 1000)
    fed.run(fleet_envelopes(8, 20, minutes_ago=minutes_ago))
    return start


def _backdated(fed: Fed) -> None:
    """The API's clock an hour back: a consent it grants covers the records of the last
    minutes (a consent covers only records stamped after its grant, RULES.md §3)."""
    fed.api.ctx.clock = lambda: time.time() - 3600


def test_a_grant_is_audited_as_the_cli_does_and_applies_to_the_next_batch(fed: Fed) -> None:
    vin, other = sorted(fed.vins)[0], sorted(fed.vins)[4]
    ref = fed.api.ctx.keys.vehicle_ref(vin)
    before = _head(fed)
    _backdated(fed)
    granted = _post(
        fed,
        "/v1/consents/grant",
        201,
        json={"vin": vin, "purpose": NAV, "expires": EXPIRES, "id": "c-api"},
    )
    assert granted["vehicle"] == ref and granted["active"] and granted["withdrawn"] is None
    with fed.api.ctx.store.snapshot() as r:
        stored = r.consent("c-api")
    assert stored is not None and (stored.vehicle, stored.purpose) == (ref, NAV)
    (entry,) = _changes(fed, before)
    assert (entry["subject"], entry["instance"]) == ("c-api", fed.api.ctx.worker)
    assert entry["details"]["vehicle"] == ref and vin not in orjson.dumps(entry).decode()

    from typer.testing import CliRunner

    from gateway.cli.main import app

    cfg = fed.api.ctx.config
    cli = CliRunner().invoke(
        app,
        ["consent", "grant", "--store", cfg.store, "--keys", cfg.keys, "--vin", vin,
         "--purpose", NAV, "--expires", EXPIRES, "--id", "c-cli", "--worker", cfg.worker],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    (_, by_cli) = _changes(fed, before)

    def shape(e: dict[str, Any]) -> Any:
        details = {k: v for k, v in e["details"].items() if k != "granted_ms"}
        return e["kind"], e["action"], e["instance"], details

    assert shape(by_cli) == shape(entry)
    start = _drive(fed, minutes_ago=5)
    later = _nav_rules(fed, ref, start)
    assert later and not any(_unconsented(rules) for rules in later)
    control = _nav_rules(fed, fed.api.ctx.keys.vehicle_ref(other), start)  # no consent
    assert any(NO_CONSENT in rules for rules in control)


def test_withdraw_is_audited_applied_and_final(fed: Fed) -> None:
    vin = sorted(fed.vins)[1]
    ref = fed.api.ctx.keys.vehicle_ref(vin)
    _backdated(fed)
    _post(fed, "/v1/consents/grant", 201, json={"vin": vin, "purpose": NAV, "expires": EXPIRES})
    consented = _nav_rules(fed, ref, _drive(fed, minutes_ago=7))
    assert consented and not any(_unconsented(rules) for rules in consented)
    cid = _post(fed, "/v1/consents/lookup", 200, json={"vin": vin})["consents"][0]["id"]
    before = _head(fed)
    fed.api.ctx.clock = time.time
    gone = _post(fed, "/v1/consents/withdraw", 200, json={"id": cid})
    assert gone["withdrawn"] is not None and not gone["active"]
    with fed.api.ctx.store.snapshot() as r:
        stored = r.consent(cid)
    assert stored is not None and stored.revoked is not None
    (entry,) = _changes(fed, before)
    assert entry["subject"] == cid and entry["details"]["withdrawn_ms"] is not None
    _post(fed, "/v1/consents/withdraw", 409, json={"id": cid})
    _post(fed, "/v1/consents/withdraw", 404, json={"id": "c-nobody"})
    assert len(_changes(fed, before)) == 1  # the refused ones wrote nothing
    after = _nav_rules(fed, ref, _drive(fed, minutes_ago=4))
    assert after and all(_unconsented(rules) for rules in after)


def test_a_vehicle_is_looked_up_by_vin_in_a_body_or_by_reference_in_a_query(fed: Fed) -> None:
    vin = sorted(fed.vins)[2]
    ref = fed.api.ctx.keys.vehicle_ref(vin)
    _post(fed, "/v1/consents/grant", 201, json={"vin": vin, "purpose": PURPOSE, "expires": EXPIRES})
    by_vin = _post(fed, "/v1/consents/lookup", 200, json={"vin": vin})
    r = fed.api.client.get("/v1/consents", headers=fed.admin, params={"vehicle": ref})
    assert r.status_code == 200 and vin not in r.text
    by_ref = r.json()
    assert by_vin["vehicles"] == by_ref["vehicles"] == [ref]
    assert by_vin["consents"] == by_ref["consents"]
    assert [c["purpose"] for c in by_ref["consents"]] == [PURPOSE]
    refused = fed.api.client.get("/v1/consents", headers=fed.admin, params={"vehicle": vin})
    assert refused.status_code == 422 and vin not in refused.text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"vin": "LSVAU2180N2183295", "purpose": PURPOSE, "expires": EXPIRES}, "vin: not a VIN"),
        ({"vin": "{vin}", "purpose": "spying", "expires": EXPIRES}, "purpose: not in"),
        ({"vin": "{vin}", "purpose": PURPOSE, "expires": "2035-01-01"}, "expires: give a UTC"),
        ({"vin": "{vin}", "purpose": PURPOSE, "expires": "2001-01-01T00:00:00Z"}, "already past"),
        ({"vin": "{vin}", "purpose": PURPOSE}, "the request is not valid"),
        ({"vin": "{vin}", "purpose": PURPOSE, "expires": EXPIRES, "x": 1}, "not valid"),
    ],
)
def test_a_bad_grant_is_a_problem_naming_the_field_not_the_vin(
    fed: Fed, body: dict[str, Any], reason: str
) -> None:
    vin = sorted(fed.vins)[3]
    body = {k: v.replace("{vin}", vin) if isinstance(v, str) else v for k, v in body.items()}
    before = _head(fed)
    r = fed.api.client.post("/v1/consents/grant", headers=fed.admin, json=body)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert reason in r.text
    assert vin not in r.text and body["vin"] not in r.text
    assert _head(fed) == before


def _csv(rows: list[str], header: str = "vin,purpose,expires") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def test_import_records_every_row_audited_and_a_second_time_nothing(fed: Fed) -> None:
    vins = [make_vin(i) for i in range(1, 6)]
    body = _csv([f"{v},{PURPOSE},{EXPIRES}" for v in vins])
    before = _head(fed)
    headers = {**fed.admin, "content-type": "text/csv"}
    r = fed.api.client.post("/v1/consents/import", headers=headers, content=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"rows": 5, "written": 5, "unchanged": 0}
    assert not any(v in r.text for v in vins)
    changes = _changes(fed, before)
    refs = [fed.api.ctx.keys.vehicle_ref(v) for v in vins]
    assert sorted(c["details"]["vehicle"] for c in changes) == sorted(refs)
    assert all(c["instance"] == fed.api.ctx.worker for c in changes)
    with fed.api.ctx.store.snapshot() as rd:
        assert {c.vehicle for c in rd.consents_of(refs)} == set(refs)
    again = fed.api.client.post("/v1/consents/import", headers=headers, content=body)
    assert again.json() == {"rows": 5, "written": 0, "unchanged": 5}
    assert len(_changes(fed, before)) == 5


def test_an_import_with_a_bad_row_names_its_line_and_imports_nothing(fed: Fed) -> None:
    good = make_vin(7)
    wrong_digit = good[:8] + ("0" if good[8] != "0" else "1") + good[9:]
    body = _csv(
        [
            f"{good},{PURPOSE},{EXPIRES}",
            f"{wrong_digit},{PURPOSE},{EXPIRES}",
            f"{make_vin(8)},spying,{EXPIRES}",
        ]
    )
    before = _head(fed)
    r = fed.api.client.post(
        "/v1/consents/import", headers={**fed.admin, "content-type": "text/csv"}, content=body
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert [e["line"] for e in problem["errors"]] == [3, 4]
    assert problem["errors"][0]["msg"].startswith("vin: not a VIN")
    assert problem["errors"][1]["msg"].startswith("purpose: not in")
    assert problem["detail"].startswith("nothing imported: line 3: vin")
    assert good not in r.text and wrong_digit not in r.text
    assert _head(fed) == before
    with fed.api.ctx.store.snapshot() as rd:
        assert rd.consents_of([fed.api.ctx.keys.vehicle_ref(good)]) == []


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff\xfe", b"vin,purpose\nX,Y\n", b"{}", f"{make_vin(9)},a,b\n".encode()],
)
def test_an_unusable_import_file_is_a_problem(fed: Fed, body: bytes) -> None:
    r = fed.api.client.post("/v1/consents/import", headers=fed.admin, content=body)
    assert r.status_code == 422, r.text
    assert make_vin(9) not in r.text
