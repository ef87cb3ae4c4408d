"""JSON bytes that are kept take the memory of their length, not orjson's buffer."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import orjson

from gateway.jsonbytes import tight


def retained(make: Callable[[int], bytes], n: int = 1_000) -> tuple[int, int]:
    """(bytes allocated and still held by ``n`` results of ``make``, their total length)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make(i) for i in range(n)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held, sum(len(k) for k in kept)


def test_tight_is_the_same_bytes() -> None:
    data = orjson.dumps({"a": [1, 2.5, "é"], "b": None})
    assert tight(data) == data and type(tight(data)) is bytes
    assert tight(b"") == b""


def test_tight_results_hold_about_their_length() -> None:
    held, length = retained(lambda i: tight(orjson.dumps({"i": i, "pad": "x" * 380})))
    # each bytes object: its length plus a 33-byte header and a list slot
    assert held < length + 1_000 * 64
