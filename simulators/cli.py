"""``icvgw simulate``: drive a simulated fleet, or replay a recorded trace, into a broker.

Generation (``simulators.fleet``, ``simulators.replay``) and publishing
(``simulators.publish``) are separate; this command wires them, shows a progress bar and
prints what the broker confirmed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli.params import out_file

if TYPE_CHECKING:
    from rich.console import Console

    from simulators.fleet import GenerationStats, Kind, Message
    from simulators.publish import PublishStats

_Protocol = Annotated[
    str, typer.Option("--protocol", help="MQTT protocol version: 5 or 3.1.1.", metavar="5|3.1.1")
]


def simulate(
    broker: Annotated[
        str,
        typer.Option(help="Broker URL: mqtt[s]://[user[:password]@]host[:port]."),
    ] = "mqtt://127.0.0.1:1883",
    vehicles: Annotated[
        int | None, typer.Option(help="Vehicles in the fleet (default 10).", min=1)
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Samples per second per vehicle, Hz (default 1).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Simulated seconds of driving (default 60).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default 0).")] = None,
    scenario: Annotated[
        Path | None,
        typer.Option(help="Scenario YAML (traffic mix, zones, consent, trips).", dir_okay=False),
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option(help="Replay this trace CSV instead of simulating.", dir_okay=False),
    ] = None,
    speedup: Annotated[
        float,
        typer.Option(help="Time acceleration: 1 real time, 10 ten times faster, 0 no pauses."),
    ] = 1.0,
    start: Annotated[
        str,
        typer.Option(
            help="Timestamp of the first sample (ISO 8601 with zone), or 'now'. "
            "With --replay, 'now' shifts the trace to now; default keeps recorded times."
        ),
    ] = "",
    protocol: _Protocol = "5",
    max_inflight: Annotated[
        int, typer.Option(help="Most unacknowledged publishes at once.", min=1, max=20000)
    ] = 1000,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA certificates for mqtts:// (default: system).")
    ] = None,
    client_id: Annotated[str | None, typer.Option(help="MQTT client id.")] = None,
    timeout: Annotated[
        float,
        typer.Option(help="Give up after this many seconds without a CONNACK or PUBACK.", min=0.1),
    ] = 30.0,
    vins_out: Annotated[
        Path | None,
        typer.Option(
            callback=out_file,
            help="Write the vehicles (VIN, consent, zone crossing) to this JSON file.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Generate and count, publish nothing.")
    ] = False,
) -> None:
    """Publish a simulated fleet (or a replayed trace) to vehicles/<VIN>/telemetry, QoS 1."""
    from rich.console import Console

    from gateway.errors import ConfigError, GatewayError, PublishError

    console = Console(stderr=True)  # progress and errors; the summary goes to stdout
    if protocol not in ("5", "3.1.1"):
        raise typer.BadParameter("must be 5 or 3.1.1", param_hint="--protocol")
    if speedup < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--speedup")
    if not dry_run:  # before generating anything (or writing --vins-out)
        from gateway.ingest.client import parse_broker_url

        try:
            parse_broker_url(broker)
        except GatewayError as exc:
            raise typer.BadParameter(str(exc), param_hint="--broker") from None
    try:
        if replay is not None:
            given = [
                name
                for name, value in (
                    ("--vehicles", vehicles),
                    ("--rate", rate),
                    ("--duration", duration),
                    ("--seed", seed),
                    ("--scenario", scenario),
                )
                if value is not None
            ]
            if given:
                raise typer.BadParameter(f"{', '.join(given)} cannot be used with --replay")
            job = _replay_job(replay, start, vins_out)
        else:
            job = _fleet_job(
                vehicles or 10,
                1.0 if rate is None else rate,
                60.0 if duration is None else duration,
                seed or 0,
                scenario,
                start,
                vins_out,
            )
        if dry_run:
            _dry_run(job)
            return
        _publish(job, console, broker, protocol, max_inflight, ca_file, client_id, speedup, timeout)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(2) from None
    except PublishError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except GatewayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


class _Job:
    """What to publish: messages, how far along a message is, and what to report."""

    def __init__(
        self,
        messages: Iterator[Message],
        total: float,
        unit: str,
        vehicles: int,
        stats: GenerationStats | None,
    ) -> None:
        self.messages = messages
        self.total = total
        self.unit = unit  # "s" (simulated seconds) or "rows"
        self.vehicles = vehicles
        self.stats = stats


def _parse_start(text: str, default: datetime | None) -> datetime | None:
    if not text:
        return default
    if text == "now":
        return datetime.now(UTC).replace(microsecond=0)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not ISO 8601: {text!r}", param_hint="--start") from None
    if moment.tzinfo is None:
        raise typer.BadParameter("needs a time zone (Z or +08:00)", param_hint="--start")
    return moment


def _fleet_job(
    vehicles: int,
    rate: float,
    duration: float,
    seed: int,
    scenario_file: Path | None,
    start: str,
    vins_out: Path | None,
) -> _Job:
    from simulators.fleet import Fleet, FleetConfig, GenerationStats
    from simulators.scenario import Scenario, load_scenario

    if not 0 < rate <= 100:
        raise typer.BadParameter("must be in (0, 100] Hz", param_hint="--rate")
    if not 0 < duration <= 30 * 86400:
        raise typer.BadParameter("must be in (0, 30 days] seconds", param_hint="--duration")
    scenario = load_scenario(scenario_file) if scenario_file else Scenario()
    first = _parse_start(start, datetime.now(UTC).replace(microsecond=0))
    assert first is not None
    config = FleetConfig(
        vehicles=vehicles,
        scenario=scenario,
        start=first,
        source=str(scenario_file) if scenario_file else "<no scenario>",
    )
    fleet = Fleet(config, seed)
    if vins_out is not None:
        _write_json(
            vins_out,
            {
                "seed": seed,
                "vehicles": [
                    {"vin": v.vin, "consent": v.consent, "crosses_zones": v.crosses_zones}
                    for v in fleet.vehicles
                ],
                "consenting": fleet.consenting_vins,
                "non_consenting": fleet.non_consenting_vins,
                "zone_crossing": fleet.zone_crossing_vins,
            },
        )
    stats = GenerationStats()
    return _Job(fleet.messages(duration, rate, stats), duration, "s", vehicles, stats)


def _replay_job(path: Path, start: str, vins_out: Path | None) -> _Job:
    from simulators.replay import load_trace

    trace = load_trace(path)
    if vins_out is not None:
        _write_json(
            vins_out,
            {"vehicles": [{"id": i, "vin": v} for i, v in trace.vins.items()]},
        )
    shift = _parse_start(start, None)
    return _Job(trace.messages(shift_to=shift), len(trace.points), "rows", len(trace.vins), None)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _dry_run(job: _Job) -> None:
    from simulators.publish import PublishStats

    stats = PublishStats()
    started = time.monotonic()
    for msg in job.messages:
        stats.confirmed[msg.kind] += 1
        stats.samples += msg.samples
        stats.bytes += len(msg.payload)
    _summary(job, stats, time.monotonic() - started, verb="generated")


def _publish(
    job: _Job,
    console: Console,
    broker: str,
    protocol: str,
    max_inflight: int,
    ca_file: Path | None,
    client_id: str | None,
    speedup: float,
    timeout: float,
) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from simulators.publish import Publisher, publish_messages

    publisher = Publisher(
        broker,
        protocol="5" if protocol == "5" else "3.1.1",
        max_inflight=max_inflight,
        client_id=client_id,
        ca_file=str(ca_file) if ca_file else None,
        timeout=timeout,
    )
    columns = (
        TextColumn("[bold]simulate[/bold]"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + job.unit),
        TextColumn("{task.fields[sent]:,} published · {task.fields[rate]:,.0f} msg/s"),
        TextColumn("· {task.fields[inflight]} in flight"),
        TimeElapsedColumn(),
    )
    sent = 0
    started = time.monotonic()
    last = 0.0
    with publisher, Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("simulate", total=job.total, sent=0, rate=0.0, inflight=0)

        def advance(msg: Message) -> None:
            nonlocal sent, last
            sent += 1
            now = time.monotonic()
            if now - last >= 0.1:
                last = now
                done = msg.at if job.unit == "s" else sent
                progress.update(
                    task,
                    completed=min(done, job.total),
                    sent=sent,
                    rate=sent / max(now - started, 1e-9),
                    inflight=publisher.inflight,
                )

        stopped: str | None = None
        try:
            with _sigterm_stops():
                stats = publish_messages(job.messages, publisher, speedup=speedup, progress=advance)
        except KeyboardInterrupt:
            stats, stopped = publisher.stats, "Ctrl-C"
        except _Terminated:
            stats, stopped = publisher.stats, "SIGTERM"
        else:
            progress.update(task, completed=job.total, sent=sent, inflight=publisher.inflight)
    _summary(job, stats, time.monotonic() - started, verb="confirmed")
    if stopped is not None:
        typer.echo(
            f"interrupted ({stopped}): the summary counts what the broker confirmed so far",
            err=True,
        )
        raise typer.Exit(130 if stopped == "Ctrl-C" else 0)
    if stats.refused:
        typer.echo(f"error: the broker refused {stats.refused} messages", err=True)
        raise typer.Exit(1)


class _Terminated(Exception):
    """SIGTERM arrived while publishing."""


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM stops publishing as Ctrl-C does (a summary, then exit 0, as ``icvgw run``
    after a service manager's stop), instead of killing the process without one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_sig: int, _frame: Any) -> None:
        raise _Terminated

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _summary(job: _Job, stats: PublishStats, elapsed: float, verb: str) -> None:
    """Print what was confirmed (or generated) to stdout."""
    from rich.console import Console
    from rich.table import Table

    from simulators.fleet import Kind

    console = Console()
    confirmed: Counter[Kind] = stats.confirmed
    table = Table(title=f"messages {verb}", show_header=True)
    table.add_column("kind")
    table.add_column("messages", justify="right")
    for kind in Kind:
        table.add_row(kind.value, f"{confirmed[kind]:,}")
    table.add_row("[bold]total[/bold]", f"[bold]{stats.messages:,}[/bold]")
    console.print(table)
    lines = [
        f"vehicles {job.vehicles:,}",
        f"samples {stats.samples:,}",
        f"bytes {stats.bytes:,}",
    ]
    if job.stats is not None:
        lines += [
            f"trips {job.stats.trips:,}",
            f"key-offs {job.stats.key_offs:,}",
            f"batch payloads {job.stats.batch_messages:,}",
        ]
    lines.append(f"{elapsed:.1f} s, {stats.messages / max(elapsed, 1e-9):,.0f} msg/s")
    if stats.refused:
        lines.append(f"refused by the broker {stats.refused:,}")
    console.print(" · ".join(lines), highlight=False, soft_wrap=True)
