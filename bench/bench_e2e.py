"""End to end through a real Mosquitto at QoS 1, several ways in one run (issues 5, 14).

    python -m bench.bench_e2e [--modes raw,relay,gateway,gateway-batched,gateway-api]
                              [--messages 40000] [--vehicles 10000] [--zones 10000]
                              [--latency-seconds 20] [--batch-views 100] [--linger-ms 20]

Modes, each against a fresh broker (``gateway.testing.MosquittoBroker``: persistence on,
its own config and data directory):

* ``raw``: publisher -> broker -> subscriber, the floor of what the machine does;
* ``relay``: a zero-work relay with the default policy's fan-out: the gateway's own MQTT
  input and output, each input republished unchanged once per subscriber (four) and
  acknowledged after every copy is confirmed; no decisions, no store;
* ``gateway``: ``python -m gateway run --config FILE`` with the default policy (10,000 zones,
  consents for the fleet), the store in SQLite on disk, every view delivered by MQTT; its
  HTTP API disabled (``api.enabled: false``);
* ``gateway-batched``: the same with every subscriber's view set to batched delivery
  (``batch_max_views: --batch-views``, ``linger_ms: --linger-ms``; 100 and 20 by default):
  each MQTT message is a JSON array of views on ``<topic>/batch``. Its subscribers split
  the arrays and count and key each view, so its output rate is in views per second like
  the other modes' (a view's latency is its batch's arrival minus its input's send time);
  the report adds the MQTT messages per second it sent. It runs after ``gateway``, at the
  same latency load;
* ``gateway-api``: the same, with the HTTP API that ``icvgw run`` starts beside it (its own
  process) and a client (``bench/api_load.py``) that pulls every subscriber's views with
  ``GET /v1/records`` every ``--api-pull-every`` seconds (1) and queries the audit log with
  ``GET /v1/audit/entries`` ``--api-audit-rate`` times a second (2), from warm-up to the
  end. It runs after ``gateway``, at the same latency load, so the report gives p99 with
  and without the API in one run.

Traffic is the fleet simulator's (10,000 vehicles: real VINs, positions and VSS payloads),
published at QoS 1 with at most ``--max-inflight`` unacknowledged messages. The relay's and
the gateway's output bound (``--out-inflight``, the gateway's ``output.max_inflight``) is the
same for both, 100 by default: paho scans every in-flight message on each PUBACK, so a bound
of 1,000 costs a publisher more than half its throughput (bench/RESULTS.md). Per mode:
warm-up (probe until the first output arrives, then ``--warmup`` messages); saturation
(``--messages`` as fast as the bounded publisher is confirmed, outputs counted until
drained: rates are messages over first send to last arrival); latency (``--latency-seconds``
of paced publishing at half the gateway's saturated input rate, or half the mode's own when
the gateway is not run). The broker, the mode under test, the load generator and the
subscribers share the machine's cores: compare modes within one run.

Latency is arrival minus send time (``time.monotonic``, one clock across processes). Raw and
relayed copies carry the input's ``msg_id``; a gateway output's ``message_id`` is a keyed MAC
of the input's ``msg_id`` and timestamp the benchmark recomputes from the key directory it
created. Views of
subscribers whose policy holds records back on purpose (trip trimming) are counted but left
out of the percentiles. For the gateway the latency is also split at the store commit (the
outbox row's creation time). Peak RSS is each process's VmHWM (``/proc/<pid>/status``); CPU
is the process's user + system time during saturation.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench import e2e_gateway as gw
from bench.api_load import api_client_main
from bench.common import machine
from bench.mqtt_load import cpu_seconds, peak_rss_mb, publisher_main, relay_main, subscriber_main
from gateway.resources import default_policy_dir
from gateway.testing import MosquittoBroker
from simulators.fleet import Fleet, FleetConfig

MODES = ("raw", "relay", "gateway", "gateway-batched", "gateway-api")
PLAIN_WARMUP = 2_000
"""Warm-up messages of raw and relay, which decide nothing (the gateway modes drive the
fleet for ``--drive-seconds`` first)."""
INPUT_TOPIC = "vehicles/+/telemetry"


class BenchError(RuntimeError):
    """A mode could not be measured (a process failed to start, answer or drain)."""


# -- child processes --------------------------------------------------------------------------


class Child:
    """A spawned process driven over a pipe: :meth:`call` sends a command, returns the reply
    and raises :class:`BenchError` on an error reply, a timeout or a dead process."""

    def __init__(
        self, ctx: SpawnContext, name: str, target: Callable[..., None], *args: Any
    ) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc: SpawnProcess = ctx.Process(
            target=target, args=(child, *args), name=name, daemon=True
        )
        self.proc.start()
        child.close()

    def reply(self, timeout: float) -> tuple[Any, ...]:
        """The next reply, within ``timeout`` seconds."""
        if not self.conn.poll(timeout):
            state = "died" if not self.proc.is_alive() else f"no answer within {timeout:g} s"
            raise BenchError(f"{self.name}: {state}")
        try:
            answer: tuple[Any, ...] = self.conn.recv()
        except EOFError as exc:
            raise BenchError(f"{self.name}: died") from exc
        if answer[0] == "error":
            raise BenchError(f"{self.name}: {answer[1]}")
        return answer

    def call(self, *cmd: Any, timeout: float = 60.0) -> tuple[Any, ...]:
        """Send ``cmd`` and return the reply."""
        self.conn.send(cmd)
        return self.reply(timeout)

    def close(self) -> None:
        """End the process if it is still running."""
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self.conn.close()


@dataclass
class Subscriber:
    """A subscriber process and its running message count."""

    child: Child
    count: Any  # multiprocessing.Value('q'): outputs (views) received
    messages: Any  # multiprocessing.Value('q'): MQTT messages received


# -- results ---------------------------------------------------------------------------------


@dataclass
class Phase:
    """One publish-and-drain: what went in, what came out, how long, how late."""

    inputs: int
    outputs: int
    """Outputs received: messages for raw and relay, views for the gateway modes (a batch
    counts each of its views)."""
    seconds: float
    publish_seconds: float
    latencies_ms: np.ndarray
    commit_ms: np.ndarray | None = None
    cpu_seconds: float | None = None
    extra_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of the mode's other processes (the API beside the gateway) meanwhile."""
    held: int = 0
    unmatched: int = 0
    per_subscriber: dict[str, int] = field(default_factory=dict)
    messages: int | None = None
    """MQTT messages received (as many as outputs unless views came in batches)."""

    @property
    def input_rate(self) -> float:
        """Inputs per second, first send to last arrival."""
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    @property
    def output_rate(self) -> float:
        """Outputs per second, first send to last arrival."""
        return self.outputs / self.seconds if self.seconds > 0 else 0.0

    @property
    def message_rate(self) -> float | None:
        """MQTT messages out per second, first send to last arrival."""
        if self.messages is None or self.seconds <= 0:
            return None
        return self.messages / self.seconds

    @property
    def per_input(self) -> float:
        """Outputs per input."""
        return self.outputs / self.inputs if self.inputs else 0.0

    @property
    def cpu_per_input_us(self) -> float | None:
        """CPU microseconds of the process under test per input."""
        if self.cpu_seconds is None or not self.inputs:
            return None
        return self.cpu_seconds / self.inputs * 1e6

    def percentile(self, q: float) -> float | None:
        """Latency percentile in ms, None without samples."""
        if self.latencies_ms.size == 0:
            return None
        return float(np.percentile(self.latencies_ms, q))


@dataclass
class ModeResult:
    """Everything measured for one mode."""

    mode: str
    saturation: Phase | None = None
    latency: Phase | None = None
    latency_rate: float | None = None
    rss_mb: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    client: dict[str, Any] | None = None
    """What the API client did (``gateway-api``: bench/api_load.py's stats)."""


# -- modes -----------------------------------------------------------------------------------


class Mode:
    """What runs between the publisher and the subscribers, and how outputs map to inputs."""

    name = ""
    expected_per_input: int | None = None

    def __init__(self, ctx: SpawnContext, workdir: Path, broker: MosquittoBroker) -> None:
        self.ctx = ctx
        self.workdir = workdir
        self.broker = broker
        self.subscribers: list[Subscriber] = []

    def subscriber_specs(self) -> list[tuple[str, list[str], str]]:
        """``(name, topic filters, key kind)`` of each subscriber process."""
        return []

    def start_middle(self) -> None:
        """Start what sits between publisher and subscribers (nothing for raw)."""

    def check_alive(self) -> None:
        """Raise :class:`BenchError` if the process under test has exited."""

    def start(self) -> None:
        """Start the subscribers, then the middle."""
        for name, filters, key in self.subscriber_specs():
            count = self.ctx.Value("q", 0, lock=False)
            messages = self.ctx.Value("q", 0, lock=False)
            child = Child(
                self.ctx,
                name,
                subscriber_main,
                self.broker.url,
                filters,
                key,
                f"bench-{name}",
                count,
                messages,
            )
            self.subscribers.append(Subscriber(child, count, messages))
        for sub in self.subscribers:
            sub.child.reply(30.0)
        self.start_middle()

    def total(self) -> int:
        """Outputs received by every subscriber so far."""
        return sum(int(s.count.value) for s in self.subscribers)

    def messages_total(self) -> int:
        """MQTT messages received by every subscriber so far."""
        return sum(int(s.messages.value) for s in self.subscribers)

    def collect(self) -> tuple[np.ndarray, list[str | None]]:
        """Arrival times and keys received since the last collect, all subscribers."""
        times: list[np.ndarray] = []
        keys: list[str | None] = []
        for sub in self.subscribers:
            _, t, k = sub.child.call("collect")
            times.append(t)
            keys.extend(k)
        return (np.concatenate(times) if times else np.empty(0)), keys

    def trace(self, msg_ids: Sequence[str], times: Sequence[float]) -> dict[str, str]:
        """Output key -> input ``msg_id`` for the inputs ``msg_ids`` (their records stamped
        ``times``, Unix seconds)."""
        return {m: m for m in msg_ids}

    def commit_times(self) -> dict[str, float] | None:
        """Output key -> when the middle committed it (Unix seconds), where it says."""
        return None

    def middle_pid(self) -> int | None:
        """Process id of what sits between publisher and subscribers (None for raw)."""
        return None

    def extra_pids(self) -> dict[str, int]:
        """Other processes of the mode whose CPU time a phase reports, by name."""
        return {}

    def client_stats(self) -> dict[str, Any] | None:
        """What a client of the mode did, once stopped (``gateway-api``)."""
        return None

    def counts_for_latency(self, key: str) -> bool:
        """False for outputs a policy holds back on purpose."""
        return True

    def subscriber_of(self, key: str) -> str:
        """Which subscriber an output key belongs to (for the per-subscriber counts)."""
        return self.name

    def stop_middle(self) -> dict[str, float]:
        """Stop the middle; peak RSS of its processes in MiB."""
        return {}

    def stop(self) -> dict[str, float]:
        """Stop everything this mode started; peak RSS per process in MiB."""
        rss = self.stop_middle()
        for sub in self.subscribers:
            try:
                _, peak = sub.child.call("stop", timeout=10)
                if peak is not None:
                    rss[sub.child.name] = peak
            except BenchError:
                pass
            sub.child.close()
        return rss


class RawMode(Mode):
    """Publisher -> broker -> subscriber."""

    name = "raw"
    expected_per_input = 1

    def subscriber_specs(self) -> list[tuple[str, list[str], str]]:
        return [("raw-sub", [INPUT_TOPIC], "msg_id")]


def default_subscribers() -> list[str]:
    """The subscriber ids of the shipped policy (the relay copies its fan-out)."""
    doc = yaml.safe_load((default_policy_dir() / "subscribers.yaml").read_text("utf-8"))
    return [s["id"] for s in doc["subscribers"]]


class RelayMode(Mode):
    """The zero-work relay, one copy per subscriber of the default policy."""

    name = "relay"

    def __init__(
        self, ctx: SpawnContext, workdir: Path, broker: MosquittoBroker, *, out_inflight: int
    ) -> None:
        super().__init__(ctx, workdir, broker)
        self.out_inflight = out_inflight
        self.subs = default_subscribers()
        self.expected_per_input = len(self.subs)
        self.relay: Child | None = None

    def subscriber_specs(self) -> list[tuple[str, list[str], str]]:
        return [(f"relay-sub-{s}", [f"share/{s}/#"], "msg_id") for s in self.subs]

    def start_middle(self) -> None:
        self.relay = Child(
            self.ctx,
            "relay",
            relay_main,
            self.broker.url,
            self.subs,
            INPUT_TOPIC,
            1000,
            self.out_inflight,
        )
        self.relay.reply(30.0)

    def middle_pid(self) -> int | None:
        return None if self.relay is None else self.relay.proc.pid

    def check_alive(self) -> None:
        if self.relay is not None and not self.relay.proc.is_alive():
            raise BenchError("relay exited")

    def stop_middle(self) -> dict[str, float]:
        if self.relay is None:
            return {}
        _, _relayed, peak = self.relay.call("stop", timeout=30)
        self.relay.close()
        return {"relay": peak} if peak is not None else {}


class GatewayMode(Mode):
    """``python -m gateway run`` with the benchmark's bundle, keys and config."""

    name = "gateway"

    def __init__(
        self,
        ctx: SpawnContext,
        workdir: Path,
        broker: MosquittoBroker,
        *,
        zones: int,
        consenting_vins: Sequence[str],
        consent_purposes: Sequence[str],
        delivery: str,
        out_inflight: int,
        store: str,
        api: bool = False,
        batch_views: int = 1,
        linger_ms: int = 0,
    ) -> None:
        super().__init__(ctx, workdir, broker)
        self.store = store
        home = workdir / "home"
        home.mkdir(parents=True)
        self.home = home
        self.outputs = gw.write_bundle(
            home / "policies",
            zones=zones,
            consenting_vins=consenting_vins,
            purposes=consent_purposes,
            delivery=delivery,
            batch_views=batch_views,
            linger_ms=linger_ms,
        )
        gw.init_keys(home / "keys")
        self.config = gw.write_config(
            home,
            broker_url=broker.url,
            out_inflight=out_inflight,
            store=store,
            api=api,
        )
        self.tracer = gw.GatewayTrace(home / "keys", self.outputs)
        self.immediate = {s.id for s in self.outputs if not s.trims_trips}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "gateway.log"
        self._index: dict[str, str] = {}

    def subscriber_specs(self) -> list[tuple[str, list[str], str]]:
        return [
            (f"gw-sub-{s.id}", [s.topic_filter], "view")
            for s in self.outputs
            if s.topic_filter is not None
        ]

    def start_middle(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                gw.gateway_command(self.config),
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 15) -> str:
        """The end of the gateway's log."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_tail()
            log(f"gateway log ({self.log_path}), last lines:\n{tail}")
            last = next(
                (line for line in reversed(tail.splitlines()) if any(c.isalnum() for c in line)),
                "",
            )
            raise BenchError(f"gateway exited with status {self.proc.returncode}: {last}")

    def trace(self, msg_ids: Sequence[str], times: Sequence[float]) -> dict[str, str]:
        # Views held back (trip trimming) may come out in a later phase: index every input.
        self._index.update(self.tracer.index(zip(msg_ids, times, strict=True)))
        return self._index

    def counts_for_latency(self, key: str) -> bool:
        return gw.subscriber_of(key) in self.immediate

    def commit_times(self) -> dict[str, float] | None:
        return gw.outbox_commit_times(self.home, self.store)

    def middle_pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def subscriber_of(self, key: str) -> str:
        return gw.subscriber_of(key)

    def stop_middle(self) -> dict[str, float]:
        if self.proc is None:
            return {}
        peak = peak_rss_mb(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return {self.name: peak} if peak is not None else {}


class GatewayBatchedMode(GatewayMode):
    """The gateway with every subscriber's views delivered in batches (``batch_max_views``,
    ``linger_ms``): one MQTT message carries up to ``batch_views`` views."""

    name = "gateway-batched"


class GatewayApiMode(GatewayMode):
    """The gateway with its HTTP API beside it, as ``icvgw run`` starts it, and a client
    (:mod:`bench.api_load`) pulling every subscriber's records every ``pull_every_s`` and
    querying the audit log ``audit_per_s`` times a second, from warm-up to the end."""

    name = "gateway-api"

    def __init__(self, *args: Any, pull_every_s: float, audit_per_s: float, **kw: Any) -> None:
        super().__init__(*args, api=True, **kw)
        self.pull_every_s = pull_every_s
        self.audit_per_s = audit_per_s
        self.client: Child | None = None
        self.api_pid: int | None = None
        self.stats: dict[str, Any] | None = None

    def start_middle(self) -> None:
        # Keys first, with the gateway's own command (it migrates the store the gateway
        # then opens): one per subscriber, one for the auditor.
        tokens = {s.id: gw.create_api_key(self.config, "subscriber", s.id) for s in self.outputs}
        auditor = gw.create_api_key(self.config, "auditor")
        super().start_middle()
        url, self.api_pid = self._api_listening()
        log(f"{self.name}: API on {url} (pid {self.api_pid})")
        self.client = Child(
            self.ctx,
            "api-client",
            api_client_main,
            url,
            tokens,
            auditor,
            self.pull_every_s,
            self.audit_per_s,
        )
        self.client.reply(30.0)

    def _api_listening(self, timeout: float = 120.0) -> tuple[str, int]:
        """The URL and pid ``icvgw run`` logs for its API process."""
        found = re.compile(r"API on (\S+) \(pid (\d+)\)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            m = found.search(self.log_path.read_text(errors="replace"))
            if m is not None:
                return m.group(1), int(m.group(2))
            time.sleep(0.2)
        raise BenchError(f"{self.name}: the API did not listen within {timeout:g} s")

    def extra_pids(self) -> dict[str, int]:
        pids = {} if self.api_pid is None else {"api": self.api_pid}
        if self.client is not None and self.client.proc.pid is not None:
            pids["api client"] = self.client.proc.pid
        return pids

    def client_stats(self) -> dict[str, Any] | None:
        return self.stats

    def stop_middle(self) -> dict[str, float]:
        rss: dict[str, float] = {}
        if self.client is not None:
            with contextlib.suppress(BenchError):
                _, self.stats = self.client.call("stop", timeout=60)
            self.client.close()
        if self.api_pid is not None:
            peak = peak_rss_mb(self.api_pid)
            if peak is not None:
                rss["api"] = peak
        rss.update(super().stop_middle())
        return rss


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Settings:
    """Command-line settings."""

    modes: list[str]
    messages: int
    repeats: int
    warmup: int
    """Messages sent before saturation: the gateway modes send all of them (the fleet's
    drive before the measured part), raw and relay the first :data:`PLAIN_WARMUP`."""
    vehicles: int
    zones: int
    consents: int
    latency_seconds: float
    latency_rate: float | None
    max_inflight: int
    out_inflight: int
    quiet: float
    seed: int
    delivery: str
    workdir: Path
    store: str
    sample_period_s: float = 10.0
    batch_views: int = 100
    linger_ms: int = 20
    api_pull_every_s: float = 1.0
    api_audit_per_s: float = 2.0


class Bench:
    """One benchmark run: a publisher process shared by every mode, a broker per mode."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.ctx = mp.get_context("spawn")
        self.start_time = datetime.now(UTC).replace(microsecond=0)
        self.publisher = Child(
            self.ctx,
            "publisher",
            publisher_main,
            settings.vehicles,
            settings.seed,
            self.start_time,
            settings.max_inflight,
            settings.sample_period_s,
        )
        self.first_latency = settings.warmup + settings.repeats * settings.messages
        self._postgres_used = False

    def close(self) -> None:
        """Stop the publisher."""
        with contextlib.suppress(BenchError):
            self.publisher.call("stop", timeout=10)
        self.publisher.close()

    def make_mode(self, name: str, broker: MosquittoBroker, workdir: Path) -> Mode:
        """The harness of mode ``name`` against ``broker``."""
        if name == "raw":
            return RawMode(self.ctx, workdir, broker)
        if name == "relay":
            return RelayMode(self.ctx, workdir, broker, out_inflight=self.s.out_inflight)
        fleet = Fleet(FleetConfig(vehicles=self.s.vehicles, start=self.start_time), self.s.seed)
        common: dict[str, Any] = {
            "zones": self.s.zones,
            "consenting_vins": fleet.consenting_vins,
            "consent_purposes": gw.CONSENT_PURPOSES[: self.s.consents],
            "delivery": self.s.delivery,
            "out_inflight": self.s.out_inflight,
            "store": self._store(name),
        }
        if name == "gateway-batched":
            return GatewayBatchedMode(
                self.ctx,
                workdir,
                broker,
                batch_views=self.s.batch_views,
                linger_ms=self.s.linger_ms,
                **common,
            )
        if name == "gateway-api":
            return GatewayApiMode(
                self.ctx,
                workdir,
                broker,
                pull_every_s=self.s.api_pull_every_s,
                audit_per_s=self.s.api_audit_per_s,
                **common,
            )
        return GatewayMode(self.ctx, workdir, broker, **common)

    def _store(self, mode: str) -> str:
        """The mode's store: SQLite in its own directory, or the PostgreSQL database given
        (emptied first when a second gateway mode uses it)."""
        if not self.s.store.startswith(("postgresql://", "postgres://")):
            return self.s.store
        if self._postgres_used:
            gw.empty_postgres(self.s.store)
        self._postgres_used = True
        return self.s.store

    def run_mode(self, name: str, latency_rate: float | None) -> ModeResult:
        """Warm up, saturate, then measure latency at ``latency_rate`` (None: half of this
        mode's saturated input rate)."""
        result = ModeResult(name)
        workdir = self.s.workdir / name
        workdir.mkdir(parents=True)
        broker = MosquittoBroker(workdir=workdir / "broker")
        broker.start()
        mode: Mode | None = None
        try:
            mode = self.make_mode(name, broker, workdir)
            mode.start()
            self.publisher.call("connect", broker.url)
            self._warm_up(mode)
            for r in range(self.s.repeats):
                log(f"{name}: saturation, {self.s.messages:,} messages")
                first = self.s.warmup + r * self.s.messages
                sat = self._phase(mode, first, self.s.messages, None)
                log(f"{name}: {sat.input_rate:,.0f} in/s, {sat.output_rate:,.0f} out/s")
                if result.saturation is None or sat.input_rate > result.saturation.input_rate:
                    result.saturation = sat
            assert result.saturation is not None
            rate = latency_rate or result.saturation.input_rate / 2
            count = max(1, round(rate * self.s.latency_seconds))
            log(f"{name}: latency, {count:,} messages at {rate:,.0f} msg/s")
            result.latency_rate = rate
            result.latency = self._phase(mode, self.first_latency, count, rate)
        except BenchError as exc:
            result.error = str(exc)
            log(f"{name}: FAILED: {exc}")
        finally:
            with contextlib.suppress(BenchError):
                self.publisher.call("disconnect")
            if mode is not None:
                result.rss_mb = mode.stop()
                result.client = mode.client_stats()
            if broker.proc is not None:
                peak = peak_rss_mb(broker.proc.pid)
                if peak is not None:
                    result.rss_mb["broker"] = peak
            broker.stop()
        return result

    def _warm_up(self, mode: Mode) -> None:
        """Probe one message at a time until the first output arrives (the middle may still
        be starting: early probes can be lost), then send the rest of the warm-up."""
        deadline = time.monotonic() + 120.0
        sent = 0
        ids: list[str] = []
        stamps: list[float] = []
        while mode.total() == 0:
            mode.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{mode.name}: no output within 120 s of starting")
            if sent < self.s.warmup - 1:
                _, _, i, t, *_ = self.publisher.call("run", sent, 1, None)
                ids += i
                stamps += t
                sent += 1
            wait_until = time.monotonic() + 0.5
            while mode.total() == 0 and time.monotonic() < wait_until:
                time.sleep(0.02)
        log(f"{mode.name}: first output after {sent} probe(s); warming up")
        warmup = self.s.warmup if mode.name.startswith("gateway") else PLAIN_WARMUP
        if sent < warmup:
            _, _, i, t, *_ = self.publisher.call("run", sent, warmup - sent, None, timeout=900)
            ids += i
            stamps += t
        self._drain(mode, None, mode.total())
        mode.collect()
        # Views of warm-up inputs held back by trip trimming come out later: known, not
        # unmatched, and (sent before the phase) left out of its latencies.
        mode.trace(ids, stamps)

    def _drain(self, mode: Mode, expected: int | None, base: int) -> None:
        """Wait until ``expected`` outputs arrived after ``base``, or none for ``quiet`` s."""
        last = -1
        changed = time.monotonic()
        deadline = changed + 600.0
        while True:
            got = mode.total() - base
            now = time.monotonic()
            if expected is not None and got >= expected:
                return
            if got != last:
                last, changed = got, now
            elif now - changed >= self.s.quiet or now > deadline:
                return
            mode.check_alive()
            time.sleep(0.05)

    def _phase(self, mode: Mode, first: int, count: int, rate: float | None) -> Phase:
        """Publish ``count`` messages from ``first`` (paced at ``rate`` or saturating), wait
        until drained, and match what arrived against what was sent."""
        base, base_messages = mode.total(), mode.messages_total()
        pid = mode.middle_pid()
        cpu_before = None if pid is None else cpu_seconds(pid)
        extra_before = {k: cpu_seconds(p) for k, p in mode.extra_pids().items()}
        timeout = 60.0 + (count / rate if rate else count / 100.0)
        _, send_times, msg_ids, stamps, _confirmed, publish_end = self.publisher.call(
            "run", first, count, rate, timeout=timeout
        )
        expected = None if mode.expected_per_input is None else count * mode.expected_per_input
        self._drain(mode, expected, base)
        messages = mode.messages_total() - base_messages
        cpu_after = None if pid is None else cpu_seconds(pid)
        extra_cpu = {
            k: after - before
            for k, p in mode.extra_pids().items()
            if (before := extra_before.get(k)) is not None and (after := cpu_seconds(p)) is not None
        }
        arrivals, keys = mode.collect()
        sent_at = dict(zip(msg_ids, send_times.tolist(), strict=True))
        index = mode.trace(msg_ids, stamps)
        latencies: list[float] = []
        committed = mode.commit_times()
        wall = time.time() - time.monotonic()  # both clocks are system-wide
        to_commit: list[float] = []
        held = unmatched = 0
        per_sub: dict[str, int] = {}
        for t, key in zip(arrivals.tolist(), keys, strict=True):
            source = None if key is None else index.get(key)
            if key is None or source is None:
                unmatched += 1
                continue
            sub = mode.subscriber_of(key)
            per_sub[sub] = per_sub.get(sub, 0) + 1
            sent = sent_at.get(source)
            if sent is None:  # a held view of an earlier phase's input
                held += 1
            elif mode.counts_for_latency(key):
                latencies.append((t - sent) * 1000.0)
                if committed is not None and key in committed:
                    to_commit.append((committed[key] - wall - sent) * 1000.0)
            else:
                held += 1
        start = float(send_times[0])
        end = float(arrivals.max()) if arrivals.size else start
        return Phase(
            inputs=count,
            outputs=int(arrivals.size),
            seconds=end - start,
            publish_seconds=publish_end - start,
            latencies_ms=np.array(latencies),
            commit_ms=None if committed is None else np.array(to_commit),
            cpu_seconds=(
                None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
            ),
            extra_cpu=extra_cpu,
            held=held,
            unmatched=unmatched,
            per_subscriber=per_sub,
            messages=messages,
        )

    def run(self) -> list[ModeResult]:
        """Every requested mode; the gateway first when it runs, so the others' latency is
        measured at the same load (half the gateway's saturated input rate)."""
        self.publisher.call("prepare", self.first_latency, timeout=300)
        order = sorted(self.s.modes, key=lambda m: (m != "gateway", MODES.index(m)))
        results: dict[str, ModeResult] = {}
        common = self.s.latency_rate
        for name in order:
            log(f"== {name}")
            results[name] = self.run_mode(name, common)
            sat = results[name].saturation
            if name == "gateway" and common is None and sat is not None:
                common = sat.input_rate / 2
        return [results[m] for m in MODES if m in results]


# -- report ----------------------------------------------------------------------------------


def log(text: str) -> None:
    """Progress on stderr."""
    print(text, file=sys.stderr, flush=True)


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def report(settings: Settings, results: Sequence[ModeResult], elapsed: float) -> str:
    """The Markdown report: one table row per mode, then the targets of issue 5."""
    by = {r.mode: r for r in results}

    def rate(mode: str) -> float | None:
        r = by.get(mode)
        return r.saturation.input_rate if r and r.saturation else None

    raw, relay = rate("raw"), rate("relay")
    lines = [
        f"Machine: {machine()}",
        f"Fleet {settings.vehicles:,} vehicles, {settings.messages:,} messages saturated "
        f"(best of {settings.repeats}), "
        f"{settings.latency_seconds:g} s paced for latency; in flight at most "
        f"{settings.max_inflight:,} (load), {settings.out_inflight:,} (relay, gateway); "
        f"gateway: {settings.zones:,} zones, {settings.consents} consent(s) per vehicle, "
        f"delivery {settings.delivery}, store {settings.store.split(':', 1)[0]}; "
        f"gateway-batched: {settings.batch_views} views per batch at most, linger "
        f"{settings.linger_ms} ms; "
        f"run took {elapsed:,.0f} s; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "| mode | input msg/s | output views/s | views per input | × raw | × relay "
        "| CPU µs per input | latency load msg/s | p50 ms | p99 ms | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        sat, lat = r.saturation, r.latency
        if sat is None:
            lines.append(f"| {r.mode} | failed (below) |" + " – |" * 9)
            continue
        rss = r.rss_mb.get(r.mode)  # the process under test (none for raw)
        lines.append(
            f"| {r.mode} | {_num(sat.input_rate)} | {_num(sat.output_rate)} "
            f"| {_num(sat.per_input, 2)} "
            f"| {_num(sat.input_rate / raw if raw else None, 2)} "
            f"| {_num(sat.input_rate / relay if relay else None, 2)} "
            f"| {_num(sat.cpu_per_input_us)} "
            f"| {_num(r.latency_rate)} "
            f"| {_num(lat.percentile(50) if lat else None, 1)} "
            f"| {_num(lat.percentile(99) if lat else None, 1)} | {_num(rss)} |"
        )
    lines.append("")
    lines += _message_lines(results)
    for r in results:
        if r.latency is not None:
            lat = r.latency
            lines.append(
                f"- {r.mode}: latency phase {lat.inputs:,} in -> {lat.outputs:,} out at "
                f"{lat.input_rate:,.0f} in/s; {lat.latencies_ms.size:,} timed, "
                f"{lat.held:,} held back by policy, {lat.unmatched:,} unmatched; "
                f"max {_num(float(lat.latencies_ms.max()) if lat.latencies_ms.size else None)}"
                " ms"
            )
            if lat.commit_ms is not None and lat.commit_ms.size:
                p50, p99 = np.percentile(lat.commit_ms, [50, 99])
                lines.append(
                    f"- {r.mode}: send -> store commit p50 {p50:,.1f} ms, p99 {p99:,.1f} ms "
                    "(the rest is the outbox drainer and the broker)"
                )
        sat = r.saturation
        if sat is not None and sat.cpu_seconds is not None and sat.seconds > 0:
            lines.append(
                f"- {r.mode}: {sat.cpu_seconds / sat.seconds:.0%} of one core during saturation, "
                f"{sat.cpu_seconds / sat.inputs * 1e6:,.0f} µs CPU per input"
            )
        if r.saturation is not None and r.saturation.per_subscriber and r.mode != "relay":
            parts = ", ".join(f"{k} {v:,}" for k, v in sorted(r.saturation.per_subscriber.items()))
            lines.append(
                f"- {r.mode} outputs by subscriber (saturation): {parts}; "
                f"{r.saturation.unmatched:,} unmatched"
            )
        if sat is not None and sat.extra_cpu and sat.seconds > 0:
            parts = ", ".join(
                f"{k} {v / sat.seconds:.0%}" for k, v in sorted(sat.extra_cpu.items())
            )
            lines.append(f"- {r.mode}: beside it during saturation, of one core: {parts}")
        if r.rss_mb:
            main = {k: v for k, v in r.rss_mb.items() if k in ("broker", r.mode, "api")}
            subs = [v for k, v in r.rss_mb.items() if k not in main]
            parts = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(main.items()))
            if subs:
                parts += f", each subscriber ≤ {max(subs):,.0f}"
            lines.append(f"- {r.mode} peak RSS MiB: {parts}")
        if r.error:
            lines.append(f"- {r.mode} error: {r.error.splitlines()[0]}")
    lines += _api_lines(settings, by)
    g = by.get("gateway")
    if g and g.saturation:
        ratio = g.saturation.input_rate / relay if relay else None
        p99 = g.latency.percentile(99) if g.latency else None
        rss = g.rss_mb.get("gateway")
        lines += [
            "",
            "Targets (issue 5):",
            "- gateway ≥ 0.5× zero-work relay: "
            + _verdict(ratio, ratio is not None and ratio >= 0.5, f"{_num(ratio, 2)}×"),
            "- p99 ≤ 100 ms at half load: "
            + _verdict(p99, p99 is not None and p99 <= 100, f"{_num(p99, 1)} ms"),
            "- peak RSS ≤ 300 MB: "
            + _verdict(
                rss,
                rss is not None and rss * MIB_MB <= 300,
                f"{_num(rss)} MiB = {_num(None if rss is None else rss * MIB_MB)} MB",
            ),
        ]
    return "\n".join(lines)


def _message_lines(results: Sequence[ModeResult]) -> list[str]:
    """MQTT messages out per second where views travel in batches (elsewhere every output is
    one message): what the broker and the gateway's publisher actually carried."""
    lines = []
    for r in results:
        sat = r.saturation
        if sat is None or sat.messages is None or sat.messages == sat.outputs:
            continue
        per_message = sat.outputs / sat.messages if sat.messages else None
        lines.append(
            f"- {r.mode}: MQTT messages out {_num(sat.message_rate)}/s in saturation "
            f"({sat.messages:,} messages, {_num(per_message, 1)} views per message)"
        )
    return lines


def _api_lines(settings: Settings, by: dict[str, ModeResult]) -> list[str]:
    """The API beside the pipeline (issue 13): the gateway with and without it, in this run,
    and what its client did."""
    without, with_api = by.get("gateway"), by.get("gateway-api")
    if with_api is None:
        return []
    lines = [
        "",
        f"The HTTP API beside the pipeline (issue 13): a client pulling each subscriber's "
        f"/v1/records every {settings.api_pull_every_s:g} s and querying /v1/audit/entries "
        f"{settings.api_audit_per_s:g} times a second, from warm-up to the end:",
    ]
    c = with_api.client
    if c is not None:
        lines.append(
            f"- client: {c['pulls']:,} pulls ({c['views']:,} views), pull p50 "
            f"{_num(c['pull_p50_ms'], 1)} / p99 {_num(c['pull_p99_ms'], 1)} ms; "
            f"{c['audits']:,} audit queries ({c['entries']:,} entries), p50 "
            f"{_num(c['audit_p50_ms'], 1)} / p99 {_num(c['audit_p99_ms'], 1)} ms; "
            f"in {c['seconds']:,.0f} s; statuses "
            + ", ".join(f"{k}: {v:,}" for k, v in sorted(c["statuses"].items()))
            + (f"; errors {c['errors']}" if c["errors"] else "")
        )
    pairs = [(without, "without the API"), (with_api, "with the API and its client")]
    for r, what in pairs:
        if r is not None and r.saturation is not None:
            lat = r.latency
            lines.append(
                f"- {what}: {_num(r.saturation.input_rate)} in/s saturated; latency at "
                f"{_num(r.latency_rate)} msg/s p50 {_num(lat.percentile(50) if lat else None, 1)}"
                f" / p99 {_num(lat.percentile(99) if lat else None, 1)} ms"
            )
    if without and without.latency and with_api.latency and without.saturation:
        p99_0, p99_1 = without.latency.percentile(99), with_api.latency.percentile(99)
        sat_1 = with_api.saturation.input_rate if with_api.saturation else None
        ratio = None if sat_1 is None else sat_1 / without.saturation.input_rate
        lines.append(
            f"- with / without: saturated input ×{_num(ratio, 2)}, p99 "
            f"×{_num(p99_1 / p99_0 if p99_0 and p99_1 else None, 2)}"
        )
    return lines


MIB_MB = 1.048576  # MB per MiB


def _verdict(value: float | None, ok: bool, text: str) -> str:
    if value is None:
        return "not measured"
    return f"{text} ({'met' if ok else 'NOT met'})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the Markdown report; exit status 1 if a mode failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--messages", type=int, default=40_000, help="saturation messages")
    parser.add_argument(
        "--repeats", type=int, default=1, help="saturation runs per mode; the best counts"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="messages before saturation (default: --drive-seconds of the whole fleet)",
    )
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument(
        "--sample-period",
        type=float,
        default=10.0,
        help="seconds between a vehicle's samples (GB/T 32960's usual reporting period)",
    )
    parser.add_argument(
        "--drive-seconds",
        type=float,
        default=60.0,
        help="seconds the fleet drives before saturation, so that every subscriber is past "
        "its trip-start trim (500 m at most in the default policy)",
    )
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument(
        "--consents",
        type=int,
        choices=range(len(gw.CONSENT_PURPOSES) + 1),
        default=1,
        help="consents per vehicle seeded through consents.yaml (purposes "
        + ", ".join(gw.CONSENT_PURPOSES)
        + ")",
    )
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="msgs/s for the latency phase (default: half the gateway's saturated rate)",
    )
    parser.add_argument(
        "--max-inflight", type=int, default=100, help="load generator's unacknowledged bound"
    )
    parser.add_argument(
        "--out-inflight",
        type=int,
        default=100,
        help="relay's and gateway's (output.max_inflight) unacknowledged bound",
    )
    parser.add_argument("--quiet", type=float, default=5.0, help="drained after S s silence")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--delivery", choices=("mqtt", "as-is"), default="mqtt")
    parser.add_argument(
        "--batch-views",
        type=int,
        default=100,
        help="gateway-batched: each subscriber view's delivery.batch_max_views (2..1000)",
    )
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=20,
        help="gateway-batched: each subscriber view's delivery.linger_ms (0..5000)",
    )
    parser.add_argument(
        "--api-pull-every",
        type=float,
        default=1.0,
        help="gateway-api: seconds between the client's /v1/records pulls (every subscriber)",
    )
    parser.add_argument(
        "--api-audit-rate",
        type=float,
        default=2.0,
        help="gateway-api: /v1/audit/entries queries per second",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run")
    parser.add_argument(
        "--store",
        default=gw.SQLITE_STORE,
        help="the gateway's store: SQLite in the run's directory (default) or the URL of an "
        "empty PostgreSQL database",
    )
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        parser.error(f"--modes takes a subset of {','.join(MODES)}")
    if not 2 <= args.batch_views <= 1000 or not 0 <= args.linger_ms <= 5000:
        parser.error("--batch-views takes 2..1000, --linger-ms 0..5000")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="icvgw-bench-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        modes=modes,
        messages=args.messages,
        repeats=max(1, args.repeats),
        warmup=(
            args.warmup
            if args.warmup is not None
            else args.vehicles * max(1, math.ceil(args.drive_seconds / args.sample_period))
        ),
        vehicles=args.vehicles,
        sample_period_s=args.sample_period,
        zones=args.zones,
        consents=args.consents,
        latency_seconds=args.latency_seconds,
        latency_rate=args.latency_rate,
        max_inflight=args.max_inflight,
        out_inflight=args.out_inflight,
        quiet=args.quiet,
        seed=args.seed,
        delivery=args.delivery,
        batch_views=args.batch_views,
        linger_ms=args.linger_ms,
        workdir=workdir,
        store=args.store,
        api_pull_every_s=args.api_pull_every,
        api_audit_per_s=args.api_audit_rate,
    )
    started = time.monotonic()
    bench = Bench(settings)
    try:
        results = bench.run()
    finally:
        bench.close()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(settings, results, time.monotonic() - started))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
