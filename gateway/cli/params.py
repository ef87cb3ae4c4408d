"""Values of the ``icvgw`` commands that are checked where they enter: output paths, choices.

Every ``--out``-like option passes its value through :func:`out_file` (or
:func:`out_file_or_dir`) as a Typer callback, so a path that cannot be written is a usage
error naming the path and the reason before the command does anything (writes an audit
entry, generates a fleet, reads a store), not an ``OSError`` half way through.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import typer


def _check(path: Path | None, *, dir_ok: bool) -> Path | None:
    if path is None:
        return None
    if path.is_dir():
        if dir_ok:
            parent = path
        else:
            raise typer.BadParameter(f"{path}: is a directory, not a file")
    else:
        parent = path.parent
    if not parent.exists():
        raise typer.BadParameter(f"{path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise typer.BadParameter(f"{path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{path}: directory {parent} is not writable")
    return path


def out_file(path: Path | None) -> Path | None:
    """A file to write: its directory exists and is writable; it is not a directory."""
    return _check(path, dir_ok=False)


def out_file_or_dir(path: Path | None) -> Path | None:
    """A file to write, or an existing directory to write files into."""
    return _check(path, dir_ok=True)


def one_of(*values: str) -> Callable[[str | None], str | None]:
    """A Typer callback accepting only ``values`` (or no value): a typo is an error that
    lists the valid values, never a filter that silently matches nothing."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in values:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(values)}")
        return value

    return check
