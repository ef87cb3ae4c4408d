"""Fixtures of the delivery tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.keys import init_keys
from gateway.store import Store, open_store


@pytest.fixture
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A SQLite store on disk whose audit shard is the test module's ``SHARD``."""
    s = open_store(
        f"sqlite:///{tmp_path / 'gw.db'}",
        shard=request.module.SHARD,
        keys=init_keys(tmp_path / "keys"),
    )
    yield s
    s.close()
