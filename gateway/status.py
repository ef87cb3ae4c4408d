"""The running gateway's one-line status, read from its metrics registry.

``icvgw run`` logs :meth:`StatusLine.line` every few seconds (unless ``--quiet``), so an
operator watching a terminal or a log shipper sees that the gateway is alive and what it
does: rates since the previous line, the outbox backlog, the store's state and whether the
broker connection is up. Everything but the broker connection comes from the registry the
gateway's :class:`~gateway.metrics.Metrics` were created on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

__all__ = ["JsonFormatter", "StatusLine", "read_counts"]


@dataclass(frozen=True)
class Counts:
    """Totals read from the registry at one instant."""

    messages: float
    decisions: float
    delivered: float
    deadletters: float
    pending: float
    store_ok: bool


def _total(registry: CollectorRegistry, name: str) -> float:
    """The sum of every sample ``name`` (all label values) in ``registry``."""
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                total += sample.value
    return total


def read_counts(registry: CollectorRegistry) -> Counts:
    """The gateway's totals now."""
    ok = registry.get_sample_value("icvgw_store_ok")
    return Counts(
        messages=_total(registry, "icvgw_messages_total"),
        decisions=_total(registry, "icvgw_decisions_total"),
        delivered=_total(registry, "icvgw_views_delivered_total"),
        deadletters=_total(registry, "icvgw_deadletters_total"),
        pending=_total(registry, "icvgw_outbox_pending"),
        store_ok=ok is None or ok >= 1,
    )


class StatusLine:
    """Rates since the previous :meth:`line`, and the state now."""

    def __init__(
        self,
        registry: CollectorRegistry,
        broker_up: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._broker_up = broker_up
        self._clock = clock
        self._last = (clock(), read_counts(registry))

    def line(self) -> str:
        """``status: 12.0 msg/s in, 48.0 decisions/s, 40.0 views/s delivered, 0.0 dead
        letters/s; outbox 3 pending; store ok; broker connected``."""
        now, counts = self._clock(), read_counts(self._registry)
        then, before = self._last
        self._last = (now, counts)
        span = max(now - then, 1e-9)

        def rate(name: str) -> str:
            return f"{(getattr(counts, name) - getattr(before, name)) / span:,.1f}"

        store = "store ok" if counts.store_ok else "store FAILING"
        broker = "broker connected" if self._broker_up() else "broker DISCONNECTED"
        return (
            f"status: {rate('messages')} msg/s in, {rate('decisions')} decisions/s, "
            f"{rate('delivered')} views/s delivered, {rate('deadletters')} dead letters/s; "
            f"{counts.messages:,.0f} messages in total; outbox {counts.pending:,.0f} pending; "
            f"{store}; {broker}"
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per log record and line, for log shippers: ``time`` (ISO 8601,
    UTC), ``level``, ``logger``, ``message`` and, with an exception, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)
