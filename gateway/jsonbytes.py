"""JSON bytes that are kept: sized to what they hold.

orjson 3.12 and later return ``dumps`` output in a buffer of at least 4 KiB that is never
shrunk, so a 380-byte audit body kept in memory costs 4 KiB, ten times its size
(``bench/RESULTS.md``, peak RSS). Anything kept beyond the call that made it (entry bodies,
delivered views) goes through :func:`tight`.
"""

from __future__ import annotations

__all__ = ["tight"]


def tight(data: bytes) -> bytes:
    """A copy of ``data`` in an allocation of its own size."""
    return bytes(memoryview(data))
