"""Loading a bundle in a child process: the same bundle, the same problems, and a fallback."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

from gateway.errors import PolicyError
from gateway.policy import child
from gateway.policy.child import load_in_child
from gateway.policy.loader import load_bundle
from tests.policy.conftest import edit


def test_a_bundle_loaded_in_a_child_is_the_bundle_loaded_here(bundle_dir: Path) -> None:
    here = load_bundle(bundle_dir)
    there = load_in_child(bundle_dir)
    assert there.version == here.version
    assert dict(there.subscribers) == dict(here.subscribers)
    assert dict(there.fields) == dict(here.fields) and there.consents == here.consents
    assert [z.id for z in there.zones] == [z.id for z in here.zones]
    assert there.zones.points_in_zones([31.2304], [121.4737]).level.tolist() == (
        here.zones.points_in_zones([31.2304], [121.4737]).level.tolist()
    )
    with pytest.raises(TypeError):
        there.fields["x"] = None  # type: ignore[index]  # still read-only


def test_a_broken_bundle_reports_the_same_problems_from_the_child(bundle_dir: Path) -> None:
    edit(bundle_dir / "rules.yaml", "dedup_window_s: 86400", "dedup_window_s: soon")
    with pytest.raises(PolicyError) as here:
        load_bundle(bundle_dir)
    with pytest.raises(PolicyError) as there:
        load_in_child(bundle_dir)
    assert there.value.problems == here.value.problems
    assert str(there.value) == str(here.value)


def test_errors_and_bundles_survive_pickling(bundle_dir: Path) -> None:
    error = PolicyError([])
    try:
        edit(bundle_dir / "rules.yaml", "dedup_window_s: 86400", "dedup_window_s: soon")
        load_bundle(bundle_dir)
    except PolicyError as exc:
        error = exc
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is PolicyError and back.problems == error.problems
    assert str(back) == str(error) and error.problems


def test_without_a_child_process_the_bundle_is_loaded_here(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class NoProcesses:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise OSError("no processes here")

    monkeypatch.setattr(child, "ProcessPoolExecutor", NoProcesses)
    with caplog.at_level(logging.WARNING, logger="gateway.policy"):
        bundle = load_in_child(bundle_dir)
    assert bundle.version == load_bundle(bundle_dir).version
    assert "no processes here" in caplog.text and "loading here" in caplog.text
