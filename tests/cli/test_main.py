"""The ``icvgw`` program as a whole: every command ends a bad invocation with one line naming
the value and the reason, a non-zero status and no traceback; help shows flags as flags."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.keys import init_keys
from gateway.store import open_store
from gateway.testing import make_vin

VIN = make_vin(183294)
EXPIRES = "2030-01-01T00:00:00+08:00"
LATE = "9999-12-31T23:59:59-12:00"  # a valid ISO 8601 time whose UTC instant is in year 10000
HUGE = str(2**64)  # beyond any integer a store column holds

# Every command of icvgw, with invocations that must fail. ``{t}`` is a scratch directory
# holding ``keys/`` (a key directory), ``s.db`` (a store), ``file`` (a plain file) and
# ``bad.csv`` (a consent file with a bad row); ``missing/`` does not exist. Each invocation
# comes with the text its one line of error must contain (the value it names).
CASES: dict[str, list[tuple[list[str], str]]] = {
    "api": [
        (["--port", "99999"], "less than or equal to 65535"),
        (["--config", "{t}/missing/gateway.yaml"], "{t}/missing/gateway.yaml"),
        (["--store", "sqlite:///{t}/missing/s.db", "--keys", "{t}/keys"], "{t}/missing/s.db"),
    ],
    "apikey create": [
        (["--store", "{s}", "--role", "root"], "'root' is not one of subscriber"),
        (["--store", "{s}", "--role", "subscriber"], "--subscriber"),
        (["--store", "{s}", "--role", "admin", "--subscriber", "sh-traffic"], "--subscriber"),
        (["--store", "{s}", "--role", "subscriber", "--subscriber", "nobody"], "'nobody'"),
    ],
    "apikey list": [(["--store", "sqlite:///{t}/missing/s.db"], "{t}/missing/s.db")],
    "apikey revoke": [(["--store", "{s}", "feedfeedfeed"], "feedfeedfeed")],
    "simulate": [
        (["--broker", "mqtt://127.0.0.1:99999"], "'99999'"),
        (["--broker", "mqtt://127.0.0.1:abc"], "'abc'"),
        (["--broker", "http://127.0.0.1"], "'http://127.0.0.1'"),
        (["--broker", "mqtt://"], "no host"),
        (["--dry-run", "--duration", "1", "--vins-out", "{t}/missing/v.json"], "{t}/missing"),
        (["--dry-run", "--duration", "1", "--vins-out", "{t}/file/v.json"], "not a directory"),
    ],
    "run": [
        (["--protocol", "5", "--broker", "mqtt://127.0.0.1:99999"], "'99999'"),
        (["--protocol", "5", "--broker", "mqtt://127.0.0.1:abc"], "'abc'"),
        (["--protocol", "5", "--broker", "tcp://127.0.0.1:1883"], "mqtt://"),
        (["--config", "{t}/missing/gateway.yaml"], "{t}/missing/gateway.yaml"),
    ],
    "demo": [
        (["--protocol", "5", "--broker", "mqtt://127.0.0.1:99999"], "'99999'"),
        (["--protocol", "5", "--broker", "mqtt://127.0.0.1:abc"], "'abc'"),
        (["--protocol", "5", "--broker", "mqtt://"], "no host"),
    ],
    "audit verify": [
        (["--store", "{s}", "--public-key", "{t}/missing.vkeys"], "{t}/missing.vkeys"),
        (["--export", "{t}/missing.jsonl", "--public-key", "{t}/file"], "{t}/missing.jsonl"),
        (["--export", "{t}", "--public-key", "{t}/file"], "is a directory"),
    ],
    "audit export": [
        (["--store", "{s}", "--out", "{t}/missing/log.jsonl"], "{t}/missing"),
        (["--store", "{s}", "--out", "{t}/file/log.jsonl"], "not a directory"),
    ],
    "audit query": [
        (["--store", "{s}", "--decision", "typo"], "'typo' is not one of shared"),
        (["--store", "{s}", "--kind", "typo"], "'typo' is not one of decision, admin"),
        (["--store", "{s}", "--format", "xml"], "'xml' is not one of table"),
        (["--store", "sqlite:///{t}/missing/s.db"], "{t}/missing/s.db"),
        (["--store", "{s}", "--limit", HUGE], "--limit"),
    ],
    "audit proof": [
        (["--store", "{s}", "1", "--out", "{t}/missing/p.json"], "{t}/missing"),
        (["--store", "{s}", "1", "--out", "{t}"], "is a directory"),
    ],
    "audit check-proof": [
        (["{t}/missing.json", "--public-key", "{t}/file"], "{t}/file"),
        (["{t}/file", "--public-key", "{t}/missing.vkeys"], "{t}/missing.vkeys"),
    ],
    "audit checkpoint": [
        (["--store", "{s}", "--keys", "{t}/missing", "--shard", "x"], "{t}/missing"),
    ],
    "audit prune": [
        (["--store", "{s}", "--keys", "{t}/keys", "--shard", "x", "--retention-days", "1"], "1"),
    ],
    "keys init": [
        (["--out", "{t}/missing/keys"], "{t}/missing/keys"),
        (["--out", "{t}/file/keys"], "{t}/file/keys"),
        (["--out", "{t}/keys"], "already holds keys"),
    ],
    "keys rotate": [(["--dir", "{t}/missing"], "{t}/missing")],
    "keys public": [
        (["--dir", "{t}/keys", "--origin", "o", "--out", "{t}/missing/o.vkeys"], "{t}/missing"),
    ],
    "keys list": [(["--dir", "{t}/missing"], "{t}/missing")],
    "policy check": [(["--policies", "{t}/missing"], "{t}/missing")],
    "policy show": [(["-p", "{t}/missing"], "{t}/missing")],
    "policy schema": [(["nobody"], "'nobody'")],
    "policy explain": [(["{t}/missing.json"], "{t}/missing.json")],
    "consent grant": [
        (["--vin", "x", "--purpose", "traffic-management", "--expires", EXPIRES], "'x'"),
        (["--vin", VIN, "--purpose", "nope", "--expires", EXPIRES], "'nope'"),
        (["--vin", VIN, "--purpose", "traffic-management", "--expires", "2030"], "'2030'"),
        (["--vin", VIN, "--purpose", "traffic-management", "--expires", LATE], LATE),
    ],
    "consent import": [
        (["{t}/bad.csv"], "{t}/bad.csv:3"),
        (["{t}/missing.csv"], "{t}/missing.csv"),
        (["{t}/late.csv"], "{t}/late.csv:2"),
    ],
    "consent withdraw": [(["c-none"], "c-none")],
    "consent list": [(["--keys", "{t}/missing", "--vin", VIN], "{t}/missing")],
    "deadletter list": [
        (["--store", "sqlite:///{t}/missing/s.db"], "{t}/missing/s.db"),
        (["--store", "{s}", "--limit", HUGE], "--limit"),
        (["--store", "{s}", "--before", HUGE], "--before"),
    ],
    "deadletter show": [
        (["--keys", "{t}/keys", "7", "--out", "{t}/missing/x"], "{t}/missing"),
        (["--keys", "{t}/keys", HUGE], "seq"),
    ],
    "vehicle erase": [(["--keys", "{t}/keys", "--vin", "x"], "not a VIN")],
    "webhook secret": [
        (["--keys", "{t}/keys", "--subscriber", "nobody"], "'nobody'"),
        (["--keys", "{t}/missing", "--subscriber", "sh-traffic"], "{t}/missing"),
        (["--keys", "{t}/keys"], "--subscriber"),
    ],
}
# The store (and key directory) the consent, dead-letter and vehicle cases do not repeat.
EXTRA = {
    "consent grant": ["--store", "{s}", "--keys", "{t}/keys"],
    "consent import": ["--store", "{s}", "--keys", "{t}/keys"],
    "consent withdraw": ["--store", "{s}"],
    "consent list": ["--store", "{s}"],
    "deadletter show": ["--store", "{s}"],
    "vehicle erase": ["--store", "{s}"],
}


def _leaves(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    subs = getattr(command, "commands", None)
    if not subs:
        yield path
        return
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


def _commands() -> list[str]:
    return sorted(" ".join(p) for p in _leaves(typer.main.get_command(app)))


def test_every_command_has_a_bad_arguments_case() -> None:
    """A new command without a case here fails this test."""
    assert _commands() == sorted(CASES)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = tmp_path_factory.mktemp("cli")
    init_keys(t / "keys")
    with open_store(f"sqlite:///{t / 's.db'}", shard="icvgw.test/w1"):
        pass
    (t / "file").write_text("not a directory\n")
    (t / "late.csv").write_text(f"vin,purpose,expires\n{VIN},traffic-management,{LATE}\n")
    (t / "bad.csv").write_text(
        f"vin,purpose,expires\n{VIN},traffic-management,{EXPIRES}\n{VIN},nope,{EXPIRES}\n"
    )
    return t


def _args(command: str, args: list[str], t: Path) -> list[str]:
    store = f"sqlite:///{t / 's.db'}"
    given = [*args, *EXTRA.get(command, [])]
    return [*command.split(), *(a.replace("{t}", str(t)).replace("{s}", store) for a in given)]


def _assert_one_line(code: int, stdout: str, stderr: str, expected: str) -> None:
    assert code != 0, stdout
    assert "Traceback" not in stdout + stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [(c, a, e) for c, cases in CASES.items() for a, e in cases],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_bad_invocation_is_one_line_and_a_non_zero_status(
    command: str, args: list[str], expected: str, scratch: Path
) -> None:
    argv = _args(command, args, scratch)
    result = CliRunner().invoke(app, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    _assert_one_line(
        result.exit_code, result.stdout, result.stderr, expected.replace("{t}", str(scratch))
    )


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ("simulate", ["--broker", "mqtt://127.0.0.1:99999"], "'99999'"),
        ("run", ["--protocol", "5", "--broker", "mqtt://127.0.0.1:abc"], "'abc'"),
        ("demo", ["--protocol", "5", "--broker", "mqtt://127.0.0.1:99999"], "'99999'"),
        ("keys init", ["--out", "{t}/missing/keys"], "{t}/missing/keys"),
        ("audit export", ["--store", "{s}", "--out", "{t}/missing/log.jsonl"], "{t}/missing"),
        ("audit query", ["--store", "{s}", "--decision", "typo"], "'typo'"),
        ("consent grant", ["--vin", "x", "--purpose", "p", "--expires", EXPIRES], "'x'"),
    ],
)
def test_the_real_entry_point_fails_in_one_line(
    command: str, args: list[str], expected: str, scratch: Path
) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    env.pop("ICVGW_BROKER_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *_args(command, args, scratch)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=scratch,
    )
    _assert_one_line(
        done.returncode, done.stdout, done.stderr, expected.replace("{t}", str(scratch))
    )
    assert done.returncode == 2


def test_help_shows_flags_without_a_value() -> None:
    """Typer shows a flag as ``--dry-run <bool>``, as if it took a value; ours do not."""
    runner = CliRunner()
    for command in ["", *_commands()]:
        result = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (command, result.output)
        assert "<bool>" not in result.output, (command, result.output)
    simulate = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"}).output
    dry_run = next(line.split() for line in simulate.splitlines() if " --dry-run " in line)
    assert dry_run[1:3] == ["--dry-run", "Generate"], dry_run  # no value between them
    result = runner.invoke(app, ["simulate", "--dry-run", "--duration", "1"])
    assert result.exit_code == 0, result.output


def test_every_option_and_argument_has_a_description() -> None:
    root = typer.main.get_command(app)
    missing = []
    for path in _leaves(root):
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        missing += [
            f"{' '.join(path)} {p.name}"
            for p in command.params
            if not getattr(p, "hidden", False) and not getattr(p, "help", None)
        ]
    assert missing == []


def test_the_consent_group_names_each_of_its_commands() -> None:
    """``icvgw --help`` is where a newcomer looks for ``consent import``."""
    consent = typer.main.get_command(app).commands["consent"]  # type: ignore[attr-defined]
    for name in consent.commands:
        assert name in (consent.help or ""), (name, consent.help)
