"""Prometheus instruments, bound to a registry the caller injects (never the global one).

Stages do not touch metrics: :meth:`Metrics.observe_stage` is the one place that counts rows
in and out of a stage and its latency. Drops by policy are *intentional* discards; rows lost
to a failure are *failed* — the two are never mixed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    """All of the gateway's instruments on one injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._pipeline(registry)
        self._output(registry)
        self._store(registry)

    def _pipeline(self, registry: CollectorRegistry) -> None:
        """Input, stages, decisions."""
        self.messages = Counter(
            "icvgw_messages_total", "MQTT messages taken from the input", registry=registry
        )
        self.stage_rows = Counter(
            "icvgw_stage_rows_total",
            "Rows through each pipeline stage by outcome (received, sent, discarded, failed)",
            ["stage", "outcome"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "icvgw_stage_seconds",
            "Time a stage takes for one micro-batch",
            ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.decisions = Counter(
            "icvgw_decisions_total",
            "Decisions per subscriber (share, redact, block)",
            ["subscriber", "decision"],
            registry=registry,
        )
        self.deadletters = Counter(
            "icvgw_deadletters_total",
            "Dead-lettered payloads or records",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            "icvgw_duplicates_total",
            "Records dropped as redeliveries or duplicates",
            registry=registry,
        )
        self.crossborder_blocked = Counter(
            "icvgw_crossborder_blocked_total",
            "Records blocked because a cross-border threshold lacks a covering legal basis",
            ["subscriber"],
            registry=registry,
        )

    def _output(self, registry: CollectorRegistry) -> None:
        """Delivery, the audit log, the broker."""
        self.delivered = Counter(
            "icvgw_views_delivered_total",
            "Views confirmed by a sink",
            ["subscriber"],
            registry=registry,
        )
        self.outbox_pending = Gauge(
            "icvgw_outbox_pending", "Views committed and not yet confirmed", registry=registry
        )
        self.audit_entries = Counter(
            "icvgw_audit_entries_total", "Entries appended to the audit log", registry=registry
        )
        self.checkpoint_size = Gauge(
            "icvgw_checkpoint_tree_size",
            "Tree size of the latest signed checkpoint",
            registry=registry,
        )
        self.stale_acks = Gauge(
            "icvgw_stale_acks",
            "Acks dropped because they belonged to an earlier connection",
            registry=registry,
        )
        self.broker_dropped = Gauge(
            "icvgw_broker_dropped_messages",
            "Messages the broker reports it dropped (queue or in-flight limits), broker-wide, "
            "since the broker started ($SYS/broker/publish/messages/dropped)",
            registry=registry,
        )

    def _store(self, registry: CollectorRegistry) -> None:
        """The store's health and commit time."""
        self.store_ok = Gauge(
            "icvgw_store_ok",
            "1 while the store takes writes, 0 while it fails (input is then not acknowledged)",
            registry=registry,
        )
        self.store_failures = Counter(
            "icvgw_store_failures_total",
            "Store operations that failed (each retry counts)",
            registry=registry,
        )
        self.batch_commit_seconds = Histogram(
            "icvgw_commit_seconds",
            "Time to commit one micro-batch in the store",
            registry=registry,
        )

    def observe_stage(
        self, stage: str, *, received: int, sent: int, discarded: int, failed: int, seconds: float
    ) -> None:
        """Count one micro-batch through ``stage``."""
        rows = self.stage_rows
        rows.labels(stage, "received").inc(received)
        rows.labels(stage, "sent").inc(sent)
        rows.labels(stage, "discarded").inc(discarded)
        rows.labels(stage, "failed").inc(failed)
        self.stage_seconds.labels(stage).observe(seconds)
