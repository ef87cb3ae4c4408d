"""``icvgw run``: the gateway service."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.errors import ConnectInterrupted, GatewayError

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger("gateway.run")

INTERRUPTED_EXIT = 130
"""Exit status after Ctrl-C (SIGINT), 128 + 2 as a shell reports it; SIGTERM (a service
manager's normal stop) exits 0."""


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
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            help="text (one line per event) or json (one JSON object per line, for log shippers).",
            metavar="text|json",
        ),
    ] = "text",
    status_every: Annotated[
        float,
        typer.Option(
            "--status-every",
            help="Seconds between status lines (rates, backlog, store, broker).",
            min=0.1,
        ),
    ] = 10.0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No status lines (events are still logged).")
    ] = False,
) -> None:
    """Run the gateway: subscribe, decide, audit, deliver — until SIGTERM or Ctrl-C.

    Settings come from the config file, then ICVGW_* environment variables, then these
    flags. SIGHUP reloads the policy bundle (a bundle that fails to load leaves the last
    good one in force). Exit status: 0 after SIGTERM, 130 after Ctrl-C (SIGINT), 1 when the
    gateway fails, 2 for invalid settings.
    """
    from prometheus_client import CollectorRegistry

    from gateway.config import load_config
    from gateway.service import Gateway

    _setup_logging(log_level, log_format)
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

    raise typer.Exit(_serve(gw, status_every=None if quiet else status_every))


def _serve(gw: Gateway, *, status_every: float | None) -> int:
    """Start ``gw``, run it until SIGTERM or Ctrl-C, log status lines every
    ``status_every`` seconds (None: none) and the stopped line; the exit status."""
    cfg = gw.config
    stopped_by: list[int] = []

    def on_term(sig: int, _frame: Any) -> None:
        stopped_by.append(sig)
        gw.stop()

    def on_hup(_sig: int, _frame: Any) -> None:
        gw.holder.request_reload()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        gw.start()
    except ConnectInterrupted as exc:  # SIGTERM or Ctrl-C while connecting: a clean stop
        log.info("stopped while connecting (%s)", _signal_name(stopped_by))
        gw.shutdown(drain_timeout=0)
        raise typer.Exit(_exit_status(stopped_by)) from exc
    except GatewayError as exc:
        typer.echo(f"icvgw run: {exc}", err=True)
        gw.shutdown(drain_timeout=0)
        raise typer.Exit(1) from exc
    log.info("gateway %s running; store %s", cfg.worker, cfg.store)
    ticker = None if status_every is None else _status_ticker(gw, status_every)
    try:
        gw.run()
    finally:
        if ticker is not None:
            ticker.set()
    if not gw.clean_shutdown:  # said in the log: the final checkpoint could not be written
        log.error("stopped (%s); the final checkpoint was not written", _signal_name(stopped_by))
        return 1
    log.info("stopped (%s); final checkpoint written", _signal_name(stopped_by))
    return _exit_status(stopped_by)


def _setup_logging(level: str, fmt: str) -> None:
    if fmt not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    handler = logging.StreamHandler()
    if fmt == "json":
        from gateway.status import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _signal_name(stopped_by: list[int]) -> str:
    if not stopped_by:
        return "the gateway ended"
    return "Ctrl-C" if stopped_by[0] == signal.SIGINT else signal.Signals(stopped_by[0]).name


def _exit_status(stopped_by: list[int]) -> int:
    return INTERRUPTED_EXIT if stopped_by and stopped_by[0] == signal.SIGINT else 0


def _status_ticker(gw: Gateway, every: float) -> threading.Event:
    """Log a status line every ``every`` seconds until the returned event is set."""
    from gateway.status import StatusLine

    done = threading.Event()
    status = StatusLine(gw.metrics.registry, lambda: bool(gw.source.status.up))

    def tick() -> None:
        while not done.wait(every):
            log.info("%s", status.line())

    threading.Thread(target=tick, name="icvgw-status", daemon=True).start()
    return done
