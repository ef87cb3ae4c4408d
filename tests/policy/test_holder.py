"""Reload: a bundle that fails to load leaves the last good one in force, and says so."""

from __future__ import annotations

import logging
import os
import tracemalloc
from pathlib import Path

import pytest

from gateway.errors import PolicyError
from gateway.policy import PolicyBundle, PolicyHolder, load_bundle
from gateway.policy import holder as holder_module
from gateway.policy.holder import HASH_EVERY, bundle_fingerprint
from tests.policy.conftest import edit

SUBSCRIBERS = "subscribers.yaml"


def test_first_load_must_succeed(bundle_dir: Path) -> None:
    edit(bundle_dir / "rules.yaml", "  grid_floor_m: 50", "  grid_floor_m: -1")
    with pytest.raises(PolicyError):
        PolicyHolder(bundle_dir)


def test_reload_swaps_in_a_good_bundle(bundle_dir: Path) -> None:
    holder = PolicyHolder(bundle_dir)
    first = holder.current
    edit(bundle_dir / SUBSCRIBERS, "      min_interval_s: 30\n", "      min_interval_s: 45\n")
    assert holder.reload() is True
    assert holder.current is not first
    assert holder.current.version != first.version
    assert holder.current.subscribers["insureco-ubi"].view.min_interval_s == 45
    assert holder.last_error is None


def test_failed_reload_keeps_last_good_and_reports(
    bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = PolicyHolder(bundle_dir)
    good = holder.current
    edit(bundle_dir / SUBSCRIBERS, "      min_interval_s: 30\n", "      min_interval_s: -1\n")
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        assert holder.reload() is False
    assert holder.current is good
    assert holder.failures == 1
    assert holder.last_error is not None
    assert [p.field for p in holder.last_error.problems] == ["subscribers[1].view.min_interval_s"]
    assert f"version {good.short_version} stays in force" in caplog.text
    assert "subscribers[1].view.min_interval_s" in caplog.text
    # fixed: the next reload succeeds and clears the error
    edit(bundle_dir / SUBSCRIBERS, "      min_interval_s: -1\n", "      min_interval_s: 30\n")
    assert holder.reload() is True
    assert holder.last_error is None
    assert holder.current.version == good.version


def test_poll_reloads_only_on_change(bundle_dir: Path) -> None:
    loads: list[Path] = []

    def counting_loader(directory: Path) -> PolicyBundle:
        loads.append(directory)
        return load_bundle(directory)

    holder = PolicyHolder(bundle_dir, loader=counting_loader)
    assert len(loads) == 1
    assert holder.poll() is False
    assert len(loads) == 1
    # a comment-only edit: files changed, reloaded, but the version is the same
    edit(bundle_dir / "rules.yaml", "geo:\n", "# edited\ngeo:\n")
    assert holder.poll() is False
    assert len(loads) == 2
    assert holder.poll() is False
    assert len(loads) == 2
    # a semantic edit: a new version comes into force
    before = holder.current.version
    edit(bundle_dir / "rules.yaml", "split_gap_s: 600", "split_gap_s: 900")
    assert holder.poll() is True
    assert holder.current.version != before
    assert holder.current.rules.trips.split_gap_s == 900


def test_unchanged_files_are_not_hashed_on_every_poll(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = PolicyHolder(bundle_dir)
    hashed: list[Path] = []

    def counting(directory: Path) -> str:
        hashed.append(directory)
        return bundle_fingerprint(directory)

    monkeypatch.setattr(holder_module, "bundle_fingerprint", counting)
    for _ in range(HASH_EVERY):
        assert holder.poll() is False
    assert hashed == []
    assert holder.poll() is False  # the backstop: hashed once every HASH_EVERY polls
    assert len(hashed) == 1


def test_an_edit_hidden_from_the_modification_time_is_still_found(bundle_dir: Path) -> None:
    holder = PolicyHolder(bundle_dir)
    rules = bundle_dir / "rules.yaml"
    before = os.stat(rules)
    # Same length, same modification time: what two quick edits on a coarse clock look like.
    edit(rules, "split_gap_s: 600", "split_gap_s: 900")
    os.utime(rules, ns=(before.st_atime_ns, before.st_mtime_ns))
    found = [holder.poll() for _ in range(HASH_EVERY + 1)]
    assert found[-1] is True and not any(found[:-1])
    assert holder.current.rules.trips.split_gap_s == 900


def test_broken_edit_reported_once_then_retried_on_next_change(bundle_dir: Path) -> None:
    holder = PolicyHolder(bundle_dir)
    good = holder.current
    edit(bundle_dir / "rules.yaml", "split_gap_s: 600", "split_gap_s: [")
    assert holder.poll() is False
    assert holder.failures == 1
    assert holder.poll() is False
    assert holder.failures == 1  # unchanged files are not retried
    assert holder.current is good
    edit(bundle_dir / "rules.yaml", "split_gap_s: [", "split_gap_s: 700")
    assert holder.poll() is True
    assert holder.current.rules.trips.split_gap_s == 700
    assert holder.last_error is None


def test_request_reload_is_honoured_by_poll(bundle_dir: Path) -> None:
    loads = 0

    def counting(directory: Path) -> PolicyBundle:
        nonlocal loads
        loads += 1
        return load_bundle(directory)

    holder = PolicyHolder(bundle_dir, loader=counting)
    good = holder.current
    holder.request_reload()  # what a SIGHUP handler does
    assert holder.poll() is False  # loaded again: the same version
    assert loads == 2
    assert holder.current is good  # an equal bundle is not swapped in
    assert holder.poll() is False and loads == 2


def test_check_loads_without_putting_in_force(bundle_dir: Path) -> None:
    """What a background thread does: load the edited bundle; the pipeline adopts it."""
    holder = PolicyHolder(bundle_dir)
    good = holder.current
    assert holder.check() is None  # nothing changed
    edit(bundle_dir / "rules.yaml", "dedup_window_s: 86400", "dedup_window_s: 3600")
    new = holder.check()
    assert new is not None and new.version != good.version
    assert holder.current is good
    assert holder.check() is None  # the same edit is not loaded twice
    assert holder.adopt(new) is True
    assert holder.current is new


def test_unexpected_loader_error_keeps_last_good(bundle_dir: Path) -> None:
    calls = 0

    def flaky(directory: Path) -> PolicyBundle:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("disk on fire")
        return load_bundle(directory)

    holder = PolicyHolder(bundle_dir, loader=flaky)
    good = holder.current
    assert holder.reload() is False
    assert holder.current is good
    assert holder.last_error is not None
    assert "disk on fire" in str(holder.last_error)


def test_fingerprint_sees_added_removed_and_edited_files(bundle_dir: Path) -> None:
    first = bundle_fingerprint(bundle_dir)
    assert bundle_fingerprint(bundle_dir) == first
    (bundle_dir / "extra.yaml").write_text("a: 1\n")
    second = bundle_fingerprint(bundle_dir)
    assert second != first
    (bundle_dir / "extra.yaml").unlink()
    assert bundle_fingerprint(bundle_dir) == first
    (bundle_dir / "notes.txt").write_text("not a policy file\n")
    assert bundle_fingerprint(bundle_dir) == first
    edit(bundle_dir / "consents.yaml", "c-0006", "c-0009")
    assert bundle_fingerprint(bundle_dir) != first
    assert bundle_fingerprint(bundle_dir / "missing") != first


def test_fingerprint_reads_files_a_chunk_at_a_time(bundle_dir: Path) -> None:
    """An 8 MiB zone file is hashed without holding it whole (the gateway hashes its bundle
    every 30 s; a 12 MB zone file read whole made a 23 MiB peak each time)."""
    zones = bundle_dir / "zones.geojson"
    zones.write_bytes(zones.read_bytes() + b" " * (8 << 20))
    first = bundle_fingerprint(bundle_dir)
    tracemalloc.start()
    try:
        assert bundle_fingerprint(bundle_dir) == first
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # one 1 MiB buffer, not the 8 MiB file
    zones.write_bytes(zones.read_bytes()[:-1] + b"\n")  # same size, last byte differs
    assert bundle_fingerprint(bundle_dir) != first


def test_an_edit_reverted_before_adoption_gives_the_bundle_in_force_back(
    bundle_dir: Path,
) -> None:
    holder = PolicyHolder(bundle_dir)
    good = holder.current
    rules = bundle_dir / "rules.yaml"
    edit(rules, "dedup_window_s: 86400", "dedup_window_s: 3600")
    edited = holder.check()
    assert edited is not None  # loaded, waiting to be adopted
    edit(rules, "dedup_window_s: 3600", "dedup_window_s: 86400")
    back = holder.check()
    assert back is not None and back.version == good.version  # supersedes the edit
    assert holder.adopt(back) is False  # same version as in force: nothing new
    assert holder.current.version == good.version
