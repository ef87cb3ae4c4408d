"""``icvgw policy``: check a bundle, show what it shares with whom, print a delivery's schema,
explain what a record would become (:mod:`gateway.explain`, which runs the pipeline).

The policy modules (pydantic, shapely, pyproj) are imported by the commands, not here, so
mounting this group keeps ``icvgw --help`` quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from gateway.policy.bundle import PolicyBundle
    from gateway.policy.schema import ImpactAssessment, MapReview, Subscriber

app = typer.Typer(
    name="policy",
    help="Check, show and describe policy bundles.",
    no_args_is_help=True,
)

_DIR_HELP = "Policy bundle directory (default: the bundle shipped with the gateway)."
_Policies = Annotated[
    Path | None,
    typer.Option("--policies", "-p", help=_DIR_HELP, show_default=False, metavar="DIR"),
]
# Older spellings, still accepted and hidden from help: a positional DIR (check, show) and
# --dir/-d (schema). Every command now spells the bundle --policies/-p, as run, explain,
# consent and audit prune do.
_OldDirArgument = Annotated[Path | None, typer.Argument(hidden=True, show_default=False)]
_OldDirOption = Annotated[Path | None, typer.Option("--dir", "-d", hidden=True)]


def _directory(policies: Path | None, old: Path | None) -> Path | None:
    if policies is not None and old is not None and policies != old:
        raise typer.BadParameter(f"given twice, as {policies} and {old}", param_hint="--policies")
    return policies if policies is not None else old


def _load(directory: Path | None) -> PolicyBundle:
    """The bundle, or every problem on stderr and exit status 1."""
    from gateway.errors import PolicyError
    from gateway.policy.loader import load_bundle

    try:
        return load_bundle(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        if len(exc.problems) > 1:  # one problem is one line, as every CLI error is
            typer.echo(f"{len(exc.problems)} problems: the bundle does not load", err=True)
        raise typer.Exit(1) from None


@app.command("check")
def check(policies: _Policies = None, directory: _OldDirArgument = None) -> None:
    """Validate a bundle: exit 0 if it loads, else list every problem and exit 1."""
    bundle = _load(_directory(policies, directory))
    typer.echo(f"ok: {bundle.directory}")
    typer.echo(f"version {bundle.version}")
    typer.echo(
        f"{len(bundle.fields)} fields, {len(bundle.aliases)} aliases, "
        f"{len(bundle.subscribers)} subscribers, {len(bundle.zones)} zones, "
        f"{len(bundle.consents)} consents, {len(bundle.rules.catalogue)} rules"
    )


@app.command("show")
def show(policies: _Policies = None, directory: _OldDirArgument = None) -> None:
    """Summarise a bundle: subscribers, their views, legal bases and zones."""
    from rich.console import Console

    bundle = _load(_directory(policies, directory))
    console = Console()
    console.print(f"bundle  [bold]{bundle.directory}[/bold]")
    console.print(f"version {bundle.version}")
    console.print(_overview_table(bundle))
    for sub in bundle.subscribers.values():
        console.print(_subscriber_table(sub))
    console.print(_legal_table(bundle))
    console.print(_zones_table(bundle))
    rules = bundle.rules
    pi = rules.crossborder.personal_information
    spi = rules.crossborder.sensitive_personal_information
    console.print(
        f"grid floor {rules.geo.grid_floor_m:g} m; cross-border PI: contract from "
        f"{pi.contract_from:,}, assessment from {pi.assessment_from:,} people; sensitive PI: "
        f"contract from {spi.contract_from:,}, assessment from {spi.assessment_from:,} "
        f"(per calendar year, UTC{rules.crossborder.year_utc_offset_hours:+d}); PI of more "
        f"than 100,000 people is important data: "
        f"{'yes' if rules.crossborder.vehicle_pi_over_100k_important else 'no'}; audit kept "
        f"{rules.retention.audit_years} years; views kept {rules.retention.outbox_days:g} days, "
        f"dead letters {rules.retention.deadletter_days:g} days, vehicle state "
        f"{rules.retention.vehicle_state_days:g} days"
    )


@app.command("schema")
def schema(
    subscriber: Annotated[str, typer.Argument(help="Subscriber id.")],
    policies: _Policies = None,
    directory: _OldDirOption = None,
    view: Annotated[
        bool,
        typer.Option(
            "--view",
            help="One view's schema, even for a subscriber that takes batches (what a "
            "/v1/records record holds).",
        ),
    ] = False,
) -> None:
    """Print the JSON Schema of what one delivery to SUBSCRIBER carries: one view, or for a
    view with delivery.batch_max_views above 1 a batch (a JSON array of views)."""
    from gateway.policy.view_schema import delivery_schema, view_schema

    bundle = _load(_directory(policies, directory))
    if subscriber not in bundle.subscribers:
        known = ", ".join(bundle.subscribers)
        typer.echo(f"error: unknown subscriber {subscriber!r}; the bundle has: {known}", err=True)
        raise typer.Exit(1)
    described = (view_schema if view else delivery_schema)(bundle, subscriber)
    typer.echo(json.dumps(described, indent=2, ensure_ascii=False))


@app.command("explain")
def explain(
    record: Annotated[
        Path,
        typer.Argument(
            help="A record as a vehicle publishes it: a JSON object, or an array read as a "
            "trace ('-' reads stdin).",
            show_default=False,
        ),
    ],
    policies: _Policies = None,
    subscriber: Annotated[
        list[str] | None,
        typer.Option(
            "--subscriber", "-s", help="Only this subscriber (repeatable).", show_default=False
        ),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            help="Key directory for the real pseudonyms (default: an ephemeral key).",
            show_default=False,
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Decision time for expiry checks: ISO 8601 with offset or Unix seconds "
            "(default: the latest record time).",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    trip_start: Annotated[
        bool,
        typer.Option(
            "--trip-start",
            help="Treat each vehicle's first record as the start of a trip (default: mid-trip).",
        ),
    ] = False,
) -> None:
    """Show what each subscriber would receive for RECORD, and which rules decided it."""
    from gateway.explain import run_explain

    bundle = _load(policies)
    status = run_explain(
        bundle,
        record,
        subscribers=subscriber,
        keys=keys,
        at=at,
        output_format=output_format,
        trip_start=trip_start,
    )
    raise typer.Exit(status)


def _overview_table(bundle: PolicyBundle) -> Table:
    from rich.table import Table

    table = Table(title="Subscribers", title_justify="left")
    for column in ("id", "region / storage", "scope", "position", "identifier", "delivery"):
        table.add_column(column, no_wrap=column == "id")
    for sub in bundle.subscribers.values():
        table.add_row(
            sub.id,
            f"{sub.region} / {sub.storage_region}",
            "mainland" if sub.mainland else "[bold]cross-border[/bold]",
            _position(sub),
            str(sub.view.identifier),
            str(sub.view.delivery.channel),
        )
    return table


def _record(record: ImpactAssessment | MapReview | None, needed: bool) -> str:
    """A recorded reference with its date; "none" in bold where the rules need one."""
    if record is None:
        return "[bold]none[/bold]" if needed else "-"
    return f"{record.reference}, {record.date}"


def _subscriber_table(sub: Subscriber) -> Table:
    """One subscriber as ``setting | value`` rows: readable at any terminal width."""
    from rich.table import Table

    from gateway.policy.schema import AltitudeMode

    view = sub.view
    table = Table(title=f"{sub.id}: {sub.name}", title_justify="left", show_header=False)
    table.add_column("setting", style="bold", no_wrap=True)
    table.add_column("value")
    quals = [f"{q.kind} {q.certificate}, to {q.expires}" for q in sub.qualifications]
    zones = [f"{a.zone} ({a.reference}), to {a.expires}" for a in sub.zone_authorisations]
    bases = [
        f"{b.kind} {b.id}: {', '.join(str(c) for c in b.covers)}, to {b.expires}"
        for b in sub.legal_bases
    ]
    altitude = str(view.altitude)
    if view.altitude is AltitudeMode.COARSEN and view.altitude_step_m is not None:
        altitude = f"coarsen to {view.altitude_step_m:g} m"
    delivery = (view.delivery.channel, view.delivery.topic, view.delivery.url)
    rows = (
        ("region / storage", f"{sub.region} / {sub.storage_region}"),
        ("purposes", ", ".join(sub.purposes)),
        ("qualifications", "\n".join(quals) or "-"),
        ("zone authorisations", "\n".join(zones) or "-"),
        ("legal bases", "\n".join(bases) or ("[bold]none[/bold]" if sub.cross_border else "-")),
        ("impact assessment", _record(sub.impact_assessment, sub.cross_border)),
        ("map review", _record(sub.map_review, sub.has_qualification)),
        ("allows", _allows(sub)),
        ("position", _position(sub)),
        ("time precision", f"{view.time_precision_s:g} s"),
        ("min interval", f"{view.min_interval_s:g} s per vehicle"),
        ("identifier", str(view.identifier)),
        ("trip trim", f"{view.trip_trim_m:g} m"),
        ("altitude", altitude),
        ("location-derived", str(view.location_derived)),
        ("without consent", str(view.no_consent)),
        ("delivery", " ".join(str(part) for part in delivery if part)),
    )
    for key, value in rows:
        table.add_row(key, value)
    return table


def _allows(sub: Subscriber) -> str:
    parts = [", ".join(str(c) for c in sub.view.categories)] if sub.view.categories else []
    parts.extend(sub.view.fields)
    return "\n".join(parts) or "-"


def _position(sub: Subscriber) -> str:
    from gateway.policy.schema import LegalBasisKind

    view = sub.view
    approval = LegalBasisKind.GEODATA_EXPORT_APPROVAL
    if sub.cross_border and not any(b.kind is approval for b in sub.legal_bases):
        return "none (abroad, no geodata export approval)"
    precision = "raw" if view.raw_location else f"{view.location_precision_m:g} m grid"
    return f"{precision}, {view.datum}"


def _legal_table(bundle: PolicyBundle) -> Table:
    from rich.table import Table

    table = Table(title="Legal bases for export", title_justify="left")
    for column in ("subscriber", "kind", "id", "covers", "expires"):
        table.add_column(column)
    for sub in bundle.subscribers.values():
        for basis in sub.legal_bases:
            table.add_row(
                sub.id,
                str(basis.kind),
                basis.id,
                ", ".join(str(c) for c in basis.covers),
                str(basis.expires),
            )
        if sub.cross_border and not sub.legal_bases:
            table.add_row(sub.id, "[bold]none recorded[/bold]", "-", "-", "-")
    return table


def _zones_table(bundle: PolicyBundle) -> Table:
    from rich.table import Table

    table = Table(title="Restricted zones", title_justify="left")
    for column in ("id", "level", "buffer", "name"):
        table.add_column(column)
    for zone in bundle.zones:
        table.add_row(zone.id, zone.level.name.lower(), f"{zone.buffer_m:g} m", zone.name or "")
    return table
