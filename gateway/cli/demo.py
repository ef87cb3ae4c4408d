"""``icvgw demo``: its options, checked where they enter; the run is :mod:`gateway.demo`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.demo import MAX_DURATION_S, run_demo
from gateway.errors import GatewayError


def demo(
    vehicles: Annotated[int, typer.Option(help="Vehicles in the simulated fleet.", min=1)] = 50,
    rate: Annotated[
        float, typer.Option(help="Samples per second per vehicle, Hz (at most 100).")
    ] = 1.0,
    duration: Annotated[
        float | None,
        typer.Option(help="Simulate this many seconds, then summarise (default: until Ctrl-C)."),
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option(
            help="Scenario YAML for the fleet (default: a mild mix with faults and zone "
            "crossings).",
            dir_okay=False,
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Fleet random seed (default: a new one each run).")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            help="Use this broker (mqtt[s]://[user[:password]@]host[:port]) instead of the "
            "embedded one; needs --protocol."
        ),
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            help="MQTT protocol of --broker: 5 or 3.1.1 (the embedded broker: 3.1.1 only).",
            metavar="5|3.1.1",
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Keep keys, policy and store in this directory (reused when it exists).",
            file_okay=False,
        ),
    ] = None,
    json_summary: Annotated[
        Path | None,
        typer.Option(
            "--json-summary", help="Also write the summary as JSON to this file.", dir_okay=False
        ),
    ] = None,
    api_port: Annotated[
        int,
        typer.Option(
            "--api-port",
            help="Port of the HTTP API on 127.0.0.1 (default: a free one).",
            min=0,
            max=65535,
        ),
    ] = 0,
) -> None:
    """Run broker, gateway, its HTTP API and a simulated fleet together and watch the
    decisions live; the API's URL is printed with a key and a curl command per role.

    Ctrl-C (or --duration) ends the run: the summary's counts are final, the audit log is
    verified, and the commands to verify and query it again are printed. Exit 0 only if
    views were delivered, verification passes and the log holds exactly the counted
    entries, and the API answered; 130 after Ctrl-C.
    """
    _check(rate=rate, duration=duration, broker=broker, protocol=protocol)
    raise typer.Exit(
        run_demo(
            vehicles=vehicles,
            rate=rate,
            duration=duration,
            scenario=scenario,
            seed=seed,
            broker=broker,
            protocol=protocol,
            workdir=workdir,
            json_summary=json_summary,
            api_port=api_port,
        )
    )


def _check(
    *, rate: float, duration: float | None, broker: str | None, protocol: str | None
) -> None:
    """The options that depend on each other, or on more than Typer checks: a usage error."""
    if not 0 < rate <= 100:
        raise typer.BadParameter("must be in (0, 100] Hz", param_hint="--rate")
    if duration is not None and not 0 < duration <= MAX_DURATION_S:
        raise typer.BadParameter("must be in (0, 30 days] seconds", param_hint="--duration")
    if protocol is not None and protocol not in ("5", "3.1.1"):
        raise typer.BadParameter("must be 5 or 3.1.1", param_hint="--protocol")
    if broker is None and protocol == "5":
        raise typer.BadParameter(
            "the embedded broker speaks MQTT 3.1.1 only; give --broker to use MQTT 5",
            param_hint="--protocol",
        )
    if broker is not None and protocol is None:
        raise typer.BadParameter(
            "state the MQTT protocol of --broker (5 or 3.1.1)", param_hint="--protocol"
        )
    if broker is not None:
        from gateway.ingest.client import parse_broker_url

        try:
            parse_broker_url(broker, protocol="5" if protocol == "5" else "3.1.1")
        except GatewayError as exc:
            raise typer.BadParameter(str(exc), param_hint="--broker") from exc
