"""The VSS JSON payloads the simulator publishes, and the ways it breaks them.

A sample is one flat JSON object keyed by VSS paths plus ``msg_id``; a batch payload is a
JSON array of samples. Field names, units and rounding are listed in
``simulators/README.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from gateway.vss import LATITUDE, LONGITUDE, TIMESTAMP, VIN

__all__ = [
    "MALFORMATIONS",
    "encode",
    "iso_timestamp",
    "malform",
    "telemetry_topic",
]

MSG_ID = "msg_id"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def telemetry_topic(vin: str) -> str:
    """The topic a vehicle publishes its telemetry to: ``vehicles/<VIN>/telemetry``."""
    return f"vehicles/{vin}/telemetry"


def iso_timestamp(epoch_ms: int) -> str:
    """``epoch_ms`` (Unix milliseconds) as VSS-style ISO 8601 UTC, e.g.
    ``2026-11-28T12:00:00.000Z``."""
    moment = _EPOCH + timedelta(milliseconds=epoch_ms)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{epoch_ms % 1000:03d}Z"


def encode(samples: Sequence[dict[str, Any]], as_array: bool) -> bytes:
    """One sample as a JSON object, or any number as a JSON array (``as_array``)."""
    if as_array:
        return orjson.dumps(list(samples))
    if len(samples) != 1:
        raise ValueError("a non-array payload carries exactly one sample")
    return orjson.dumps(samples[0])


def _drop(*keys: str) -> Any:
    def apply(sample: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in sample.items() if k not in keys}

    return apply


def _set(key: str, value: Any) -> Any:
    def apply(sample: dict[str, Any]) -> dict[str, Any]:
        return {**sample, key: value}

    return apply


# Sample-level breakages: the payload still parses, one record is unusable.
_RECORD_BREAKAGES = {
    "missing-position": _drop(LATITUDE, LONGITUDE),
    "non-numeric-latitude": _set(LATITUDE, "31.23N"),
    "latitude-out-of-range": _set(LATITUDE, 91.5),
    "missing-timestamp": _drop(TIMESTAMP),
    "bad-timestamp": _set(TIMESTAMP, "2026-13-45T25:61:00Z"),
    "missing-vin": _drop(VIN),
}
# Payload-level breakages: nothing in the payload is usable.
_PAYLOAD_BREAKAGES = ("truncated-json", "not-utf8", "not-an-object", "empty")

MALFORMATIONS: tuple[str, ...] = (*_RECORD_BREAKAGES, *_PAYLOAD_BREAKAGES)
"""Every way :func:`malform` breaks a payload."""


def malform(
    samples: Sequence[dict[str, Any]], as_array: bool, how: str, rng: np.random.Generator
) -> tuple[bytes, int]:
    """The payload of ``samples`` broken in the way ``how`` (one of :data:`MALFORMATIONS`),
    and how many samples in it are still usable.

    A record-level breakage damages one record: the whole message for a single sample, one
    (chosen by ``rng``) of a batch. A payload-level breakage leaves nothing usable.
    """
    if how in _RECORD_BREAKAGES:
        broken = list(samples)
        i = int(rng.integers(len(broken)))
        broken[i] = _RECORD_BREAKAGES[how](broken[i])
        return encode(broken, as_array), len(broken) - 1
    good = encode(samples, as_array)
    if how == "truncated-json":
        return good[: max(1, len(good) // 2)], 0
    if how == "not-utf8":
        return b"\xff\xfe" + good[2:], 0
    if how == "not-an-object":
        return b'"engine on"' if rng.random() < 0.5 else b"42", 0
    if how == "empty":
        return b"", 0
    raise ValueError(f"unknown malformation {how!r}")
