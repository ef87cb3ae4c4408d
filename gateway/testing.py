"""Helpers for tests and benchmarks: a real Mosquitto broker on a free port, valid VINs.

The broker gets its own config and data directory — persistence with autosave, a large
offline queue, raised in-flight limits — so fault tests (restart, SIGKILL) and benchmarks
measure the gateway, not the broker's defaults.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gateway.config import GatewayConfig, load_config
from gateway.keys import init_keys
from gateway.policy.codes import vin_check_digit


def offline_config(root: Path, *, worker: str | None = None) -> GatewayConfig:
    """A gateway config for in-process tests: fresh keys in ``root/keys``, a SQLite store
    ``root/gw.sqlite``, the shipped policy, and a broker address that is never connected."""
    init_keys(root / "keys")
    overrides: dict[tuple[str, ...], object] = {
        ("broker", "url"): "mqtt://127.0.0.1:9",
        ("broker", "protocol"): "5",
        ("store",): f"sqlite:///{root / 'gw.sqlite'}",
        ("keys",): str(root / "keys"),
    }
    if worker is not None:
        overrides[("worker",)] = worker
    return load_config(None, overrides=overrides, environ={})


def make_vin(serial: int, prefix: str = "LSVAU2180N2") -> str:
    """A valid VIN (ISO 3779 alphabet, right check digit): ``prefix`` (11 characters, the
    check position included) then ``serial`` as six digits."""
    if len(prefix) != 11 or not 0 <= serial < 1_000_000:
        raise ValueError("a VIN is an 11-character prefix and a 6-digit serial")
    raw = f"{prefix}{serial:06d}"
    return raw[:8] + vin_check_digit(raw) + raw[9:]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None,
    )


class MosquittoBroker:
    """A Mosquitto process on 127.0.0.1:``port`` with persistence in its own directory.

    ``extra_config`` lines are appended to the generated config. ``stop()`` is a graceful
    stop (SIGTERM: the broker saves its state), ``kill()`` is SIGKILL (it loses what it had
    not saved), ``start()`` starts it again on the same port and data directory.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        extra_config: str = "",
        binary: str | None = None,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto binary not found (apt-get install mosquitto)")
        self.binary = found
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="icvgw-mosquitto-"))
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / "mosquitto.conf"

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    def _write_config(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # Started as root, Mosquitto drops to user 'mosquitto' and then cannot write a
            # directory it does not own: persistence would fail silently.
            "user root" if os.geteuid() == 0 else "",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "max_packet_size 1048576",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"log_dest file {self.log_path}",
            self.extra_config,
        ]
        self.config_path.write_text("\n".join(line for line in lines if line) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self._write_config()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM, the broker saves its persistent state."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: the broker loses what it had not saved."""
        self._signal(signal.SIGKILL, 5.0)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def close(self) -> None:
        """Stop the broker and remove its directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
