"""An API on a fresh store, keys and the shipped policy, with keys of every role.

``api.client`` is FastAPI's TestClient on the real app (real store, real keys); routes that
need the pipeline's state get it by committing through the real store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.api import create_app
from gateway.api.context import ApiContext, open_context
from gateway.apikeys import Role, create_api_key, revoke
from gateway.config import GatewayConfig, load_config
from gateway.keys import init_keys
from gateway.service import origin_of


@dataclass
class Api:
    """The app under test and ways to make keys for it."""

    ctx: ApiContext
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)

    def key(self, role: Role, subscriber: str | None = None, *, label: str = "test") -> str:
        """A new key's token."""
        _, token = create_api_key(
            self.ctx.store,
            role,
            subscriber=subscriber,
            label=label,
            shard=self.ctx.shard,
            instance=self.ctx.worker,
        )
        return token

    def revoked(self, role: Role, subscriber: str | None = None) -> str:
        """A token whose key was revoked."""
        token = self.key(role, subscriber)
        assert revoke(
            self.ctx.store, token.split("_")[1], shard=self.ctx.shard, instance=self.ctx.worker
        )
        return token

    def headers(self, token: str) -> dict[str, str]:
        """The Authorization header for ``token``."""
        return {"Authorization": f"Bearer {token}"}


def api_config(tmp_path: Path, **overrides: Any) -> GatewayConfig:
    """A config on a fresh SQLite store and keys in ``tmp_path``."""
    if not (tmp_path / "keys").exists():
        init_keys(tmp_path / "keys")
    base: dict[tuple[str, ...], Any] = {
        ("broker", "protocol"): "5",
        ("store",): f"sqlite:///{tmp_path / 'gw.sqlite'}",
        ("keys",): str(tmp_path / "keys"),
        ("metrics", "port"): 9,  # nothing listens: the pipeline is not running
    }
    base.update({tuple(k.split("__")): v for k, v in overrides.items()})
    return load_config(None, overrides=base, environ={})


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The API on a fresh store (no pipeline running beside it)."""
    ctx = open_context(api_config(tmp_path))
    with TestClient(create_app(ctx, sinks=False)) as client:
        yield Api(ctx, client)
    ctx.close()


__all__ = ["Api", "api_config", "origin_of"]
