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


def line_of(path: Path, text: str, nth: int | None = None) -> int:
    """1-based line of the one line of ``path`` containing ``text`` (or of the ``nth``)."""
    hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    if nth is not None:
        return hits[nth]
    assert len(hits) == 1, f"{text!r} on lines {hits} of {path.name}"
    return hits[0]


def feature_line(path: Path, index: int) -> int:
    """Line of the ``{`` opening feature ``index`` of a pretty-printed FeatureCollection."""
    starts = [
        i
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip() == "{" and line.startswith("    {")
    ]
    return starts[index]
