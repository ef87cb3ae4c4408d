"""No setting is accepted and then ignored: every leaf field of the config model has a probe
here, and changing the field from its default changes what the probe observes of a gateway
built from the config (or of what it does). A new field without a probe fails
:func:`test_every_field_has_a_probe`; a field nothing reads fails its probe."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.config import GatewayConfig, load_config
from gateway.keys import init_keys
from gateway.model import Envelope
from gateway.resources import default_policy_dir
from gateway.service import Gateway
from simulators.fleet import Fleet, FleetConfig
from tests.ingest.tls_files import make_tls_files

Path_ = tuple[str, ...]


def leaf_fields(model: type[BaseModel], prefix: Path_ = ()) -> list[Path_]:
    """Every leaf setting of ``model``, as a dotted path."""
    out: list[Path_] = []
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out.extend(leaf_fields(kind, (*prefix, name)))
        else:
            out.append((*prefix, name))
    return out


@dataclass
class Env:
    """A deployment in a temporary directory: keys, a bundle whose ``mapco-nav`` has no
    topic of its own (channel http_stream), a store."""

    root: Path
    made: int = 0

    def config(self, overrides: dict[Path_, Any]) -> GatewayConfig:
        overrides = {
            k: str(self.root / v) if isinstance(v, str) and v.startswith("tls/") else v
            for k, v in overrides.items()
        }
        self.made += 1  # a fresh store each time: the same input is new to each gateway
        base: dict[Path_, Any] = {
            ("broker", "url"): "mqtt://127.0.0.1:9",
            ("broker", "protocol"): "5",
            ("store",): f"sqlite:///{self.root / f'gw{self.made}.sqlite'}",
            ("keys",): str(self.root / "keys"),
            ("policies",): str(self.root / "policy"),
        }
        return load_config(None, overrides={**base, **overrides}, environ={})


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    init_keys(tmp_path / "keys")
    init_keys(tmp_path / "keys2")
    shutil.copytree(default_policy_dir(), tmp_path / "policy")
    shutil.copytree(default_policy_dir(), tmp_path / "policy2")
    subs = tmp_path / "policy" / "subscribers.yaml"
    text = subs.read_text()
    old = "        channel: mqtt\n        topic: share/mapco-nav\n"
    assert old in text
    subs.write_text(text.replace(old, "        channel: http_stream\n"))
    (tmp_path / "policy2" / "subscribers.yaml").write_text(subs.read_text())
    make_tls_files(tmp_path / "tls")
    monkeypatch.setenv("GW_TEST_PASSWORD", "secret")
    return Env(tmp_path)


def envelopes() -> list[Envelope]:
    # A minute of driving: views under a per-trip pseudonym wait until the trip has left the
    # least per-trip trim behind (rules.trips.pseudonym_trim_m).
    msgs = Fleet(FleetConfig(vehicles=3), seed=5).messages(60, 1.0)
    good = [Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(msgs)]
    return [*good, Envelope("vehicles/X/telemetry", b"not json", 0.0, 999)]


def outbox_topics(gw: Gateway) -> list[str]:
    written = gw.process(envelopes())
    return sorted({r.topic.rsplit("/", 2)[0] for r in written.outbox})


def checkpoint_topic(gw: Gateway) -> str:
    topics: list[str] = []
    gw.publisher.publish = lambda topic, *a, **k: topics.append(topic)  # type: ignore[method-assign]
    gw._publish_checkpoint(gw.origin, b"origin\n1\nhash\n")
    return topics[0]


def batch_args(gw: Gateway) -> tuple[int, float]:
    calls: list[tuple[int, float]] = []

    def get_batch(size: int, wait: float) -> list[Envelope]:
        calls.append((size, wait))
        gw.stop()
        return []

    gw.source.get_batch = get_batch  # type: ignore[method-assign]
    gw.shutdown = lambda *a, **k: None  # type: ignore[method-assign]
    gw.run()
    return calls[0]


Probe = Callable[[Gateway], Any]

PROBES: dict[Path_, tuple[Any, Probe, dict[Path_, Any]]] = {
    # path: (a value other than the default, what it changes, settings both sides need)
    ("worker",): ("gw-7", lambda gw: (gw.origin, gw.source.client_id), {}),
    ("broker", "url"): ("mqtt://10.0.0.1:1884", lambda gw: (gw.spec.host, gw.spec.port), {}),
    ("broker", "protocol"): ("3.1.1", lambda gw: gw.spec.protocol, {}),
    ("broker", "username"): ("icvgw", lambda gw: gw.spec.username, {}),
    ("broker", "password_env"): (
        "GW_TEST_PASSWORD",
        lambda gw: gw.spec.password,
        {("broker", "username"): "icvgw"},
    ),
    ("broker", "ca_file"): (
        "tls/ca.pem",
        lambda gw: gw.spec.ca_file,
        {("broker", "url"): "mqtts://127.0.0.1:9"},
    ),
    ("broker", "cert_file"): (
        "tls/client-combined.pem",
        lambda gw: gw.spec.cert_file,
        {("broker", "url"): "mqtts://127.0.0.1:9"},
    ),
    ("broker", "key_file"): (
        "tls/client.key",
        lambda gw: gw.spec.key_file,
        {
            ("broker", "url"): "mqtts://127.0.0.1:9",
            ("broker", "cert_file"): "tls/client-combined.pem",
        },
    ),
    ("broker", "sys_stats"): (False, lambda gw: sorted(gw.source._watch), {}),
    ("input", "topic"): ("fleet/+/data", lambda gw: gw.source.topic, {}),
    ("input", "group"): ("icvgw", lambda gw: gw.source.topic, {}),
    ("input", "queue_bound"): (17, lambda gw: gw.source.queue_bound, {}),
    ("input", "queue_bytes"): (3 * 2**20, lambda gw: gw.source.queue_bytes, {}),
    ("input", "batch_max"): (7, batch_args, {}),
    ("input", "batch_wait_ms"): (9, batch_args, {}),
    ("output", "topic_prefix"): ("views", outbox_topics, {}),
    ("output", "deadletter_prefix"): ("dead", outbox_topics, {}),
    ("output", "checkpoint_prefix"): ("cp", checkpoint_topic, {}),
    ("output", "max_inflight"): (3, lambda gw: gw.publisher.max_inflight, {}),
    ("output", "batch_max_bytes"): (4096, lambda gw: gw.drainer.batch_max_bytes, {}),
    ("checkpoint", "every_entries"): (5, lambda gw: gw.audit.policy, {}),
    ("checkpoint", "every_seconds"): (2.5, lambda gw: gw.audit.policy, {}),
    ("policies",): (None, lambda gw: str(gw.holder.directory), {}),
    ("store",): (None, lambda gw: gw.store.url, {}),
    ("keys",): (None, lambda gw: gw.keys.pseudonym_key("s").hex(), {}),
}
"""``None`` as the value: the probe's test builds one; ``tls/`` is in the test's directory."""


def _api_options(cfg: GatewayConfig) -> dict[str, Any]:
    from gateway.cli.api import uvicorn_options

    return uvicorn_options(cfg)


def _api_started_by_run(cfg: GatewayConfig) -> tuple[str, ...] | None:
    """The command ``icvgw run`` starts for the API (None: none)."""
    from gateway.api.child import api_command

    command = api_command(cfg, config_file=None, environ={})
    return None if command is None else command.argv


def _limiter(cfg: GatewayConfig) -> tuple[float, int]:
    from gateway.api import create_app
    from gateway.api.context import open_context

    ctx = open_context(cfg)
    try:
        limiter = create_app(ctx, sinks=False).state.limiter
        return limiter.rate, limiter.burst
    finally:
        ctx.close()


def _body_status(cfg: GatewayConfig) -> int:
    from fastapi.testclient import TestClient

    from gateway.api import create_app
    from gateway.api.context import open_context

    ctx = open_context(cfg)
    try:
        with TestClient(create_app(ctx, sinks=False)) as client:
            return client.post("/healthz", content=b"x" * 5000).status_code
    finally:
        ctx.close()


def _pipeline_url(cfg: GatewayConfig) -> str:
    from gateway.api.context import open_context
    from gateway.api.health import pipeline_samples

    ctx = open_context(cfg)
    try:
        reason = pipeline_samples(ctx)
        assert isinstance(reason, str)  # nothing listens there
        return reason.split(":", 1)[0] + reason.rsplit(" at ", 1)[-1].split("/metrics")[0]
    finally:
        ctx.close()


def _webhook(cfg: GatewayConfig, observe: Callable[[Any], Any]) -> Any:
    """``observe`` of the webhook sink the API builds from ``cfg`` (not started), on a
    fixed clock and jitter."""
    from gateway.api.context import open_context
    from gateway.api.webhooks import WebhookSink

    ctx = open_context(cfg)
    ctx.clock = lambda: 1_000.0
    sink = WebhookSink.from_context(ctx, rand=lambda: 0.5)
    try:
        return observe(sink)
    finally:
        sink.stop()
        ctx.close()


def _webhook_attempt(cfg: GatewayConfig, attempts: int) -> Any:
    """What the sink makes of one more failed POST (nothing listens at the url) of a view
    that failed ``attempts`` times already: retried when, or given up."""
    from gateway.store.outbox import OutboxRow, WebhookRow
    from gateway.testing import free_port

    view = OutboxRow(1, "s", "share/s", "m-1", b"{}", 0, "webhook")
    url = f"https://127.0.0.1:{free_port()}/"
    return _webhook(cfg, lambda sink: sink.attempt(url, [WebhookRow(view, attempts, 0)]))


ApiProbe = Callable[[GatewayConfig], Any]
_TLS: dict[Path_, Any] = {
    ("api", "tls_cert"): "tls/server.pem",
    ("api", "tls_key"): "tls/server.key",
}

API_PROBES: dict[Path_, tuple[Any, ApiProbe, dict[Path_, Any]]] = {
    # The API process's settings, observed on what `icvgw api` builds from the config.
    ("api", "enabled"): (False, lambda c: _api_started_by_run(c), {}),
    ("api", "host"): ("0.0.0.0", lambda c: _api_options(c)["host"], {}),
    ("api", "port"): (8443, lambda c: _api_options(c)["port"], {}),
    ("api", "tls_cert"): ("tls/client.pem", lambda c: _api_options(c).get("ssl_certfile"), _TLS),
    ("api", "tls_key"): ("tls/client.key", lambda c: _api_options(c).get("ssl_keyfile"), _TLS),
    ("api", "tls_client_ca"): (
        "tls/ca.pem",
        lambda c: (_api_options(c).get("ssl_ca_certs"), _api_options(c).get("ssl_cert_reqs")),
        _TLS,
    ),
    ("api", "rate_per_s"): (3.0, _limiter, {}),
    ("api", "rate_burst"): (4, _limiter, {}),
    ("api", "max_body_bytes"): (4096, _body_status, {}),
    ("api", "webhook", "attempts"): (1, lambda c: _webhook_attempt(c, 0).kind, {}),
    ("api", "webhook", "backoff_initial_s"): (0.5, lambda c: _webhook_attempt(c, 0).failed, {}),
    ("api", "webhook", "backoff_max_s"): (
        20.0,
        lambda c: _webhook_attempt(c, 30).failed,
        {("api", "webhook", "attempts"): 100},
    ),
    ("api", "webhook", "timeout_s"): (0.5, lambda c: _webhook(c, lambda s: s.client.timeout), {}),
    ("api", "webhook", "ca_file"): (
        "tls/ca.pem",
        lambda c: _webhook(c, lambda s: [ca["subject"] for ca in s.ssl.get_ca_certs()]),
        {},
    ),
    ("metrics", "enabled"): (False, _pipeline_url, {}),
    ("metrics", "host"): ("127.0.0.2", _pipeline_url, {}),
    ("metrics", "port"): (10, _pipeline_url, {}),
}


def test_every_field_has_a_probe() -> None:
    assert sorted(leaf_fields(GatewayConfig)) == sorted([*PROBES, *API_PROBES])


@pytest.mark.parametrize("path", sorted(API_PROBES), ids=".".join)
def test_each_api_field_changes_what_the_api_does(env: Env, path: Path_) -> None:
    value, probe, needs = API_PROBES[path]
    default = probe(env.config(needs))
    changed = probe(env.config({**needs, path: value}))
    assert changed != default, f"{'.'.join(path)} = {value!r} changed nothing"


def observe(env: Env, overrides: dict[Path_, Any], probe: Probe) -> Any:
    gw = Gateway(env.config(overrides))
    try:
        return probe(gw)
    finally:
        gw.store.close()


@pytest.mark.parametrize("path", sorted(PROBES), ids=".".join)
def test_each_field_changes_what_the_gateway_does(env: Env, path: Path_) -> None:
    value, probe, needs = PROBES[path]
    if value is None:
        value = {
            ("policies",): str(env.root / "policy2"),
            ("store",): f"sqlite:///{env.root / 'other.sqlite'}",
            ("keys",): str(env.root / "keys2"),
        }[path]
    default = observe(env, needs, probe)
    changed = observe(env, {**needs, path: value}, probe)
    assert changed != default, f"{'.'.join(path)} = {value!r} changed nothing"
