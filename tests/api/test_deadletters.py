"""Dead letters through the API: counts and a list with nothing of their content, and one
opened from the sealed store only through its own route, audited as the CLI audits it."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.store.audit import AuditQuery
from tests.api.fleet import NOT_JSON, Fed, fed_api


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    with fed_api(tmp_path, vehicles=8, seconds=40) as f:
        yield f


def _sent(fed: Fed) -> dict[bytes, str]:
    """The unusable payloads the fleet sent, with their topics."""
    return {e.payload: e.topic for e in fed.envelopes if e.payload.startswith(NOT_JSON)}


def _read_entries(fed: Fed) -> list[dict[str, object]]:
    with fed.api.ctx.store.snapshot() as r:
        found = r.query(AuditQuery(kind="admin", shard=fed.api.ctx.shard))
        bodies = [orjson.loads(e.body or b"{}") for e in found]
    return [b for b in bodies if b["action"] == "deadletter.read"]


def test_reasons_and_the_list_show_nothing_of_the_content(fed: Fed) -> None:
    client, headers = fed.api.client, fed.admin
    sent = _sent(fed)
    assert len(sent) >= 5
    reasons = client.get("/v1/deadletters/reasons", headers=headers).json()
    assert reasons == {
        "shard": fed.api.ctx.shard,
        "total": len(sent),
        "reasons": {"not-json": len(sent)},
    }
    seen, before = [], None
    while True:
        params = {"limit": 2} if before is None else {"limit": 2, "before": before}
        r = client.get("/v1/deadletters", headers=headers, params=params)
        assert r.status_code == 200
        assert not any(vin in r.text for vin in fed.vins) and NOT_JSON.decode() not in r.text
        page = r.json()
        seen.extend(page["deadletters"])
        before = page["next_before"]
        if before is None:
            break
    seqs = [d["seq"] for d in seen]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(sent)
    refs = {fed.api.ctx.keys.vehicle_ref(t.split("/")[1]) for t in sent.values()}
    assert {d["vehicle"] for d in seen} == refs
    assert Counter(d["reason"] for d in seen) == {"not-json": len(sent)}
    assert _read_entries(fed) == []  # listing opens nothing


def test_a_payload_comes_only_opened_by_its_route_and_audited(fed: Fed) -> None:
    client, headers = fed.api.client, fed.admin
    first = client.get("/v1/deadletters", headers=headers, params={"limit": 1}).json()
    seq = first["deadletters"][0]["seq"]
    r = client.get(f"/v1/deadletters/{seq}", headers=headers)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    letter = r.json()
    payload = base64.b64decode(letter["payload_base64"])
    sent = _sent(fed)
    assert payload in sent and letter["topic"] == sent[payload]
    assert letter["payload"] == payload.decode() and letter["reason"] == "not-json"
    (entry,) = _read_entries(fed)
    assert entry["subject"] == f"{fed.api.ctx.shard}#{seq}"
    assert entry["instance"] == fed.api.ctx.worker and entry["details"] == {"reason": "not-json"}
    assert not any(vin in orjson.dumps(entry).decode() for vin in fed.vins)


@pytest.mark.parametrize("seq", ["0", "999999", "9223372036854775807"])
def test_no_such_dead_letter_is_a_404_and_reads_nothing(fed: Fed, seq: str) -> None:
    r = fed.api.client.get(f"/v1/deadletters/{seq}", headers=fed.admin)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert _read_entries(fed) == []


@pytest.mark.parametrize(
    ("url", "params"),
    [
        ("/v1/deadletters/-1", {}),
        ("/v1/deadletters/9223372036854775808", {}),
        ("/v1/deadletters", {"limit": 0}),
        ("/v1/deadletters", {"before": -5}),
        ("/v1/deadletters/reasons", {"shard": "a\nb"}),
    ],
)
def test_bad_numbers_are_422_problems(fed: Fed, url: str, params: dict[str, object]) -> None:
    r = fed.api.client.get(url, headers=fed.admin, params=params)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_another_shard_is_named_by_a_parameter(fed: Fed) -> None:
    other = fed.api.client.get(
        "/v1/deadletters/reasons", headers=fed.admin, params={"shard": "icv-gateway/gw-9"}
    )
    assert other.json() == {"shard": "icv-gateway/gw-9", "total": 0, "reasons": {}}
