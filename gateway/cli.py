"""The ``icvgw`` command line: one program, one sub-command per job.

Each command group lives beside the code it drives (``gateway/<area>/cli.py``) and is
mounted here, so this file reads as the table of contents of the CLI.
"""

from __future__ import annotations

import typer

from gateway import __version__

app = typer.Typer(
    name="icvgw",
    help="icv-gateway: share connected-vehicle telemetry under China's data rules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"icvgw {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """icv-gateway: share connected-vehicle telemetry under China's data rules."""


def _mount() -> None:
    """Mount each command group. Imports are local so ``icvgw --help`` stays quick."""
    from gateway.audit.cli import app as audit_app
    from gateway.keys_cli import app as keys_app

    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")

    from gateway.policy.cli import app as policy_app

    app.add_typer(policy_app, name="policy")

    from gateway.explain_cli import explain

    # explain runs the pipeline, which reads the policy package: it lives outside it.
    policy_app.command("explain")(explain)

    from simulators.cli import simulate

    app.command("simulate")(simulate)

    from gateway.consent_cli import app as consent_app

    app.add_typer(consent_app, name="consent")

    from gateway.store_cli import deadletter_app, vehicle_app

    app.add_typer(deadletter_app, name="deadletter")
    app.add_typer(vehicle_app, name="vehicle")

    from gateway.run_cli import run

    app.command("run")(run)

    from gateway.demo import demo

    app.command("demo")(demo)


_mount()


def main() -> None:
    """Entry point of the ``icvgw`` console script."""
    app()
