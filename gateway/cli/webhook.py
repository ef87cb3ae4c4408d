"""``icvgw webhook secret``: the secret a platform checks its webhook requests with.

A platform whose delivery channel is ``webhook`` verifies every request's
``webhook-signature`` (Standard Webhooks) with its own secret, derived from the key
directory's webhook key (:meth:`gateway.keys.KeyRing.webhook_secret`). This command prints it
(``whsec_<base64>``) on stdout and nothing else there, for the operator to hand over by a
private channel; it is never logged or stored anywhere else. After ``icvgw keys rotate
--only webhook``, it prints the new secret: requests carry signatures with the new and the
previous secret until the next rotation, so the platform switches when it likes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="webhook",
    help="Webhook delivery: the secrets platforms verify signed requests with.",
    no_args_is_help=True,
)


@app.command("secret")
def secret(
    subscriber: Annotated[
        str, typer.Option("--subscriber", help="The subscriber (policy id) to give it to.")
    ],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="gateway.yaml (the pipeline's).")
    ] = None,
    keys: Annotated[Path | None, typer.Option("--keys", help="The key directory.")] = None,
    policies: Annotated[
        Path | None, typer.Option("--policies", "-p", help="Policy bundle directory.")
    ] = None,
) -> None:
    """Print SUBSCRIBER's webhook signing secret (whsec_…), newest key generation."""
    from gateway.config import load_config
    from gateway.deliver.webhook import format_secret
    from gateway.keys import KeyKind, ensure_webhook_key
    from gateway.policy.loader import load_bundle
    from gateway.policy.schema import Channel

    cfg = load_config(
        config,
        overrides={
            # The command speaks no MQTT: a protocol only to make a config without a file.
            ("broker", "protocol"): "5" if config is None else None,
            ("keys",): None if keys is None else str(keys),
            ("policies",): None if policies is None else str(policies),
        },
    )
    sub = load_bundle(cfg.policies).subscribers.get(subscriber)
    if sub is None:
        raise typer.BadParameter(
            f"{subscriber!r} is not a subscriber of the policy", param_hint="--subscriber"
        )
    ring = ensure_webhook_key(cfg.keys)
    typer.echo(format_secret(ring.webhook_secret(subscriber)))
    gen = ring.generation(KeyKind.WEBHOOK)
    typer.echo(f"webhook secret of {subscriber} (webhook key generation {gen})", err=True)
    if sub.view.delivery.channel is not Channel.WEBHOOK:
        typer.echo(
            f"note: {subscriber}'s delivery channel is {sub.view.delivery.channel.value}, "
            "not webhook: nothing is signed with it until it is",
            err=True,
        )
