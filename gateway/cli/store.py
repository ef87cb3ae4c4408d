"""``icvgw deadletter`` and ``icvgw vehicle``: the store's working data, for the operator.

Dead letters are kept sealed (:mod:`gateway.store.deadletters`): ``list`` shows what can be
shown without the key directory (time, reason, keyed vehicle reference, size); ``show``
opens one with it, and is audited (``deadletter.read``). ``vehicle erase`` deletes one
vehicle's data from the store on request (PIPL art. 47), audited (``vehicle.erased``);
the audit log keeps its keyed references. Both act on the store, not on a running
gateway's memory: stop the worker that owns the vehicle first (see the README).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli.params import INT_MAX, out_file
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.keys import KeyRing
    from gateway.store import Store, Transaction

deadletter_app = typer.Typer(
    name="deadletter",
    help="Dead letters: list them, open one (key directory needed; audited).",
    no_args_is_help=True,
)
vehicle_app = typer.Typer(
    name="vehicle",
    help="One vehicle's data in the store: erase it on request (audited).",
    no_args_is_help=True,
)

_Store = Annotated[str, typer.Option("--store", help="sqlite:///PATH or postgresql://…")]
_Keys = Annotated[Path, typer.Option("--keys", help="The key directory.")]
_Worker = Annotated[
    str, typer.Option("--worker", help="The gateway worker whose shard records the action.")
]


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _open(store: str, worker: str, keys: KeyRing | None) -> Store:
    from gateway.service import origin_of
    from gateway.store import open_store

    return open_store(store, shard=origin_of(worker), keys=keys)


@deadletter_app.command("list")
def list_command(
    store: _Store,
    worker: _Worker = "gw-1",
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=INT_MAX, help="At most this many.")
    ] = 50,
    before: Annotated[
        int | None,
        typer.Option("--before", min=0, max=INT_MAX, help="Only those below this audit seq."),
    ] = None,
) -> None:
    """The newest dead letters: audit seq, time, reason, vehicle reference, size. Nothing
    of their content (no key directory needed)."""
    from gateway.service import origin_of
    from gateway.store import open_store
    from gateway.store.deadletters import deadletters

    with open_store(store, migrate=False) as s, s.snapshot() as rd:
        rows = deadletters(rd, origin_of(worker), limit, before_seq=before)
    for r in rows:
        typer.echo(f"{r.seq}  {_time(r.ts_ms)}  {r.reason}  {r.vehicle or '-'}  {r.size} B")
    if not rows:
        typer.echo("no dead letters")


@deadletter_app.command("show")
def show_command(
    store: _Store,
    keys: _Keys,
    seq: Annotated[
        int, typer.Argument(min=0, max=INT_MAX, help="The dead letter's audit seq (from list).")
    ],
    worker: _Worker = "gw-1",
    out: Annotated[
        Path | None,
        typer.Option("--out", callback=out_file, help="Write the payload's bytes to this file."),
    ] = None,
) -> None:
    """Open one dead letter: its topic and payload as received (audited as read)."""
    from gateway.keys import KeyRing
    from gateway.service import origin_of
    from gateway.store.deadletters import read_deadletter

    shard = origin_of(worker)
    now = datetime.now(UTC).timestamp()
    ring = KeyRing.load(keys)
    with _open(store, worker, ring) as s, s.transaction() as tx:
        row = read_deadletter(tx, shard, seq, at=now, instance=worker)
    if row is None:
        typer.echo(f"error: no dead letter {seq} in {shard}", err=True)
        raise typer.Exit(1)
    typer.echo(f"seq {row.seq}  {_time(row.ts_ms)}  {row.reason}  {len(row.payload)} B kept")
    typer.echo(f"topic: {row.topic}")
    if out is not None:
        _write_private(out, row.payload)
        typer.echo(f"payload written to {out} (mode 0600)")
        return
    typer.echo("payload:")
    sys.stdout.write(row.payload.decode("utf-8", errors="backslashreplace") + "\n")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (raw input: VINs, positions),
    an existing file included."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)
        f.write(data)


@vehicle_app.command("erase")
def erase_command(
    store: _Store,
    keys: _Keys,
    vin: Annotated[str, typer.Option("--vin", help="The vehicle to erase.")],
    worker: _Worker = "gw-1",
) -> None:
    """Erase one vehicle's data from the store: decision state (trip, held views), views
    not yet delivered and kept ones, dead letters, records seen; its consents are
    withdrawn. One audited ``vehicle.erased`` entry; the audit log stays."""
    from gateway.keys import KeyRing
    from gateway.policy.codes import is_vin_shaped

    if not is_vin_shaped(vin):  # a typo would erase nothing and be audited as an erasure
        typer.echo(
            "error: --vin: not a VIN (17 characters of 0-9 and A-Z without I, O, Q)", err=True
        )
        raise typer.Exit(2)
    now = datetime.now(UTC).timestamp()
    compacted: GatewayError | None = None
    ring = KeyRing.load(keys)
    with _open(store, worker, ring) as s:
        with s.transaction() as tx:
            details = erase(tx, ring, vin, at=now, instance=worker)
        try:
            s.compact()
        except GatewayError as exc:  # erased and committed all the same
            compacted = exc
    typer.echo(
        f"erased {ring.vehicle_ref(vin)}: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in details.items())
    )
    if compacted is not None:
        typer.echo(
            f"warning: the file was not compacted ({compacted}); the erased rows are zeroed "
            "but older copies of their pages may remain in the WAL until its next checkpoint",
            err=True,
        )


def erase(tx: Transaction, ring: KeyRing, vin: str, *, at: float, instance: str) -> dict[str, int]:
    """Erase ``vin``'s data in ``tx`` (see :func:`erase_command`) and audit it; returns
    what was erased per kind."""
    from gateway.store.forget import erase_vehicle
    from gateway.store.vehicle_states import vehicle_states_of
    from gateway.tlog.entries import AdminAction, AdminEntry
    from gateway.vehicle_state import decode

    refs = ring.vehicle_refs(vin)
    held = sum(len(decode(v, doc)[2]) for v, doc in vehicle_states_of(tx, refs))
    details = {**erase_vehicle(tx, refs, vin=vin), "held_views": held}
    withdrawn = 0
    for c in tx.consents_of(refs):
        withdrawn += tx.withdraw_consent(c.id, at=at, instance=instance)
    details["consents_withdrawn"] = withdrawn
    entry = AdminEntry(
        time=at,
        instance=instance,
        action=AdminAction.VEHICLE_ERASED,
        subject=ring.vehicle_ref(vin),
        details=dict(details),
    )
    tx.append_audit([entry])
    return details
