"""Metrics live on the injected registry only."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from gateway.metrics import Metrics


def test_stage_counts_land_on_the_injected_registry() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_stage("decode", received=10, sent=7, discarded=2, failed=1, seconds=0.01)
    metrics.observe_stage("decode", received=5, sent=5, discarded=0, failed=0, seconds=0.02)
    value = registry.get_sample_value
    assert value("icvgw_stage_rows_total", {"stage": "decode", "outcome": "received"}) == 15
    assert value("icvgw_stage_rows_total", {"stage": "decode", "outcome": "discarded"}) == 2
    assert value("icvgw_stage_seconds_count", {"stage": "decode"}) == 2
    assert REGISTRY.get_sample_value("icvgw_messages_total") is None


def test_two_gateways_in_one_process_do_not_collide() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.messages.inc(3)
    assert b.registry.get_sample_value("icvgw_messages_total") == 0
