"""What every route reads: the config, the store, the keys and the policy in force.

One :class:`ApiContext` per API process. The store is opened without a shard of its own
(the API appends admin entries — consents, API keys, webhook failures — to the worker's
shard, under the same lock the pipeline takes); the policy bundle follows the pipeline's,
reloaded when its files change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig
from gateway.keys import KeyRing
from gateway.policy.bundle import PolicyBundle
from gateway.policy.holder import PolicyHolder
from gateway.store import Store, open_store

__all__ = ["ApiContext", "open_context"]

_POLICY_POLL_S = 2.0


@dataclass
class ApiContext:
    """The API process's shared state (thread-safe: routes run in a thread pool)."""

    config: GatewayConfig
    store: Store
    keys: KeyRing
    holder: PolicyHolder
    registry: CollectorRegistry
    clock: Callable[[], float] = time.time
    _polled: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def worker(self) -> str:
        """The pipeline worker this API serves."""
        return self.config.worker

    @property
    def shard(self) -> str:
        """The audit shard the API's admin entries go to (the worker's)."""
        from gateway.service import origin_of

        return origin_of(self.config.worker)

    def bundle(self) -> PolicyBundle:
        """The policy in force, reloaded (at most every 2 s) if its files changed."""
        now = time.monotonic()
        if now - self._polled >= _POLICY_POLL_S and self._lock.acquire(blocking=False):
            try:
                self._polled = now
                self.holder.poll()
            finally:
                self._lock.release()
        return self.holder.current

    def close(self) -> None:
        """Close the store."""
        self.store.close()


def open_context(config: GatewayConfig, *, registry: CollectorRegistry | None = None) -> ApiContext:
    """Open the store and keys and load the policy ``config`` names (errors from the tree in
    :mod:`gateway.errors`: a missing key directory, a store that does not open, a bundle
    that does not load)."""
    keys = KeyRing.load(Path(config.keys))
    holder = PolicyHolder(config.policies)
    store = open_store(config.store, shard=None, keys=keys)
    return ApiContext(config, store, keys, holder, registry or CollectorRegistry())
