"""``icvgw demo``: a real run as a subprocess, its summary checked against the audit log.

The demo's own consistency check is not trusted here: the test opens the store itself,
counts the run's decisions and dead letters, and runs ``icvgw audit verify`` separately.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.demo import Summary, check_log, write_demo_policy
from gateway.policy.loader import BUNDLE_FILES, load_bundle
from gateway.resources import default_policy_dir
from gateway.service import Totals
from gateway.store import open_store
from gateway.store.audit import AuditQuery
from gateway.store.deadletters import deadletters
from gateway.store.outbox import count_pending
from gateway.testing import MosquittoBroker
from simulators.vin import random_vins
from tests.simulators.subscriber import Subscriber

DECISIONS = ("shared", "redacted", "blocked")


def run_demo(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary = cwd / f"summary-{len(list(cwd.glob('summary-*')))}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", *args, "--json-summary", str(summary)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(summary.read_text(encoding="utf-8"))


def logged_decisions(store_url: str, shard: str, first_seq: int) -> Counter[tuple[str, str]]:
    """(subscriber, decision) -> entries of this run, read from the store directly."""
    counts: Counter[tuple[str, str]] = Counter()
    with open_store(store_url, migrate=False) as store, store.snapshot() as rd:
        for e in rd.query(AuditQuery(shard=shard, kind="decision")):
            if e.seq >= first_seq:
                assert e.decision is not None
                counts[(e.subscriber or "", e.decision)] += 1
    return counts


def check_against_store(summary: dict[str, Any]) -> Counter[tuple[str, str]]:
    """The summary's counts are final and equal what the audit log holds for the run."""
    assert summary["ok"] and summary["verified"] and summary["drained"], summary["problems"]
    assert summary["messages"] >= summary["published"] > 0
    logged = logged_decisions(summary["store"], summary["shard"], summary["first_seq"])
    counted: Counter[tuple[str, str]] = Counter()
    for sub, by in summary["decisions"].items():
        for decision in DECISIONS:
            if by[decision]:
                counted[(sub, decision)] = by[decision]
    if summary["deadletters"]:
        counted[("", "dead-lettered")] = summary["deadletters"]
    assert logged == counted
    assert sum(logged.values()) == summary["entries"]
    with open_store(summary["store"], migrate=False) as store, store.snapshot() as rd:
        assert count_pending(rd, summary["shard"]) == 0
        letters = [d for d in deadletters(rd, summary["shard"]) if d.seq >= summary["first_seq"]]
    assert len(letters) == summary["deadletters"]
    # Drained: every shared or redacted view was delivered, and nothing else was.
    for sub, by in summary["decisions"].items():
        assert summary["delivered"][sub] == by["shared"] + by["redacted"], sub
    assert summary["views"] == sum(summary["delivered"].values())
    return logged


def audit_verify(cwd: Path, summary: dict[str, Any]) -> str:
    proc = subprocess.run(
        [
            sys.executable, "-m", "gateway", "audit", "verify",
            "--store", summary["store"], "--public-key", summary["verifier"],
        ],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_demo_summary_equals_the_audit_log(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc, summary = run_demo(
        tmp_path, "--duration", "5", "--vehicles", "10", "--workdir", str(workdir)
    )
    logged = check_against_store(summary)
    # Everything before the run's first decision is administrative: the policy version in
    # force and the consents the gateway seeded, and the demo's API keys (one per role).
    assert summary["first_seq"] == 0
    assert summary["admin"] == {
        "policy.loaded": 1,
        "consent.changed": summary["admin_entries"] - 1,
        "apikey.created": 4 + 3,
    }
    admin = sum(summary["admin"].values())
    # The summary states the run's entries as a sum that adds up.
    total = summary["entries"] + admin
    assert (
        f"entries audited in this run: {total:,} = "
        f"{summary['entries'] - summary['deadletters']:,} decisions + "
        f"{summary['deadletters']:,} dead letters + {admin:,} admin entries "
        f"(7 API keys created, {summary['admin_entries'] - 1:,} consents seeded, "
        "1 policy loaded)"
    ) in proc.stdout.replace("\n", " ")
    assert summary["api"].startswith("http://127.0.0.1:") and summary["api_answered"]
    assert summary["vehicles"] == 10 and summary["published"] >= 20
    assert sum(summary["delivered"].values()) > 0
    assert {sub for sub, _ in logged if sub} <= set(summary["decisions"])
    assert set(summary["decisions"]) == {"mapco-nav", "insureco-ubi", "sh-traffic", "oem-hq-de"}
    out = audit_verify(tmp_path, summary)
    size = summary["entries"] + admin
    assert summary["admin_entries"] >= 1  # the policy version in force, consents seeded
    assert f"OK {summary['shard']}: verified size {size}," in out
    # The console: the live table and the summary on stdout, nothing on stderr (no amqtt
    # or paho noise), the broker's per-run credentials nowhere.
    assert proc.stderr == ""
    assert "demo OK" in proc.stdout and "audit verification: OK" in proc.stdout
    assert f"icvgw audit verify --store {summary['store']}" in proc.stdout
    assert "embedded amqtt" in summary["broker"] and "MQTT 3.1.1" in summary["broker"]
    assert "@" not in proc.stdout and "@" not in summary["broker"]
    assert (workdir / "demo.log").is_file() and (workdir / "keys").is_dir()

    # A second run in the kept directory reuses keys and store and appends to the log.
    _, again = run_demo(tmp_path, "--duration", "2", "--vehicles", "3", "--workdir", str(workdir))
    check_against_store(again)
    assert again["first_seq"] == size
    assert again["seed"] != summary["seed"]
    out = audit_verify(tmp_path, again)
    assert f"verified size {size + again['entries'] + sum(again['admin'].values())}," in out

    # The demo's own check fails (so the command exits 1) on counts the log does not hold,
    # and on a log altered after the run.
    def as_summary(data: dict[str, Any]) -> Summary:
        return Summary(
            workdir=Path(data["workdir"]),
            store=data["store"],
            keys=Path(data["keys"]),
            verifier=Path(data["verifier"]),
            shard=data["shard"],
            broker=data["broker"],
            seed=data["seed"],
            vehicles=data["vehicles"],
            seconds=data["seconds"],
            totals=Totals(entries=data["entries"], deadletters=data["deadletters"]),
            first_seq=data["first_seq"],
            decisions=data["decisions"],
            delivered=data["delivered"],
        )

    recheck = as_summary(again)
    check_log(recheck)
    assert recheck.ok and recheck.verified and recheck.log_matches
    miscounted = as_summary(again)
    sub = next(s for s, by in miscounted.decisions.items() if by["blocked"])
    miscounted.decisions[sub]["blocked"] -= 1
    check_log(miscounted)
    assert miscounted.verified and not miscounted.log_matches and not miscounted.ok
    db = sqlite3.connect(workdir / "icvgw.sqlite")
    try:
        seq, body = db.execute(
            "select seq, body from audit_entries where decision = 'blocked' order by seq limit 1"
        ).fetchone()
        with db:  # a blocked record rewritten as shared
            db.execute(
                "update audit_entries set body = ?, decision = 'shared' where seq = ?",
                (body.replace(b'"blocked"', b'"shared"'), seq),
            )
    finally:
        db.close()
    tampered = as_summary(again)
    check_log(tampered)
    assert not tampered.verified and not tampered.ok
    assert "audit verification FAILED" in tampered.problems
    assert tampered.verification[0].startswith(f"FAIL icv-gateway/demo at seq {seq}")


@pytest.mark.integration
def test_demo_with_a_given_broker_delivers_what_it_counts(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    sub = Subscriber(mosquitto, topic="share/#")
    try:
        url = f"mqtt://demo-user:s3cret-pw@127.0.0.1:{mosquitto.port}"
        args = ("--duration", "4", "--vehicles", "6", "--broker", url, "--protocol", "5")
        proc, summary = run_demo(tmp_path, *args, "--workdir", str(tmp_path / "w"))
        check_against_store(summary)
        got = sub.wait_for(summary["views"], timeout=10)
    finally:
        sub.close()
    per_sub = Counter(topic.split("/")[1] for topic, _ in set(got))
    assert {s: n for s, n in summary["delivered"].items() if n} == dict(per_sub)
    assert "s3cret-pw" not in proc.stdout + proc.stderr + json.dumps(summary)
    assert summary["broker"] == f"mqtt://demo-user@127.0.0.1:{mosquitto.port} (MQTT 5)"
    audit_verify(tmp_path, summary)


def test_demo_policy_is_the_default_bundle_with_the_fleets_consents(tmp_path: Path) -> None:
    import numpy as np

    vins = random_vins(np.random.default_rng(3), 4)
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    target = write_demo_policy(tmp_path / "policy", vins, now)
    default = default_policy_dir()
    for name in BUNDLE_FILES:
        if name != "consents.yaml":
            assert (target / name).read_bytes() == (default / name).read_bytes(), name
    bundle = load_bundle(target)
    base = load_bundle(default)
    assert set(base.consents) <= set(bundle.consents)
    added = [c for c in bundle.consents if c not in base.consents]
    purposes = set(bundle.purposes)
    assert {(c.vin, c.purpose) for c in added} == {(v, p) for v in vins for p in purposes}
    assert all(c.active_at(now) for c in added)
    doc = yaml.safe_load((target / "consents.yaml").read_text(encoding="utf-8"))
    assert len(doc["consents"]) == len(base.consents) + len(vins) * len(purposes)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "5"], "3.1.1 only"),
        (["--broker", "mqtt://127.0.0.1:1"], "state the MQTT protocol"),
        (["--broker", "http://127.0.0.1:1", "--protocol", "5"], "mqtt://"),
        (["--protocol", "4"], "must be 5 or 3.1.1"),
        (["--rate", "0"], "(0, 100]"),
        (["--duration", "-1"], "(0, 30 days]"),
    ],
)
def test_demo_refuses_bad_options_before_starting_anything(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path / "w"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "w").exists()


def test_default_demo_feeds_every_subscriber_in_20_s_and_continues_in_time(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "w"
    proc, first = run_demo(tmp_path, "--duration", "20", "--seed", "7", "--workdir", str(workdir))
    check_against_store(first)
    # Vehicles are mid-trip at start: trip-start trimming (500 m at most, not weakened) has
    # released, so every subscriber receives views within the first 20 seconds.
    assert all(n > 0 for n in first["delivered"].values()), first["delivered"]
    assert set(first["held"]) == set(first["decisions"])
    assert "held: views waiting for trip trimming" in proc.stdout
    assert first["continued_from"] is None

    # The same fleet again in the same directory continues in time: new records, delivered.
    proc, again = run_demo(tmp_path, "--duration", "5", "--seed", "7", "--workdir", str(workdir))
    check_against_store(again)
    assert again["continued_from"] is not None
    assert again["duplicates"] * 10 < again["records"], again  # only the scenario's faults
    assert sum(again["delivered"].values()) > 0
    assert "fleet continued from the last run in this directory" in proc.stdout


def test_a_failing_demo_names_its_working_directory(tmp_path: Path) -> None:
    from gateway.testing import free_port

    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--duration", "2",
         "--broker", f"mqtt://127.0.0.1:{free_port()}", "--protocol", "5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    kept = [line for line in proc.stderr.splitlines() if "working directory kept: " in line]
    assert len(kept) == 1, proc.stderr
    directory = Path(kept[0].split("working directory kept: ")[1].split(" (log: ")[0])
    assert (directory / "demo.log").is_file()
    assert "Traceback" not in proc.stderr and "demo OK" not in proc.stdout
    shutil.rmtree(directory)


def test_demo_ok_only_when_views_were_delivered(tmp_path: Path) -> None:
    from gateway.demo import _check_demonstrated

    def summary(delivered: int, duplicates: int = 0, records: int = 10) -> Summary:
        return Summary(
            workdir=tmp_path, store="", keys=tmp_path, verifier=tmp_path, shard="s",
            broker="", seed=1, vehicles=1, seconds=1.0,
            totals=Totals(records=records, duplicates=duplicates),
            delivered={"a": delivered, "b": 0},
        )  # fmt: skip

    fine = summary(1)
    _check_demonstrated(fine)
    assert fine.ok
    nothing = summary(0)
    _check_demonstrated(nothing)
    assert nothing.problems == ["no view was delivered to any subscriber"]
    repeated = summary(0, duplicates=247, records=3)
    _check_demonstrated(repeated)
    assert repeated.problems == [
        "no view was delivered to any subscriber: 247 of 250 records were duplicates of "
        "records the store had already seen"
    ]


QUIET = "-s -o /dev/null --max-time 3 -w %{http_code}"


def _app_paths() -> set[str]:
    from gateway.api.app import ROUTERS

    return {getattr(r, "path", "") for router in ROUTERS for r in router.routes}


def test_the_demo_prints_curl_lines_that_work_while_it_runs(tmp_path: Path) -> None:
    """Each printed line, pasted into a shell as printed (curl told only to be quiet, stop
    after 3 s and print the status), is let in by the API: 200 on every route the app has
    (a route not built yet: 404, never 401 or 403). Then Ctrl-C: exit 130, demo OK."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--workdir", str(tmp_path / "w")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("  monitor: curl ") for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        api = next(line for line in lines if line.startswith("API: http://"))
        url = api.split()[1]
        curls = [line.split(": ", 1) for line in lines if " curl " in line]
        assert [who.strip() for who, _ in curls] == [
            *(f"subscriber {s}" for s in ("mapco-nav", "insureco-ubi", "sh-traffic", "oem-hq-de")),
            "auditor", "admin", "monitor",
        ]  # fmt: skip
        paths = _app_paths()
        for who, line in curls:
            path = line.strip().rsplit(url, 1)[1]
            quiet = line.strip().replace(
                "curl ", "curl -s -o /dev/null --max-time 3 -w %{http_code} ", 1
            )
            got = subprocess.run(["bash", "-c", quiet], capture_output=True, text=True, timeout=30)
            assert got.stdout == ("200" if path in paths else "404"), (who, line, got)
        assert any("/v1/policy" in line for _, line in curls)  # one route that exists today
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        assert proc.stdout is not None and proc.stderr is not None
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    out = "".join(lines)
    assert proc.returncode == 130, out + err
    assert out.rstrip().endswith("demo OK"), out
    assert f"API: {url} answered /healthz" in out


def test_a_demo_whose_api_port_is_taken_fails_saying_why(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "demo", "--duration", "2", "--vehicles", "3",
             "--api-port", str(port), "--workdir", str(tmp_path / "w")],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    log = tmp_path / "w" / "demo.log"
    assert f"icvgw demo: the API did not answer /healthz (its log: {log})" in proc.stderr
    assert f"API: not answering (its log: {log})" in proc.stdout
    text = log.read_text()
    assert f"error: the API cannot listen on 127.0.0.1:{port}: Address already in use" in text
    assert "the API process exited (status 1); not restarted" in text
    assert "audit verification: OK" in proc.stdout  # the rest of the run is as ever
