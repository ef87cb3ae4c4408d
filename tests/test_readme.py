"""Every command block of README.md, run as typed: the README cannot drift from the code.

Each line of every ```sh block is run with ``bash`` in the order of the README, in one
directory that stands for the repository root (it holds a copy of ``deploy/`` and
``simulators/scenarios/``), with ``icvgw`` of this environment on ``PATH``. The only
substitutions, both documented in the README: the broker is the test's Mosquitto, given as
``ICVGW_BROKER_URL`` (how the README says to point the gateway at another broker), and the
directory is a temporary one. ``record.json`` (which the README says is one message as a
vehicle publishes it) is written by the test.

A third substitution keeps this test off ports other runs may hold: the copy of
``deploy/gateway.yaml`` gives the API and the pipeline's metrics free ports, and
``127.0.0.1:8080`` (the API's address in that file) in a command line becomes the API's.

Three kinds of line are not simply run and expected to exit 0:

* the install commands (``pip install . && icvgw demo``, ``python -m pip install -e … &&
  python -m pytest``): nothing is installed and pytest is not run recursively; the demo part
  runs, is stopped with Ctrl-C (SIGINT) once it has worked for a while, and must exit 130
  with "demo OK";
* ``icvgw run --config deploy/gateway.yaml``: started, fed by the simulator while it runs
  (the traffic the later blocks query: dead letters, more than 1234 entries), then stopped
  with SIGINT: it must print its "stopped" line and exit 130, with no warning;
* nothing else: a new line that fails, or a new kind of block, fails this test.

A ``sh`` block whose first line is :data:`LIVE` needs the gateway running: ``icvgw run
--config deploy/gateway.yaml`` is started for it (and the blocks right after it of the same
kind), with a simulated fleet publishing meanwhile, and the block runs as one ``bash``
script (``set -euo pipefail``: its variables carry from line to line, as in a shell); then
the gateway is stopped with SIGINT and must say so and exit 130. A ``python`` block (the
webhook receiver's check) is run on the Standard Webhooks example and on tampered copies of
it; a ``yaml`` block is a part of a config file (``api:``) or of a subscriber
(``delivery:``) and must validate as one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.store import open_store
from gateway.testing import MosquittoBroker, free_port, make_vin

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
INSTALL_AND_DEMO = "pip install . && icvgw demo"
INSTALL_AND_TEST = "python -m pip install -e '.[test,postgres]' && python -m pytest"
RUN = "icvgw run --config deploy/gateway.yaml"
SHARD = "icv-gateway/gw-1"
LIVE = "# with icvgw run --config deploy/gateway.yaml running, in another shell:"
API = "127.0.0.1:8080"


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def commands(body: str) -> Iterator[str]:
    """The command lines of a block: continuations joined, comments and blanks skipped."""
    for line in body.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield line.strip()


def without_comment(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line).strip()


def test_every_fenced_block_is_a_sh_block_or_the_layout() -> None:
    blocks = fenced_blocks(README.read_text(encoding="utf-8"))
    assert len([b for lang, b in blocks if lang == "sh"]) >= 6
    for lang, body in blocks:
        if lang not in ("sh", "python", "yaml"):  # only the layout listing is plain
            assert lang == "" and body.startswith("gateway/"), (lang, body)


def test_the_webhook_check_accepts_the_spec_example_and_nothing_altered() -> None:
    """The Standard Webhooks specification's example request, then changed copies."""
    [body] = [
        b for lang, b in fenced_blocks(README.read_text(encoding="utf-8")) if lang == "python"
    ]
    scope: dict[str, Any] = {}
    exec(compile(body, "README.md", "exec"), scope)  # the README's own snippet
    verify = scope["verify"]
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body_sent = b'{"test": 2432232314}'
    at = 1614265330
    assert verify(secret, headers, body_sent, now=at) is True
    rotating = {**headers, "webhook-signature": "v1,Zm9v " + headers["webhook-signature"]}
    assert verify(secret, rotating, body_sent, now=at) is True  # one of several matches
    assert verify(secret, headers, b'{"test": 2432232315}', now=at) is False
    assert verify(secret, {**headers, "webhook-id": "msg_other"}, body_sent, now=at) is False
    assert verify("whsec_" + "A" * 32, headers, body_sent, now=at) is False
    assert verify(secret, headers, body_sent, now=at + 301) is False  # a replay, too late
    assert verify(secret, headers, body_sent, now=at - 301) is False


def test_every_yaml_block_validates(tmp_path: Path) -> None:
    from gateway.config import load_config
    from gateway.policy.schema import Delivery

    blocks = [b for lang, b in fenced_blocks(README.read_text(encoding="utf-8")) if lang == "yaml"]
    assert blocks
    for body in blocks:
        doc = yaml.safe_load(body)
        if set(doc) == {"delivery"}:
            Delivery.model_validate(doc["delivery"])
        else:
            assert set(doc) == {"api"}, body
            (tmp_path / "gw.yaml").write_text("broker: {protocol: '5'}\n" + body)
            assert load_config(tmp_path / "gw.yaml", environ={}).api.port == doc["api"]["port"]


def test_the_install_command_names_extras_that_exist() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert {"test", "postgres"} <= set(project["optional-dependencies"])
    assert "icvgw" in project["scripts"]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory laid out like the repository root, for what the README names."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(ROOT / "deploy", root / "deploy")
    config = root / "deploy" / "gateway.yaml"
    text = config.read_text(encoding="utf-8")
    assert f"port: {API.split(':')[1]} " in text and "port: 9464\n" in text
    text = text.replace(f"port: {API.split(':')[1]} ", f"port: {free_port()} ", 1)
    config.write_text(text.replace("port: 9464\n", f"port: {free_port()}\n", 1), "utf-8")
    shutil.copytree(ROOT / "simulators" / "scenarios", root / "simulators" / "scenarios")
    vin, now = make_vin(1), time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    record = {  # the payload format of simulators/README.md
        "Vehicle.VehicleIdentification.VIN": vin,
        "Vehicle.CurrentLocation.Timestamp": now,
        "Vehicle.CurrentLocation.Latitude": 31.2306638,
        "Vehicle.CurrentLocation.Longitude": 121.4695091,
        "Vehicle.Speed": 36.74,
        "msg_id": f"{vin}-0",
    }
    (root / "record.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    return root


def env_for(broker: MosquittoBroker) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ICVGW_BROKER_URL"] = broker.url
    env.pop("ICVGW_STORE", None)
    env.pop("ICVGW_KEYS", None)
    env["COLUMNS"] = "200"
    return env


def api_address(cwd: Path) -> str:
    """host:port of the API in the checkout's deploy/gateway.yaml."""
    api = yaml.safe_load((cwd / "deploy" / "gateway.yaml").read_text(encoding="utf-8"))["api"]
    return f"{api['host']}:{api['port']}"


def run_line(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    line = line.replace(API, api_address(cwd))
    proc = subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def feed(cwd: Path, env: dict[str, str], broker: MosquittoBroker) -> None:
    """Traffic for the later blocks: 60 malformed messages first (dead letters from the
    first seqs after the start's admin entries), then a messy simulated fleet."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for i in range(60):
        topic = f"vehicles/{make_vin(2)}/telemetry"
        client.publish(topic, b"not json %d" % i, qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    run_line(
        f"icvgw simulate --broker {broker.url} --vehicles 20 --duration 40 --speedup 0 "
        "--seed 3 --scenario simulators/scenarios/mixed.yaml",
        cwd,
        env,
    )


def shard_size(store: str) -> int:
    with open_store(store, migrate=False) as s, s.snapshot() as rd:
        head = rd.shard_state(SHARD)
        return 0 if head is None else head.size


class Gateway:
    """``icvgw run --config deploy/gateway.yaml`` as the README starts it, in the checkout."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {RUN}"],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(self.proc.stderr or ()), daemon=True
        )
        self._reader.start()
        store = f"sqlite:///{cwd / 'icvgw.sqlite'}"  # ../icvgw.sqlite from deploy/
        self.running = f"gateway gw-1 running; store {store}"
        self.api = f"API on http://{api_address(cwd)} (pid "

    def wait_for(self, *texts: str, timeout: float = 60) -> None:
        """Until every one of ``texts`` is in a line it logged."""
        deadline = time.monotonic() + timeout
        while not all(any(t in line for line in self.lines) for t in texts):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.lines
            time.sleep(0.2)

    def interrupt(self) -> str:
        """Ctrl-C; checks that it stopped as the README says; its log."""
        proc = self.proc
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self._reader.join(10)
            assert proc.stderr is not None
            proc.stderr.close()
        err = "".join(self.lines)
        assert proc.returncode == 130, err
        assert self.running in err and self.api in err
        assert "stopped (Ctrl-C); final checkpoint written" in err
        assert " WARNING " not in err and " ERROR " not in err and "Traceback" not in err, err
        return err


def run_live(blocks: list[str], cwd: Path, env: dict[str, str], broker: MosquittoBroker) -> None:
    """Each block as one bash script while the gateway runs and a fleet publishes."""
    gateway = Gateway(cwd, env)
    fleet = None
    try:
        gateway.wait_for(gateway.running, gateway.api)
        fleet = subprocess.Popen(
            ["icvgw", "simulate", "--broker", broker.url, "--vehicles", "10", "--rate", "1",
             "--duration", "600", "--seed", "5"],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for body in blocks:
            script = "set -euo pipefail\n" + body.replace(API, api_address(cwd))
            proc = subprocess.run(
                ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                timeout=300,
            )  # fmt: skip
            assert proc.returncode == 0, f"{body}\n{proc.stdout}\n{proc.stderr}"
            assert "Traceback" not in proc.stderr, proc.stderr
    finally:
        if fleet is not None:
            fleet.send_signal(signal.SIGTERM)
            fleet.wait(60)
        gateway.interrupt()


def run_gateway(cwd: Path, env: dict[str, str], broker: MosquittoBroker) -> None:
    gateway = Gateway(cwd, env)
    store = f"sqlite:///{cwd / 'icvgw.sqlite'}"  # ../icvgw.sqlite from deploy/
    try:
        gateway.wait_for(gateway.running, timeout=30)
        feed(cwd, env, broker)
        deadline = time.monotonic() + 150
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 3 and time.monotonic() < deadline:
            size = shard_size(store)
            if size != last:
                last, stable_since = size, time.monotonic()
            time.sleep(0.5)
        assert last > 1234
    finally:
        gateway.interrupt()


def run_demo(cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        ["bash", "-c", "exec icvgw demo"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(20)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert "(stopped by Ctrl-C)" in out and out.rstrip().endswith("demo OK"), out + err
    store = re.search(r"^store: (\S+)", out, flags=re.M)
    assert store is not None
    shutil.rmtree(Path(store.group(1).removeprefix("sqlite:///")).parent)


@pytest.mark.integration
def test_every_readme_command_runs_as_typed(checkout: Path, mosquitto: MosquittoBroker) -> None:
    env = env_for(mosquitto)
    ran: list[str] = []
    live: list[str] = []  # consecutive blocks that need the gateway running
    for lang, body in [*fenced_blocks(README.read_text(encoding="utf-8")), ("sh", "")]:
        if lang != "sh":
            continue
        if body.startswith(LIVE + "\n"):
            live.append(body)
            continue
        if live:
            run_live(live, checkout, env, mosquitto)
            ran.extend(c for b in live for c in commands(b))
            live = []
        for line in commands(body):
            command = without_comment(line)
            if command == INSTALL_AND_DEMO:
                run_demo(checkout, env)
            elif command == INSTALL_AND_TEST:
                pass  # test_the_install_command_names_extras_that_exist; not recursively
            elif command == RUN:
                run_gateway(checkout, env, mosquitto)
            else:
                run_line(line, checkout, env)
            ran.append(command)
    assert INSTALL_AND_DEMO in ran and INSTALL_AND_TEST in ran and RUN in ran
    assert any(c.startswith("curl ") for c in ran) and any("mosquitto_sub" in c for c in ran)
    # What the README says the commands leave behind.
    assert (checkout / "keys").is_dir() and (checkout / "icvgw.sqlite").is_file()
    assert (checkout / "log.jsonl").is_file() and (checkout / "log.jsonl.checkpoint").is_file()
    assert (checkout / "gw-1.pub").is_file()
