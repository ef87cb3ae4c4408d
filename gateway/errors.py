"""The gateway's one exception tree.

Row-level problems (a bad coordinate, a record without a timestamp) never raise: they are
marked on the batch with an :class:`gateway.model.ErrorCode`. These exceptions are for
failures of a whole operation: a file that does not load, a store that does not answer.

::

    GatewayError
    ├── ConfigError            file, line, field: a config or policy file is invalid
    │   └── PolicyError        every problem of a policy bundle, listed
    ├── GeoError               a geographic operation cannot run at all
    │   ├── ZoneFileError      invalid zone geometry: file and feature index
    │   └── DatumError         unknown datum transform name
    ├── KeyStoreError          key directory missing, unreadable or too open
    ├── StoreError             the transactional store failed
    ├── StaleDecisionError     cross-border counts changed between a batch's decision and commit
    ├── AuditError             the audit log cannot be written or read
    │   └── VerificationError  the log does not verify: shard and first bad sequence number
    ├── IngestError            MQTT input failed, or a broker connection did not come up
    │   └── ConnectInterrupted a stop (SIGTERM, Ctrl-C) was asked for while connecting
    ├── DeliveryError          a sink failed
    │   └── SignatureError     a webhook's signature or timestamp does not verify (receiver)
    ├── PublishError           the simulator's messages were not all confirmed by the broker
    └── BrokerError            the embedded demo broker did not start or stop cleanly
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a file: ``file:line: field: message``."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(GatewayError):
    """A configuration file is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | Problem) -> None:
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[Problem]]]:
        # Pickled whole (a bundle loaded in a child process reports its problems through
        # it); the default would rebuild it from the joined message, one problem a letter.
        return type(self), (self.problems,)

    @property
    def file(self) -> str:
        return self.problems[0].file if self.problems else ""


class PolicyError(ConfigError):
    """A policy bundle does not load."""


class GeoError(GatewayError):
    """A geographic operation cannot run at all (not a bad row: those are marked)."""


class ZoneFileError(GeoError):
    """A restricted-zone file has invalid content; names the file and the feature index."""

    def __init__(self, file: str | Path, feature: int | None, message: str) -> None:
        self.file = str(file)
        self.feature = feature
        where = f"{self.file}: feature {feature}" if feature is not None else self.file
        super().__init__(f"{where}: {message}")


class DatumError(GeoError):
    """An unknown datum transform was asked for."""


class KeyStoreError(GatewayError):
    """The key directory is missing, unreadable, or its files are not private."""


class StoreError(GatewayError):
    """The transactional store failed; nothing of the operation was committed."""


class StaleDecisionError(GatewayError):
    """A batch was decided on cross-border counts another worker changed before its commit;
    the commit is rolled back and the batch decided again (nothing was acknowledged)."""

    def __init__(self, keys: list[tuple[str, int, str]]) -> None:
        self.keys = keys
        super().__init__(f"cross-border counts changed since the decision: {keys}")


class AuditError(GatewayError):
    """The audit log cannot be written or read."""


class VerificationError(AuditError):
    """The audit log does not verify. ``seq`` is the first bad sequence number, if known."""

    def __init__(self, message: str, *, shard: str | None = None, seq: int | None = None) -> None:
        self.shard = shard
        self.seq = seq
        parts = [
            p
            for p in (f"shard {shard}" if shard else "", f"seq {seq}" if seq is not None else "")
            if p
        ]
        super().__init__(f"{', '.join(parts)}: {message}" if parts else message)


class IngestError(GatewayError):
    """MQTT input failed (connection, subscription)."""


class ConnectInterrupted(IngestError):
    """A stop was asked for while waiting for a broker connection."""


class DeliveryError(GatewayError):
    """A sink could not deliver; the outbox keeps the view for a retry."""

    def __init__(self, message: str, *, subscriber: str | None = None) -> None:
        self.subscriber = subscriber
        super().__init__(f"{subscriber}: {message}" if subscriber else message)


class SignatureError(DeliveryError):
    """A webhook request does not verify: a header missing or malformed, no signature made
    with the receiver's secret over these bytes, or a timestamp outside the tolerance."""


class PublishError(GatewayError):
    """The simulator could not connect, or the broker did not confirm (PUBACK) every message."""


class BrokerError(GatewayError):
    """The embedded MQTT broker of ``icvgw demo`` did not start or did not stop cleanly."""
