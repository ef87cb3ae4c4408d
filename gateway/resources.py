"""Where the data shipped with the package lives, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def default_policy_dir() -> Path:
    """The default policy bundle: inside the wheel when installed, ``policies/default`` in a
    source checkout (editable install)."""
    bundled = _PACKAGE / "_bundled" / "policies" / "default"
    if bundled.is_dir():
        return bundled
    return _PACKAGE.parent / "policies" / "default"
