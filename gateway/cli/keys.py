"""``icvgw keys``: create, rotate and publish the gateway's keys. Never prints a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.params import out_file, out_file_or_dir
from gateway.errors import GatewayError
from gateway.keys import KeyKind, KeyRing, init_keys, rotate_keys

app = typer.Typer(
    name="keys",
    help="The key directory: audit signing key, audit HMAC key, pseudonym key material.",
    no_args_is_help=True,
)


_Dir = Annotated[Path, typer.Option("--dir", help="The key directory.")]


@app.command("init")
def init_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            callback=out_file_or_dir,  # its parent must exist: a typo is not a new tree
            help="Key directory to create (mode 0700), in an existing directory.",
        ),
    ],
) -> None:
    """Create a key directory with generation 1 of every key (files mode 0600)."""
    ring = init_keys(out)
    typer.echo(f"created {ring.directory}: {', '.join(f'{k.value} 1' for k in KeyKind)}")


@app.command("rotate")
def rotate_command(
    directory: _Dir,
    only: Annotated[
        list[KeyKind] | None,
        typer.Option("--only", help="Rotate only this kind (repeatable). Default: every kind."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Then re-seal this store's sealed data with the new store key "
            "(sqlite:///PATH or postgresql://…; run it with the gateway stopped).",
        ),
    ] = None,
) -> None:
    """Add a new generation; old generations stay for verification (and, for the store
    key, for reading what is still sealed with them: --store re-seals it now)."""
    ring = rotate_keys(directory, only or tuple(KeyKind))
    resealed, compacted = (None, None) if store is None else _reseal(store, ring)
    kinds = only or list(KeyKind)
    typer.echo(
        f"rotated {ring.directory}: "
        + ", ".join(f"{k.value} now {ring.generation(k)}" for k in kinds)
    )
    if resealed is not None:
        typer.echo(
            f"re-sealed {resealed} value(s) with store key {ring.generation(KeyKind.STORE)}; "
            "older store keys are no longer needed by this store"
        )
    if compacted is not None:
        typer.echo(
            f"warning: the store was not compacted ({compacted}); older copies of the "
            "re-sealed values may remain in its file until its next checkpoint",
            err=True,
        )


def _reseal(url: str, ring: KeyRing) -> tuple[int, GatewayError | None]:
    """Re-seal ``url`` with the newest store key; the count, and why the file could not be
    compacted afterwards (the re-sealing is committed all the same), if it could not."""
    from gateway.store import open_store
    from gateway.store.rekey import reseal

    with open_store(url, keys=ring) as s:
        with s.transaction() as tx:
            count = reseal(tx, ring.generation(KeyKind.STORE))
        try:
            s.compact()
        except GatewayError as exc:
            return count, exc
    return count, None


@app.command("public")
def public_command(
    directory: _Dir,
    origin: Annotated[
        list[str],
        typer.Option("--origin", help="Audit log origin (shard) the key signs for; repeatable."),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", callback=out_file, help="Write to this file instead of stdout."),
    ] = None,
) -> None:
    """Print the checkpoint verifier keys (note format, every generation) for auditors."""
    ring = KeyRing.load(directory)
    lines = [vkey for o in origin for vkey in ring.verifier_keys(o)]
    text = "".join(line + "\n" for line in lines)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {len(lines)} verifier key(s) to {out}")


@app.command("list")
def list_command(directory: _Dir) -> None:
    """Show the generations present (no secrets)."""
    ring = KeyRing.load(directory)
    for kind in KeyKind:
        gens = ring.generations(kind)
        if not gens:
            typer.echo(f"{kind.value}: none yet (the gateway adds generation 1 at start)")
            continue
        typer.echo(f"{kind.value}: generations {', '.join(map(str, gens))} (current {gens[-1]})")
