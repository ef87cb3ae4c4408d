"""Metrics live on the injected registry only; the pipeline's counters agree with what it
committed; its endpoint serves the registry and lets go of its port."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from gateway.errors import ConfigError, IngestError
from gateway.metrics import LATENCY_BUCKETS, BatchHistogram, Metrics, serve
from gateway.model import Envelope
from gateway.service import Gateway
from gateway.testing import free_port, offline_config
from simulators.fleet import Fleet, FleetConfig


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


latencies = st.lists(
    st.one_of(
        st.sampled_from(LATENCY_BUCKETS),  # exactly on a bound: counted in that bucket
        st.floats(min_value=0, max_value=200, allow_nan=False),
        st.just(float("nan")),
    ),
    max_size=60,
)


@given(batches=st.lists(latencies, max_size=4))
def test_a_batch_histogram_exposes_what_observing_each_value_does(
    batches: list[list[float]],
) -> None:
    """The reference is prometheus_client's Histogram fed one value at a time (NaN skipped)."""
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("x_seconds", "x", labelnames=["c"], registry=mine)
    each = Histogram("x_seconds", "x", ["c"], buckets=LATENCY_BUCKETS, registry=theirs)
    for values in batches:
        batch.observe(values, "mqtt")
        child = each.labels("mqtt")  # the series exists from its first batch, even empty
        for v in values:
            if v == v:
                child.observe(v)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in _samples(mine)}
    want = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in _samples(theirs)
        if not s.name.endswith("_created")
    }
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def _samples(registry: CollectorRegistry) -> list:  # type: ignore[type-arg]
    return [s for family in registry.collect() for s in family.samples]


def test_a_batch_histogram_takes_its_labels_or_refuses() -> None:
    h = BatchHistogram("y_seconds", "y", labelnames=["channel"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="takes labels"):
        h.observe([0.1])


def test_the_endpoint_serves_the_registry_and_lets_go_of_its_port() -> None:
    registry = CollectorRegistry()
    Metrics(registry).messages.inc(7)
    server = serve(registry, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        assert "icvgw_messages_total 7.0" in r.read().decode()
    taken = server.port
    with pytest.raises(ConfigError, match=r"metrics\.port: cannot serve metrics on 127\.0\.0\.1"):
        serve(registry, "127.0.0.1", taken)  # another endpoint there would be read as ours
    server.stop()
    assert _free(taken)


def _free(port: int) -> bool:
    """Whether a server can listen on ``port`` again (as one does: SO_REUSEADDR, so the
    closed connections' TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def _envelopes(received_at: float) -> list[Envelope]:
    msgs = Fleet(FleetConfig(vehicles=6, start=START), seed=3).messages(60, 1.0)
    return [Envelope(m.topic, m.payload, received_at, i + 1) for i, m in enumerate(msgs)]


def test_the_pipeline_counts_what_it_committed(tmp_path: Path) -> None:
    """Records, end-to-end latencies, the policy in force, and the rules cited per subscriber
    and decision: these last equal what the audit log's decision entries cite, held views
    released or discarded included."""
    cfg = offline_config(tmp_path)
    gw = Gateway(cfg, registry=CollectorRegistry())
    envelopes = _envelopes(time.time() - 0.5)
    try:
        for i in range(0, len(envelopes), 40):
            gw.process(envelopes[i : i + 40])
        gw.sweep(time.time() + 3600)  # trips ended by silence: held views discarded
        version = gw.holder.current.version
    finally:
        gw.store.close()
    value = gw.metrics.registry.get_sample_value
    assert value("icvgw_records_total") == len(envelopes)
    assert value("icvgw_messages_total") == len(envelopes)
    assert value("icvgw_end_to_end_seconds_count") == len(envelopes)
    assert value("icvgw_end_to_end_seconds_bucket", {"le": "0.25"}) == 0  # received 0.5 s ago
    assert 0.5 * len(envelopes) <= (value("icvgw_end_to_end_seconds_sum") or 0)
    assert value("icvgw_policy_info", {"version": version}) == 1

    con = sqlite3.connect(cfg.store.removeprefix("sqlite:///"))
    audited: Counter[tuple[str, str, str]] = Counter()
    for sub, decision, rules in con.execute(
        "select subscriber, decision, rules from audit_entries "
        "where kind = 'decision' and subscriber is not null"
    ):
        for rule in rules.strip("|").split("|"):
            audited[(sub, decision, rule)] += 1
    counted = {
        (s.labels["subscriber"], s.labels["decision"], s.labels["rule"]): s.value
        for family in gw.metrics.registry.collect()
        if family.name == "icvgw_decision_rules"
        for s in family.samples
        if s.name == "icvgw_decision_rules_total"
    }
    assert counted == audited
    assert any(k[1] == "blocked" and k[2] == "pi.trip-trim" for k in counted)
    assert {k[1] for k in counted} >= {"shared", "blocked"}


def test_a_message_of_unknown_receipt_time_is_not_observed(tmp_path: Path) -> None:
    gw = Gateway(offline_config(tmp_path), registry=CollectorRegistry())
    try:
        gw.process(_envelopes(0.0)[:10])
    finally:
        gw.store.close()
    assert gw.metrics.registry.get_sample_value("icvgw_end_to_end_seconds_count") == 0
    assert gw.metrics.registry.get_sample_value("icvgw_records_total") == 10


def test_the_endpoint_answers_while_connecting_and_a_failed_start_lets_go_of_it(
    tmp_path: Path,
) -> None:
    """While the broker does not answer, the endpoint says so (the API's readiness then
    names the broker, not the pipeline); a start that fails frees the port for the next."""
    cfg = offline_config(tmp_path)  # a broker address nothing listens on
    port = free_port()
    cfg = cfg.model_copy(update={"metrics": cfg.metrics.model_copy(update={"port": port})})
    gw = Gateway(cfg, registry=CollectorRegistry())
    failed: list[BaseException] = []

    def start() -> None:
        try:
            gw.start(timeout=30)
        except IngestError as exc:  # ConnectInterrupted once stopped
            failed.append(exc)

    starting = threading.Thread(target=start)
    starting.start()
    try:
        text = _scrape_when_up(f"http://127.0.0.1:{port}/metrics")
        assert "icvgw_broker_connected 0.0" in text
        assert "icvgw_input_queue_depth 0.0" in text
        gw.stop()
        starting.join(30)
        assert failed and not starting.is_alive()
        assert _free(port)  # before shutdown: the failed start let go of it
    finally:
        gw.stop()
        gw.shutdown(drain_timeout=0)


def _scrape_when_up(url: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            assert time.monotonic() < deadline, f"nothing answers at {url}"
            time.sleep(0.05)
