"""Fixtures for policy tests: the shipped bundle, and private copies to break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.resources import default_policy_dir


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A private copy of the default bundle, safe to edit."""
    target = tmp_path / "bundle"
    shutil.copytree(default_policy_dir(), target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of ``old`` in ``path`` (fails if not exactly one)."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path.name}"
    path.write_text(text.replace(old, new), encoding="utf-8")
