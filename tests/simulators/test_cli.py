"""``icvgw simulate``: end to end against a real Mosquitto, dry runs, and usage errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.testing import MosquittoBroker
from simulators.vin import is_valid_vin
from tests.simulators.subscriber import Subscriber

MIXED = Path(__file__).parents[2] / "simulators" / "scenarios" / "mixed.yaml"
runner = CliRunner()


def total(output: str) -> int:
    match = re.search(r"total\s*│\s*([\d,]+)", output)
    assert match, output
    return int(match.group(1).replace(",", ""))


@pytest.mark.integration
def test_simulate_publishes_everything_it_reports(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    vins_out = tmp_path / "vins.json"
    sub = Subscriber(mosquitto)
    try:
        result = runner.invoke(
            app,
            [
                "simulate",
                "--broker", mosquitto.url,
                "--vehicles", "12",
                "--rate", "2",
                "--duration", "20",
                "--seed", "4",
                "--scenario", str(MIXED),
                "--speedup", "0",
                "--protocol", "3.1.1",
                "--vins-out", str(vins_out),
                "--start", "2026-11-28T12:00:00Z",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        sent = total(result.stdout)
        got = sub.wait_for(sent)
    finally:
        sub.close()
    assert len(got) == sent > 12 * 20 * 2 * 0.8
    for kind in ("valid", "duplicate", "malformed", "spoofed", "out-of-order"):
        assert kind in result.stdout
    assert "vehicles 12" in result.stdout and "trips 12" in result.stdout
    listing = json.loads(vins_out.read_text(encoding="utf-8"))
    vins = [v["vin"] for v in listing["vehicles"]]
    assert len(vins) == 12 and all(is_valid_vin(v) for v in vins)
    assert sorted(listing["consenting"] + listing["non_consenting"]) == sorted(vins)
    assert len(listing["consenting"]) == round(0.7 * 12)
    assert len(listing["zone_crossing"]) == round(0.2 * 12)
    assert {topic.split("/")[1] for topic, _ in got} == set(vins)


@pytest.mark.integration
def test_replay_publishes_every_row(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    rows = "".join(f"bus-{i % 3},{1795867200 + i},31.2{i:02d},121.4,30\n" for i in range(30))
    trace.write_text("id,time,lat,lon,speed\n" + rows, encoding="utf-8")
    sub = Subscriber(mosquitto)
    try:
        result = runner.invoke(
            app, ["simulate", "--broker", mosquitto.url, "--replay", str(trace), "--speedup", "0"]
        )
        assert result.exit_code == 0, result.output
        got = sub.wait_for(30)
    finally:
        sub.close()
    assert total(result.stdout) == 30
    assert len(got) == 30
    bodies = [orjson.loads(p) for _, p in got]
    assert {b["Vehicle.VehicleIdentification.VIN"] for b in bodies} == {
        t.split("/")[1] for t, _ in got
    }
    assert len({t for t, _ in got}) == 3


def test_dry_run_is_deterministic_with_seed_and_start(tmp_path: Path) -> None:
    args = ["simulate", "--dry-run", "--vehicles", "20", "--duration", "30", "--seed", "9",
            "--scenario", str(MIXED), "--start", "2026-11-28T12:00:00Z"]  # fmt: skip
    first = runner.invoke(app, [*args, "--vins-out", str(tmp_path / "a.json")])
    second = runner.invoke(app, [*args, "--vins-out", str(tmp_path / "b.json")])
    assert first.exit_code == 0, first.output
    strip = re.compile(r"[\d.]+ s, [\d,]+ msg/s")
    assert strip.sub("", first.stdout) == strip.sub("", second.stdout)
    assert "messages generated" in first.stdout
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_bad_scenario_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("faults:\n  malformed: 2\n", encoding="utf-8")
    result = runner.invoke(app, ["simulate", "--dry-run", "--scenario", str(scenario)])
    assert result.exit_code == 2
    assert f"{scenario}:2: faults.malformed:" in result.stderr


def test_bad_trace_exits_2_naming_line_and_column(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("id,time,lat,lon\nx,1,31,999\n", encoding="utf-8")
    result = runner.invoke(app, ["simulate", "--dry-run", "--replay", str(trace)])
    assert result.exit_code == 2
    assert f"{trace}:2: lon: 999 is outside -180..180" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay", "x.csv", "--vehicles", "3"], "--vehicles cannot be used with --replay"),
        (["--protocol", "4"], "must be 5 or 3.1.1"),
        (["--rate", "0"], "must be in (0, 100] Hz"),
        (["--start", "yesterday"], "not ISO 8601"),
        (["--start", "2026-11-28T12:00:00"], "needs a time zone"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["simulate", "--dry-run", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()).replace("│", "").replace("  ", " ")


def test_unreachable_broker_exits_1() -> None:
    from gateway.testing import free_port

    result = runner.invoke(
        app,
        ["simulate", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--timeout", "1"],
    )
    assert result.exit_code == 1
    assert "cannot connect" in result.stderr


def _stopped_by(
    sig: signal.Signals, tmp_path: Path, broker: MosquittoBroker
) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of simulate sent ``sig`` while it publishes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", "--broker", broker.url,
         "--vehicles", "5", "--duration", "600"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


@pytest.mark.integration
def test_ctrl_c_exits_130_like_run_and_demo(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    code, _, err = _stopped_by(signal.SIGINT, tmp_path, mosquitto)
    assert code == 130, err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err


@pytest.mark.integration
def test_sigterm_stops_with_a_summary_and_exits_0_like_run(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    """SIGTERM used to kill simulate (status -15) without its summary."""
    code, out, err = _stopped_by(signal.SIGTERM, tmp_path, mosquitto)
    assert code == 0, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert "confirmed" in out, out
