"""Audit entries: what the log records, and the exact bytes it hashes.

Two kinds of entry (RULES.md §5):

* :class:`DecisionEntry` — one per (record, subscriber) decision, including blocks, and one
  per dead-lettered input (decision ``dead-lettered``, no subscriber, with a reason);
* :class:`AdminEntry` — one per administrative change (policy loaded, consent changed, key
  rotated, API key created or revoked, retention pruning).

The log adds two fields when it appends: ``seq`` (the entry's index in its shard) and
``prev`` (hex leaf hash of the previous entry, 64 zeros for the first). The entry bytes are
the RFC 8785 canonical JSON of the whole object; the leaf hash is SHA-256(0x00 || bytes).
``seq`` makes a reordered, inserted or deleted entry visible at its own position; ``prev``
makes an edited entry visible at the next one, in a bare export too.

Entries never hold a VIN (vehicles are keyed references, checked here) or a raw coordinate
(floats are refused by the canonical encoder, so a coordinate cannot slip in as a number).
Input field names outside the catalogue are counted, never named
(``transforms.unclassified`` is an integer, checked here): a name is input too, and may
spell a VIN or a position.
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from gateway.errors import AuditError
from gateway.tlog.canonical import MAX_SAFE_INTEGER, Json, check_json, dumps_checked

GENESIS_PREV = "0" * 64
VEHICLE_REF_RE = re.compile(r"^k[0-9]+:[0-9a-f]{32}$")
_EMPTY: Mapping[str, Json] = MappingProxyType({})


class Decision(StrEnum):
    """What happened to one record for one subscriber (or to an unusable input)."""

    SHARED = "shared"
    REDACTED = "redacted"
    BLOCKED = "blocked"
    DEAD_LETTERED = "dead-lettered"


class AdminAction(StrEnum):
    """Administrative changes the log records."""

    POLICY_LOADED = "policy.loaded"
    CONSENT_CHANGED = "consent.changed"
    KEY_ROTATED = "key.rotated"
    APIKEY_CREATED = "apikey.created"
    APIKEY_REVOKED = "apikey.revoked"
    RETENTION_PRUNED = "retention.pruned"
    VEHICLE_ERASED = "vehicle.erased"
    DEADLETTER_READ = "deadletter.read"
    WEBHOOK_FAILED = "webhook.failed"


_DECISIONS = {d.value: d.value for d in Decision}


def _decision_value(d: Decision | str) -> str:
    try:
        return _DECISIONS[d]
    except KeyError:
        raise AuditError(f"unknown decision {d!r}") from None


def to_ms(ts: float) -> int:
    """Unix seconds to integer milliseconds (rounded)."""
    return round(ts * 1000)


_second_cache: tuple[int, str] = (-1, "")


def format_time(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2025-03-01T08:00:00.250Z``."""
    global _second_cache
    sec, milli = divmod(ms, 1000)
    cached_sec, text = _second_cache  # one tuple: consistent even across threads
    if cached_sec != sec:
        t = _time.gmtime(sec)  # strftime's %Y is not zero-padded: year 999 would not parse
        date = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        text = f"{date}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        _second_cache = (sec, text)
    return f"{text}.{milli:03d}Z"


def parse_time(text: str) -> int:
    """Inverse of :func:`format_time` (any RFC 3339 / ISO 8601 time; naive means UTC)."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise AuditError(f"not an ISO 8601 time: {text!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _plain(value: Mapping[str, Json]) -> dict[str, Json]:
    return value if type(value) is dict else dict(value)


@dataclass(frozen=True, slots=True)
class DecisionEntry:
    """One decision about one record for one subscriber (or one dead-lettered input).

    ``vehicle`` is a keyed reference (:meth:`gateway.keys.KeyRing.vehicle_ref`), never the
    VIN; ``digest`` the keyed digest of the exact bytes shared
    (:meth:`gateway.keys.KeyRing.payload_digest`); ``policy`` the policy version hash;
    ``transforms`` e.g. ``{"datum": "GCJ-02", "grid_m": 50, "zones": ["z1"],
    "pseudonym": "per-subscriber"}``; ``precision_m`` the output precision in metres.
    """

    kind: ClassVar[str] = "decision"

    time: float
    instance: str
    message_id: str | int
    decision: Decision
    policy: str
    vehicle: str | None = None
    subscriber: str | None = None
    region: str | None = None
    rules: tuple[str, ...] = ()
    transforms: Mapping[str, Json] = field(default_factory=lambda: _EMPTY)
    precision_m: int | None = None
    basis: str | None = None
    digest: str | None = None
    reason: str | None = None

    def fields(self) -> tuple[dict[str, Json], bool]:
        """The entry's JSON fields (without ``seq``/``prev``), validated, and whether some
        object key is non-ASCII."""
        if self.vehicle is not None and not VEHICLE_REF_RE.match(self.vehicle):
            raise AuditError("vehicle must be a keyed reference (KeyRing.vehicle_ref), not a VIN")
        if self.precision_m is not None and type(self.precision_m) is not int:
            raise AuditError("precision_m must be an integer number of metres")
        for value in (
            self.instance,
            self.policy,
            self.vehicle,
            self.subscriber,
            self.region,
            self.basis,
            self.digest,
            self.reason,
        ):
            if value is not None and type(value) is not str:
                raise AuditError(f"audit entry field {value!r} must be a string")
        msg = self.message_id
        if type(msg) is int:
            if not -MAX_SAFE_INTEGER <= msg <= MAX_SAFE_INTEGER:
                raise AuditError(f"message id {msg} is not exactly representable in JSON")
        elif type(msg) is not str:
            raise AuditError("message id must be a string or an integer")
        if not all(type(r) is str for r in self.rules):
            raise AuditError("rule ids must be strings")
        transforms = _plain(self.transforms)
        unclassified = transforms.get("unclassified")
        if unclassified is not None and type(unclassified) is not int:
            raise AuditError(
                "transforms.unclassified must be a count: names outside the catalogue are "
                "input and never enter the log"
            )
        slow = check_json(transforms)
        out: dict[str, Json] = {
            "kind": "decision",
            "time": format_time(to_ms(self.time)),
            "instance": self.instance,
            "msg": self.message_id,
            "vehicle": self.vehicle,
            "subscriber": self.subscriber,
            "region": self.region,
            "decision": _decision_value(self.decision),
            "rules": list(self.rules),
            "transforms": transforms,
            "precision_m": self.precision_m,
            "basis": self.basis,
            "policy": self.policy,
            "digest": self.digest,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out, slow

    def columns(self) -> tuple[str | None, str | None, str | None, str | None]:
        """(subscriber, vehicle, decision or action, rules) for the store's query columns."""
        rules = "|" + "|".join(self.rules) + "|" if self.rules else None
        return self.subscriber, self.vehicle, _decision_value(self.decision), rules


@dataclass(frozen=True, slots=True)
class AdminEntry:
    """One administrative change: ``action`` on ``subject`` with free-form ``details``."""

    kind: ClassVar[str] = "admin"

    time: float
    instance: str
    action: AdminAction | str
    subject: str
    details: Mapping[str, Json] = field(default_factory=lambda: _EMPTY)

    def fields(self) -> tuple[dict[str, Json], bool]:
        """The entry's JSON fields (without ``seq``/``prev``), validated, and whether some
        object key is non-ASCII."""
        body: dict[str, Json] = {
            "kind": "admin",
            "time": format_time(to_ms(self.time)),
            "instance": self.instance,
            "action": str(self.action),
            "subject": self.subject,
            "details": _plain(self.details),
        }
        return body, check_json(body)

    def columns(self) -> tuple[str | None, str | None, str | None, str | None]:
        """(subscriber, vehicle, decision or action, rules) for the store's query columns."""
        return None, None, str(self.action), None


AuditEntry = DecisionEntry | AdminEntry


def encode_entry(entry: AuditEntry, seq: int, prev: bytes | None) -> bytes:
    """The canonical bytes of ``entry`` at position ``seq`` after the leaf hash ``prev``."""
    body, slow = entry.fields()
    body["seq"] = seq
    body["prev"] = prev.hex() if prev is not None else GENESIS_PREV
    return dumps_checked(body, slow)


def row_columns(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """The query columns (ts_ms, kind, subscriber, vehicle, decision, rules) implied by a
    parsed entry, as the store writes them; used by verification to check the columns."""
    kind = body.get("kind")
    if kind == "admin":
        return parse_time(body["time"]), "admin", None, None, body.get("action"), None
    rules = body.get("rules") or []
    return (
        parse_time(body["time"]),
        kind,
        body.get("subscriber"),
        body.get("vehicle"),
        body.get("decision"),
        "|" + "|".join(rules) + "|" if rules else None,
    )
