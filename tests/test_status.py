"""The status line reads the metrics registry: rates since the last line, state now."""

from __future__ import annotations

import json
import logging

from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics
from gateway.status import JsonFormatter, StatusLine


def test_status_line_gives_rates_since_the_last_line_and_the_state_now() -> None:
    m = Metrics(CollectorRegistry())
    now = [100.0]
    up = [True]
    status = StatusLine(m.registry, lambda: up[0], clock=lambda: now[0])
    m.messages.inc(40)
    m.decisions.labels("a", "shared").inc(100)
    m.decisions.labels("b", "blocked").inc(60)
    m.delivered.labels("mqtt", "a").inc(80)
    m.deadletters.labels("malformed").inc(2)
    m.outbox_pending.set(7)
    m.store_ok.set(1)
    now[0] = 110.0
    assert status.line() == (
        "status: 4.0 msg/s in, 16.0 decisions/s, 8.0 views/s delivered, 0.2 dead letters/s; "
        "40 messages in total; outbox 7 pending; store ok; broker connected"
    )
    m.messages.inc(10)
    m.store_ok.set(0)
    up[0] = False
    now[0] = 115.0
    line = status.line()
    assert line.startswith("status: 2.0 msg/s in, 0.0 decisions/s,")
    assert "50 messages in total" in line
    assert line.endswith("store FAILING; broker DISCONNECTED")


def test_json_log_lines_are_one_object_each() -> None:
    record = logging.LogRecord("gateway.run", logging.INFO, __file__, 1, "a\nb %s", ("c",), None)
    text = JsonFormatter().format(record)
    assert "\n" not in text
    doc = json.loads(text)
    assert doc["level"] == "INFO" and doc["logger"] == "gateway.run"
    assert doc["message"] == "a\nb c" and doc["time"].endswith("Z")
