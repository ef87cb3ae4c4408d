"""``icvgw run`` as a process: status lines, JSON logs, the stopped line, exit statuses
after real signals (130 after SIGINT, 0 after SIGTERM), no warning on a normal stop; the
HTTP API in a child process beside it (started, restarted, stopped with it whatever the
exit path, or not started at all)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from gateway.keys import init_keys
from gateway.testing import MosquittoBroker, free_port


def start(
    tmp_path: Path, broker: MosquittoBroker, *flags: str, api: str = "{port: 0}"
) -> subprocess.Popen[str]:
    """``icvgw run`` with a config file whose ``api:`` section is ``api`` (by default the
    API on a free port) and the pipeline's metrics on a free port: tests running beside
    each other never contend for 8080 or 9464."""
    init_keys(tmp_path / "keys")
    (tmp_path / "gw.yaml").write_text(
        f"broker: {{protocol: '5'}}\napi: {api}\nmetrics: {{port: {free_port()}}}\n"
    )
    return subprocess.Popen(
        [
            sys.executable, "-m", "gateway", "run", "--config", str(tmp_path / "gw.yaml"),
            "--broker", broker.url, "--protocol", "5",
            "--store", f"sqlite:///{tmp_path / 's.sqlite'}", "--keys", str(tmp_path / "keys"),
            *flags,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


class Watched:
    """A running ``icvgw run``, its stderr read line by line as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(proc.stderr or ()), daemon=True
        )
        self._reader.start()

    def wait(self, until: Callable[[list[str]], bool]) -> list[str]:
        """Poll until the lines so far satisfy ``until`` (not a fixed sleep: a loaded
        machine starts the gateway slowly); the process must not end meanwhile."""
        deadline = time.monotonic() + 120
        while not until(list(self.lines)) and time.monotonic() < deadline:
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        assert until(list(self.lines)), "".join(self.lines)
        return list(self.lines)

    def end(self, sig: signal.Signals) -> str:
        """Send ``sig``, wait for the exit; the whole stderr."""
        proc = self.proc
        try:
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._reader.join(timeout=10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        return "".join(self.lines)


def stop(
    proc: subprocess.Popen[str], sig: signal.Signals, until: Callable[[list[str]], bool]
) -> str:
    """Send ``sig`` once the lines written so far satisfy ``until``; its whole stderr."""
    watched = Watched(proc)
    try:
        watched.wait(until)
    finally:
        err = watched.end(sig)
    return err


def _statuses(lines: list[str]) -> int:
    return sum('"message": "status: ' in line or '"message":"status: ' in line for line in lines)


def _text_statuses(lines: list[str]) -> int:
    return sum(" status: " in line for line in lines)


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


def run_failing(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    init_keys(tmp_path / "keys")
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--keys", str(tmp_path / "keys"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_config_with_two_errors_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("brokr: 1\ncheckpoint:\n  every_seconds: abc\n")
    proc = run_failing(tmp_path, "--config", "bad.yaml")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("icvgw run: bad.yaml:")
    assert "brokr: unknown field" in lines[0] and "checkpoint.every_seconds" in lines[0]


def test_with_json_logs_a_failure_is_json_too(tmp_path: Path) -> None:
    """A log shipper reading stderr gets only JSON objects, the failure included."""
    proc = run_failing(
        tmp_path, "--broker", "mqtt://127.0.0.1:1883", "--protocol", "5",
        "--store", "sqlite:///missing/dir/s.db", "--log-format", "json",
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    last = records[-1]
    assert last["level"] == "ERROR" and last["message"].startswith("icvgw run: ")
    assert "missing/dir/s.db" in last["message"]


@pytest.mark.integration
def test_no_status_line_once_stopping(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """Status lines stop at the signal: a normal stop never logs 'broker DISCONNECTED'
    (the ingest's own disconnect while the gateway drains)."""
    proc = start(tmp_path, mosquitto, "--status-every", "0.1")
    err = stop(proc, signal.SIGINT, until=lambda lines: _text_statuses(lines) >= 5)
    assert proc.returncode == 130, err
    lines = err.splitlines()
    assert lines[-1].endswith("stopped (Ctrl-C); final checkpoint written"), err
    statuses = [line for line in lines if " status: " in line]
    assert len(statuses) >= 5, err
    assert all(s.endswith("broker connected") for s in statuses), err


# -- the HTTP API beside the pipeline --------------------------------------------------------

_API_ON = re.compile(r"API on (https?://\S+) \(pid (\d+)\)")


def api_on(lines: list[str]) -> list[tuple[str, int]]:
    """(URL, pid) of every API process run said listens, in order."""
    found = (_API_ON.search(line) for line in lines)
    return [(m.group(1), int(m.group(2))) for m in found if m is not None]


def api_children(pid: int) -> list[int]:
    """The processes ``pid`` started that run ``python -m gateway api`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"gateway" in cmdline and b"api" in cmdline:
                found.append(int(child))
    return found


def gone(pid: int, timeout: float = 30.0) -> bool:
    """True once ``pid`` has ended (or is a zombie nobody reaped), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def healthz(url: str) -> httpx2.Response:
    return httpx2.get(f"{url}/healthz", timeout=10)


@pytest.mark.integration
def test_the_api_serves_beside_the_pipeline_and_stops_with_it(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    watched = Watched(start(tmp_path, mosquitto, "--quiet"))
    try:
        lines = watched.wait(lambda lines: _running(lines) and bool(api_on(lines)))
        [(url, pid)] = api_on(lines)
        assert api_children(watched.proc.pid) == [pid]  # a process of its own, not a thread
        assert healthz(url).json() == {"status": "ok"}
    finally:
        err = watched.end(signal.SIGTERM)
    assert watched.proc.returncode == 0, err
    assert gone(pid), err
    lines = err.splitlines()
    assert lines[-1].endswith("stopped (SIGTERM); final checkpoint written"), err
    assert any("Finished server process" in line for line in lines[:-1]), err
    assert " WARNING " not in err and " ERROR " not in err and "Traceback" not in err, err


@pytest.mark.integration
@pytest.mark.parametrize("how", ["--no-api", "api.enabled: false"])
def test_no_api_process_when_disabled(tmp_path: Path, mosquitto: MosquittoBroker, how: str) -> None:
    flags, api = (["--no-api"], "{port: 0}") if how == "--no-api" else ([], "{enabled: false}")
    watched = Watched(start(tmp_path, mosquitto, "--quiet", *flags, api=api))
    try:
        watched.wait(_running)  # the API process, if any, is started before the pipeline
        assert api_children(watched.proc.pid) == []
    finally:
        err = watched.end(signal.SIGTERM)
    assert watched.proc.returncode == 0, err
    assert "API" not in err and "uvicorn" not in err, err


@pytest.mark.integration
def test_a_port_in_use_is_one_line_then_retried_until_free(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    refused = f"error: the API cannot listen on 127.0.0.1:{port}: Address already in use"
    watched = Watched(start(tmp_path, mosquitto, "--quiet", api=f"{{port: {port}}}"))
    try:
        lines = watched.wait(lambda lines: any("restarting it in 1 s" in x for x in lines))
        assert refused + "\n" in lines, lines  # the child's line, whole
        said = next(x for x in lines if "restarting it in 1 s" in x)
        assert "ERROR gateway.api.child: the API process exited (status 1)" in said
        assert _running(watched.wait(_running))  # the pipeline runs regardless
        holder.close()
        lines = watched.wait(lambda lines: bool(api_on(lines)))
        [(url, _pid)] = api_on(lines)
        assert url == f"http://127.0.0.1:{port}"
        assert healthz(url).status_code == 200
    finally:
        holder.close()
        err = watched.end(signal.SIGTERM)
    assert watched.proc.returncode == 0, err


@pytest.mark.integration
def test_an_api_process_that_dies_is_logged_and_started_again(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    watched = Watched(start(tmp_path, mosquitto, "--quiet"))
    try:
        [(_url, first)] = api_on(watched.wait(lambda lines: bool(api_on(lines))))
        os.kill(first, signal.SIGKILL)
        lines = watched.wait(lambda lines: len(api_on(lines)) == 2)
        assert any(
            "the API process exited (killed by SIGKILL); restarting it in 1 s" in x for x in lines
        ), lines
        url, second = api_on(lines)[1]
        assert second != first and healthz(url).status_code == 200
    finally:
        err = watched.end(signal.SIGINT)
    assert watched.proc.returncode == 130, err
    assert gone(second), err


@pytest.mark.integration
def test_the_api_process_ends_when_run_is_killed(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    """SIGKILL gives run no chance to stop its child: the child sees its lifeline (its
    standard input, a pipe from run) close, and stops by itself."""
    watched = Watched(start(tmp_path, mosquitto, "--quiet"))
    try:
        [(url, pid)] = api_on(watched.wait(lambda lines: bool(api_on(lines))))
        assert healthz(url).status_code == 200
    finally:
        err = watched.end(signal.SIGKILL)
    assert watched.proc.returncode == -signal.SIGKILL
    assert gone(pid), err
