"""The API child process's supervision, on stand-in children (small Python scripts) that
print a URL, die, or refuse to stop; and the command ``icvgw run`` would start.

``tests/cli/test_run.py`` runs the real thing beside a real pipeline."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from gateway.api.child import ApiChild, ApiCommand, api_command, describe_exit
from gateway.config import load_config

SERVE = "import time; print('http://127.0.0.1:1', flush=True); time.sleep(60)"


def child(script: str, **kwargs: object) -> ApiChild:
    return ApiChild(ApiCommand((sys.executable, "-c", script), {}), **kwargs)  # type: ignore[arg-type]


def test_the_url_it_prints_is_waited_for_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.api.child")
    api = child(SERVE)
    api.start()
    try:
        assert api.wait_listening(30) == "http://127.0.0.1:1"
        assert f"API on http://127.0.0.1:1 (pid {api.pid})" in caplog.messages
    finally:
        status = api.stop()
    assert status == -15  # SIGTERM, which this stand-in does not handle
    assert api.url is None and api.exits == []  # a stop asked for is no death


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + SERVE
    api = child(script, stop_timeout=0.5)
    api.start()
    assert api.wait_listening(30) is not None
    assert api.stop() == -9
    assert "the API process did not stop within 0.5 s; killed" in caplog.messages


def test_a_child_that_dies_is_restarted_with_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dies twice (exit 3), then serves: logged each time, waits doubling."""
    count = tmp_path / "starts"
    script = (
        f"import pathlib, sys, time; p = pathlib.Path({str(count)!r}); "
        "n = len(p.read_text()) if p.exists() else 0; p.write_text('x' * (n + 1)); "
        "sys.exit(3) if n < 2 else None; " + SERVE
    )
    api = child(script, backoff=(0.05, 1.0))
    api.start()
    try:
        assert api.wait_listening(30) == "http://127.0.0.1:1"  # the third one serves
    finally:
        api.stop()
    assert api.exits == [3, 3]
    died = [m for m in caplog.messages if m.startswith("the API process exited")]
    assert died == [
        "the API process exited (status 3); restarting it in 0.05 s",
        "the API process exited (status 3); restarting it in 0.1 s",
    ]


def test_without_restart_a_death_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    api = child("import sys; sys.exit(1)", restart=False)
    api.start()
    assert api.wait_listening(30) is None  # it ended without listening
    api.stop()
    assert api.exits == [1]
    assert "the API process exited (status 1); not restarted" in caplog.messages


def test_stopped_before_it_started_starts_nothing() -> None:
    api = child(SERVE)
    api.request_stop()
    api.start()
    assert api.pid is None and api.stop() is None


def test_describe_exit() -> None:
    assert describe_exit(1) == "status 1"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_the_command_carries_the_resolved_settings_in_its_environment(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text("broker: {protocol: '3.1.1'}\nkeys: k\napi: {port: 0}\n")
    cfg = load_config(
        tmp_path / "gw.yaml",
        overrides={("store",): "postgresql://u:secret@db/x", ("worker",): "w-2"},
        environ={},
    )
    command = api_command(
        cfg,
        config_file=tmp_path / "gw.yaml",
        log_format="json",
        environ={"ICVGW_POLICIES": "/elsewhere", "HOME": "/h"},
    )
    assert command is not None
    assert command.argv[1:] == (
        "-m", "gateway", "api", "--lifeline", "--log-level", "INFO", "--log-format", "json",
        "--config", str(tmp_path / "gw.yaml"),
    )  # fmt: skip
    assert not any("secret" in a for a in command.argv)  # a password never in ps
    env = command.env
    assert env["ICVGW_STORE"] == "postgresql://u:secret@db/x" and env["ICVGW_WORKER"] == "w-2"
    assert env["ICVGW_KEYS"] == str(tmp_path / "k") and env["ICVGW_BROKER_PROTOCOL"] == "3.1.1"
    assert "ICVGW_POLICIES" not in env  # the parent's bundle is the package's: so is the API's
    assert env["HOME"] == "/h"
    off = cfg.api.model_copy(update={"enabled": False})
    assert api_command(cfg.model_copy(update={"api": off}), config_file=None) is None


def test_a_process_that_cannot_be_started_again_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first process removes the program it runs, then dies: no second can start."""
    program = tmp_path / "python"
    program.symlink_to(sys.executable)
    script = f"import os; os.unlink({str(program)!r}); raise SystemExit(3)"
    api = ApiChild(ApiCommand((str(program), "-c", script), {}), backoff=(0.01, 0.01))
    api.start()
    assert api.wait_listening(30) is None  # returns once no process will follow
    api.stop()
    assert api.exits == [3]
    assert any(
        m.startswith("the API process could not be started again (") and m.endswith("giving up")
        for m in caplog.messages
    ), caplog.messages
