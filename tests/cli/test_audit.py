"""The auditor's CLI end to end: exit codes, first bad seq, formats."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.keys import KeyRing
from gateway.store import open_store
from tests.audit.conftest import ORIGIN, decision, fill, make_log, tamper

runner = CliRunner()


@pytest.fixture
def setup(store_url: str, ring: KeyRing, tmp_path: Path) -> tuple[str, Path]:
    """A store with 40 checkpointed entries and the auditor's public key file."""
    with open_store(store_url, shard=ORIGIN) as s:
        log = make_log(s, ring)
        fill(log, ring, 40)
        log.close()
    pub = tmp_path / "audit.vkeys"
    result = runner.invoke(
        app, ["keys", "public", "--dir", str(ring.directory), "--origin", ORIGIN, "--out", str(pub)]
    )
    assert result.exit_code == 0, result.output
    return store_url, pub


def test_verify_ok_prints_size_root_and_uncovered(setup: tuple[str, Path], ring: KeyRing) -> None:
    url, pub = setup
    with open_store(url, shard=ORIGIN) as s, s.transaction() as tx:
        tx.append_audit([])
    result = runner.invoke(app, ["audit", "verify", "--store", url, "--public-key", str(pub)])
    assert result.exit_code == 0, result.output
    assert f"OK {ORIGIN}: verified size 40, root " in result.output
    assert "0 not yet covered by a checkpoint" in result.output


def test_verify_names_the_first_bad_seq(setup: tuple[str, Path], ring: KeyRing) -> None:
    url, pub = setup
    with open_store(url, shard=ORIGIN) as s:
        with s.transaction() as tx:
            tx.append_audit([decision(ring, 40), decision(ring, 41)])
        tamper(s, "delete from audit_entries where seq = 12")
    result = runner.invoke(app, ["audit", "verify", "--store", url, "--public-key", str(pub)])
    assert result.exit_code == 1
    assert f"FAIL {ORIGIN} at seq 12: " in result.output
    assert "(2 entries not yet covered by any checkpoint)" in result.output


def test_verify_with_wrong_key_and_bad_inputs(setup: tuple[str, Path], tmp_path: Path) -> None:
    url, pub = setup
    other = tmp_path / "other.vkeys"
    other.write_text("# not the log's key\n" + ring_other_vkey(tmp_path) + "\n")
    result = runner.invoke(app, ["audit", "verify", "--store", url, "--public-key", str(other)])
    assert result.exit_code == 1
    assert "not signed by a trusted key" in result.output
    bad = tmp_path / "bad.vkeys"
    bad.write_text("garbage\n")
    result = runner.invoke(app, ["audit", "verify", "--store", url, "--public-key", str(bad)])
    assert result.exit_code == 2
    result = runner.invoke(app, ["audit", "verify", "--public-key", str(pub)])
    assert result.exit_code == 2


def ring_other_vkey(tmp_path: Path) -> str:
    from gateway.keys import init_keys

    return init_keys(tmp_path / "other-keys").verifier_keys(ORIGIN)[0]


def test_trusted_checkpoint_and_export_round_trip(setup: tuple[str, Path], tmp_path: Path) -> None:
    url, pub = setup
    out = tmp_path / "audit.jsonl"
    result = runner.invoke(app, ["audit", "export", "--store", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "40 entries" in result.output
    kept = tmp_path / "kept.checkpoint"
    kept.write_bytes((tmp_path / "audit.jsonl.checkpoint").read_bytes())
    result = runner.invoke(
        app,
        [
            "audit",
            "verify",
            "--export",
            str(out),
            "--public-key",
            str(pub),
            "--trusted-checkpoint",
            str(kept),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "extends trusted checkpoint(s) of size 40" in result.output
    lines = out.read_bytes().splitlines()
    lines[5], lines[6] = lines[6], lines[5]
    out.write_bytes(b"".join(line + b"\n" for line in lines))
    result = runner.invoke(app, ["audit", "verify", "--export", str(out), "--public-key", str(pub)])
    assert result.exit_code == 1
    assert "at seq 5" in result.output
    with open_store(url) as s:
        tamper(s, "delete from audit_entries where seq >= 30")
    result = runner.invoke(
        app,
        [
            "audit",
            "verify",
            "--store",
            url,
            "--public-key",
            str(pub),
            "--trusted-checkpoint",
            str(kept),
        ],
    )
    assert result.exit_code == 1
    assert "at seq 30" in result.output


def test_a_trusted_checkpoint_that_is_no_checkpoint_is_a_usage_error(
    setup: tuple[str, Path], tmp_path: Path
) -> None:
    """Any text given as --trusted-checkpoint was read as a checkpoint of a shard named by its
    first line, and reported as that shard 'deleted' (a verification FAIL, exit 1)."""
    url, pub = setup
    out = tmp_path / "audit.jsonl"
    assert runner.invoke(app, ["audit", "export", "--store", url, "--out", str(out)]).exit_code == 0
    readme = tmp_path / "README.md"
    readme.write_text("# icv-gateway\n\nA data-sharing gateway.\n")
    for where in (["--store", url], ["--export", str(out)]):
        result = runner.invoke(
            app,
            ["audit", "verify", *where, "--public-key", str(pub),
             "--trusted-checkpoint", str(readme)],
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{readme}: not a checkpoint" in lines[0], result.stderr


def test_query_formats_and_vin_lookup(setup: tuple[str, Path], ring: KeyRing) -> None:
    url, _ = setup
    vin = "LSVTEST0000000003"
    result = runner.invoke(app, ["audit", "query", "--store", url, "--vin", vin])
    assert result.exit_code == 2 and "--keys" in result.output
    result = runner.invoke(
        app,
        [
            "audit",
            "query",
            "--store",
            url,
            "--vin",
            vin,
            "--keys",
            str(ring.directory),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["seq"] for r in rows] == [3, 8, 13, 18, 23, 28, 33, 38]
    assert all(r["entry"]["vehicle"] == ring.vehicle_ref(vin) for r in rows)
    assert vin not in result.stdout
    result = runner.invoke(
        app,
        [
            "audit",
            "query",
            "--store",
            url,
            "--decision",
            "blocked",
            "--subscriber",
            "platform-0",
            "--since",
            "2025-02-19T21:20:02Z",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["seq"]) for r in table] == [2, 8, 14, 20, 26, 32, 38]
    assert {r["decision"] for r in table} == {"blocked"}
    result = runner.invoke(
        app, ["audit", "query", "--store", url, "--rule", "rule-1", "--limit", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "2 entries" in result.output and "rule-1" in result.output
    result = runner.invoke(app, ["audit", "query", "--store", url, "--since", "yesterday"])
    assert result.exit_code == 2


def test_query_stops_at_the_limit_and_says_more_match(
    store_url: str, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(store_url, shard=ORIGIN) as s:
        log = make_log(s, ring)
        fill(log, ring, 105)
        log.close()
    result = runner.invoke(app, ["audit", "query", "--store", store_url])
    assert result.exit_code == 0, result.output
    assert "100 entries" in result.stdout  # the default limit
    assert "more entries match: these are the first 100; give --limit N for more" in (result.stdout)
    result = runner.invoke(app, ["audit", "query", "--store", store_url, "--limit", "0"])
    assert "105 entries" in result.stdout and "more entries" not in result.output
    result = runner.invoke(app, ["audit", "query", "--store", store_url, "--limit", "105"])
    assert "105 entries" in result.stdout and "more entries" not in result.output
    result = runner.invoke(
        app, ["audit", "query", "--store", store_url, "--limit", "3", "--format", "json"]
    )
    assert len(json.loads(result.stdout)) == 3  # the notice goes to stderr, not in the JSON
    assert "these are the first 3" in result.stderr


@pytest.mark.parametrize(
    ("option", "valid"),
    [
        ("--decision", "shared, redacted, blocked, dead-lettered"),
        ("--kind", "decision, admin"),
        ("--format", "table, json, csv"),
    ],
)
def test_query_refuses_an_unknown_value_listing_the_valid_ones(
    setup: tuple[str, Path], option: str, valid: str
) -> None:
    url, _ = setup
    result = runner.invoke(app, ["audit", "query", "--store", url, option, "typo"])
    assert result.exit_code == 2
    assert f"'typo' is not one of {valid}" in result.stderr


def test_proof_and_check_proof(setup: tuple[str, Path], tmp_path: Path) -> None:
    url, pub = setup
    out = tmp_path / "proof.json"
    result = runner.invoke(app, ["audit", "proof", "--store", url, "17", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["seq"] == 17
    result = runner.invoke(app, ["audit", "check-proof", str(out), "--public-key", str(pub)])
    assert result.exit_code == 0, result.output
    assert f"entry 17 is in {ORIGIN} at size 40" in result.output
    doc = json.loads(out.read_text())
    doc["entry"] = doc["entry"].replace("m-17", "m-71")
    doc.pop("leaf_hash")
    out.write_text(json.dumps(doc))
    result = runner.invoke(app, ["audit", "check-proof", str(out), "--public-key", str(pub)])
    assert result.exit_code == 1
    result = runner.invoke(app, ["audit", "proof", "--store", url, "99"])
    assert result.exit_code == 2


@pytest.fixture
def old_setup(store_url: str, ring: KeyRing, tmp_path: Path) -> tuple[str, Path]:
    """Like ``setup``, with entries four years old (past the 3-year retention)."""
    old = time.time() - 4 * 366 * 86400
    with open_store(store_url, shard=ORIGIN) as s:
        log = make_log(s, ring)
        for b in range(0, 40, 10):
            with log.transaction() as tx:
                tx.append_audit([decision(ring, i, time=old + i) for i in range(b, b + 10)])
        log.close()
    pub = tmp_path / "audit.vkeys"
    result = runner.invoke(
        app, ["keys", "public", "--dir", str(ring.directory), "--origin", ORIGIN, "--out", str(pub)]
    )
    assert result.exit_code == 0, result.output
    return store_url, pub


def test_prune_refuses_less_than_the_rules_retention(
    old_setup: tuple[str, Path], ring: KeyRing
) -> None:
    url, _ = old_setup
    args = ["audit", "prune", "--store", url, "--keys", str(ring.directory), "--shard", ORIGIN]
    result = runner.invoke(app, [*args, "--retention-days", "1"])
    assert result.exit_code == 2
    assert "refused: --retention-days 1 is below the 1096 days the rules keep" in result.output
    with open_store(url, shard=ORIGIN) as s, s.snapshot() as r:
        assert all(e.body is not None for e in r.iter_entries(ORIGIN))


def test_checkpoint_and_prune_commands(old_setup: tuple[str, Path], ring: KeyRing) -> None:
    url, pub = old_setup
    keys = str(ring.directory)
    result = runner.invoke(
        app, ["audit", "checkpoint", "--store", url, "--keys", keys, "--shard", ORIGIN]
    )
    assert result.exit_code == 0 and "already covers" in result.output
    result = runner.invoke(
        app,
        [
            "audit",
            "prune",
            "--store",
            url,
            "--keys",
            keys,
            "--shard",
            ORIGIN,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "pruned 40 entries" in result.output
    with open_store(url, shard=ORIGIN) as s, s.transaction() as tx:  # one more, uncovered
        tx.append_audit([decision(ring, 99)])
    result = runner.invoke(
        app, ["audit", "checkpoint", "--store", url, "--keys", keys, "--shard", ORIGIN]
    )
    assert result.exit_code == 0 and result.output.startswith(f"{ORIGIN}\n42\n")
    result = runner.invoke(app, ["audit", "verify", "--store", url, "--public-key", str(pub)])
    assert result.exit_code == 0, result.output
    assert "42 entries, 0 not yet covered" in result.output
    assert "40 pruned to hashes" in result.output
