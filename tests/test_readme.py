"""Every command block of README.md, run as typed: the README cannot drift from the code.

Each line of every ```sh block is run with ``bash`` in the order of the README, in one
directory that stands for the repository root (it holds a copy of ``deploy/`` and
``simulators/scenarios/``), with ``icvgw`` of this environment on ``PATH``. The only
substitutions, both documented in the README: the broker is the test's Mosquitto, given as
``ICVGW_BROKER_URL`` (how the README says to point the gateway at another broker), and the
directory is a temporary one. ``record.json`` (which the README says is one message as a
vehicle publishes it) is written by the test.

Three kinds of line are not simply run and expected to exit 0:

* the install commands (``pip install . && icvgw demo``, ``python -m pip install -e … &&
  python -m pytest``): nothing is installed and pytest is not run recursively; the demo part
  runs, is stopped with Ctrl-C (SIGINT) once it has worked for a while, and must exit 130
  with "demo OK";
* ``icvgw run --config deploy/gateway.yaml``: started, fed by the simulator while it runs
  (the traffic the later blocks query: dead letters, more than 1234 entries), then stopped
  with SIGINT: it must print its "stopped" line and exit 130, with no warning;
* nothing else: a new line that fails, or a new kind of block, fails this test.
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

import pytest

from gateway.store import open_store
from gateway.testing import MosquittoBroker, make_vin

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
INSTALL_AND_DEMO = "pip install . && icvgw demo"
INSTALL_AND_TEST = "python -m pip install -e '.[test,postgres]' && python -m pytest"
RUN = "icvgw run --config deploy/gateway.yaml"
SHARD = "icv-gateway/gw-1"


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
        if lang != "sh":  # only the layout listing may be something else
            assert lang == "" and body.startswith("gateway/"), (lang, body)


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


def run_line(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
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


def run_gateway(cwd: Path, env: dict[str, str], broker: MosquittoBroker) -> None:
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {RUN}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    store = f"sqlite:///{cwd / 'icvgw.sqlite'}"  # ../icvgw.sqlite from deploy/
    running = f"gateway gw-1 running; store {store}"
    try:
        deadline = time.monotonic() + 30
        while not any(running in line for line in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, lines
            time.sleep(0.2)
        feed(cwd, env, broker)
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 3 and time.monotonic() < deadline + 120:
            size = shard_size(store)
            if size != last:
                last, stable_since = size, time.monotonic()
            time.sleep(0.5)
        assert last > 1234
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        proc.stderr.close()
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert running in err
    assert "stopped (Ctrl-C); final checkpoint written" in err
    assert " WARNING " not in err and "Traceback" not in err, err


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
    for lang, body in fenced_blocks(README.read_text(encoding="utf-8")):
        if lang != "sh":
            continue
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
    # What the README says the commands leave behind.
    assert (checkout / "keys").is_dir() and (checkout / "icvgw.sqlite").is_file()
    assert (checkout / "log.jsonl").is_file() and (checkout / "log.jsonl.checkpoint").is_file()
    assert (checkout / "gw-1.pub").is_file()
