"""Prometheus instruments, bound to a registry the caller injects (never the global one).

Stages do not touch metrics: :meth:`Metrics.observe_stage` is the one place that counts rows
in and out of a stage and its latency. Drops by policy are *intentional* discards; rows lost
to a failure are *failed* — the two are never mixed.

What the hot path pays is kept small: latencies are observed a batch at a time
(:class:`BatchHistogram`, one numpy pass instead of a locked update per message), and
states that already live elsewhere (the broker connection, the input queue) are read only
when someone scrapes (:meth:`Metrics.watch`). The pipeline process serves its registry on
its own endpoint (:func:`serve`); the HTTP API, a separate process, includes that endpoint's
exposition in its ``/metrics`` (:mod:`gateway.api.metrics`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from gateway.errors import ConfigError, Problem

__all__ = ["LATENCY_BUCKETS", "BatchHistogram", "Metrics", "MetricsServer", "serve"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a healthy pipeline commits in milliseconds; a backlog or an outage takes
seconds to minutes."""


class BatchHistogram(Collector):
    """A histogram observed a whole batch of values at once, exposed like
    :class:`prometheus_client.Histogram` (same buckets, ``_sum``, ``_count``).

    One :meth:`observe` of n values costs one numpy pass and one lock, not the n locked
    updates of ``Histogram.observe`` on the pipeline thread. NaN values are not observed."""

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._les = [*(repr(float(b)) for b in self._bounds), "+Inf"]
        self._counts: dict[tuple[str, ...], npt.NDArray[np.int64]] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, values: npt.ArrayLike, *labels: str) -> None:
        """Observe every value of ``values`` under ``labels`` (one per label name)."""
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels}")
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        # Bucket i counts bounds[i-1] < v <= bounds[i] (Prometheus' "le"); the last is +Inf.
        counts = np.bincount(
            np.searchsorted(self._bounds, v, side="left"), minlength=len(self._bounds) + 1
        )
        total = float(v.sum())
        with self._lock:
            if labels in self._counts:
                self._counts[labels] += counts
                self._sums[labels] += total
            else:
                self._counts[labels] = counts.astype(np.int64)
                self._sums[labels] = total

    def describe(self) -> Iterator[Metric]:
        """The family without samples (what :class:`CollectorRegistry` checks names by)."""
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        """The family with cumulative buckets per label set."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(k, c.copy(), self._sums[k]) for k, c in self._counts.items()]
        for labels, counts, total in series:
            cumulative = np.cumsum(counts).tolist()
            family.add_metric(
                list(labels), list(zip(self._les, cumulative, strict=True)), sum_value=total
            )
        yield family


class Metrics:
    """All of the gateway's instruments on one injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._pipeline(registry)
        self._decisions(registry)
        self._output(registry)
        self._store(registry)
        self._live(registry)

    def _pipeline(self, registry: CollectorRegistry) -> None:
        """Input, stages, decisions."""
        self.messages = Counter(
            "icvgw_messages_total", "MQTT messages taken from the input", registry=registry
        )
        self.records = Counter(
            "icvgw_records_total",
            "Records decoded from the input messages (a message may carry several)",
            registry=registry,
        )
        self.end_to_end = BatchHistogram(
            "icvgw_end_to_end_seconds",
            "From a message's receipt (the MQTT client's callback) to the commit of its batch, "
            "after which it is acknowledged and its views are handed to delivery",
            registry=registry,
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
        self.deadletters = Counter(
            "icvgw_deadletters_total",
            "Inputs rejected (dead-lettered), payloads or records, by reason",
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

    def _decisions(self, registry: CollectorRegistry) -> None:
        """Decisions, the rules they cite, the policy they were made under."""
        self.decisions = Counter(
            "icvgw_decisions_total",
            "Decisions per subscriber (shared, redacted, blocked)",
            ["subscriber", "decision"],
            registry=registry,
        )
        self.decision_rules = Counter(
            "icvgw_decision_rules_total",
            "Decisions citing each rule, per subscriber and decision (a decision citing three "
            "rules counts once under each: sum icvgw_decisions_total for decisions)",
            ["subscriber", "decision", "rule"],
            registry=registry,
        )
        self.policy = Info(
            "icvgw_policy", "The policy bundle in force in the pipeline", registry=registry
        )

    def _output(self, registry: CollectorRegistry) -> None:
        """Delivery, the audit log, the broker."""
        self.delivered = Counter(
            "icvgw_views_delivered_total",
            "Views confirmed by a sink (MQTT: the broker's PUBACK)",
            ["channel", "subscriber"],
            registry=registry,
        )
        self.delivery_failures = Counter(
            "icvgw_delivery_failures_total",
            "Deliveries a sink refused (MQTT: a PUBACK with a failure reason); each is retried",
            ["channel", "subscriber"],
            registry=registry,
        )
        self.delivery_seconds = BatchHistogram(
            "icvgw_delivery_seconds",
            "From a view's decision (its batch's clock) to its sink's confirmation",
            labelnames=["channel"],
            registry=registry,
        )
        self.outbox_pending = Gauge(
            "icvgw_outbox_pending", "Views committed and not yet confirmed", registry=registry
        )
        self.outbox_held = Gauge(
            "icvgw_outbox_held_views",
            "Committed MQTT views waiting in the drainer's memory (bounded; the rest wait in "
            "the store)",
            registry=registry,
        )
        self.outbox_spilling = Gauge(
            "icvgw_outbox_spilling",
            "1 while newer committed MQTT views wait in the store only (the drainer's memory "
            "is full), else 0",
            registry=registry,
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

    def _live(self, registry: CollectorRegistry) -> None:
        """States read at scrape time from what :meth:`watch` binds."""
        self.broker_connected = Gauge(
            "icvgw_broker_connected",
            "1 while both broker connections (input and output) are up, else 0",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "icvgw_input_queue_depth",
            "Messages received and waiting in the input queue for the pipeline",
            registry=registry,
        )
        self.queue_bytes = Gauge(
            "icvgw_input_queue_bytes",
            "Payload bytes waiting in the input queue",
            registry=registry,
        )

    def watch(
        self,
        *,
        connected: Callable[[], bool],
        queue_depth: Callable[[], int],
        queue_bytes: Callable[[], int],
    ) -> None:
        """Read these states when scraped (nothing is counted on the hot path for them)."""
        self.broker_connected.set_function(lambda: 1.0 if connected() else 0.0)
        self.queue_depth.set_function(lambda: float(queue_depth()))
        self.queue_bytes.set_function(lambda: float(queue_bytes()))

    def policy_in_force(self, version: str) -> None:
        """``icvgw_policy_info{version=...} 1`` for the bundle now in force."""
        self.policy.info({"version": version})

    def cite(self, cited: Mapping[tuple[str, str, str], int]) -> None:
        """Count decisions per (subscriber, decision, rule) cited."""
        for (subscriber, decision, rule), n in cited.items():
            self.decision_rules.labels(subscriber, decision, rule).inc(n)

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


@dataclass
class MetricsServer:
    """The pipeline's own metrics endpoint (``GET /metrics``), served from a daemon thread:
    a scrape costs the pipeline only while it is being scraped."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose if 0 was asked for)."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics``; a :class:`ConfigError` naming
    ``metrics.port`` if the address cannot be listened on (another worker's endpoint there
    would be read as this one's)."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            Problem(
                "config",
                None,
                "metrics.port",
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} "
                "(choose a free port, or set metrics.enabled to false)",
            )
        ) from exc
    return MetricsServer(server, thread)
