"""``icvgw keys``: create, rotate and publish the gateway's keys. Never prints a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.errors import GatewayError
from gateway.keys import KeyKind, KeyRing, init_keys, rotate_keys

app = typer.Typer(
    name="keys",
    help="The key directory: audit signing key, audit HMAC key, pseudonym key material.",
    no_args_is_help=True,
)


_Dir = Annotated[Path, typer.Option("--dir", help="The key directory.")]


def _fail(exc: GatewayError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@app.command("init")
def init_command(
    out: Annotated[Path, typer.Option("--out", help="Key directory to create (mode 0700).")],
) -> None:
    """Create a key directory with generation 1 of every key (files mode 0600)."""
    try:
        ring = init_keys(out)
    except GatewayError as exc:
        raise _fail(exc) from exc
    typer.echo(f"created {ring.directory}: {', '.join(f'{k.value} 1' for k in KeyKind)}")


@app.command("rotate")
def rotate_command(
    directory: _Dir,
    only: Annotated[
        list[KeyKind] | None,
        typer.Option("--only", help="Rotate only this kind (repeatable). Default: every kind."),
    ] = None,
) -> None:
    """Add a new generation; old generations stay for verification."""
    try:
        ring = rotate_keys(directory, only or tuple(KeyKind))
    except GatewayError as exc:
        raise _fail(exc) from exc
    kinds = only or list(KeyKind)
    typer.echo(
        f"rotated {ring.directory}: "
        + ", ".join(f"{k.value} now {ring.generation(k)}" for k in kinds)
    )


@app.command("public")
def public_command(
    directory: _Dir,
    origin: Annotated[
        list[str],
        typer.Option("--origin", help="Audit log origin (shard) the key signs for; repeatable."),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the checkpoint verifier keys (note format, every generation) for auditors."""
    try:
        ring = KeyRing.load(directory)
        lines = [vkey for o in origin for vkey in ring.verifier_keys(o)]
    except GatewayError as exc:
        raise _fail(exc) from exc
    text = "".join(line + "\n" for line in lines)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {len(lines)} verifier key(s) to {out}")


@app.command("list")
def list_command(directory: _Dir) -> None:
    """Show the generations present (no secrets)."""
    try:
        ring = KeyRing.load(directory)
    except GatewayError as exc:
        raise _fail(exc) from exc
    for kind in KeyKind:
        gens = ring.generations(kind)
        typer.echo(f"{kind.value}: generations {', '.join(map(str, gens))} (current {gens[-1]})")
