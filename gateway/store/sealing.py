"""Data at rest: vehicles as keyed references, raw data sealed to its row.

Since schema 4 a vehicle is a keyed reference (the audit log's,
:meth:`gateway.keys.KeyRing.vehicle_ref`) and a record id a keyed digest
(:meth:`~gateway.keys.KeyRing.record_key`). What the pipeline needs raw between batches —
a vehicle's state (trip start, held views, its VIN), a view's topic and bytes, a dead
payload and its topic — is sealed with the store key (AES-256-GCM), bound to its row by the
associated data (:func:`row_aad`): a sealed value copied to another row does not open. The
repositories seal and open with the keys the store was opened with
(:meth:`~gateway.store.connection.Store.at_rest`).
"""

from __future__ import annotations

from typing import Protocol


class AtRestKeys(Protocol):
    """What the store needs of the key directory (:class:`gateway.keys.KeyRing`) to keep
    vehicles as keyed references and raw data sealed."""

    def seal(self, data: bytes, aad: bytes) -> bytes:
        """``data`` encrypted and bound to ``aad``."""

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`seal`."""

    def vehicle_ref(self, vin: str, *, generation: int | None = None) -> str:
        """The keyed reference of a VIN."""

    def record_key(self, record: str, *, generation: int | None = None) -> str:
        """The keyed digest of a record id."""


def row_aad(table: str, *key: str | int) -> bytes:
    """The associated data of a sealed value: its table and its row's key."""
    return "\x1f".join((table, *map(str, key))).encode()


def join_topic(topic: str, payload: bytes) -> bytes:
    """A topic and its payload as one value to seal (MQTT topics never contain U+0000)."""
    return topic.encode() + b"\0" + payload


def split_topic(data: bytes) -> tuple[str, bytes]:
    """Inverse of :func:`join_topic`."""
    topic, _, payload = data.partition(b"\0")
    return topic.decode(), payload


def stored_record(keys: AtRestKeys, record: str, generation: int | None = None) -> str:
    """The form a record key takes in the store: a keyed digest (``r:…``, with the HMAC
    key of ``generation``, default the newest), except the ``dl:`` ids of unusable inputs,
    which are keyed digests already."""
    return record if record.startswith("dl:") else keys.record_key(record, generation=generation)


def seal_state(keys: AtRestKeys, ref: str, vin: str, doc: bytes) -> bytes:
    """A vehicle's decision state sealed to its row, with the VIN inside."""
    return keys.seal(vin.encode() + b"\0" + doc, row_aad("vehicle_state", ref))


def open_state(keys: AtRestKeys, ref: str, sealed: bytes) -> tuple[str, bytes]:
    """(VIN, document) of a state sealed by :func:`seal_state`."""
    vin, _, doc = keys.unseal(sealed, row_aad("vehicle_state", ref)).partition(b"\0")
    return vin.decode(), doc
