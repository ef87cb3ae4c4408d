"""The ``icvgw`` command line: one program, one sub-command per job.

Each command group is a module of :mod:`gateway.cli` and is mounted here, so this file
reads as the table of contents of the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup, TyperOption

from gateway import __version__
from gateway.errors import ConfigError, GatewayError


class _Icvgw(TyperGroup):
    """The root command: the one place where an error becomes one line and an exit status.

    A command raises; it does not print-and-exit. A usage error (bad value, missing option),
    a :class:`~gateway.errors.GatewayError` or an :class:`OSError` (a file that cannot be
    written or read) ends the program with ``error: <what>: <why>`` on stderr, no traceback,
    and exit status 2 (bad input); a :class:`~gateway.errors.ConfigError` lists each of its
    problems on its own line. Anything else is a bug and keeps its traceback.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        _plain_flags(self)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except typer.TyperException as exc:  # usage errors: bad value, missing option
            code = _usage_error(exc)
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = 1
        except ConfigError as exc:
            for problem in exc.problems:
                typer.echo(f"error: {problem}", err=True)
            code = 2
        except GatewayError as exc:
            typer.echo(f"error: {_one_line(str(exc))}", err=True)
            code = 2
        except OSError as exc:
            typer.echo(f"error: {_os_error(exc)}", err=True)
            code = 2
        if standalone_mode:
            sys.exit(code)
        return code


def _usage_error(exc: typer.TyperException) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {_one_line(exc.format_message())}{hint}", err=True)
    return exc.exit_code


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _os_error(exc: OSError) -> str:
    """``FILE: reason`` for an OSError (both files of a rename), else its text."""
    if exc.filename is None:
        return _one_line(str(exc))
    where = str(exc.filename)
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    return f"{where}: {exc.strerror or exc}"


def _plain_flags(group: TyperGroup) -> None:
    """Show flags (``--dry-run``, ``--help``) without a value placeholder: Typer renders
    every boolean flag as ``--flag <bool>`` in help, though a flag takes no value."""
    stack: list[Any] = [group]
    while stack:
        command = stack.pop()
        help_option = command.get_help_option(typer.Context(command))
        for param in [*command.params, help_option]:
            if isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""
        stack.extend(getattr(command, "commands", {}).values())


app = typer.Typer(
    name="icvgw",
    cls=_Icvgw,
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
    from gateway.cli.audit import app as audit_app
    from gateway.cli.keys import app as keys_app

    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")

    from gateway.cli.policy import app as policy_app

    app.add_typer(policy_app, name="policy")

    from simulators.cli import simulate

    app.command("simulate")(simulate)

    from gateway.cli.consent import app as consent_app

    app.add_typer(consent_app, name="consent")

    from gateway.cli.store import deadletter_app, vehicle_app

    app.add_typer(deadletter_app, name="deadletter")
    app.add_typer(vehicle_app, name="vehicle")

    from gateway.cli.run import run

    app.command("run")(run)

    from gateway.cli.api import api, apikey_app

    app.command("api")(api)
    app.add_typer(apikey_app, name="apikey")

    from gateway.cli.webhook import app as webhook_app

    app.add_typer(webhook_app, name="webhook")

    from gateway.cli.demo import demo

    app.command("demo")(demo)


_mount()


def main() -> None:
    """Entry point of the ``icvgw`` console script."""
    app()
