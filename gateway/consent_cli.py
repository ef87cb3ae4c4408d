"""``icvgw consent``: grant, withdraw and list consents in a gateway's store.

Every change is an audited ``consent.changed`` entry in the worker's shard and applies to
the next batch the gateway decides. The store keeps keyed vehicle references, so the key
directory is needed to name a vehicle by VIN.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.store import Store

app = typer.Typer(
    name="consent",
    help="Consents at run time: grant, withdraw, list (audited; the next batch applies them).",
    no_args_is_help=True,
)

_Store = Annotated[str, typer.Option("--store", help="sqlite:///PATH or postgresql://…")]
_Keys = Annotated[Path, typer.Option("--keys", help="The key directory.")]
_Worker = Annotated[
    str, typer.Option("--worker", help="The gateway worker whose shard records the change.")
]


def _time(text: str) -> float:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise typer.BadParameter(f"{text!r}: give a UTC offset, e.g. 2027-01-01T00:00:00+08:00")
    return parsed.timestamp()


def _open(store: str, worker: str) -> Store:
    from gateway.service import origin_of
    from gateway.store import open_store

    return open_store(store, shard=origin_of(worker))


@app.command("grant")
def grant(
    store: _Store,
    keys: _Keys,
    vin: Annotated[str, typer.Option("--vin", help="The vehicle.")],
    purpose: Annotated[str, typer.Option("--purpose", help="A purpose of the bundle.")],
    expires: Annotated[str, typer.Option("--expires", help="ISO 8601 time with offset.")],
    consent_id: Annotated[str | None, typer.Option("--id", help="Default: a new id.")] = None,
    worker: _Worker = "gw-1",
) -> None:
    """Record a consent, from now until --expires (never open-ended)."""
    from gateway.keys import KeyRing
    from gateway.model import Consent

    now = datetime.now(UTC).timestamp()
    end = _time(expires)
    cid = consent_id or f"c-{uuid.uuid4().hex[:12]}"
    try:
        ring = KeyRing.load(keys)
        with _open(store, worker) as s, s.transaction() as tx:
            tx.put_consents(
                [Consent(cid, ring.vehicle_ref(vin), purpose, now, end)], at=now, instance=worker
            )
    except GatewayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"granted {cid}: {purpose} until {datetime.fromtimestamp(end, UTC).isoformat()}")


@app.command("withdraw")
def withdraw(
    store: _Store,
    consent_id: Annotated[str, typer.Argument(help="The consent id.")],
    worker: _Worker = "gw-1",
) -> None:
    """Withdraw a consent from now on (final; audited)."""
    now = datetime.now(UTC).timestamp()
    try:
        with _open(store, worker) as s, s.transaction() as tx:
            done = tx.withdraw_consent(consent_id, at=now, instance=worker)
    except GatewayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not done:
        typer.echo(f"error: no active consent {consent_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"withdrew {consent_id}")


@app.command("list")
def list_command(store: _Store, keys: _Keys, vin: Annotated[str, typer.Option("--vin")]) -> None:
    """The consents recorded for one vehicle."""
    from gateway.keys import KeyRing

    try:
        refs = KeyRing.load(keys).vehicle_refs(vin)  # recorded before a rotation too
        with _open(store, "gw-1") as s, s.snapshot() as rd:
            found = rd.consents_of(refs)
    except GatewayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    def fmt(t: float | None) -> str:
        return "-" if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")

    for c in sorted(found, key=lambda c: c.id):
        typer.echo(
            f"{c.id}  {c.purpose}  granted {fmt(c.granted)}  "
            f"expires {fmt(c.expires)}  withdrawn {fmt(c.revoked)}"
        )
    if not found:
        typer.echo("no consents recorded for this vehicle")
