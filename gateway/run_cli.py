"""``icvgw run``: the gateway service."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.errors import ConnectInterrupted, GatewayError


def run(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="gateway.yaml (typed, strict; see deploy/)."),
    ] = None,
    broker: str = typer.Option(None, "--broker", help="Broker URL: mqtt://host:port, mqtts://…"),
    protocol: str = typer.Option(None, "--protocol", help="MQTT protocol: 5 or 3.1.1."),
    store: str = typer.Option(None, "--store", help="sqlite:///PATH or postgresql://…"),
    keys: Annotated[
        Path | None, typer.Option("--keys", help="Key directory (icvgw keys init).")
    ] = None,
    policies: Annotated[
        Path | None, typer.Option("--policies", help="Policy bundle directory.")
    ] = None,
    worker: str = typer.Option(None, "--worker", help="Worker identity (client id, shard)."),
    log_level: str = typer.Option("INFO", "--log-level", help="Logging level."),
) -> None:
    """Run the gateway: subscribe, decide, audit, deliver — until SIGTERM or Ctrl-C.

    Settings come from the config file, then ICVGW_* environment variables, then these
    flags. SIGHUP reloads the policy bundle (a bundle that fails to load leaves the last
    good one in force).
    """
    from prometheus_client import CollectorRegistry

    from gateway.config import load_config
    from gateway.service import Gateway

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[tuple[str, ...], Any] = {
        ("broker", "url"): broker,
        ("broker", "protocol"): protocol,
        ("store",): store,
        ("keys",): None if keys is None else str(keys),
        ("policies",): None if policies is None else str(policies),
        ("worker",): worker,
    }
    try:
        cfg = load_config(config, overrides=overrides)
        gw = Gateway(cfg, registry=CollectorRegistry())
    except GatewayError as exc:
        typer.echo(f"icvgw run: {exc}", err=True)
        raise typer.Exit(2) from exc

    def on_term(_sig: int, _frame: Any) -> None:
        gw.stop()

    def on_hup(_sig: int, _frame: Any) -> None:
        gw.holder.request_reload()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        gw.start()
    except ConnectInterrupted as exc:  # SIGTERM or Ctrl-C while connecting: a clean stop
        typer.echo(f"icvgw run: {exc}", err=True)
        gw.shutdown(drain_timeout=0)
        raise typer.Exit(0) from exc
    except GatewayError as exc:
        typer.echo(f"icvgw run: {exc}", err=True)
        gw.shutdown(drain_timeout=0)
        raise typer.Exit(1) from exc
    print(f"icvgw: gateway {cfg.worker} running; store {cfg.store}", file=sys.stderr, flush=True)
    gw.run()
    if not gw.clean_shutdown:  # said in the log: the final checkpoint could not be written
        raise typer.Exit(1)
