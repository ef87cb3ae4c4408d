"""Loading a policy bundle in a child process, beside a running pipeline.

Loading a bundle is CPU-bound Python (YAML, validation, JSON, zone geometry, hashing): on a
thread beside the pipeline it takes about half of the interpreter lock, and the pipeline
falls behind. In a child process the work runs on another core; the parent only unpickles
the result and rebuilds the zone index. Figures: ``bench/RESULTS.md``, the policy edit under
load (End to end).

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
