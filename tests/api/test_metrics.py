"""``/metrics``: one exposition of the API's registry, the store's gauges and the pipeline's
endpoint. Live: ``promtool check metrics`` on the ``/metrics`` of a real ``icvgw api``
(uvicorn) beside a real pipeline finds nothing, and the pipeline's counters moved by the
traffic are in it. The store's gauges equal what the store holds."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.context import open_context
from gateway.api.metrics import StoreGauges, merge
from gateway.apikeys import Role
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.model import Envelope
from gateway.policy.schema import counting_year
from gateway.service import Gateway, origin_of
from gateway.testing import MosquittoBroker, free_port
from tests.api.conftest import Api, api_config
from tests.api.live import live_config, pipeline, send, traffic, until
from tests.conftest import service_missing


def promtool() -> str:
    """The promtool binary (Debian's ``prometheus`` package); missing: skip, in CI fail."""
    found = shutil.which("promtool")
    if found is None:
        service_missing("promtool (apt-get install prometheus)")
    assert found is not None
    return found


def check_metrics(text: bytes) -> None:
    """``promtool check metrics`` reports nothing about ``text``."""
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), done


Found = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Samples by (name, sorted labels)."""


def samples(text: str) -> Found:
    """Every sample of ``text``; each family name at most once."""
    out: Found = {}
    names: list[str] = []
    for family in text_string_to_metric_families(text):
        names.append(family.name)
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert len(names) == len(set(names)), names
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


@contextmanager
def icvgw_api(tmp_path: Path, config: GatewayConfig) -> Iterator[str]:
    """A live ``icvgw api`` process on the pipeline's store, keys and metrics address;
    yields its base URL."""
    port = free_port()
    path = tmp_path / "api.yaml"
    path.write_text(
        f"broker: {{url: '{config.broker.url}', protocol: '5'}}\n"
        f"store: '{config.store}'\n"
        f"keys: '{config.keys}'\n"
        f"metrics: {{port: {config.metrics.port}}}\n"
        f"api: {{port: {port}}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "api", "--config", str(path)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err


def monitor_key(tmp_path: Path, config: GatewayConfig) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "gateway", "apikey", "create", "--role", "monitor",
         "--label", "prometheus", "--store", config.store],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def scrape(url: str, token: str) -> httpx2.Response | None:
    try:
        return httpx2.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
    except httpx2.ConnectError:
        return None


@pytest.mark.integration
def test_live_metrics_pass_promtool_and_carry_the_pipelines_counters(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    promtool()
    cfg = live_config(tmp_path, mosquitto)
    messages = traffic()
    token = monitor_key(tmp_path, cfg)
    with pipeline(cfg) as gw, icvgw_api(tmp_path, cfg) as url:
        before = samples(until(lambda: scrape(url, token), timeout=60).text)
        send(mosquitto, gw, messages)
        r = httpx2.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
        assert httpx2.get(f"{url}/metrics").status_code == 401
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    check_metrics(r.content)
    found = samples(r.text)
    assert value(before, "icvgw_messages_total") == 0
    assert value(found, "icvgw_messages_total") == len(messages)  # the pipeline's, moved
    assert value(found, "icvgw_records_total") == len(messages)
    assert value(found, "icvgw_end_to_end_seconds_count") == len(messages)
    assert value(found, "icvgw_pipeline_up") == 1
    assert value(found, "icvgw_broker_connected") == 1
    assert value(found, "icvgw_store_ok") == 1
    assert value(found, "icvgw_store_readable") == 1
    shard = origin_of(cfg.worker)
    assert (value(found, "icvgw_audit_log_size", shard=shard) or 0) > len(messages)
    version = gw.holder.current.version
    assert value(found, "icvgw_policy_info", version=version) == 1  # the pipeline's
    assert value(found, "icvgw_api_policy_info", version=version) == 1  # the API's
    delivered = sum(v for (n, _), v in found.items() if n == "icvgw_views_delivered_total")
    assert delivered > 0


def test_without_a_pipeline_the_scrape_answers_and_says_so(api: Api) -> None:
    r = api.client.get("/metrics", headers=api.headers(api.key(Role.MONITOR)))
    assert r.status_code == 200
    found = samples(r.text)
    assert value(found, "icvgw_pipeline_up") == 0
    assert value(found, "icvgw_store_readable") == 1
    assert value(found, "icvgw_messages_total") is None


def test_store_gauges_equal_the_store(api: Api) -> None:
    """After batches committed and not delivered (no broker): each subscriber's backlog and
    its oldest view's age, the cross-border counts, each shard's size and latest
    checkpoint, as the store holds them."""
    gw = Gateway(api.ctx.config, registry=CollectorRegistry())
    try:
        envelopes = [Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(traffic())]
        gw.process(envelopes)
        gw.audit.checkpoint()
    finally:
        gw.store.close()
    r = api.client.get("/metrics", headers=api.headers(api.key(Role.ADMIN)))
    assert r.status_code == 200
    found = samples(r.text)
    con = sqlite3.connect(api.ctx.config.store.removeprefix("sqlite:///"))
    stored = {
        (sub, channel): n
        for sub, channel, n in con.execute(
            "select subscriber, channel, count(*) from outbox "
            "where delivered_ms is null and subscriber <> '' group by subscriber, channel"
        )
    }
    bundle = api.ctx.bundle()
    assert sum(stored.values()) > 0
    for sub, subscriber in bundle.subscribers.items():
        labels = {"subscriber": sub, "channel": subscriber.view.delivery.channel.value}
        assert value(found, "icvgw_outbox_depth", **labels) == stored.get(
            (labels["subscriber"], labels["channel"]), 0
        ), sub
        age = value(found, "icvgw_outbox_oldest_age_seconds", **labels)
        assert age is not None and (age > 0) == (stored.get((sub, labels["channel"]), 0) > 0)

    year = counting_year(bundle.rules.crossborder.year_utc_offset_hours, api.ctx.clock())
    counted = con.execute(
        "select recipient, category, subjects from crossborder_counts where year = ?", (year,)
    ).fetchall()
    assert counted  # the run exported to the cross-border subscriber
    for recipient, category, n in counted:
        labels = {"recipient": recipient, "year": str(year), "category": category}
        assert value(found, "icvgw_crossborder_subjects", **labels) == n
    pi = bundle.rules.crossborder.personal_information
    assert value(
        found,
        "icvgw_crossborder_threshold_subjects",
        category="personal_information",
        tier="assessment",
    ) == float(pi.assessment_from)

    for shard, size in con.execute("select shard, size from audit_shards"):
        assert value(found, "icvgw_audit_log_size", shard=shard) == size
        (covered,) = con.execute(
            "select size from audit_checkpoints where shard = ? order by ordinal desc limit 1",
            (shard,),
        ).fetchone()
        assert value(found, "icvgw_audit_checkpoint_size", shard=shard) == covered


def test_one_family_per_name_across_sources() -> None:
    """The API's registry, a second source and a pipeline exposition that share families:
    same name and type merged (its series once), another type left out, no ``_created``."""
    api_side, pipeline_side = CollectorRegistry(), CollectorRegistry()
    webhook = Counter(
        "icvgw_views_delivered", "Views delivered", ["channel", "subscriber"], registry=api_side
    )
    webhook.labels("webhook", "a").inc(2)
    Gauge("icvgw_store_ok", "the same series: the first source's", registry=api_side).set(1)
    Gauge("icvgw_commit_seconds", "a gauge here, a histogram there", registry=api_side).set(9)
    piped = Metrics(pipeline_side)
    piped.delivered.labels("mqtt", "a").inc(5)
    piped.records.inc(3)
    piped.batch_commit_seconds.observe(0.1)
    parsed = list(text_string_to_metric_families(generate_latest(pipeline_side).decode()))
    families = merge(api_side.collect(), parsed, parsed)
    text = generate_latest(_Fixed(families))
    check_metrics(text)
    found = samples(text.decode())
    assert value(found, "icvgw_views_delivered_total", channel="webhook", subscriber="a") == 2
    assert value(found, "icvgw_views_delivered_total", channel="mqtt", subscriber="a") == 5
    assert value(found, "icvgw_records_total") == 3
    assert value(found, "icvgw_store_ok") == 1  # the pipeline's 0 is the same series
    assert value(found, "icvgw_commit_seconds") == 9  # the histogram of that name left out
    assert value(found, "icvgw_commit_seconds_count") is None
    assert not any(name.endswith("_created") for name, _ in found)


class _Fixed(CollectorRegistry):
    def __init__(self, families: list[Metric]) -> None:
        super().__init__()
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def test_a_store_that_cannot_be_read_gives_readable_0_and_the_rest(tmp_path: Path) -> None:
    ctx = open_context(api_config(tmp_path))
    ctx.store.close()  # every read now fails with StoreError
    families = {f.name: f for f in StoreGauges(ctx).collect()}
    assert [s.value for s in families["icvgw_store_readable"].samples] == [0.0]
    assert "icvgw_outbox_depth" not in families
    assert families["icvgw_api_policy"].samples[0].labels == {"version": ctx.bundle().version}


def test_views_read_over_http_are_no_backlog(api: Api) -> None:
    """An http_stream view is never confirmed: it must not count as a backlog that ages."""
    from gateway.store.outbox import OutboxRow, add_outbox

    rows = [
        OutboxRow(1, "sh-traffic", "t", "m1", b"{}", 1, channel="http_stream"),
        OutboxRow(2, "sh-traffic", "t", "m2", b"{}", 1, channel="mqtt"),
    ]
    with api.ctx.store.transaction() as tx:
        add_outbox(tx, api.ctx.shard, rows)
        tx.audit_head(api.ctx.shard)  # the shard exists: the gauges read every shard
    found = samples(api.client.get("/metrics", headers=api.headers(api.key(Role.ADMIN))).text)
    assert value(found, "icvgw_outbox_depth", subscriber="sh-traffic", channel="mqtt") == 1
    assert (
        value(found, "icvgw_outbox_depth", subscriber="sh-traffic", channel="http_stream") is None
    )
