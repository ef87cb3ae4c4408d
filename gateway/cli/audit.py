"""``icvgw audit``: the auditor's commands — verify, export, query, proof — and the
operator's — checkpoint, prune.

Exit codes: 0 verified / done, 1 verification failed, 2 bad input (unreadable file, bad
URL, unknown shard).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from gateway.audit.export import export_store
from gateway.audit.log import AuditLog, retention_days
from gateway.audit.proof import check_proof_document, proof_document
from gateway.audit.query import iter_json_lines, render_table, write_csv
from gateway.audit.verify import ShardReport, verify_export, verify_store
from gateway.cli.params import INT_MAX, one_of, out_file, out_file_or_dir
from gateway.crypto import NoteVerifier
from gateway.errors import GatewayError, VerificationError
from gateway.keys import KeyRing
from gateway.store import open_store
from gateway.store.audit import AuditQuery
from gateway.tlog.checkpoint import checkpoint_of
from gateway.tlog.entries import Decision, parse_time
from gateway.tlog.note import read_verifier_keys

app = typer.Typer(
    name="audit",
    help="Verify, export, query and prove the tamper-evident audit log.",
    no_args_is_help=True,
)

StoreUrl = Annotated[
    str, typer.Option("--store", help="Store URL: sqlite:///PATH or postgresql://…")
]
ShardOpt = Annotated[
    str | None, typer.Option("--shard", help="The log shard (origin); default: the only one.")
]


def _bad_input(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _load_public_keys(paths: list[Path]) -> list[NoteVerifier]:
    keys: list[NoteVerifier] = []
    for p in paths:
        try:
            keys.extend(read_verifier_keys(p.read_text()))
        except UnicodeDecodeError as exc:  # an OSError is said by the root command
            raise _bad_input(f"{p}: not a verifier key file ({exc.reason})") from exc
        except VerificationError as exc:
            raise _bad_input(f"{p}: {exc}") from exc
    if not keys:
        raise _bad_input("no verifier key in the --public-key files")
    return keys


def _print_report(r: ShardReport) -> None:
    if r.error is not None:
        where = f" at seq {r.error.seq}" if r.error.seq is not None else ""
        typer.echo(
            f"FAIL {r.origin}{where}: {r.error} "
            f"({r.uncovered} entries not yet covered by any checkpoint)"
        )
        return
    trusted = (
        f"; extends trusted checkpoint(s) of size {', '.join(map(str, r.trusted))}"
        if r.trusted
        else ""
    )
    typer.echo(
        f"OK {r.origin}: verified size {r.verified_size}, root {r.root_b64}; "
        f"{r.entries} entries, {r.uncovered} not yet covered by a checkpoint, "
        f"{r.pruned} pruned to hashes, {r.checkpoints} checkpoint(s){trusted}"
    )


@app.command("verify")
def verify_command(
    public_key: Annotated[
        list[Path],
        typer.Option("--public-key", help="Verifier key file (note format); repeatable."),
    ],
    store: Annotated[
        str | None, typer.Option("--store", help="Store URL to verify every shard of.")
    ] = None,
    export: Annotated[
        list[Path] | None,
        typer.Option(
            "--export",
            exists=True,
            dir_okay=False,
            help="An export FILE.jsonl (FILE.jsonl.checkpoint beside it).",
        ),
    ] = None,
    trusted_checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--trusted-checkpoint",
            exists=True,
            dir_okay=False,
            help="A checkpoint you kept earlier; repeatable.",
        ),
    ] = None,
) -> None:
    """Recompute every shard's tree and check it against its signed checkpoints."""
    if (store is None) == (not export):
        raise _bad_input("give either --store or --export")
    verifiers = _load_public_keys(public_key)
    trusted: list[bytes] = []
    for p in trusted_checkpoint or []:
        trusted.append(p.read_bytes())
        try:
            checkpoint_of(trusted[-1])
        except VerificationError as exc:
            raise _bad_input(f"--trusted-checkpoint {p}: not a checkpoint ({exc})") from None
    reports: list[ShardReport] = []
    if store is not None:
        with open_store(store, migrate=False) as s:
            reports = verify_store(s, verifiers, trusted)
        if not reports:
            raise _bad_input("the store holds no audit shard")
    else:
        reports = [verify_export(p, verifiers, trusted) for p in export or []]
        origins = {r.origin for r in reports}
        for note in trusted:
            origin = checkpoint_of(note).origin
            if origin not in origins:
                reports.append(
                    ShardReport(
                        origin,
                        error=VerificationError(
                            "a trusted checkpoint names this shard but no export has it",
                            shard=origin,
                        ),
                    )
                )
    for r in reports:
        _print_report(r)
    if any(r.error is not None for r in reports):
        raise typer.Exit(1)


@app.command("export")
def export_command(
    store: StoreUrl,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            callback=out_file_or_dir,
            help="FILE.jsonl (or a directory, for several shards).",
        ),
    ],
    shard: ShardOpt = None,
) -> None:
    """Write the entries exactly as hashed, one per line, and the newest checkpoint beside."""
    with open_store(store, migrate=False) as s:
        results = export_store(s, out, shard=shard)
    for r in results:
        cp = f", checkpoint (size {r.checkpoint_size}) in {r.checkpoint}" if r.checkpoint else ""
        typer.echo(f"{r.origin}: {r.entries} entries to {r.path}{cp}")


def _time_option(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except GatewayError as exc:
        raise _bad_input(f"{name}: {exc}") from exc


_DECISIONS = tuple(str(d) for d in Decision)
DEFAULT_QUERY_LIMIT = 100


@app.command("query")
def query_command(
    store: StoreUrl,
    subscriber: Annotated[
        str | None, typer.Option("--subscriber", help="A subscriber id of the bundle.")
    ] = None,
    vin: Annotated[
        str | None, typer.Option("--vin", help="Needs --keys to compute the vehicle reference.")
    ] = None,
    keys: Annotated[Path | None, typer.Option("--keys", help="The key directory.")] = None,
    decision: Annotated[
        str | None,
        typer.Option(
            "--decision", callback=one_of(*_DECISIONS), help=f"One of {', '.join(_DECISIONS)}."
        ),
    ] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="A rule id that fired.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO 8601 time (UTC if no offset), inclusive.")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601 time, exclusive.")] = None,
    kind: Annotated[
        str | None,
        typer.Option("--kind", callback=one_of("decision", "admin"), help="decision or admin."),
    ] = None,
    shard: ShardOpt = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            min=0,
            max=INT_MAX,
            help="At most this many entries, oldest first; 0 for all of them.",
        ),
    ] = DEFAULT_QUERY_LIMIT,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", callback=one_of("table", "json", "csv"), help="table, json or csv."
        ),
    ] = "table",
) -> None:
    """List entries by subscriber, vehicle, decision, rule and time (the first --limit;
    says so when more match)."""
    vehicles = None
    if vin is not None:
        if keys is None:
            raise typer.BadParameter(
                "needs --keys DIR to compute the vehicle reference", param_hint="--vin"
            )
        vehicles = KeyRing.load(keys).vehicle_refs(vin)
    q = AuditQuery(
        shard=shard,
        subscriber=subscriber,
        vehicles=vehicles,
        decision=decision,
        rule=rule,
        kind=kind,
        since_ms=_time_option(since, "--since"),
        until_ms=_time_option(until, "--until"),
        limit=limit + 1 if limit else None,  # one more: to say that more match
    )
    with open_store(store, migrate=False) as s, s.snapshot() as r:
        found = iter(r.query(q))
        entries = itertools.islice(found, limit) if limit else found
        if fmt == "table":
            render_table(entries, Console(width=200))
        elif fmt == "json":
            for chunk in iter_json_lines(entries):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        else:
            write_csv(entries, sys.stdout)
        more = limit and next(found, None) is not None
    if more:
        typer.echo(
            f"more entries match: these are the first {limit}; give --limit N for more, "
            "--limit 0 for all",
            err=fmt != "table",
        )


@app.command("proof")
def proof_command(
    store: StoreUrl,
    seq: Annotated[int, typer.Argument(help="Sequence number of the entry.")],
    shard: ShardOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", callback=out_file, help="Write JSON here (default: stdout)."),
    ] = None,
) -> None:
    """The inclusion proof of one entry against the newest checkpoint, as JSON."""
    with open_store(store, migrate=False) as s:
        doc = proof_document(s, seq, shard=shard)
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        out.write_bytes(data)


@app.command("check-proof")
def check_proof_command(
    proof: Annotated[Path, typer.Argument(help="A proof JSON from 'icvgw audit proof'.")],
    public_key: Annotated[list[Path], typer.Option("--public-key", help="Verifier key file.")],
) -> None:
    """Check an inclusion proof offline: signature, leaf hash, path to the root."""
    verifiers = _load_public_keys(public_key)
    try:
        doc = orjson.loads(proof.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise _bad_input(f"{proof}: not JSON: {exc}") from exc
    try:
        check_proof_document(doc, verifiers)
    except VerificationError as exc:
        typer.echo(f"FAIL: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(f"OK: entry {doc['seq']} is in {doc['origin']} at size {doc['tree_size']}")


@app.command("checkpoint")
def checkpoint_command(
    store: StoreUrl,
    keys: Annotated[Path, typer.Option("--keys", help="The key directory.")],
    shard: Annotated[str, typer.Option("--shard", help="The log shard (origin) to sign.")],
) -> None:
    """Sign a checkpoint of the shard's current head now."""
    ring = KeyRing.load(keys)
    with open_store(store, shard=shard) as s:
        note = AuditLog.from_keyring(s, ring).checkpoint()
    if note is None:
        typer.echo("the newest checkpoint already covers the log")
    else:
        sys.stdout.write(note.decode())


@app.command("prune")
def prune_command(
    store: StoreUrl,
    keys: Annotated[Path, typer.Option("--keys", help="The key directory.")],
    shard: Annotated[str, typer.Option("--shard", help="The log shard (origin).")],
    keep_days: Annotated[
        float | None,
        typer.Option(
            "--retention-days",
            help="Keep bodies this long; at least the policy's retention (the default).",
        ),
    ] = None,
    policies: Annotated[
        Path | None,
        typer.Option("--policies", "-p", help="Policy bundle (default: the shipped one)."),
    ] = None,
) -> None:
    """Drop entry bodies older than the retention period (hashes stay; still verifies).

    The period is at least the bundle's ``retention.audit_years`` and
    ``retention.network_log_months`` (the log is the gateway's record of processing and its
    network log), never under 3 years (RULES.md §5): a shorter one is refused."""
    from gateway.policy.loader import load_bundle

    kept = load_bundle(policies).rules.retention
    floor = max(
        retention_days(years=kept.audit_years), retention_days(months=kept.network_log_months)
    )
    if keep_days is None:
        keep_days = float(floor)
    if not keep_days >= floor:
        raise _bad_input(
            f"refused: --retention-days {keep_days:g} is below the {floor} days the rules "
            f"keep the audit log (retention.audit_years {kept.audit_years}, "
            f"network_log_months {kept.network_log_months}; RULES.md §5)"
        )
    ring = KeyRing.load(keys)
    with open_store(store, shard=shard) as s:
        n = AuditLog.from_keyring(s, ring).prune(retention_days=keep_days)
    typer.echo(f"pruned {n} entr{'y' if n == 1 else 'ies'}")
