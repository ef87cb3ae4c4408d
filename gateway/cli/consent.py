"""``icvgw consent``: grant, import, withdraw and list consents in a gateway's store.

``import FILE.csv`` records many at once (header ``vin,purpose,expires``, an ``id`` column
optional), each row checked as ``grant`` checks its values. Every change is an audited
``consent.changed`` entry in the worker's shard and applies to the next batch the gateway
decides. The store keeps keyed vehicle references, so the key
directory is needed to name a vehicle by VIN.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from gateway.policy.bundle import PolicyBundle
    from gateway.store import Store

app = typer.Typer(
    name="consent",
    help="Consents at run time: grant, import, withdraw, list (audited; the next batch applies).",
    no_args_is_help=True,
)

_Store = Annotated[str, typer.Option("--store", help="sqlite:///PATH or postgresql://…")]
_Keys = Annotated[Path, typer.Option("--keys", help="The key directory.")]
_Worker = Annotated[
    str, typer.Option("--worker", help="The gateway worker whose shard records the change.")
]
_Policies = Annotated[
    Path | None,
    typer.Option(
        "--policies",
        "-p",
        help="Policy bundle whose purposes and VIN rule apply (default: the shipped one).",
        show_default=False,
    ),
]


def _open(store: str, worker: str) -> Store:
    from gateway.service import origin_of
    from gateway.store import open_store

    return open_store(store, shard=origin_of(worker))


def _bundle(policies: Path | None) -> PolicyBundle:
    from gateway.policy.loader import load_bundle

    return load_bundle(policies)


@app.command("grant")
def grant(
    store: _Store,
    keys: _Keys,
    vin: Annotated[str, typer.Option("--vin", help="The vehicle (a VIN, as the ingest checks).")],
    purpose: Annotated[str, typer.Option("--purpose", help="A purpose of the bundle's catalogue.")],
    expires: Annotated[
        str, typer.Option("--expires", help="ISO 8601 time with a UTC offset, in the future.")
    ],
    consent_id: Annotated[
        str | None, typer.Option("--id", help="The consent id (default: a new one).")
    ] = None,
    worker: _Worker = "gw-1",
    policies: _Policies = None,
) -> None:
    """Record a consent, from now until --expires (never open-ended)."""
    from gateway.consents import check_consent, new_consent_id
    from gateway.keys import KeyRing
    from gateway.model import Consent

    now = datetime.now(UTC).timestamp()
    try:
        end = check_consent(_bundle(policies), vin, purpose, expires, now=now)
    except ValueError as exc:
        name, _, reason = str(exc).partition(" ")
        raise typer.BadParameter(reason, param_hint=f"--{name}") from None
    cid = consent_id or new_consent_id()
    ring = KeyRing.load(keys)
    with _open(store, worker) as s, s.transaction() as tx:
        tx.put_consents(
            [Consent(cid, ring.vehicle_ref(vin), purpose, now, end)], at=now, instance=worker
        )
    typer.echo(f"granted {cid}: {purpose} until {datetime.fromtimestamp(end, UTC).isoformat()}")


@app.command("import")
def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV file with the header vin,purpose,expires (an id column may follow).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    store: _Store,
    keys: _Keys,
    worker: _Worker = "gw-1",
    policies: _Policies = None,
) -> None:
    """Record many consents at once (fleet onboarding), each row checked as 'grant' checks
    it. A file with a bad row imports nothing; importing a file again changes nothing. At
    most 100,000 rows a file; each consent is audited."""
    from gateway.consents import check_import, import_csv
    from gateway.keys import KeyRing

    now = datetime.now(UTC).timestamp()
    bundle = _bundle(policies)
    check_import(file, bundle, now=now)  # a bad row: nothing imported, the store untouched
    ring = KeyRing.load(keys)
    with _open(store, worker) as s:
        result = import_csv(s, bundle, ring.vehicle_ref, file, now=now, instance=worker)
    if result.written == 0:
        typer.echo(f"nothing to import: the {result.rows} consent(s) of {file} are recorded")
    else:
        typer.echo(
            f"imported {result.written} consent(s) from {file} (audited); "
            f"{result.unchanged} already recorded"
        )


@app.command("withdraw")
def withdraw(
    store: _Store,
    consent_id: Annotated[str, typer.Argument(help="The consent id.")],
    worker: _Worker = "gw-1",
) -> None:
    """Withdraw a consent from now on (final; audited)."""
    now = datetime.now(UTC).timestamp()
    with _open(store, worker) as s, s.transaction() as tx:
        done = tx.withdraw_consent(consent_id, at=now, instance=worker)
    if not done:
        typer.echo(f"error: no active consent {consent_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"withdrew {consent_id}")


@app.command("list")
def list_command(
    store: _Store,
    keys: _Keys,
    vin: Annotated[str, typer.Option("--vin", help="The vehicle.")],
) -> None:
    """The consents recorded for one vehicle."""
    from gateway.keys import KeyRing

    refs = KeyRing.load(keys).vehicle_refs(vin)  # recorded before a rotation too
    with _open(store, "gw-1") as s, s.snapshot() as rd:
        found = rd.consents_of(refs)

    def fmt(t: float | None) -> str:
        return "-" if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")

    for c in sorted(found, key=lambda c: c.id):
        typer.echo(
            f"{c.id}  {c.purpose}  granted {fmt(c.granted)}  "
            f"expires {fmt(c.expires)}  withdrawn {fmt(c.revoked)}"
        )
    if not found:
        typer.echo("no consents recorded for this vehicle")
