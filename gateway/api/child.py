"""The HTTP API as a child process of ``icvgw run`` and ``icvgw demo``.

Why a process and not a thread: a CPU-busy thread in the pipeline's process was measured to
halve the pipeline (the GIL), so the API is ``python -m gateway api`` on the same settings
(the same store, key directory, policy and worker), started beside the pipeline.

The child's life, whatever the parent's exit path:

* it is started in a session of its own, so a Ctrl-C at the terminal reaches only the
  parent, which decides: :meth:`ApiChild.stop` sends SIGTERM, waits, then kills;
* its standard input is a pipe the parent never writes to (``icvgw api --lifeline``): when
  the parent ends in any way, SIGKILL included, the pipe closes and the child stops itself;
* it prints the URL it serves on standard output once it listens (port 0 picks a free
  port), which the parent logs; everything else it says goes to the parent's stderr as is;
* a child that dies unasked is logged with its exit status and started again after a
  back-off (1 s doubling to 60 s, back to 1 s once a child has run for 60 s); the pipeline
  is not affected. A port already in use is the child's one-line error, then that log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gateway.config import GatewayConfig

__all__ = ["ApiChild", "ApiCommand", "api_command"]

log = logging.getLogger("gateway.api.child")

STOP_TIMEOUT_S = 10.0
"""How long a stopping API process gets after SIGTERM before it is killed (uvicorn ends
open streams after 5 s)."""
_BACKOFF_S = (1.0, 60.0)
_STEADY_S = 60.0


@dataclass(frozen=True)
class ApiCommand:
    """How to start the API process: its command line and environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


def api_command(
    cfg: GatewayConfig,
    *,
    config_file: Path | None,
    log_level: str = "INFO",
    log_format: str = "text",
    environ: Mapping[str, str] | None = None,
) -> ApiCommand | None:
    """The API process for a pipeline on ``cfg`` (loaded from ``config_file``, if any);
    None when ``api.enabled`` is false.

    The settings the environment can carry go as ``ICVGW_*`` variables holding ``cfg``'s
    resolved values (flags of the parent included; never on the command line, where a
    store URL's password would show in ``ps``); the rest (``api``, ``metrics``) comes from
    the same config file.
    """
    if not cfg.api.enabled:
        return None
    env = dict(os.environ if environ is None else environ)
    resolved = {
        "ICVGW_WORKER": cfg.worker,
        "ICVGW_STORE": cfg.store,
        "ICVGW_KEYS": cfg.keys,
        "ICVGW_POLICIES": cfg.policies,
        "ICVGW_BROKER_URL": cfg.broker.url,
        "ICVGW_BROKER_PROTOCOL": cfg.broker.protocol,
    }
    for name, value in resolved.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    argv = [sys.executable, "-m", "gateway", "api", "--lifeline"]
    argv += ["--log-level", log_level, "--log-format", log_format]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    return ApiCommand(tuple(argv), env)


class ApiChild:
    """One API process at a time, watched from a thread: restarted when it dies unasked
    (unless ``restart`` is False), stopped by :meth:`stop`."""

    def __init__(
        self,
        command: ApiCommand,
        *,
        restart: bool = True,
        stop_timeout: float = STOP_TIMEOUT_S,
        backoff: tuple[float, float] = _BACKOFF_S,
        stderr: Path | None = None,
    ) -> None:
        self.command = command
        self.stderr = stderr
        """Where the process writes its log (appended); None: this process's stderr."""
        self.restart = restart
        self.stop_timeout = stop_timeout
        self.backoff = backoff
        self.url: str | None = None
        """The URL the current process serves, once it listens (None before, and after it
        died)."""
        self.exits: list[int] = []
        """Exit statuses of processes that ended unasked (negative: killed by that signal)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._done = threading.Event()  # the watcher has returned: no process will follow

    @property
    def pid(self) -> int | None:
        """The current process's id, if one was started."""
        proc = self._proc
        return None if proc is None else proc.pid

    def start(self) -> None:
        """Start the process and its watcher; returns at once (see :meth:`wait_listening`)."""
        proc = self._spawn()
        self._watcher = threading.Thread(
            target=self._watch, args=(proc,), name="icvgw-api-watch", daemon=True
        )
        self._watcher.start()

    def wait_listening(self, timeout: float) -> str | None:
        """The URL once a process listens; None if none has within ``timeout`` seconds or
        none will (stopped, or ended and not restarted)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.url is None and not self._done.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.2))
            return self.url

    def request_stop(self) -> None:
        """SIGTERM to the current process, no restart after; returns at once (safe in a
        signal handler: takes no lock)."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """Stop for good: SIGTERM, wait ``stop_timeout`` seconds, then SIGKILL; the last
        process's exit status (None if none was started)."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None:
            self._done.set()
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("the API process did not stop within %g s; killed", self.stop_timeout)
                proc.kill()
                proc.wait()
        if self._watcher is not None:
            self._watcher.join(self.stop_timeout)
        _close(proc.stdin)
        return proc.returncode

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            with contextlib.ExitStack() as stack:
                err = None if self.stderr is None else stack.enter_context(self.stderr.open("ab"))
                self._proc = subprocess.Popen(
                    self.command.argv,
                    env=dict(self.command.env),
                    stdin=subprocess.PIPE,  # the lifeline: closed when this process ends
                    stdout=subprocess.PIPE,  # the URL, once listening
                    stderr=err,
                    start_new_session=True,  # a terminal's Ctrl-C reaches the parent only
                )
            return self._proc

    def _watch(self, proc: subprocess.Popen[bytes] | None) -> None:
        try:
            self._supervise(proc)
        finally:
            self._done.set()
            with self._changed:
                self._changed.notify_all()

    def _supervise(self, proc: subprocess.Popen[bytes] | None) -> None:
        delay = self.backoff[0]
        while proc is not None:
            started = time.monotonic()
            self._follow(proc)
            status = proc.wait()
            with self._changed:
                self.url = None
                self._changed.notify_all()
            if self._stopping.is_set():
                return
            self.exits.append(status)
            if time.monotonic() - started >= _STEADY_S:
                delay = self.backoff[0]
            if not self.restart:
                log.error("the API process exited (%s); not restarted", describe_exit(status))
                return
            log.error(
                "the API process exited (%s); restarting it in %g s", describe_exit(status), delay
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.backoff[1])
            _close(proc.stdin)
            try:
                proc = self._spawn()
            except OSError as exc:  # no process can be made (out of memory, of pids)
                log.error("the API process could not be started again (%s); giving up", exc)
                return

    def _follow(self, proc: subprocess.Popen[bytes]) -> None:
        """Read the process's stdout until it ends: its first line is the URL it serves."""
        assert proc.stdout is not None
        with proc.stdout as out:
            for raw in out:
                line = raw.decode("utf-8", "replace").strip()
                if self.url is None and line.startswith(("http://", "https://")):
                    log.info("API on %s (pid %d)", line, proc.pid)
                    with self._changed:
                        self.url = line
                        self._changed.notify_all()


def describe_exit(status: int) -> str:
    """An exit status in words: ``status 1``, or ``killed by SIGKILL``."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"status {status}"


def _close(pipe: IO[bytes] | None) -> None:
    if pipe is not None:
        with contextlib.suppress(OSError):  # a broken pipe to a dead child
            pipe.close()
