"""``icvgw run`` as a process: status lines, JSON logs, the stopped line, exit statuses
after real signals (130 after SIGINT, 0 after SIGTERM), no warning on a normal stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
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


def stop(proc: subprocess.Popen[str], sig: signal.Signals, after: float) -> str:
    try:
        time.sleep(after)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return err


@pytest.mark.integration
def test_sigint_exits_130_after_status_lines_in_json(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    proc = start(tmp_path, mosquitto, "--log-format", "json", "--status-every", "0.5")
    err = stop(proc, signal.SIGINT, after=6)
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
    err = stop(proc, signal.SIGTERM, after=5)
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
