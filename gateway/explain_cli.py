"""``icvgw policy explain``: what each subscriber would receive for a record, and why.

A tool that runs the pipeline (:mod:`gateway.explain`), so it lives outside the ``policy``
package, which the pipeline reads; :mod:`gateway.cli` mounts it in the ``policy`` group.
Like every command module, it imports the heavy modules when it runs, not when mounted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.policy.cli import _load, _Policies


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
