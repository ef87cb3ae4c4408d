"""Loading a policy bundle in a child process, beside a running pipeline.

Loading a bundle is CPU-bound Python (YAML, validation, JSON, zone geometry, hashing): 1.4 s
for 10,000 zones and consents alone, 3–4 s on a thread beside the pipeline, which then gets
about half of the interpreter lock and falls behind (at 1,800 msg/s a reload cost p99 ≈ 1 s).
In a child process the work runs on another core; the parent only unpickles the result
(0.15 s) and rebuilds the zone index (20 ms).

The child is started with ``spawn`` (never ``fork``: the gateway runs threads) for each
load and ends with it. If it cannot be started or dies, the bundle is loaded in this
process instead, so a reload never fails for want of a process.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from gateway.policy.bundle import PolicyBundle
from gateway.policy.loader import load_bundle

__all__ = ["load_in_child"]

log = logging.getLogger("gateway.policy")


def load_in_child(directory: Path) -> PolicyBundle:
    """:func:`~gateway.policy.loader.load_bundle` run in a child process; raises its
    :class:`~gateway.errors.PolicyError` here, with the same problems."""
    try:
        with ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            return pool.submit(load_bundle, directory).result()
    except (BrokenProcessPool, OSError) as exc:
        log.warning("policy: no child process to load in (%s); loading here", exc)
        return load_bundle(directory)
