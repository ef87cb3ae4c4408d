"""``icvgw demo``: the whole gateway on one machine, zero setup.

One process runs four parts, each on its own thread, and the HTTP API beside it:

* an MQTT broker: the embedded amqtt broker (:mod:`gateway.broker`), or ``--broker URL``;
* the gateway (:class:`gateway.service.Gateway`) with the default policy bundle and keys of
  its own, storing its audit log in SQLite;
* the fleet simulator (:mod:`simulators.fleet`), publishing at QoS 1 in real time;
* a live table (stdout) of rates and counts per subscriber, refreshed twice a second;
* the HTTP API, as ``icvgw run`` starts it (:mod:`gateway.api.child`): ``icvgw api`` in a
  process of its own on the run's ``gateway.yaml``, on 127.0.0.1 and a free port (or
  ``--api-port``). The demo makes one API key per role in its store (audited: admin entries
  of the run) and prints the URL with a ready-to-paste curl line per key; the keys stay
  valid after the run (``icvgw apikey revoke``). The run is OK only if the API answered
  ``/healthz``.

Everything the run produces lives in one working directory (a new temporary directory
unless ``--workdir`` names one to keep): ``gateway.yaml`` (the run's config, which the
gateway and its API process load), ``keys/`` (created on first use), ``policy/`` (the
default bundle, its ``consents.yaml`` extended with consents for the simulated vehicles that
consent), ``icvgw.sqlite`` (the store), ``verifier.pub`` (the checkpoint verifier keys) and
``demo.log`` (the log; amqtt only from WARNING). The directory is left in place so the log
can be verified and queried afterwards.

The embedded broker speaks MQTT 3.1.1 only and keeps a queue only for sessions that log in,
so the demo connects the gateway and the simulator with protocol 3.1.1 and the broker's
per-run credentials (never printed), and subscribes without a ``$share`` group.

On Ctrl-C, or when the ``--duration`` has been simulated, the simulator stops; the demo then
waits (bounded) until the gateway has processed every message the broker confirmed and the
outbox is empty, so the summary's counts are final. It stops the gateway (final signed
checkpoint), verifies the audit log in-process with the key ring's public keys, checks that
the log holds exactly the decisions the summary counts, and prints where the store is and
how to verify and query it again. Exit status: 0 when all of that holds and views were
delivered (130 instead after Ctrl-C, the Unix convention); 1 when verification fails, the
counts are not final or disagree with the log, no view was delivered, or a part fails (the
working directory is then named); 2 for invalid options.

The fleet starts :data:`_HISTORY_S` before the run, its messages of that minute published at
once, so vehicles are mid-trip and past trip-start trimming; a run in a kept working
directory continues the same fleet (same seed) from where the last one stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import typer

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from gateway.api.child import ApiChild
    from gateway.audit.verify import ShardReport
    from gateway.config import GatewayConfig
    from gateway.service import Gateway, Totals
    from simulators.fleet import Fleet, Message
    from simulators.publish import Publisher
    from simulators.scenario import Scenario

__all__ = ["Summary", "check_log", "demo_scenario", "run_demo", "write_demo_policy"]

WORKER = "demo"
"""The demo gateway's worker identity: its client ids are ``icvgw-demo-in``/``-out``."""

DECISIONS = ("shared", "redacted", "blocked")
_REFRESH_S = 0.5
_START_TIMEOUT_S = 15.0
_DRAIN_TIMEOUT_S = 60.0
_API_START_TIMEOUT_S = 60.0
"""How long the demo waits for its API process to listen (a loaded machine starts Python
slowly)."""
_RATE_WINDOW_S = 2.0
MAX_DURATION_S = 30 * 86400.0
"""The longest ``--duration``, and the run "until Ctrl-C": the longest the simulator accepts."""
_HISTORY_S = 60.0
"""The fleet starts this long before the run and its messages of that minute are published
at once: vehicles are already mid-trip, past the trip-start trimming of every subscriber
(500 m at most in the default bundle), so each one receives views from the first seconds."""
_FLEET_FILE = "fleet.json"
"""In the working directory: when the last run's fleet stopped, so the next run continues
in time (new timestamps and message ids, not duplicates of the last run)."""
_HELD_WHY = (
    "held: views waiting for trip trimming (released once the vehicle is the subscriber's "
    "trip_trim_m from its trip's start or end, or discarded at the trip's end)"
)

log = logging.getLogger(__name__)


def run_demo(
    *,
    vehicles: int,
    rate: float,
    duration: float | None,
    scenario: Path | None,
    seed: int | None,
    broker: str | None,
    protocol: str | None,
    workdir: Path | None,
    json_summary: Path | None,
    api_port: int = 0,
) -> int:
    """Run the demo with options :mod:`gateway.cli.demo` has checked; its exit status.

    ``seed`` None draws a new one; ``protocol`` None is the embedded broker's 3.1.1;
    ``workdir`` None is a new temporary directory; ``api_port`` 0 a free port.
    """
    from rich.console import Console

    from gateway.errors import GatewayError

    console = Console()
    try:
        directory = _workdir(workdir)
    except OSError as exc:
        typer.echo(f"icvgw demo: cannot use the working directory: {exc}", err=True)
        return 2
    with _demo_logging(directory / "demo.log"):
        try:
            options = _Options(
                vehicles=vehicles,
                rate=rate,
                duration=duration,
                scenario=scenario,
                seed=secrets.randbits(32) if seed is None else seed,
                broker=broker,
                protocol="3.1.1" if broker is None else str(protocol),
                workdir=directory,
                api_port=api_port,
            )
            summary = _Demo(options, console).run()
        except GatewayError as exc:
            _failed(exc, directory)
            return 2 if _is_setup_error(exc) else 1
        except OSError as exc:
            _failed(exc, directory)
            return 1
    if json_summary is not None:
        json_summary.write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    _print_summary(console, summary)
    if not summary.ok:
        for problem in summary.problems:
            typer.echo(f"icvgw demo: {problem}", err=True)
        return 1
    return INTERRUPTED_EXIT if summary.interrupted else 0


INTERRUPTED_EXIT = 130
"""Exit status after Ctrl-C (a run that was otherwise fine), as for ``icvgw run`` and
``icvgw simulate``: 128 + SIGINT, the Unix convention."""


def _failed(exc: Exception, directory: Path) -> None:
    log.info("demo failed: %s", exc)
    typer.echo(f"icvgw demo: {exc}", err=True)
    typer.echo(
        f"icvgw demo: working directory kept: {directory} (log: {directory / 'demo.log'})",
        err=True,
    )


def _is_setup_error(exc: Exception) -> bool:
    from gateway.errors import ConfigError, PolicyError

    return isinstance(exc, ConfigError | PolicyError)


# -- the working directory ------------------------------------------------------------------


def _workdir(given: Path | None) -> Path:
    if given is None:
        return Path(tempfile.mkdtemp(prefix="icvgw-demo-")).resolve()
    given.mkdir(parents=True, exist_ok=True)
    return given.resolve()


def demo_scenario() -> Scenario:
    """The default traffic: a mild mix that makes every rule of the default bundle fire —
    a fifth of the vehicles cross restricted zones, 70 % consent, a few malformed, spoofed,
    out-of-order and duplicate messages, some batch payloads, short trips with key-offs."""
    from simulators.scenario import Batches, Consent, Faults, Scenario, Trips, ZoneCrossing

    return Scenario(
        zone_crossing=ZoneCrossing(share=0.2),
        faults=Faults(malformed=0.02, duplicate=0.02, out_of_order=0.02, spoofed_vin=0.01),
        batches=Batches(share=0.03, size=(2, 5)),
        consent=Consent(share=0.7),
        trips=Trips(duration_s=(120.0, 600.0), pause_s=(20.0, 90.0)),
    )


def write_demo_policy(directory: Path, consenting_vins: list[str], now: datetime) -> Path:
    """Write the default bundle to ``directory`` with a consent for every purpose for each
    of ``consenting_vins`` (granted a day before ``now``, expiring a year after), added to
    the bundle's own consents. Other bundle files are copied byte for byte. Returns
    ``directory``; the result loads with :func:`gateway.policy.loader.load_bundle`."""
    import yaml

    from gateway.policy.loader import BUNDLE_FILES
    from gateway.resources import default_policy_dir

    source = default_policy_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:
        if name != "consents.yaml":
            (directory / name).write_bytes((source / name).read_bytes())
    base = yaml.safe_load((source / "consents.yaml").read_text(encoding="utf-8")) or {}
    purposes = list(
        (yaml.safe_load((source / "subscribers.yaml").read_text(encoding="utf-8")) or {}).get(
            "purposes", {}
        )
    )
    granted = (now - timedelta(days=1)).replace(microsecond=0)
    expires = granted + timedelta(days=366)
    consents = list(base.get("consents") or [])
    for vin in consenting_vins:
        for i, purpose in enumerate(purposes, start=1):
            consents.append(
                {
                    "id": f"demo-{vin.lower()}-{i}",
                    "vin": vin,
                    "purpose": purpose,
                    "granted": granted,
                    "expires": expires,
                }
            )
    header = (
        "# consents.yaml — written by `icvgw demo`: the default bundle's consents, plus one\n"
        "# per purpose for each simulated vehicle that consents. Rewritten on every run.\n"
    )
    text = yaml.safe_dump({"consents": consents}, sort_keys=False, allow_unicode=True)
    (directory / "consents.yaml").write_text(header + text, encoding="utf-8")
    return directory


@contextlib.contextmanager
def _demo_logging(path: Path) -> Iterator[None]:
    """Log to ``path`` (amqtt only from WARNING; Python warnings too); gateway errors also
    to stderr. Restores the logging state afterwards."""
    root = logging.getLogger()
    quiet = {name: logging.getLogger(name) for name in ("amqtt", "transitions", "asyncio")}
    saved_levels = {name: lg.level for name, lg in quiet.items()}
    saved_root = root.level
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.ERROR)
    to_stderr.addFilter(lambda record: record.name.startswith(("gateway", "simulators")))
    to_stderr.setFormatter(logging.Formatter("icvgw demo: %(name)s: %(message)s"))
    root.addHandler(to_file)
    root.addHandler(to_stderr)
    root.setLevel(logging.INFO)
    for lg in quiet.values():
        lg.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(to_stderr)
        root.removeHandler(to_file)
        to_file.close()
        root.setLevel(saved_root)
        for name, lg in quiet.items():
            lg.setLevel(saved_levels[name])


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    vehicles: int
    rate: float
    duration: float | None
    scenario: Path | None
    seed: int
    broker: str | None
    protocol: str
    workdir: Path
    api_port: int = 0


@dataclass
class Summary:
    """What a demo run did, final once the gateway drained; ``problems`` empty means ok."""

    workdir: Path
    store: str
    keys: Path
    verifier: Path
    shard: str
    broker: str
    seed: int
    vehicles: int
    seconds: float
    published: int = 0
    totals: Totals = field(default_factory=lambda: _new_totals())
    """The gateway's running totals when the run ended (a copy)."""
    first_seq: int = 0
    decisions: dict[str, dict[str, int]] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    admin: dict[str, int] = field(default_factory=dict)
    continued_from: str | None = None
    drained: bool = False
    interrupted: bool = False
    verification: list[str] = field(default_factory=list)
    verified: bool = False
    log_matches: bool = False
    api: str | None = None
    """The URL the API process served, once it listened."""
    api_answered: bool = False
    """The API answered ``/healthz`` during the run."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when verification passed, the counts are final and match the audit log."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The summary as plain JSON data (paths as strings)."""
        return {
            "ok": self.ok,
            "verified": self.verified,
            "drained": self.drained,
            "log_matches": self.log_matches,
            "interrupted": self.interrupted,
            "problems": self.problems,
            "workdir": str(self.workdir),
            "store": self.store,
            "keys": str(self.keys),
            "verifier": str(self.verifier),
            "shard": self.shard,
            "first_seq": self.first_seq,
            "broker": self.broker,
            "seed": self.seed,
            "vehicles": self.vehicles,
            "seconds": round(self.seconds, 3),
            "published": self.published,
            "messages": self.totals.messages,
            "records": self.totals.records,
            "duplicates": self.totals.duplicates,
            "entries": self.totals.entries,
            "admin_entries": self.totals.admin,
            "deadletters": self.totals.deadletters,
            "views": self.totals.views,
            "decisions": self.decisions,
            "delivered": self.delivered,
            "held": self.held,
            "admin": self.admin,
            "continued_from": self.continued_from,
            "verification": self.verification,
            "api": self.api,
            "api_answered": self.api_answered,
        }


class _Simulation:
    """Publishes the fleet's messages from a thread until they run out or :meth:`stop`."""

    def __init__(self, messages: Iterator[Message], publisher: Publisher) -> None:
        self._messages = messages
        self.publisher = publisher
        self._stop = threading.Event()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="icvgw-demo-fleet", daemon=True)

    @property
    def published(self) -> int:
        """Messages the broker confirmed so far."""
        return self.publisher.stats.messages

    @property
    def running(self) -> bool:
        """True until every message is published and confirmed (or publishing failed)."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Connect and start publishing."""
        self.publisher.connect()
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Publish no further message; wait for the confirmations of those already sent."""
        self._stop.set()
        self._thread.join(timeout)

    def _until_stopped(self) -> Iterator[Message]:
        for msg in self._messages:
            if self._stop.is_set():
                return
            yield msg

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _run(self) -> None:
        from simulators.publish import publish_messages

        try:
            publish_messages(self._until_stopped(), self.publisher, sleep=self._sleep)
        except Exception as exc:  # reported in the summary; the demo still drains
            log.exception("simulator stopped")
            self.error = exc
        finally:
            self.publisher.close()


class _Demo:
    def __init__(self, options: _Options, console: Console) -> None:
        self.o = options
        self.console = console
        self.workdir = options.workdir
        self.keys = self.workdir / "keys"
        self.policy = self.workdir / "policy"
        self.store = f"sqlite:///{self.workdir / 'icvgw.sqlite'}"
        self.verifier = self.workdir / "verifier.pub"
        self.config_file = self.workdir / "gateway.yaml"
        self._api: ApiChild | None = None
        self._interrupted = threading.Event()
        self._rates: deque[tuple[float, int, dict[str, int]]] = deque()
        self.preroll = 0.0

    # -- setup --------------------------------------------------------------------------
    def _fleet(self) -> Fleet:
        from simulators.fleet import Fleet, FleetConfig
        from simulators.scenario import load_scenario

        scenario = load_scenario(self.o.scenario) if self.o.scenario else demo_scenario()
        now = datetime.now(UTC)
        start = (now - timedelta(seconds=_HISTORY_S)).replace(microsecond=0)
        previous = self._previous_end()
        if previous is not None and previous > start:
            start = previous
        self.preroll = max((now - start).total_seconds(), 0.0)
        config = FleetConfig(
            vehicles=self.o.vehicles,
            scenario=scenario,
            start=start,
            source=str(self.o.scenario) if self.o.scenario else "<demo scenario>",
            # above every number an earlier run used: <= 100 samples per second since then
            first_seq=round(start.timestamp() * 100),
        )
        return Fleet(config, self.o.seed)

    def _previous_end(self) -> datetime | None:
        """When the last run in this working directory stopped the same fleet (the same
        seed: the same vehicles), if one did."""
        path = self.workdir / _FLEET_FILE
        if not path.is_file():
            return None
        try:
            last = json.loads(path.read_text(encoding="utf-8"))
            if last["seed"] != self.o.seed:
                return None
            return datetime.fromisoformat(last["until"])
        except (ValueError, KeyError, TypeError):
            return None

    def _record_end(self) -> None:
        last = {"seed": self.o.seed, "until": datetime.now(UTC).isoformat()}
        (self.workdir / _FLEET_FILE).write_text(json.dumps(last) + "\n", encoding="utf-8")

    def _keyring_ready(self) -> None:
        from gateway.keys import KeyRing, init_keys

        if self.keys.is_dir() and any(self.keys.iterdir()):
            KeyRing.load(self.keys)
        else:
            init_keys(self.keys)

    def _write_config(self, broker: str) -> None:
        """The run's ``gateway.yaml``, which its gateway and its API process both load:
        ``broker`` without credentials (the gateway is given those apart), the API on
        loopback, the pipeline's metrics on a free port (beside a gateway already running
        on this machine)."""
        import yaml

        doc = {
            "worker": WORKER,
            "broker": {"url": broker, "protocol": self.o.protocol},
            "checkpoint": {"every_seconds": 5.0},
            "metrics": {"host": "127.0.0.1", "port": _free_port()},
            "api": {"host": "127.0.0.1", "port": self.o.api_port},
            "policies": "policy",
            "store": "sqlite:///icvgw.sqlite",
            "keys": "keys",
        }
        header = (
            "# gateway.yaml — written by `icvgw demo` for its gateway and its API process;\n"
            "# rewritten on every run. Paths are relative to this directory.\n"
        )
        text = yaml.safe_dump(doc, sort_keys=False)
        self.config_file.write_text(header + text, encoding="utf-8")

    def _config(self, broker_url: str | None = None) -> GatewayConfig:
        """The run's config file, with ``broker_url`` (credentials included) if given."""
        from gateway.config import load_config

        # environ={}: the demo never picks up a production gateway's ICVGW_* settings
        return load_config(self.config_file, overrides={("broker", "url"): broker_url}, environ={})

    def _gateway(self, url: str) -> Gateway:
        from prometheus_client import CollectorRegistry

        from gateway.service import Gateway

        return Gateway(self._config(url), registry=CollectorRegistry())

    # -- running ------------------------------------------------------------------------
    def _prepare(self, fleet: Fleet) -> Summary:
        """Keys, policy and verifier keys in the working directory; the summary to fill."""
        from gateway.keys import KeyRing
        from gateway.service import origin_of

        previous = self._previous_end()
        self._keyring_ready()
        write_demo_policy(self.policy, fleet.consenting_vins, datetime.now(UTC))
        origin = origin_of(WORKER)
        self.verifier.write_text(
            "".join(k + "\n" for k in KeyRing.load(self.keys).verifier_keys(origin)),
            encoding="utf-8",
        )
        return Summary(
            workdir=self.workdir,
            store=self.store,
            keys=self.keys,
            verifier=self.verifier,
            shard=origin,
            broker="",
            seed=self.o.seed,
            vehicles=self.o.vehicles,
            seconds=0.0,
            continued_from=None if previous is None else previous.isoformat(),
        )

    def run(self) -> Summary:
        fleet = self._fleet()
        summary = self._prepare(fleet)
        with contextlib.ExitStack() as stack:
            url = self._broker(stack, summary)
            gw = self._gateway(url)
            with gw.store.snapshot() as rd:
                head = rd.shard_state(summary.shard)
            # The gateway has already audited its start (policy loaded, consents seeded):
            # those entries belong to this run too.
            summary.first_seq = (head.size if head is not None else 0) - gw.totals.admin
            keys = _api_keys(gw, summary.shard)  # audited: entries of this run too
            api = self._start_api(stack)
            runner = self._start_gateway(gw, stack)
            sim = self._start_simulation(fleet, url, stack)
            started = time.monotonic()
            with self._signals():
                self._announce_api(api, keys, summary)
                self._watch(gw, runner, sim, summary, started)
            summary.published = sim.published
            if sim.error is not None:
                summary.problems.append(f"the simulator failed: {sim.error}")
            summary.drained = runner.alive and self._finished(gw, sim)
            summary.seconds = time.monotonic() - started
            api.stop()
            runner.stop()
            if runner.error is not None:
                summary.problems.append(f"the gateway failed: {runner.error}")
            self._final_counts(gw, summary)
        self._record_end()
        summary.interrupted = self._interrupted.is_set()
        if not summary.drained:
            summary.problems.append(
                f"the gateway did not finish within {_DRAIN_TIMEOUT_S:g} s: the counts are "
                "not final"
            )
        if not summary.api_answered:
            summary.problems.append(
                f"the API did not answer /healthz (its log: {self.workdir / 'demo.log'})"
            )
        check_log(summary)
        return summary

    def _broker(self, stack: contextlib.ExitStack, summary: Summary) -> str:
        """The embedded broker started (or ``--broker``), the config file written; the
        URL clients connect with (credentials included)."""
        from gateway.broker import EmbeddedBroker

        if self.o.broker is None:
            embedded = EmbeddedBroker()
            embedded.start()
            stack.callback(embedded.stop)
            url, shown = embedded.client_url, embedded.url
            summary.broker = f"embedded amqtt at {shown} (MQTT {self.o.protocol})"
        else:
            url, shown = self.o.broker, _without_password(self.o.broker)
            summary.broker = f"{shown} (MQTT {self.o.protocol})"
        self._write_config(shown)
        return url

    def _start_gateway(self, gw: Gateway, stack: contextlib.ExitStack) -> _GatewayThread:
        from gateway.errors import GatewayError

        runner = _GatewayThread(gw)
        try:
            gw.start(timeout=_START_TIMEOUT_S)
        except GatewayError as exc:
            gw.shutdown(drain_timeout=0)
            raise _failure(f"the gateway did not start: {exc}") from exc
        runner.start()
        stack.callback(runner.stop)
        return runner

    def _start_simulation(self, fleet: Fleet, url: str, stack: contextlib.ExitStack) -> _Simulation:
        from gateway.errors import GatewayError
        from simulators.publish import Publisher

        publisher = Publisher(
            url,
            protocol="5" if self.o.protocol == "5" else "3.1.1",
            client_id=f"icvgw-demo-fleet-{secrets.token_hex(3)}",
            timeout=30.0,
        )
        messages = _live(
            fleet.messages(self.preroll + (self.o.duration or MAX_DURATION_S), self.o.rate),
            self.preroll,
        )
        sim = _Simulation(messages, publisher)
        try:
            sim.start()
        except GatewayError as exc:
            raise _failure(f"the simulator could not connect: {exc}") from exc
        stack.callback(sim.stop)
        return sim

    def _start_api(self, stack: contextlib.ExitStack) -> ApiChild:
        """``icvgw api`` on the run's config file, as ``icvgw run`` starts it; its log
        goes to demo.log. Not restarted: a demo that lost its API says so at the end."""
        import os

        from gateway.api.child import ApiChild, api_command

        environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("ICVGW_")}
        command = api_command(self._config(), config_file=self.config_file, environ=environ)
        assert command is not None  # the demo's config enables it
        api = ApiChild(command, restart=False, stderr=self.workdir / "demo.log")
        api.start()
        stack.callback(api.stop)
        self._api = api
        return api

    def _announce_api(self, api: ApiChild, keys: list[_DemoKey], summary: Summary) -> None:
        """Wait (bounded; Ctrl-C ends the wait) until the API listens and answers /healthz
        (a loaded machine may be slow to), and print its URL and a ready-to-paste curl line
        per key."""
        deadline = time.monotonic() + _API_START_TIMEOUT_S
        url = None
        while url is None and time.monotonic() < deadline and not self._interrupted.is_set():
            url = api.wait_listening(_REFRESH_S)
            if api.exits:  # ended without listening: its reason is in demo.log
                break
        answered = url is not None and _healthz(url)
        while url is not None and not answered and time.monotonic() < deadline:
            if self._interrupted.wait(_REFRESH_S):  # Ctrl-C: one last try
                answered = _healthz(url)
                break
            answered = _healthz(url)
        summary.api, summary.api_answered = url, answered
        out = self.console.print
        if url is None or not summary.api_answered:
            log_file = self.workdir / "demo.log"
            out(f"API: not answering (its log: {log_file})", highlight=False, soft_wrap=True)
            return
        out(
            f"API: {url} — one key per role (icvgw apikey list --config {self.config_file}):",
            highlight=False,
            soft_wrap=True,
        )
        for key in keys:
            out(f"  {key.who}: {key.curl(url)}", highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """First Ctrl-C (or SIGTERM): stop the simulator and summarise. A second: abort."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def first(_sig: int, _frame: Any) -> None:
            self._interrupted.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        old_int = signal.signal(signal.SIGINT, first)
        old_term = signal.signal(signal.SIGTERM, first)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)

    def _watch(
        self,
        gw: Gateway,
        runner: _GatewayThread,
        sim: _Simulation,
        summary: Summary,
        started: float,
    ) -> None:
        from rich.live import Live

        def render(status: str) -> RenderableType:
            return self._table(gw, sim, summary, started, status)

        with Live(
            render("starting"), console=self.console, auto_refresh=False, transient=False
        ) as live:
            while sim.running and runner.alive and not self._interrupted.is_set():
                self._interrupted.wait(_REFRESH_S)
                state = "running" if gw.health.ok else gw.status()
                live.update(render(f"{state} · Ctrl-C to stop and summarise"), refresh=True)
            if self._interrupted.is_set():
                live.update(render("stopping the simulator"), refresh=True)
            sim.stop()
            deadline = time.monotonic() + _DRAIN_TIMEOUT_S
            while runner.alive and not self._finished(gw, sim) and time.monotonic() < deadline:
                live.update(render("draining: processing what the broker confirmed"), refresh=True)
                time.sleep(_REFRESH_S / 2)
            live.update(render("done"), refresh=True)
        if not self.console.is_interactive:
            self.console.line()

    def _api_status(self) -> str:
        url = None if self._api is None else self._api.url
        return f"API {url}" if url is not None else "API not listening"

    def _finished(self, gw: Gateway, sim: _Simulation) -> bool:
        return gw.totals.messages >= sim.published and gw.pending_views() == 0

    def _final_counts(self, gw: Gateway, summary: Summary) -> None:
        t = gw.totals
        summary.totals = replace(t, decisions=Counter(t.decisions))
        subscribers = list(gw.holder.current.subscribers)
        decisions: dict[str, dict[str, int]] = {s: dict.fromkeys(DECISIONS, 0) for s in subscribers}
        for (sub, decision), n in dict(t.decisions).items():
            if sub:
                decisions.setdefault(sub, dict.fromkeys(DECISIONS, 0))[decision] = n
        summary.decisions = decisions
        delivered = dict(gw.drainer.delivered)
        summary.delivered = {s: delivered.get(s, 0) for s in decisions}
        held = _held(gw)
        summary.held = {s: held.get(s, 0) for s in decisions}

    # -- the live table -----------------------------------------------------------------
    def _table(
        self, gw: Gateway, sim: _Simulation, summary: Summary, started: float, status: str
    ) -> RenderableType:
        from rich.table import Table

        from gateway.errors import GatewayError

        now = time.monotonic()
        totals = gw.totals
        messages = totals.messages
        decisions = dict(totals.decisions)
        delivered = dict(gw.drainer.delivered)
        self._rates.append((now, messages, delivered))
        while len(self._rates) > 2 and now - self._rates[1][0] >= _RATE_WINDOW_S:
            self._rates.popleft()
        t0, m0, d0 = self._rates[0]
        span = max(now - t0, 1e-9)
        msg_rate = (messages - m0) / span if now > t0 else 0.0
        try:
            pending = f"{gw.pending_views():,}"
        except GatewayError:  # the gateway failed and closed its store
            pending = "?"
        elapsed = now - started
        table = Table(
            title=f"icvgw demo · {summary.broker} · {elapsed:,.0f} s · {status}",
            caption=(
                f"published {sim.published:,} · messages in {messages:,} ({msg_rate:,.1f}/s) · "
                f"entries audited {totals.entries:,} · dead letters {totals.deadletters:,} · "
                f"duplicates {totals.duplicates:,} · outbox pending {pending} · "
                f"{self._api_status()}\n{_HELD_WHY}"
            ),
            title_justify="left",
            caption_justify="left",
        )
        table.add_column("subscriber")
        table.add_column("views/s", justify="right")
        table.add_column("delivered", justify="right")
        for d in DECISIONS:
            table.add_column(d, justify="right")
        table.add_column("held", justify="right")
        held = _held(gw)
        for sub in gw.holder.current.subscribers:
            views_rate = (delivered.get(sub, 0) - d0.get(sub, 0)) / span if now > t0 else 0.0
            table.add_row(
                sub,
                f"{views_rate:,.1f}",
                f"{delivered.get(sub, 0):,}",
                *(f"{decisions.get((sub, d), 0):,}" for d in DECISIONS),
                f"{held.get(sub, 0):,}",
            )
        return table


def check_log(summary: Summary) -> None:
    """Verify the run's audit shard with the key ring's public keys and compare the log's
    decisions since ``summary.first_seq`` with the summary's counts. Sets ``verification``,
    ``verified`` and ``log_matches``; adds to ``problems`` what fails, so ``summary.ok`` is
    False unless both hold."""
    from gateway.audit.verify import verify_store
    from gateway.keys import KeyRing
    from gateway.store import open_store
    from gateway.store.audit import AuditQuery

    verifiers = KeyRing.load(summary.keys).verifiers(summary.shard)
    with open_store(summary.store, migrate=False) as store:
        reports = verify_store(store, verifiers, shards=[summary.shard])
        logged: Counter[tuple[str, str]] = Counter()
        admin: Counter[str] = Counter()
        with store.snapshot() as rd:
            for e in rd.query(AuditQuery(shard=summary.shard, kind="decision")):
                if e.seq >= summary.first_seq and e.decision is not None:
                    logged[(e.subscriber or "", e.decision)] += 1
            for e in rd.query(AuditQuery(shard=summary.shard, kind="admin")):
                if e.seq >= summary.first_seq:
                    admin[e.decision or "?"] += 1
    summary.admin = dict(admin)
    in_run = sum(logged.values()) + admin.total()
    shard_size = reports[0].entries if len(reports) == 1 else None
    if shard_size is not None and shard_size - summary.first_seq != in_run:
        summary.problems.append(
            f"the run's entries do not add up: the shard grew by "
            f"{shard_size - summary.first_seq}, the run counts {in_run}"
        )
    summary.verification = [_report_line(r) for r in reports]
    summary.verified = bool(reports) and all(r.error is None for r in reports)
    if not summary.verified:
        summary.problems.append("audit verification FAILED")
    counted: Counter[tuple[str, str]] = Counter(
        {(s, d): n for s, by in summary.decisions.items() for d, n in by.items() if n}
    )
    if summary.totals.deadletters:
        counted[("", "dead-lettered")] = summary.totals.deadletters
    summary.log_matches = logged == counted and sum(logged.values()) == summary.totals.entries
    if not summary.log_matches:
        summary.problems.append(
            f"the audit log holds {sum(logged.values())} decisions of this run, "
            f"the summary counts {summary.totals.entries}"
        )
    _check_demonstrated(summary)


def _check_demonstrated(summary: Summary) -> None:
    """A run is OK only if it showed something: views delivered to subscribers."""
    if sum(summary.delivered.values()) > 0:
        return
    why = ""
    t = summary.totals
    if t.duplicates and t.duplicates * 2 >= t.records + t.duplicates:
        why = (
            f": {t.duplicates:,} of {t.records + t.duplicates:,} records "
            "were duplicates of records the store had already seen"
        )
    elif summary.held and sum(summary.held.values()):
        why = f": {sum(summary.held.values()):,} views are still held for trip trimming"
    summary.problems.append(f"no view was delivered to any subscriber{why}")


@dataclass(frozen=True)
class _DemoKey:
    """A key made for the run, and the route its curl line asks for."""

    who: str
    token: str
    path: str
    stream: bool = False

    def curl(self, url: str) -> str:
        """A ready-to-paste curl command line (``-N``: a stream, printed as it comes)."""
        n = "-N " if self.stream else ""
        return f'curl {n}-H "Authorization: Bearer {self.token}" {url}{self.path}'


def _api_keys(gw: Gateway, shard: str) -> list[_DemoKey]:
    """One API key per role, made in the run's store (each creation audited): one per
    subscriber of the policy for its feed, one each for the auditor, the operator and a
    Prometheus scraper. They stay valid after the run (``icvgw apikey revoke``)."""
    from gateway.apikeys import Role, create_api_key

    def make(role: Role, subscriber: str | None = None) -> str:
        _, token = create_api_key(
            gw.store, role, subscriber=subscriber, label="icvgw demo", shard=shard, instance=WORKER
        )
        return token

    keys = [
        _DemoKey(f"subscriber {sub}", make(Role.SUBSCRIBER, sub), "/v1/feed", stream=True)
        for sub in gw.holder.current.subscribers
    ]
    keys.append(_DemoKey("auditor", make(Role.AUDITOR), "/v1/audit/entries"))
    keys.append(_DemoKey("admin", make(Role.ADMIN), "/v1/policy"))
    keys.append(_DemoKey("monitor", make(Role.MONITOR), "/metrics"))
    return keys


def _healthz(url: str) -> bool:
    """True if the API at ``url`` answers /healthz with ``{"status": "ok"}`` (why not, in
    the log)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
            body = r.read()
            if r.status == 200 and json.loads(body) == {"status": "ok"}:
                return True
            log.warning("the API's /healthz answered %d: %r", r.status, body[:200])
    except (OSError, ValueError) as exc:
        log.warning("the API's /healthz did not answer: %s", exc)
    return False


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _GatewayThread:
    """Runs :meth:`Gateway.run` (which shuts the gateway down when it ends) on a thread."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="icvgw-demo-gateway", daemon=True)

    @property
    def alive(self) -> bool:
        """True while the gateway runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start processing."""
        self._thread.start()

    def _run(self) -> None:
        try:
            self.gw.run()
        except Exception as exc:
            log.exception("gateway stopped")
            self.error = exc

    def stop(self, timeout: float = 60.0) -> None:
        """Stop, finish the batch in hand, drain, write the final checkpoint, disconnect."""
        self.gw.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)


def _new_totals() -> Totals:
    """Empty totals; imported on use, so mounting ``icvgw demo`` stays quick."""
    from gateway.service import Totals

    return Totals()


def _live(messages: Iterator[Message], preroll: float) -> Iterator[Message]:
    """The fleet's messages due ``preroll`` seconds before the run at once, the rest in
    real time from the run's start."""
    for msg in messages:
        yield msg._replace(at=max(msg.at - preroll, 0.0))


def _held(gw: Gateway) -> Counter[str]:
    """Views held back for trip trimming now, per subscriber."""
    return Counter(str(s) for s in gw.state.held.subscriber)


def _failure(message: str) -> Exception:
    from gateway.errors import GatewayError

    return GatewayError(message)


def _without_password(url: str) -> str:
    """``url`` with any password removed (safe to print)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _report_line(r: ShardReport) -> str:
    if r.error is not None:
        where = f" at seq {r.error.seq}" if r.error.seq is not None else ""
        return f"FAIL {r.origin}{where}: {r.error}"
    return (
        f"OK {r.origin}: {r.entries:,} entries, verified size {r.verified_size:,}, "
        f"{r.checkpoints} signed checkpoint(s), root {r.root_b64}"
    )


def _entries_line(s: Summary) -> str:
    """The run's audit entries as a sum: decisions + dead letters + administrative ones."""
    dead = s.totals.deadletters
    decisions = s.totals.entries - dead
    names = {
        "policy.loaded": "policy loaded",
        "consent.changed": "consents seeded",
        "apikey.created": "API keys created",
    }
    admin = sum(s.admin.values())
    parts = ", ".join(f"{n:,} {names.get(a, a)}" for a, n in sorted(s.admin.items()))
    return (
        f"entries audited in this run: {decisions + dead + admin:,} = "
        f"{decisions:,} decisions + {dead:,} dead letters + {admin:,} admin entries"
        + (f" ({parts})" if parts else "")
    )


def _print_summary(console: Console, s: Summary) -> None:
    """The summary (stdout): counts, verification, and how to look at the store again."""
    from rich.table import Table

    table = Table(
        title="summary: views delivered and decisions per subscriber", title_justify="left"
    )
    table.add_column("subscriber")
    table.add_column("delivered", justify="right")
    for d in DECISIONS:
        table.add_column(d, justify="right")
    table.add_column("held", justify="right")
    for sub, by in s.decisions.items():
        table.add_row(
            sub,
            f"{s.delivered.get(sub, 0):,}",
            *(f"{by.get(d, 0):,}" for d in DECISIONS),
            f"{s.held.get(sub, 0):,}",
        )
    console.print(table)

    def out(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    stopped = " (stopped by Ctrl-C)" if s.interrupted else ""
    out(_HELD_WHY)
    if s.continued_from is not None:
        out(f"fleet continued from the last run in this directory (stopped {s.continued_from})")
    t = s.totals
    out(
        f"{s.seconds:,.1f} s{stopped}, {s.vehicles} vehicles (seed {s.seed}): "
        f"{s.published:,} messages published, {t.messages:,} in ({t.records:,} records, "
        f"{t.duplicates:,} duplicates), {t.views:,} views, {t.deadletters:,} dead letters"
    )
    out(_entries_line(s))
    for line in s.verification:
        out(f"audit verification: {line}")
    if s.log_matches:
        out("audit log: holds exactly the decisions counted above")
    store = shlex.quote(s.store)
    out(f"store: {s.store} (keys {s.keys}, log {s.workdir / 'demo.log'})")
    verifier = shlex.quote(str(s.verifier))
    out(f"verify again: icvgw audit verify --store {store} --public-key {verifier}")
    out(f"query: icvgw audit query --store {store} --decision blocked --limit 20")
    if s.api is not None:
        answered = "answered /healthz" if s.api_answered else "did NOT answer /healthz"
        config = shlex.quote(str(s.workdir / "gateway.yaml"))
        out(f"API: {s.api} {answered}; serve it again: icvgw api --config {config}")
    out("demo OK" if s.ok else "demo FAILED: " + "; ".join(s.problems))
