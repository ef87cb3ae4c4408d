"""``icvgw run`` as a process: status lines, JSON logs, the stopped line, exit statuses
after real signals (130 after SIGINT, 0 after SIGTERM), no warning on a normal stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.keys import init_keys
from gateway.testing import MosquittoBroker


def start(tmp_path: Path, broker: MosquittoBroker, *flags: str) -> subprocess.Popen[str]:
    init_keys(tmp_path / "keys")
    return subprocess.Popen(
        [
            sys.executable, "-m", "gateway", "run", "--broker", broker.url, "--protocol", "5",
            "--store", f"sqlite:///{tmp_path / 's.sqlite'}", "--keys", str(tmp_path / "keys"),
            *flags,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def stop(
    proc: subprocess.Popen[str], sig: signal.Signals, until: Callable[[list[str]], bool]
) -> str:
    """Send ``sig`` once the lines written so far satisfy ``until`` (not after a fixed sleep:
    a loaded machine starts the gateway slowly); its whole stderr."""
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not until(list(lines)) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        assert until(list(lines)), "".join(lines)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return "".join(lines)


def _statuses(lines: list[str]) -> int:
    return sum('"message": "status: ' in line or '"message":"status: ' in line for line in lines)


def _running(lines: list[str]) -> bool:
    return any(" running; store " in line for line in lines)


@pytest.mark.integration
def test_sigint_exits_130_after_status_lines_in_json(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    proc = start(tmp_path, mosquitto, "--log-format", "json", "--status-every", "0.5")
    err = stop(proc, signal.SIGINT, until=lambda lines: _statuses(lines) >= 2)
    assert proc.returncode == 130, err
    docs = [json.loads(line) for line in err.splitlines()]  # every line one JSON object
    messages = [d["message"] for d in docs]
    statuses = [m for m in messages if m.startswith("status: ")]
    assert len(statuses) >= 2, messages
    assert statuses[-1].endswith("outbox 0 pending; store ok; broker connected")
    assert messages[-1] == "stopped (Ctrl-C); final checkpoint written"
    assert {d["level"] for d in docs} == {"INFO"}, docs  # a normal stop warns of nothing


@pytest.mark.integration
def test_sigterm_exits_0_and_quiet_prints_no_status(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    proc = start(tmp_path, mosquitto, "--quiet", "--status-every", "0.5")
    err = stop(proc, signal.SIGTERM, until=lambda lines: _running(lines) and len(lines) > 0)
    assert proc.returncode == 0, err
    assert "status: " not in err
    assert " WARNING " not in err and "Traceback" not in err
    assert err.rstrip().endswith("stopped (SIGTERM); final checkpoint written")


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--log-format", "xml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--log-format" in proc.stderr
