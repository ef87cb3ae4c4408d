"""The auditor's routes on a log the real pipeline wrote: pages that cover every entry once,
the filters of ``icvgw audit query``, checkpoints and proofs that verify with the public
key, and a verification that is bounded, cached and catches tampering."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.apikeys import Role
from gateway.audit.incremental import IncrementalVerifier
from gateway.audit.proof import check_proof_document
from gateway.crypto import NoteVerifier
from gateway.store.audit import AuditQuery, StoredEntry
from gateway.tlog.checkpoint import open_checkpoint
from gateway.tlog.entries import format_time
from gateway.tlog.merkle import verify_consistency
from gateway.tlog.note import read_verifier_keys
from tests.api.conftest import Api
from tests.api.fleet import Fed, fed_api, fleet_envelopes
from tests.audit.test_incremental import Reads

VIN = "LSVAU2180N2183294"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    """50 vehicles for 20 s: some 3,500 entries, read-only for the tests that share it."""
    with fed_api(tmp_path_factory.mktemp("fed"), vehicles=50, seconds=20) as f:
        yield f


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Fed]:
    """A smaller run for a test that changes the store."""
    with fed_api(tmp_path, vehicles=8, seconds=20) as f:
        yield f


def _get(fed: Fed, url: str, headers: dict[str, str], status: int = 200, **params: Any) -> Any:
    r = fed.api.client.get(url, headers=headers, params=params)
    assert r.status_code == status, r.text
    return r.json()


def _all(fed: Fed, q: AuditQuery | None = None) -> list[StoredEntry]:
    with fed.api.ctx.store.snapshot() as r:
        return list(r.query(q or AuditQuery()))


def _verifiers(fed: Fed) -> list[NoteVerifier]:
    """The public key as an auditor holds it (``icvgw keys public``), not the key ring."""
    shard = fed.api.ctx.shard
    return read_verifier_keys("\n".join(fed.api.ctx.keys.verifier_keys(shard)) + "\n")


def _pages(fed: Fed, headers: dict[str, str], **params: Any) -> list[list[dict[str, Any]]]:
    pages, after = [], None
    while True:
        extra = {} if after is None else {"after": after}
        body = _get(fed, "/v1/audit/entries", headers, **params, **extra)
        pages.append(body["entries"])
        after = body["next"]
        if not body["more"]:
            return pages


@pytest.mark.parametrize("limit", [1000, 333])
def test_pages_cover_every_entry_exactly_once_as_the_log_holds_it(fed: Fed, limit: int) -> None:
    stored = _all(fed)
    assert len(stored) > 3000
    pages = _pages(fed, fed.auditor, limit=limit)
    assert all(0 < len(p) <= limit for p in pages)
    got = [e for p in pages for e in p]
    assert [(e["shard"], e["seq"]) for e in got] == [(e.shard, e.seq) for e in stored]
    assert len({(e["shard"], e["seq"]) for e in got}) == len(got)
    assert all(e["entry"] == orjson.loads(s.body or b"") for e, s in zip(got, stored, strict=True))
    blob = b"".join(orjson.dumps(p) for p in pages)
    assert not any(vin.encode() in blob for vin in fed.vins)


def test_the_filters_are_those_of_audit_query(fed: Fed) -> None:
    headers = fed.auditor
    stored = _all(fed)
    some = next(e for e in stored if e.kind == "decision" and e.rules and e.vehicle)
    rule = some.rules.strip("|").split("|")[0] if some.rules else ""
    middle = stored[len(stored) // 2].ts_ms
    cases: list[tuple[dict[str, Any], AuditQuery]] = [
        ({"subscriber": "sh-traffic"}, AuditQuery(subscriber="sh-traffic")),
        ({"decision": "blocked"}, AuditQuery(decision="blocked")),
        ({"decision": "dead-lettered"}, AuditQuery(decision="dead-lettered")),
        ({"kind": "admin"}, AuditQuery(kind="admin")),
        ({"rule": rule}, AuditQuery(rule=rule)),
        ({"vehicle": some.vehicle}, AuditQuery(vehicles=[some.vehicle or ""])),
        (
            {"since": format_time(middle), "until": format_time(middle + 2000)},
            AuditQuery(since_ms=middle, until_ms=middle + 2000),
        ),
        (
            {"subscriber": "oem-hq-de", "decision": "redacted", "shard": fed.api.ctx.shard},
            AuditQuery(subscriber="oem-hq-de", decision="redacted", shard=fed.api.ctx.shard),
        ),
    ]
    for params, q in cases:
        want = [e.seq for e in _all(fed, q)]
        got = [e["seq"] for p in _pages(fed, headers, limit=250, **params) for e in p]
        assert got == want, params
        assert 0 < len(want) < len(stored), params  # each filter selects
    nothing = _get(fed, "/v1/audit/entries", headers, subscriber="nobody")
    assert nothing["entries"] == [] and nothing["more"] is False


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"after": "not-a-cursor"}, 400),
        ({"after": base64.urlsafe_b64encode(b'["s", -1]').decode()}, 400),
        ({"after": "x" * 5000}, 422),
        ({"limit": 0}, 422),
        ({"limit": 1001}, 422),
        ({"since": "yesterday"}, 422),
        ({"decision": "maybe"}, 422),
        ({"vehicle": VIN}, 422),
        ({"subscriber": "a\x00b"}, 422),
    ],
)
def test_bad_query_parameters_are_problems_that_repeat_nothing(
    fed: Fed, params: dict[str, Any], status: int
) -> None:
    r = fed.api.client.get("/v1/audit/entries", headers=fed.auditor, params=params)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert VIN not in r.text and "not-a-cursor" not in r.text and "yesterday" not in r.text


def test_the_checkpoint_text_verifies_with_the_public_key(fed: Fed) -> None:
    headers = fed.auditor
    r = fed.api.client.get("/v1/audit/checkpoint", headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    cp = open_checkpoint(r.content, _verifiers(fed), origin=fed.api.ctx.shard).checkpoint
    with fed.api.ctx.store.snapshot() as rd:
        state = rd.shard_state(fed.api.ctx.shard)
    assert state is not None and cp.size == state.size and cp.root == state.root()
    listed = _get(fed, "/v1/audit/checkpoints", headers)["checkpoints"]
    assert [(c["shard"], c["size"], c["root"], c["note"]) for c in listed] == [
        (cp.origin, cp.size, cp.root_b64, r.text)
    ]
    same = fed.api.client.get(
        "/v1/audit/checkpoint", headers=headers, params={"shard": fed.api.ctx.shard}
    )
    assert same.content == r.content
    other = fed.api.client.get("/v1/audit/checkpoint", headers=headers, params={"shard": "x/y"})
    assert other.status_code == 404


def test_inclusion_proofs_verify_with_the_public_key(fed: Fed) -> None:
    headers = fed.auditor
    size = len(_all(fed))
    for seq in (0, 1, 255, 256, size // 2, size - 1):
        doc = _get(fed, f"/v1/audit/proof/{seq}", headers)
        assert doc["tree_size"] == size and doc["seq"] == seq
        check_proof_document(doc, _verifiers(fed))
        with fed.api.ctx.store.snapshot() as r:
            entry = r.entry(fed.api.ctx.shard, seq)
        assert entry is not None and doc["entry"].encode() == entry.body


def test_proofs_against_an_older_checkpoint_and_consistency_between_two(fresh: Fed) -> None:
    headers = fresh.auditor
    old = _get(fresh, "/v1/audit/proof/3", headers)
    fresh.run(fleet_envelopes(8, 10, seed=9))
    new = _get(fresh, "/v1/audit/proof/3", headers)
    assert new["tree_size"] > old["tree_size"]
    again = _get(fresh, "/v1/audit/proof/3", headers, tree_size=old["tree_size"])
    assert again == old
    check_proof_document(again, _verifiers(fresh))
    proof = _get(fresh, "/v1/audit/consistency", headers, from_size=old["tree_size"])
    assert proof["tree_size"] == new["tree_size"]
    assert proof["old_checkpoint"] == old["checkpoint"]
    verifiers = _verifiers(fresh)
    a = open_checkpoint(proof["old_checkpoint"].encode(), verifiers).checkpoint
    b = open_checkpoint(proof["checkpoint"].encode(), verifiers).checkpoint
    hashes = [base64.b64decode(h) for h in proof["consistency_proof"]]
    verify_consistency(a.size, b.size, a.root, b.root, hashes)
    explicit = _get(
        fresh,
        "/v1/audit/consistency",
        headers,
        from_size=5,
        to_size=old["tree_size"],
    )
    assert explicit["tree_size"] == old["tree_size"] and explicit["old_checkpoint"] is None


@pytest.mark.parametrize(
    ("url", "params", "status"),
    [
        ("/v1/audit/proof/100000", {}, 404),  # beyond the checkpoint
        ("/v1/audit/proof/3", {"tree_size": 2}, 404),  # no checkpoint of that size
        ("/v1/audit/proof/3", {"tree_size": 99999999}, 404),
        ("/v1/audit/proof/3", {"shard": "icv-gateway/nobody"}, 404),
        ("/v1/audit/proof/-1", {}, 422),
        ("/v1/audit/proof/99999999999999999999999", {}, 422),
        ("/v1/audit/proof/x", {}, 422),
        ("/v1/audit/consistency", {"from_size": 10**9}, 404),
        ("/v1/audit/consistency", {"from_size": 1, "to_size": 7}, 404),
        ("/v1/audit/consistency", {"from_size": -1}, 422),
        ("/v1/audit/consistency", {}, 422),
    ],
)
def test_out_of_range_numbers_are_4xx_problems(
    fed: Fed, url: str, params: dict[str, Any], status: int
) -> None:
    r = fed.api.client.get(url, headers=fed.auditor, params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now


def _install(fed: Fed, budget: int) -> Clock:
    clock = Clock()
    ctx = fed.api.ctx
    fed.api.client.app.state.audit_verifier = IncrementalVerifier(  # type: ignore[attr-defined]
        ctx.store, ctx.keys.verifiers, budget=budget, min_interval_s=5.0, clock=clock
    )
    return clock


def test_verify_is_bounded_per_call_cached_between_and_ends_complete(
    fresh: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh.run(fleet_envelopes(50, 20, seed=5))  # thousands of entries
    size = len(_all(fresh))
    assert size > 3000
    headers = fresh.auditor
    clock = _install(fresh, budget=500)
    reads = Reads(monkeypatch)
    results, per_call = [], []
    while not results or not results[-1]["complete"]:
        reads.entries = 0
        body = _get(fresh, "/v1/audit/verify", headers)
        per_call.append(reads.entries)
        assert body["items"] <= 500 and reads.entries <= 500
        reads.entries = 0
        assert _get(fresh, "/v1/audit/verify", headers) == body  # cached: nothing read
        assert reads.entries == 0
        results.append(body)
        clock.now += 5.0
        assert len(results) < 20
    assert len(results) >= size // 500  # no call scanned the log
    last = results[-1]["shards"][0]
    with fresh.api.ctx.store.snapshot() as r:
        cp = r.latest_checkpoint(fresh.api.ctx.shard)
    assert cp is not None
    assert last["ok"] and last["verified_size"] == cp.size == size and last["head"] == size
    assert last["root"] == open_checkpoint(cp.note, _verifiers(fresh)).checkpoint.root_b64
    assert results[0]["complete"] is False and results[0]["shards"][0]["checked"] < size


def test_verify_finds_a_tampered_entry(fresh: Fed) -> None:
    headers = fresh.auditor
    clock = _install(fresh, budget=200)
    with fresh.api.ctx.store.snapshot() as r:
        entry = r.entry(fresh.api.ctx.shard, 300)
    assert entry is not None and entry.body is not None
    edited = entry.body.replace(b'"decision":"', b'"decision":"x', 1)
    assert edited != entry.body
    with fresh.api.ctx.store.transaction() as tx:
        tx.execute(
            "update audit_entries set body = ? where shard = ? and seq = 300",
            (edited, fresh.api.ctx.shard),
        )
    for _ in range(10):
        body = _get(fresh, "/v1/audit/verify", headers)
        clock.now += 5.0
        if not body["ok"]:
            break
    assert body["ok"] is False and body["complete"] is False
    assert body["shards"][0]["error_seq"] == 300
    assert "stored leaf hash" in body["shards"][0]["error"]


def test_the_default_verifier_is_made_once_per_app(fed: Fed) -> None:
    headers = fed.auditor
    first = _get(fed, "/v1/audit/verify", headers)
    assert first["budget"] == 5000 and first["items"] <= 5000
    assert _get(fed, "/v1/audit/verify", headers)["verified_at"] == first["verified_at"]


def test_a_store_without_checkpoints_has_none_to_show(api: Api) -> None:
    headers = api.headers(api.key(Role.AUDITOR))  # its creation is the shard's first entry
    r = api.client.get("/v1/audit/checkpoint", headers=headers)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert api.client.get("/v1/audit/checkpoints", headers=headers).json() == {"checkpoints": []}
    assert api.client.get("/v1/audit/proof/0", headers=headers).status_code == 404
    body = api.client.get("/v1/audit/verify", headers=headers).json()
    assert body["ok"] and body["shards"][0]["verified_size"] == 0


def test_on_postgresql_too(tmp_path: Path, postgres_url: str) -> None:
    """The same pages, proofs, verification and dead-letter counts on PostgreSQL."""
    with fed_api(tmp_path, vehicles=8, seconds=20, store=postgres_url) as pg:
        assert type(pg.api.ctx.store).__name__ == "PostgresStore"
        stored = _all(pg)
        pages = _pages(pg, pg.auditor, limit=100)
        assert [(e["shard"], e["seq"]) for p in pages for e in p] == [
            (e.shard, e.seq) for e in stored
        ]
        check_proof_document(_get(pg, "/v1/audit/proof/7", pg.auditor), _verifiers(pg))
        clock = _install(pg, budget=100)
        for _ in range(30):
            body = _get(pg, "/v1/audit/verify", pg.auditor)
            clock.now += 5.0
            if body["complete"]:
                break
        assert body["ok"] and body["complete"] and body["shards"][0]["verified_size"] > 0
        reasons = _get(pg, "/v1/deadletters/reasons", pg.admin)
        assert reasons["total"] == sum(1 for e in stored if e.decision == "dead-lettered") > 0


def test_a_reader_following_a_growing_log_misses_no_shard(api: Api) -> None:
    """An entry appended to a shard the reader has already passed is on its next page
    (a cursor by (shard, seq) in one order skipped it)."""
    from gateway.tlog.entries import AdminEntry

    def append(shard: str, n: int) -> None:
        with api.ctx.store.transaction() as tx:
            tx.append_audit(
                [AdminEntry(1.0e9 + i, "w", "retention.pruned", f"s{i}") for i in range(n)],
                shard=shard,
            )

    headers = api.headers(api.key(Role.AUDITOR))
    append("a/gw-1", 3)
    append("b/gw-2", 3)
    first = api.client.get("/v1/audit/entries", params={"limit": 4}, headers=headers).json()
    assert [(e["shard"], e["seq"]) for e in first["entries"]] == [
        ("a/gw-1", 0), ("a/gw-1", 1), ("a/gw-1", 2), ("b/gw-2", 0)
    ]  # fmt: skip
    append("a/gw-1", 1)
    seen, after = [], first["next"]
    while True:
        page = api.client.get(
            "/v1/audit/entries", params={"limit": 4, "after": after}, headers=headers
        ).json()
        seen += [(e["shard"], e["seq"]) for e in page["entries"]]
        after = page["next"]
        if not page["more"]:
            break
    key_made = (api.ctx.shard, 0)  # the auditor key's apikey.created entry
    assert sorted(seen) == [("a/gw-1", 3), ("b/gw-2", 1), ("b/gw-2", 2), key_made]
    append("b/gw-2", 1)  # the last page's next still follows the log
    last = api.client.get("/v1/audit/entries", params={"after": after}, headers=headers).json()
    assert [(e["shard"], e["seq"]) for e in last["entries"]] == [("b/gw-2", 3)]
