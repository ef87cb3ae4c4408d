"""Batched delivery: many views in one MQTT message, webhook POST or SSE event.

A subscriber whose view sets ``delivery.batch_max_views`` above 1 receives its views as a
JSON array (``icvgw policy schema`` describes it: an array of ``icvgw.view/1`` objects).
Each element is a view's exact stored bytes — the bytes its audit entry's digest covers —
with its own ``message_id``, so a receiver de-duplicates per view as it does without
batches, and a batch sent again after a restart may be cut differently without harm. Views
of one subscriber are batched in audit order, so each vehicle's views stay in order.

Per-message costs (an MQTT PUBLISH and its PUBACK, an HTTP request, its signature) are
paid once per batch instead of once per view: per-view delivery is bounded by them, not by
deciding (``bench/RESULTS.md``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["BATCH_TOPIC_LEVEL", "batch_id", "batch_topic", "encode_batch"]

BATCH_TOPIC_LEVEL = "batch"
"""The last topic level of an MQTT batch: ``<subscriber's topic>/batch``."""


def encode_batch(views: Sequence[bytes]) -> bytes:
    """The JSON array of ``views`` (each one view's encoded JSON object), byte for byte."""
    return b"[" + b",".join(views) + b"]"


def batch_topic(base: str) -> str:
    """The MQTT topic of a batch for a subscriber whose views go under ``base``."""
    return f"{base}/{BATCH_TOPIC_LEVEL}"


def batch_id(message_ids: Sequence[str]) -> str:
    """An id for the batch of these views (a webhook's ``webhook-id``): the same views in
    the same order give the same id, so a retried POST keeps it; any other batch differs."""
    h = hashlib.sha256()
    for m in message_ids:
        h.update(m.encode())
        h.update(b"\n")
    return "batch_" + h.hexdigest()[:32]
