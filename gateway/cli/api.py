"""``icvgw api`` (the HTTP API in its own process) and ``icvgw apikey`` (its keys).

Settings come as for ``icvgw run``: the config file, ``ICVGW_*`` variables, then flags; the
API reads the same store, key directory and policy as the pipeline it serves.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from gateway.cli.params import one_of
from gateway.errors import GatewayError

if TYPE_CHECKING:
    import uvicorn

    from gateway.config import GatewayConfig

log = logging.getLogger("gateway.api")


def _server(config: uvicorn.Config, url: str, *, log_url: bool) -> uvicorn.Server:
    """uvicorn's server, which prints the URL it serves on stdout once it listens (the
    line ``icvgw run`` and ``icvgw demo`` wait for, and log) and, with ``log_url``, logs it.
    (uvicorn is imported here, not when the CLI is: ``icvgw --help`` stays quick.)"""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                if log_url:
                    log.info("API listening on %s", url)
                print(url, flush=True)

    return Server(config)


_Config = Annotated[
    Path | None, typer.Option("--config", "-c", help="gateway.yaml (the pipeline's).")
]
_StoreOpt = Annotated[str | None, typer.Option("--store", help="sqlite:///PATH or postgresql://…")]
_KeysOpt = Annotated[Path | None, typer.Option("--keys", help="The key directory.")]
_Worker = Annotated[
    str | None, typer.Option("--worker", help="The gateway worker (its audit shard).")
]


def _config(
    config: Path | None, store: str | None, keys: Path | None, worker: str | None, **more: Any
) -> GatewayConfig:
    from gateway.config import load_config

    overrides: dict[tuple[str, ...], Any] = {
        ("broker", "protocol"): "5",  # the API speaks no MQTT; a file's value wins
        ("store",): store,
        ("keys",): None if keys is None else str(keys),
        ("worker",): worker,
    }
    overrides.update({tuple(k.split("__")): v for k, v in more.items()})
    if config is not None:
        del overrides[("broker", "protocol")]
    return load_config(config, overrides=overrides)


def api(
    config: _Config = None,
    store: _StoreOpt = None,
    keys: _KeysOpt = None,
    policies: Annotated[
        Path | None, typer.Option("--policies", help="Policy bundle directory.")
    ] = None,
    worker: _Worker = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on.")] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="Port to listen on (0: a free one).", min=0, max=65535),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level.")] = "INFO",
    log_format: Annotated[
        str,
        typer.Option("--log-format", help="text or json (as icvgw run).", metavar="text|json"),
    ] = "text",
    lifeline: Annotated[
        bool,
        typer.Option(
            "--lifeline", hidden=True, help="Stop when standard input closes (the parent ended)."
        ),
    ] = False,
) -> None:
    """Serve the HTTP API (feeds, webhooks, audit, operations, metrics) until SIGTERM.

    Prints the URL it serves on standard output once it listens. Exit status: 0 after
    SIGTERM, 130 after Ctrl-C, 1 if the address cannot be listened on."""
    import signal

    import uvicorn

    from gateway.api import create_app
    from gateway.api.context import open_context
    from gateway.cli.run import setup_logging

    if log_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    cfg = _config(
        config,
        store,
        keys,
        worker,
        policies=None if policies is None else str(policies),
        api__host=host,
        api__port=port,
    )
    sock = _listen(cfg, log_format)
    try:
        ctx = open_context(cfg)
    except GatewayError as exc:  # a store that does not open, keys missing, a bad bundle
        sock.close()
        _fail(str(exc), log_format, 2)
    setup_logging(log_level, log_format)  # now: a failure to start is one line, nothing more
    stopped_by: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn raises them again once stopped
        signal.signal(sig, lambda s, _f: stopped_by.append(s))
    options = uvicorn_options(cfg)
    server = _server(
        uvicorn.Config(create_app(ctx), **options), _url(cfg, sock), log_url=not lifeline
    )
    if lifeline:
        _stop_when_stdin_closes(server)
    try:
        server.run(sockets=[sock])
    finally:
        ctx.close()
    # As icvgw run: 0 after SIGTERM (a service manager's stop), 130 after Ctrl-C.
    raise typer.Exit(130 if stopped_by[:1] == [signal.SIGINT] else 0)


def _listen(cfg: GatewayConfig, log_format: str) -> socket.socket:
    """A socket bound to ``api.host:port``; a port in use (or any address that cannot be
    had) is one line and exit status 1, before anything else is opened."""
    host, port = cfg.api.host, cfg.api.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        _fail(f"the API cannot listen on {host}:{port}: {exc.strerror or exc}", log_format, 1)
    return sock


def _fail(why: str, log_format: str, status: int) -> NoReturn:
    """End with ``error: why`` on stderr (a JSON object with JSON logs: the parent's stderr
    stays one object per line) and ``status``."""
    line = "error: " + " ".join(why.split())
    if log_format == "json":
        from gateway.cli.run import setup_logging

        setup_logging("ERROR", "json")
        log.error("%s", line)
    else:
        typer.echo(line, err=True)
    raise typer.Exit(status)


def _url(cfg: GatewayConfig, sock: socket.socket) -> str:
    host = cfg.api.host
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if cfg.api.tls_cert is not None else "http"
    return f"{scheme}://{shown}:{sock.getsockname()[1]}"


def _stop_when_stdin_closes(server: uvicorn.Server) -> None:
    """Stop ``server`` when standard input reaches its end: the parent that started this
    process with a pipe there (``icvgw run``, ``icvgw demo``) has ended, however it ended."""
    import os
    import sys
    import threading

    def watch() -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked inside a
        # buffered reader holds its lock, which the interpreter's exit then cannot take.
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        server.should_exit = True

    fd = sys.stdin.fileno()

    threading.Thread(target=watch, name="icvgw-api-lifeline", daemon=True).start()


_GRACEFUL_S = 5
"""After SIGTERM, open streams (an SSE feed never ends by itself) get this long, then are
cancelled: a stop is bounded."""


def uvicorn_options(cfg: GatewayConfig) -> dict[str, Any]:
    """uvicorn's settings for ``cfg.api``: address, TLS and mutual TLS, no access log of its
    own (:mod:`gateway.api.limits` writes one without paths as sent) and no logging setup."""
    import ssl

    a = cfg.api
    options: dict[str, Any] = {
        "host": a.host,
        "port": a.port,
        "access_log": False,
        "log_config": None,
        "server_header": False,
        "timeout_graceful_shutdown": _GRACEFUL_S,
    }
    if a.tls_cert is not None:
        options.update(ssl_certfile=a.tls_cert, ssl_keyfile=a.tls_key)
    if a.tls_client_ca is not None:
        options.update(ssl_ca_certs=a.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


apikey_app = typer.Typer(
    name="apikey",
    help="API keys: create (printed once), list, revoke (audited).",
    no_args_is_help=True,
)


@apikey_app.command("create")
def create(
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="subscriber, auditor, admin or monitor.",
            callback=one_of("subscriber", "auditor", "admin", "monitor"),
        ),
    ],
    subscriber: Annotated[
        str | None, typer.Option("--subscriber", help="The subscriber a subscriber key reads for.")
    ] = None,
    label: Annotated[str, typer.Option("--label", help="What the key is for (free text).")] = "",
    config: _Config = None,
    store: _StoreOpt = None,
    keys: _KeysOpt = None,
    worker: _Worker = None,
) -> None:
    """Make a key and print it (the only time it is shown; only a salted hash is kept)."""
    from gateway.apikeys import Role, create_api_key
    from gateway.policy.loader import load_bundle
    from gateway.service import origin_of
    from gateway.store import open_store

    cfg = _config(config, store, keys, worker)
    if subscriber is not None and subscriber not in load_bundle(cfg.policies).subscribers:
        raise typer.BadParameter(f"{subscriber!r} is not a subscriber of the policy")
    with open_store(cfg.store) as s:
        try:
            key, token = create_api_key(
                s,
                Role(role),
                subscriber=subscriber,
                label=label,
                shard=origin_of(cfg.worker),
                instance=cfg.worker,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--subscriber") from None
    typer.echo(token)
    typer.echo(
        f"key {key.key_id} ({key.role}) created; store the key now, it is not shown again", err=True
    )


@apikey_app.command("list")
def list_keys(config: _Config = None, store: _StoreOpt = None, keys: _KeysOpt = None) -> None:
    """Every key: id, role, subscriber, label, created, revoked (never a secret)."""
    from datetime import UTC, datetime

    from gateway.store import open_store
    from gateway.store.apikeys import list_api_keys

    def when(ms: int | None) -> str:
        return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()

    cfg = _config(config, store, keys, None)
    with open_store(cfg.store) as s, s.snapshot() as rd:
        rows = list_api_keys(rd)
    for k in rows:
        typer.echo(
            f"{k.key_id}\t{k.role}\t{k.subscriber or '-'}\t{k.label or '-'}\t"
            f"{when(k.created_ms)}\t{when(k.revoked_ms)}"
        )


@apikey_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (icvgw apikey list).")],
    config: _Config = None,
    store: _StoreOpt = None,
    keys: _KeysOpt = None,
    worker: _Worker = None,
) -> None:
    """Revoke a key from its next request on (audited)."""
    from gateway.apikeys import revoke
    from gateway.service import origin_of
    from gateway.store import open_store

    cfg = _config(config, store, keys, worker)
    with open_store(cfg.store) as s:
        if not revoke(s, key_id, shard=origin_of(cfg.worker), instance=cfg.worker):
            raise typer.BadParameter(f"{key_id}: no such key, or already revoked")
    typer.echo(f"revoked {key_id}")
