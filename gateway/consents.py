"""Consents at run time: the store is authoritative, the bundle's ``consents.yaml`` seeds it.

The store keys consents by the keyed vehicle reference (never the VIN). For each batch the
batch stage (:mod:`gateway.pipeline.batch`) loads the consents of the batch's vehicles and
hands the decision engine a :class:`~gateway.state.snapshot.ConsentBook` keyed by VIN
(:meth:`~gateway.state.snapshot.ConsentBook.by_vin`: it knows which VIN each reference in
the batch stands for). A consent granted or withdrawn in the store — by ``icvgw consent``
or, later, the API — therefore applies to the next batch; every change is an audited
``consent.changed`` entry.
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from gateway.errors import ConfigError, Problem
from gateway.model import Consent
from gateway.policy.bundle import PolicyBundle
from gateway.store import Store
from gateway.store.cursor import CHUNK


def seed(
    store: Store,
    bundle: PolicyBundle,
    vehicle_ref: Callable[[str], str],
    *,
    at: float,
    instance: str,
) -> int:
    """Write the bundle's consents the store does not hold yet (or holds differently);
    returns how many were written. A consent withdrawn in the store stays withdrawn unless
    the bundle itself records a withdrawal or a new expiry for it."""
    wanted = [
        Consent(
            c.id,
            vehicle_ref(c.vin),
            c.purpose,
            c.granted.timestamp(),
            c.expires.timestamp(),
            None if c.revoked is None else c.revoked.timestamp(),
        )
        for c in bundle.consents
    ]
    with store.transaction() as tx:
        changed = []
        for c in wanted:
            current = tx.consent(c.id)
            if current is None or _differs(current, c):
                changed.append(c)
        if changed:
            tx.put_consents(changed, at=at, instance=instance)
    return len(changed)


def new_consent_id() -> str:
    """An id for a consent granted without one."""
    return f"c-{uuid.uuid4().hex[:12]}"


def _differs(current: Consent, wanted: Consent) -> bool:
    fixed = (current.vehicle, current.purpose, current.granted, current.expires)
    if fixed != (wanted.vehicle, wanted.purpose, wanted.granted, wanted.expires):
        return True
    return wanted.revoked is not None and current.revoked != wanted.revoked


IMPORT_COLUMNS = ("vin", "purpose", "expires")
"""The header of a consent import file; an ``id`` column may follow (default: an id derived
from the vehicle reference, purpose and expiry, so importing a file again changes nothing)."""
MAX_IMPORT_ROWS = 100_000
_MAX_PROBLEMS = 20


class ConsentValueError(ValueError):
    """A value of a consent to record is wrong: ``field value: reason`` (``field`` and
    ``reason`` also apart, to say it without the value: a VIN stays out of an API's
    answer)."""

    def __init__(self, field: str, value: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field} {value!r}: {reason}")


def check_consent(
    bundle: PolicyBundle, vin: str, purpose: str, expires: str, *, now: float
) -> float:
    """The expiry (Unix seconds) of a consent to record for ``vin`` and ``purpose``, or a
    :class:`ConsentValueError` saying which value is wrong: the VIN as the ingest checks it
    (ISO 3779, check digit as the bundle's ``rules.ingest.verify_vin_check_digit`` says), a
    purpose of the bundle's catalogue, an ISO 8601 expiry with a UTC offset, after ``now``."""
    from gateway.pipeline.decode import is_vin

    if not is_vin(vin, check_digit=bundle.rules.ingest.verify_vin_check_digit):
        raise ConsentValueError(
            "vin",
            vin,
            "not a VIN (17 characters of 0-9 and A-Z without I, O, Q"
            + (", right check digit)" if bundle.rules.ingest.verify_vin_check_digit else ")"),
        )
    if purpose not in bundle.purposes:
        raise ConsentValueError(
            "purpose", purpose, f"not in the bundle's catalogue ({', '.join(bundle.purposes)})"
        )
    try:
        end = datetime.fromisoformat(expires)
    except ValueError:
        raise ConsentValueError("expires", expires, "not an ISO 8601 time") from None
    if end.tzinfo is None:
        raise ConsentValueError(
            "expires", expires, "give a UTC offset, e.g. 2030-01-01T00:00:00+08:00"
        )
    try:
        end.astimezone(UTC)  # what the store keeps, and `consent list` shows, is UTC
    except OverflowError:
        raise ConsentValueError("expires", expires, "after 9999-12-31 UTC") from None
    if not end.timestamp() > now:
        raise ConsentValueError("expires", expires, "already past")
    return end.timestamp()


@dataclass(frozen=True)
class ImportResult:
    rows: int
    written: int

    @property
    def unchanged(self) -> int:
        return self.rows - self.written


@dataclass(frozen=True)
class CsvBytes:
    """A consent file held in memory (an API request's body), called ``name`` in problems."""

    name: str
    data: bytes


ConsentFile = Path | CsvBytes
"""A consent import file: on disk, or in memory."""


def import_csv(
    store: Store,
    bundle: PolicyBundle,
    vehicle_ref: Callable[[str], str],
    path: ConsentFile,
    *,
    now: float,
    instance: str,
    shard: str | None = None,
) -> ImportResult:
    """Record the consents of the CSV file ``path``, checked by :func:`check_import` (call
    it first, before opening the store). One transaction writes the consents the store does
    not hold yet (each audited as ``consent.changed`` in ``shard``, default the store's, as
    ``icvgw consent grant`` does); a consent it holds with the same vehicle, purpose and
    expiry is left as it is (a withdrawn one stays withdrawn). The file is read row by row,
    never whole."""
    written = rows = 0
    seen: set[str] = set()  # a row repeated in the file is the same consent, written once
    with store.transaction() as tx:
        batch: list[Consent] = []
        for _, row, _ in _rows(path):
            rows += 1
            ref = vehicle_ref(row["vin"])
            end = datetime.fromisoformat(row["expires"]).timestamp()
            cid = row.get("id") or _derived_id(ref, row["purpose"], end)
            if cid in seen:
                continue
            seen.add(cid)
            current = tx.consent(cid)
            if current is not None and (current.vehicle, current.purpose, current.expires) == (
                ref,
                row["purpose"],
                float(round(end * 1000)) / 1000,
            ):
                continue
            batch.append(Consent(cid, ref, row["purpose"], now, end))
            if len(batch) >= CHUNK:
                written += tx.put_consents(batch, at=now, instance=instance, shard=shard)
                batch = []
        written += tx.put_consents(batch, at=now, instance=instance, shard=shard)
    return ImportResult(rows, written)


def _derived_id(ref: str, purpose: str, expires: float) -> str:
    digest = hashlib.sha256(f"{ref}\n{purpose}\n{round(expires * 1000)}".encode()).hexdigest()
    return f"c-{digest[:16]}"


def _open(path: ConsentFile) -> TextIO:
    if isinstance(path, CsvBytes):
        return io.TextIOWrapper(io.BytesIO(path.data), encoding="utf-8-sig", newline="")
    return path.open(newline="", encoding="utf-8-sig")


def _name(path: ConsentFile) -> str:
    return path.name if isinstance(path, CsvBytes) else str(path)


def _rows(path: ConsentFile, *, quote: bool = True) -> Iterator[tuple[int, dict[str, str], bool]]:
    """``(line, row, has extra columns)`` of the file; the header is checked (ConfigError
    if wrong, quoting what it is only if ``quote``)."""
    with _open(path) as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if list(header[:3]) != list(IMPORT_COLUMNS) or header[3:] not in ([], ["id"]):
            got = f", got {','.join(header)!r}" if quote else ""
            raise ConfigError(
                Problem(_name(path), 1, "", f"header must be {','.join(IMPORT_COLUMNS)}[,id]{got}")
            )
        for row in reader:
            extra = row.pop(None, None)
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items()}, bool(extra)


def check_import(
    path: ConsentFile, bundle: PolicyBundle, *, now: float, quote: bool = True
) -> None:
    """Check every row of the consent file ``path`` (header :data:`IMPORT_COLUMNS`, an
    ``id`` column optional) as :func:`check_consent` does; raise
    :class:`~gateway.errors.ConfigError` naming each bad ``file:line`` (the first 20) and
    why, quoting the bad value only if ``quote``."""
    problems: list[Problem] = []
    ids: set[str] = set()
    count = 0
    name = _name(path)
    try:
        for line, row, extra in _rows(path, quote=quote):
            count += 1
            if count > MAX_IMPORT_ROWS:
                raise ConfigError(
                    Problem(
                        name, line, "", f"more than {MAX_IMPORT_ROWS:,} consents; split the file"
                    )
                )
            problem = "too many columns" if extra else _row_problem(bundle, row, ids, now, quote)
            if problem:
                problems.append(Problem(name, line, "", problem))
                if len(problems) >= _MAX_PROBLEMS:
                    break
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(Problem(name, None, "", f"not a UTF-8 CSV file: {exc}")) from None
    if problems:
        raise ConfigError(problems)
    if count == 0:
        raise ConfigError(Problem(name, None, "", "no consent in the file"))


def _row_problem(
    bundle: PolicyBundle, row: dict[str, str], ids: set[str], now: float, quote: bool
) -> str:
    if any(not row.get(c) for c in IMPORT_COLUMNS):
        return f"each row needs {', '.join(IMPORT_COLUMNS)}"
    try:
        check_consent(bundle, row["vin"], row["purpose"], row["expires"], now=now)
    except ConsentValueError as exc:
        return str(exc) if quote else f"{exc.field}: {exc.reason}"
    cid = row.get("id")
    if cid:
        if cid in ids:
            return f"id {cid!r} appears twice in the file"
        ids.add(cid)
    return ""
