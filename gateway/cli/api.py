"""``icvgw api`` (the HTTP API in its own process) and ``icvgw apikey`` (its keys).

Settings come as for ``icvgw run``: the config file, ``ICVGW_*`` variables, then flags; the
API reads the same store, key directory and policy as the pipeline it serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli.params import one_of

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

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
        int | None, typer.Option("--port", help="Port to listen on.", min=1, max=65535)
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level.")] = "INFO",
) -> None:
    """Serve the HTTP API (feeds, webhooks, audit, operations, metrics) until SIGTERM.

    Exit status: 0 after SIGTERM, 130 after Ctrl-C."""
    import logging
    import signal

    import uvicorn

    from gateway.api import create_app
    from gateway.api.context import open_context

    cfg = _config(
        config,
        store,
        keys,
        worker,
        policies=None if policies is None else str(policies),
        api__host=host,
        api__port=port,
    )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx = open_context(cfg)
    stopped_by: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn raises them again once stopped
        signal.signal(sig, lambda s, _f: stopped_by.append(s))
    try:
        uvicorn.Server(uvicorn.Config(create_app(ctx), **uvicorn_options(cfg))).run()
    finally:
        ctx.close()
    # As icvgw run: 0 after SIGTERM (a service manager's stop), 130 after Ctrl-C.
    raise typer.Exit(130 if stopped_by[:1] == [signal.SIGINT] else 0)


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
