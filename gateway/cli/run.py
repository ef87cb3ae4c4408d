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
    from gateway.api.child import ApiChild
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
    no_api: Annotated[
        bool,
        typer.Option(
            "--no-api", help="Do not start the HTTP API beside the pipeline (api.enabled: false)."
        ),
    ] = False,
) -> None:
    """Run the gateway: subscribe, decide, audit, deliver — until SIGTERM or Ctrl-C.

    Settings come from the config file, then ICVGW_* environment variables, then these
    flags. The HTTP API runs beside it in a process of its own (icvgw api, on the same
    settings; restarted with back-off if it dies) unless --no-api. SIGHUP reloads the
    policy bundle (a bundle that fails to load leaves the last good one in force). Exit
    status: 0 after SIGTERM, 130 after Ctrl-C (SIGINT), 1 when the gateway fails, 2 for
    invalid settings.
    """
    from prometheus_client import CollectorRegistry

    from gateway.api.child import ApiChild, api_command
    from gateway.config import load_config
    from gateway.service import Gateway

    setup_logging(log_level, log_format)
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
        _failed(exc, log_format)
        raise typer.Exit(2) from exc
    command = (
        None
        if no_api
        else api_command(cfg, config_file=config, log_level=log_level, log_format=log_format)
    )
    api = None if command is None else ApiChild(command)
    raise typer.Exit(_serve(gw, api, status_every=None if quiet else status_every, fmt=log_format))


def _serve(gw: Gateway, api: ApiChild | None, *, status_every: float | None, fmt: str) -> int:
    """Start ``gw`` (and ``api`` beside it), run it until SIGTERM or Ctrl-C, log status
    lines every ``status_every`` seconds (None: none) and the stopped line; the exit
    status. ``fmt``: the log format, which a failure to start is written in too. The API
    process is stopped before the stopped line, whatever ended the run."""
    if api is not None:
        api.start()
    try:
        return _run(gw, api, status_every=status_every, fmt=fmt)
    finally:
        if api is not None:
            api.stop()


def _run(gw: Gateway, api: ApiChild | None, *, status_every: float | None, fmt: str) -> int:
    cfg = gw.config
    stopped_by: list[int] = []
    stopping = threading.Event()  # no status line once stopping: the broker is let go then

    def on_term(sig: int, _frame: Any) -> None:
        stopped_by.append(sig)
        stopping.set()
        if api is not None:
            api.request_stop()  # stops beside the pipeline's drain
        gw.stop()

    def on_hup(_sig: int, _frame: Any) -> None:
        gw.holder.request_reload()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)

    def stop_api() -> None:  # before the last line, so that it is the last
        if api is not None:
            api.stop()

    try:
        gw.start()
    except ConnectInterrupted as exc:  # SIGTERM or Ctrl-C while connecting: a clean stop
        stop_api()
        log.info("stopped while connecting (%s)", _signal_name(stopped_by))
        gw.shutdown(drain_timeout=0)
        raise typer.Exit(_exit_status(stopped_by)) from exc
    except GatewayError as exc:
        stop_api()
        _failed(exc, fmt)
        gw.shutdown(drain_timeout=0)
        raise typer.Exit(1) from exc
    log.info("gateway %s running; store %s", cfg.worker, cfg.store)
    if status_every is not None:
        _status_ticker(gw, status_every, stopping)
    try:
        gw.run()
    finally:
        stopping.set()
        stop_api()
    if not gw.clean_shutdown:  # said in the log: the final checkpoint could not be written
        log.error("stopped (%s); the final checkpoint was not written", _signal_name(stopped_by))
        return 1
    log.info("stopped (%s); final checkpoint written", _signal_name(stopped_by))
    return _exit_status(stopped_by)


def _failed(exc: GatewayError, fmt: str) -> None:
    """Why ``icvgw run`` ends, in one line (several problems, e.g. of a config file, joined
    by "; "); with JSON logs as one JSON object, so a log shipper reads nothing else."""
    line = "icvgw run: " + "; ".join(s for s in str(exc).splitlines() if s.strip())
    if fmt == "json":
        log.error("%s", line)
    else:
        typer.echo(line, err=True)


def setup_logging(level: str, fmt: str) -> None:
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


def _status_ticker(gw: Gateway, every: float, done: threading.Event) -> None:
    """Log a status line every ``every`` seconds until ``done`` is set."""
    from gateway.status import StatusLine

    status = StatusLine(gw.metrics.registry, lambda: bool(gw.source.status.up))

    def tick() -> None:
        while not done.wait(every):
            log.info("%s", status.line())

    threading.Thread(target=tick, name="icvgw-status", daemon=True).start()
