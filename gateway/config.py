"""The gateway's own configuration (``gateway.yaml``): typed, closed, located errors.

Every setting has a default except the broker's MQTT protocol version, which is stated, never
guessed. Values come from, in increasing precedence: the defaults, the file, environment
variables ``ICVGW_<NAME>`` (see :class:`EnvOverrides`), then command-line flags. Relative
paths in the file (``keys``, ``policies``, TLS files, a ``sqlite:///`` store) are relative to
the directory of the file, not to the current directory, so a gateway started from anywhere
(a service manager, a shell elsewhere) finds the same files; values from the environment and
flags are relative to the current directory. Secrets are not kept in the file: the broker
password is read from the environment variable the file names (``password_env``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from gateway.errors import ConfigError, Problem
from gateway.located_yaml import Source, read_yaml, validation_problems

__all__ = ["EnvOverrides", "GatewayConfig", "load_config"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _protocol(value: Any) -> Any:
    # YAML reads `protocol: 5` as a number; 5 is unambiguous, so accept it as "5".
    return "5" if value == 5 and not isinstance(value, bool) else value


def _broker_url(value: str) -> str:
    from gateway.errors import IngestError
    from gateway.ingest.client import parse_broker_url

    try:
        parse_broker_url(value)
    except IngestError as exc:  # scheme, host, port: said where the URL is given
        raise ValueError(str(exc)) from None
    return value


class BrokerConfig(_Model):
    """The MQTT broker vehicles publish to and subscribers read from."""

    url: Annotated[str, AfterValidator(_broker_url)] = "mqtt://127.0.0.1:1883"
    protocol: Annotated[Literal["5", "3.1.1"], BeforeValidator(_protocol)]
    username: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    sys_stats: bool = True
    """Read the broker's own drop counter ($SYS/broker/publish/messages/dropped, Mosquitto)
    and export it as ``icvgw_broker_dropped_messages``."""

    @model_validator(mode="after")
    def _nothing_ignored(self) -> BrokerConfig:
        # Each of these would otherwise be accepted and have no effect.
        tls_files = (self.ca_file, self.cert_file, self.key_file)
        if any(tls_files) and not self.url.startswith("mqtts://"):
            raise ValueError("ca_file, cert_file and key_file need an mqtts:// url")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file (the client certificate)")
        if self.password_env and not (self.username or urlsplit(self.url).username):
            raise ValueError("password_env needs a username (username, or user@ in the url)")
        return self


class InputConfig(_Model):
    """What the gateway subscribes to, and how much it takes at once."""

    topic: str = "vehicles/+/telemetry"
    group: str | None = None
    queue_bound: int = Field(default=1000, ge=1, le=65535)
    queue_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024, le=4 * 1024**3)
    batch_max: int = Field(default=500, ge=1, le=100_000)
    batch_wait_ms: int = Field(default=2, ge=1, le=10_000)


class OutputConfig(_Model):
    """Where views and dead-letter notices go. A subscriber whose delivery names no MQTT
    topic of its own (channels ``http_stream`` and ``webhook``, whose views wait in the
    outbox and are published) gets ``<topic_prefix>/<subscriber id>``."""

    topic_prefix: str = Field(default="share", pattern=r"^[^#+/\x00]([^#+\x00]*[^#+/\x00])?$")
    deadletter_prefix: str = "gateway/deadletter"
    checkpoint_prefix: str = "gateway/checkpoint"
    max_inflight: int = Field(default=1000, ge=1, le=20_000)
    batch_max_bytes: int = Field(default=262_144, ge=1024, le=16 * 1024 * 1024)
    """The most bytes one batch's PUBLISH takes (the broker's Maximum Packet Size if
    smaller): what the client holds unacknowledged is at most ``max_inflight`` × this."""


class CheckpointConfig(_Model):
    """A signed checkpoint is written at least every N entries or T seconds."""

    every_entries: int = Field(default=10_000, ge=1)
    every_seconds: float = Field(default=10.0, gt=0)


class WebhookConfig(_Model):
    """The webhook sink (in the API process): how often and how long it tries each view.

    After a failed attempt ``n`` the next waits a random time up to
    ``min(backoff_max_s, backoff_initial_s * 2**(n-1))`` (full jitter); after ``attempts``
    attempts the view is given up (audited as ``webhook.failed``)."""

    attempts: int = Field(default=8, ge=1, le=100)
    backoff_initial_s: float = Field(default=1.0, gt=0, le=3600)
    backoff_max_s: float = Field(default=300.0, gt=0, le=86_400)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    """For one POST: connecting, the TLS handshake, sending and the answer, each."""
    ca_file: str | None = None
    """The CA bundle receivers' certificates are checked against (default: the system's)."""

    @model_validator(mode="after")
    def _backoff_order(self) -> WebhookConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must not be less than backoff_initial_s")
        return self


class MetricsConfig(_Model):
    """The pipeline process's own Prometheus endpoint (loopback by default); the API's
    ``/metrics`` includes what it serves."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class ApiConfig(_Model):
    """The HTTP API (``icvgw api``): its own process beside the pipeline, on the same store."""

    enabled: bool = True
    """``icvgw run`` starts the API as a child process (``--no-api``: not this time)."""
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    """With it, every client must present a certificate it signed (mutual TLS)."""
    rate_per_s: float = Field(default=50.0, gt=0, le=100_000)
    """Requests per second per API key (a token bucket of ``rate_burst``)."""
    rate_burst: int = Field(default=100, ge=1, le=1_000_000)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    webhook: WebhookConfig = WebhookConfig()

    @model_validator(mode="after")
    def _tls_pairs(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self


class GatewayConfig(_Model):
    """The whole gateway configuration."""

    worker: str = Field(default="gw-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    broker: BrokerConfig
    input: InputConfig = InputConfig()
    output: OutputConfig = OutputConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()
    api: ApiConfig = ApiConfig()
    policies: str | None = None
    store: str = "sqlite:///icvgw.sqlite"
    keys: str = "keys"

    def broker_password(self) -> str | None:
        """The broker password from the environment variable the config names, if any."""
        name = self.broker.password_env
        return os.environ.get(name) if name else None


class _BrokerEnv(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    url: str | None = None
    protocol: str | None = None


class _InputEnv(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    topic: str | None = None
    group: str | None = None


class EnvOverrides(BaseSettings):
    """The settings the environment may override, named ``ICVGW_<FIELD>`` and
    ``ICVGW_<SECTION>_<FIELD>``: ``ICVGW_WORKER``, ``ICVGW_BROKER_URL``,
    ``ICVGW_BROKER_PROTOCOL``, ``ICVGW_POLICIES``, ``ICVGW_STORE``, ``ICVGW_KEYS``,
    ``ICVGW_INPUT_TOPIC``, ``ICVGW_INPUT_GROUP`` (matched regardless of case, as
    pydantic-settings does). An empty variable counts as unset; any other ``ICVGW_`` variable
    is not a setting and is ignored."""

    model_config = SettingsConfigDict(
        env_prefix="ICVGW_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    worker: str | None = None
    broker: _BrokerEnv = _BrokerEnv()
    policies: str | None = None
    store: str | None = None
    keys: str | None = None
    input: _InputEnv = _InputEnv()

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """The overrides ``environ`` holds, as nested config data (only those set)."""
        values = _EnvironSource(cls, environ)()
        # model_validate checks what the source found; unlike cls(), it reads no os.environ.
        return cls.model_validate(values).model_dump(exclude_unset=True)


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping (``load_config``'s
    ``environ``) instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        found = parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )
        # ICVGW_BROKER and ICVGW_INPUT name sections, not settings: not read as JSON.
        sections = {f"{self.env_prefix}{name}".lower() for name in ("broker", "input")}
        return {name: value for name, value in found.items() if name not in sections}


_PATH_FIELDS: tuple[tuple[str, ...], ...] = (
    ("policies",),
    ("keys",),
    ("broker", "ca_file"),
    ("broker", "cert_file"),
    ("broker", "key_file"),
    ("api", "tls_cert"),
    ("api", "tls_key"),
    ("api", "tls_client_ca"),
    ("api", "webhook", "ca_file"),
)


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Load and validate; raise :class:`~gateway.errors.ConfigError` listing every problem
    as ``file:line: field: message``. ``overrides`` (from flags) win over the environment."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source: Source | None = None
    base = Path.cwd()
    if path is not None:
        file = Path(path)
        source, problems = read_yaml(file, str(path))
        if problems:
            raise ConfigError(problems)
        assert source is not None
        if not isinstance(source.data, dict):
            raise ConfigError(Problem(str(path), 1, "", "the file must hold a mapping"))
        data = _deep_copy(source.data)
        base = file.resolve().parent
        # Defaults of file-relative settings are relative to the file too.
        data.setdefault("keys", "keys")
        data.setdefault("store", "sqlite:///icvgw.sqlite")
        for field_path in _PATH_FIELDS:
            value = _get(data, field_path)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                _set(data, field_path, os.path.normpath(base / value))
        store = data.get("store")
        if (
            isinstance(store, str)
            and store.startswith("sqlite:///")
            and not store.startswith("sqlite:////")
        ):
            data["store"] = f"sqlite:///{os.path.normpath(base / store.removeprefix('sqlite:///'))}"
    from_env = EnvOverrides.read(env)
    _merge(data, from_env)
    given = {".".join(p) for p in _leaf_paths(from_env)}
    for field_path, value in (overrides or {}).items():
        if value is not None:
            _set(data, field_path, value)
            given.add(".".join(field_path))
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, source, given)) from exc


_GIVEN = "flags or ICVGW_* variables"
"""Where a problem is said to be when its value did not come from the config file."""


def _problems(exc: ValidationError, source: Source | None, given: set[str]) -> list[Problem]:
    """The file's problems located in it; those of values given as flags or environment
    variables (or, without a file, missing) named as such, never blamed on a file line."""

    def outside(field: str) -> bool:
        return source is None or any(field == g or field.startswith(g + ".") for g in given)

    located = [] if source is None else validation_problems(source, exc)
    problems = [p for p in located if not outside(p.field)]
    for e in exc.errors(include_url=False):
        field = ".".join(str(p) for p in e["loc"])
        if outside(field):
            problems.append(Problem(_GIVEN, None, field, e["msg"].removeprefix("Value error, ")))
    return problems


def _leaf_paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.extend(_leaf_paths(value, (*prefix, key)))
        else:
            out.append((*prefix, key))
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _merge(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict):
            if not value:
                continue
            child = data.get(key)
            if not isinstance(child, dict):
                child = data[key] = {}
            _merge(child, value)
        else:
            data[key] = value


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
