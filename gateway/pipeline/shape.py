"""Shape: the JSON object each subscriber receives, per shared or redacted decision.

Every output follows the view format ``icvgw.view/1`` (:mod:`gateway.policy.view_schema`,
``icvgw policy schema SUBSCRIBER``): the object :func:`shape` builds holds everything but
``message_id`` and ``audit_seq``, which :func:`encode_view` adds at commit time (the audit
sequence number is only known then). Coordinates are written under names that carry their
datum (``lat_gcj02``/``lon_gcj02``, ``lat_wgs84``/``lon_wgs84``): a WGS-84 name never holds
GCJ-02 coordinates, and the VSS position names never appear in an output.

Identifiers (:func:`keyed_pseudonym`, :func:`trip_pseudonym`, :func:`message_id`) are keyed
BLAKE2b-128 MACs under the subscriber's own pseudonym key
(:meth:`gateway.keys.KeyRing.pseudonym_key`), so two subscribers' pseudonyms cannot be joined
and nobody without the key can test a guessed VIN against them. Keyed pseudonyms are stable
for a key generation; per-trip pseudonyms change with every trip (derived from the trip's
start time); message ids are stable for a redelivered record and differ between records
(derived from the vehicle, the record's timestamp and its ``msg_id`` if it has one, and the
subscriber: a vehicle that reuses a ``msg_id`` in a later trip does not get the same id
again). Pseudonyms are computed once per distinct vehicle (and trip) of a batch.
"""

from __future__ import annotations

import functools
import hashlib
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gateway.geo.altitude import coarsen_altitude
from gateway.jsonbytes import tight
from gateway.model import FloatArray
from gateway.pipeline.classify import Classified
from gateway.pipeline.decide import Applied, Decisions, Verdict
from gateway.policy.schema import AltitudeMode, DerivedMode, FieldCategory
from gateway.policy.view_schema import VIEW_SCHEMA, coordinate_names
from gateway.state.snapshot import HeldView, PackedJson, unpacked
from gateway.vss import TIMESTAMP

__all__ = [
    "PseudonymKeys",
    "Shaped",
    "encode_view",
    "ephemeral_keys",
    "iso_times",
    "keyed_pseudonym",
    "message_id",
    "message_ids",
    "record_part",
    "shape",
    "trip_pseudonym",
]

PseudonymKeys = Callable[[str], bytes]
"""Subscriber id -> its 32-byte pseudonym key (e.g. ``KeyRing.pseudonym_key``)."""

IntpArray = npt.NDArray[np.intp]

_NONE = np.array(None, dtype=object)
_OUTSIDE_SIGNALS = frozenset(
    {FieldCategory.LOCATION, FieldCategory.ALTITUDE, FieldCategory.VEHICLE_ID}
)


def _mac(key: bytes, *parts: str) -> str:
    data = "\x1f".join(parts).encode("utf-8")
    return hashlib.blake2b(data, key=key, digest_size=16).hexdigest()


def keyed_pseudonym(key: bytes, vehicle: str) -> str:
    """The stable pseudonym of ``vehicle`` under ``key``: ``"pk-"`` and 32 hex digits."""
    return "pk-" + _mac(key, "vehicle", vehicle)


def trip_pseudonym(key: bytes, vehicle: str, trip_start: float) -> str:
    """The pseudonym of one trip of ``vehicle`` (started at Unix time ``trip_start``):
    ``"pt-"`` and 32 hex digits. Different for every trip; unlinkable without the key."""
    return "pt-" + _mac(key, "trip", vehicle, str(round(trip_start * 1000)))


def record_part(record_id: str | None, time: float) -> str:
    """What identifies one record of a vehicle: its timestamp in milliseconds and, if it has
    one, its ``msg_id`` (``m:<ms>:<msg_id>``, else ``t:<ms>``; ``none`` for a time that is
    not finite). A redelivery has the same; a vehicle reusing a ``msg_id`` (a counter that
    restarts after a reboot) does not, unless it also repeats the millisecond. The output
    message id and the de-duplication key are both derived from it."""
    ms = str(round(time * 1000)) if math.isfinite(time) else "none"
    return f"t:{ms}" if record_id is None else f"m:{ms}:{record_id}"


def message_id(
    key: bytes, subscriber: str, vehicle: str | None, record_id: str | None, time: float
) -> str:
    """The output message id of one record for one subscriber: 32 hex digits.

    Deterministic: derived from the vehicle, the record's timestamp in milliseconds and its
    own ``msg_id`` if it has one (:func:`record_part`), and the subscriber, so a redelivered
    input yields the same id and the subscriber can de-duplicate on it, while two records
    that differ in time never share one (a reused ``msg_id`` links nothing). Keyed, so it
    reveals nothing about the VIN. Total: a rejected record without a vehicle id or a time
    still gets one (for its audit entry).
    """
    return _mac(key, "message", subscriber, vehicle or "", record_part(record_id, time))


def message_ids(
    key: bytes,
    subscriber: str,
    vehicles: list[str | None],
    record_ids: list[str | None],
    times: list[float],
) -> list[str]:
    """:func:`message_id` of many records of one subscriber (same results, cheaper)."""
    base = hashlib.blake2b(key=key, digest_size=16)
    base.update(f"message\x1f{subscriber}\x1f".encode())
    parts = [
        f"{vin or ''}\x1f{record_part(rid, t)}"
        for vin, rid, t in zip(vehicles, record_ids, times, strict=True)
    ]
    copy = base.copy
    out: list[str] = []
    append = out.append
    for part in parts:
        h = copy()
        h.update(part.encode())
        append(h.hexdigest())
    return out


def ephemeral_keys() -> PseudonymKeys:
    """Per-subscriber keys derived from a random secret that lives only in this process.

    For tools that have no key directory (``policy explain`` without ``--keys``): their
    pseudonyms match nothing the gateway ever sends.
    """
    master = secrets.token_bytes(32)
    cache: dict[str, bytes] = {}

    def key(subscriber: str) -> bytes:
        if subscriber not in cache:
            cache[subscriber] = hashlib.blake2b(
                subscriber.encode(), key=master, digest_size=32
            ).digest()
        return cache[subscriber]

    return key


def iso_times(seconds: FloatArray) -> list[str]:
    """UTC ISO 8601 strings (``...Z``) of Unix times, to the millisecond; whole seconds are
    written without a fraction. Each distinct time is formatted once."""
    if len(seconds) == 0:
        return []
    ms = np.round(seconds * 1000.0).astype(np.int64)
    unique, inverse = np.unique(ms, return_inverse=True)
    whole = unique % 1000 == 0
    labels = np.empty(len(unique), dtype=object)
    stamps = unique.astype("datetime64[ms]")
    if whole.any():
        text = np.datetime_as_string(stamps[whole], unit="s")
        labels[whole] = [f"{t}Z" for t in text.tolist()]
    if not whole.all():
        text = np.datetime_as_string(stamps[~whole], unit="ms")
        labels[~whole] = [f"{t}Z" for t in text.tolist()]
    out: list[str] = labels[inverse].tolist()
    return out


def _number(value: float) -> int | float:
    """An integral float as an int (``50`` rather than ``50.0`` in the output)."""
    return int(value) if float(value).is_integer() else float(value)


def _truncate(seconds: FloatArray, step: float) -> FloatArray:
    out: FloatArray = np.floor(seconds / step) * step
    return out


def encode_view(view: Mapping[str, Any], *, audit_seq: int, message_id: str) -> bytes:
    """The exact bytes delivered: the view with its audit sequence number and message id,
    as compact JSON with sorted keys (orjson). Deterministic for the same inputs."""
    return tight(
        orjson.dumps(
            {**unpacked(view), "audit_seq": int(audit_seq), "message_id": message_id},
            option=orjson.OPT_SORT_KEYS,
        )
    )


@dataclass(frozen=True, slots=True, eq=False)
class Shaped:
    """The outputs of one batch.

    ``views[i]`` goes to subscriber ``subscriber[i]`` (an index into the plan's views) for
    batch row ``row[i]``, under ``message_ids[i]``; ordered by subscriber, then row. ``held``
    are the views held back by trip-end trimming: persist them with the decisions' delta
    (``held[i]`` is subscriber ``held_subscriber[i]``'s view of row ``held_row[i]``).
    """

    subscriber: IntpArray
    row: IntpArray
    views: list[dict[str, Any]]
    message_ids: list[str]
    held: tuple[HeldView, ...]
    held_subscriber: IntpArray = field(default_factory=lambda: np.empty(0, dtype=np.intp))
    held_row: IntpArray = field(default_factory=lambda: np.empty(0, dtype=np.intp))

    def __len__(self) -> int:
        return len(self.views)


def shape(decisions: Decisions, keys: PseudonymKeys) -> Shaped:
    """Build the output object of every shared, redacted and held pair of ``decisions``.

    Guarantees: each object follows the subscriber's view schema (once :func:`encode_view`
    adds ``message_id`` and ``audit_seq``); it carries only fields the view allows, at the
    decided precision; a position appears only where ``decisions.position`` is true, as the
    reported cell centre in the view's datum; the VIN appears only in ``vin`` mode; a field
    whose value links trips never appears beside a per-trip pseudonym.
    """
    batch = decisions.batch
    cls = decisions.classified
    the_plan = decisions.plan
    subs: list[IntpArray] = []
    rows_out: list[IntpArray] = []
    views_out: list[dict[str, Any]] = []
    ids_out: list[str] = []
    held: list[HeldView] = []
    held_at: list[tuple[int, int]] = []
    times = batch.time
    record_ids = batch.msg_id
    for view in the_plan.views:
        s = view.index
        verdict = decisions.verdict[s]
        rows = np.flatnonzero(verdict != Verdict.BLOCK)
        if rows.size == 0:
            continue
        key = keys(view.id)
        vehicles = batch.vehicle[rows].tolist()
        applied = decisions.applied[s, rows]
        vehicle_out = _identifiers(key, vehicles, applied, decisions.trip_start[rows])
        t = times[rows]
        rid = [None] * len(rows) if record_ids is None else record_ids[rows].tolist()
        mids = message_ids(key, view.id, vehicles, rid, t.tolist())
        step = view.subscriber.view.time_precision_s
        stamps = iso_times(_truncate(t, step))
        objs = _objects(decisions, cls, s, rows, applied, vehicle_out, stamps)
        is_held = verdict[rows] == Verdict.HELD
        if is_held.any():
            where = np.flatnonzero(is_held)
            hrows = rows[where]
            held_at.extend((s, r) for r in hrows.tolist())
            held.extend(
                map(
                    HeldView._make,
                    zip(
                        [view.id] * len(where),
                        [vehicles[i] for i in where.tolist()],
                        decisions.trip_start[hrows].tolist(),
                        times[hrows].tolist(),
                        decisions.trip_lat[hrows].tolist(),
                        decisions.trip_lon[hrows].tolist(),
                        [mids[i] for i in where.tolist()],
                        ["redact" if r else "share" for r in decisions.redacted[s, hrows].tolist()],
                        decisions.rules_of(s, hrows),
                        decisions.transforms_of(s, hrows),
                        decisions.precisions_of(s, hrows),
                        decisions.bases_of(s, hrows),
                        [PackedJson.of(objs[i]) for i in where.tolist()],
                        strict=True,
                    ),
                )
            )
            keep = np.flatnonzero(~is_held)
            rows = rows[keep]
            objs = [objs[i] for i in keep.tolist()]
            mids = [mids[i] for i in keep.tolist()]
        subs.append(np.full(len(rows), s, dtype=np.intp))
        rows_out.append(rows)
        views_out.extend(objs)
        ids_out.extend(mids)
    return Shaped(
        subscriber=np.concatenate(subs) if subs else np.empty(0, dtype=np.intp),
        row=np.concatenate(rows_out) if rows_out else np.empty(0, dtype=np.intp),
        views=views_out,
        message_ids=ids_out,
        held=tuple(held),
        held_subscriber=np.array([p[0] for p in held_at], dtype=np.intp),
        held_row=np.array([p[1] for p in held_at], dtype=np.intp),
    )


_PSEUDONYM_CACHE: dict[bytes, dict[str, str]] = {}
_CACHE_LIMIT = 1 << 17


def _keyed_cache(key: bytes) -> dict[str, str]:
    cache = _PSEUDONYM_CACHE.get(key)
    if cache is None or len(cache) > _CACHE_LIMIT:
        if len(_PSEUDONYM_CACHE) > 64:
            _PSEUDONYM_CACHE.clear()
        cache = _PSEUDONYM_CACHE[key] = {}
    return cache


_TRIP_CACHE: dict[bytes, dict[tuple[str, float], str]] = {}


def _trip_cache(key: bytes) -> dict[tuple[str, float], str]:
    cache = _TRIP_CACHE.get(key)
    if cache is None or len(cache) > _CACHE_LIMIT:
        if len(_TRIP_CACHE) > 64:
            _TRIP_CACHE.clear()
        cache = _TRIP_CACHE[key] = {}
    return cache


def _identifiers(
    key: bytes, vehicles: list[str], applied: npt.NDArray[np.uint32], starts: FloatArray
) -> list[str]:
    """The vehicle field of each output: computed once per distinct vehicle (and trip)."""
    trip = (applied & np.uint32(Applied.TRIP_PSEUDONYM)) != 0
    vin = ~trip & ((applied & np.uint32(Applied.VIN)) != 0)
    if not trip.any() and not vin.any():
        cache = _keyed_cache(key)
        for v in set(vehicles).difference(cache):
            cache[v] = keyed_pseudonym(key, v)
        return [cache[v] for v in vehicles]
    out = list(vehicles)  # the VIN where the view discloses it
    keyed = _keyed_cache(key)
    at = np.flatnonzero(~trip & ~vin).tolist()
    for v in {vehicles[i] for i in at}.difference(keyed):
        keyed[v] = keyed_pseudonym(key, v)
    for i in at:
        out[i] = keyed[vehicles[i]]
    trips = _trip_cache(key)
    at_trip = np.flatnonzero(trip)
    for i, start in zip(at_trip.tolist(), starts[at_trip].tolist(), strict=True):
        v = vehicles[i]
        pid = trips.get((v, start))
        if pid is None:
            pid = trips[(v, start)] = trip_pseudonym(key, v, start)
        out[i] = pid
    return out


@dataclass(frozen=True, slots=True)
class _Location:
    """The location part of a subscriber's objects: its columns and names, the fixed head
    (datum, precision), the altitude column and which rows show a position and an altitude."""

    columns: list[npt.NDArray[Any]]
    names: tuple[str, ...]
    head: tuple[tuple[str, Any], ...]
    alt: FloatArray
    alt_extra: tuple[tuple[str, Any], ...]
    shown: npt.NDArray[np.bool_]
    alt_shown: npt.NDArray[np.bool_]


def _location(
    decisions: Decisions, s: int, rows: IntpArray, applied: npt.NDArray[np.uint32]
) -> _Location:
    """The location part of ``rows`` for subscriber ``s`` (a view that allows a location)."""
    view = decisions.plan.views[s]
    pos = decisions.position[s, rows]
    layer = decisions.layer(s)
    if view.transform is not None:
        out = layer.outputs[view.transform]
        lat, lon = out.lat[rows], out.lon[rows]
    else:
        lat, lon = layer.lat[rows], layer.lon[rows]
    names: tuple[str, ...] = coordinate_names(view.datum)
    columns: list[npt.NDArray[Any]] = [lat, lon]
    if view.grid_m > 0 and pos.any():
        cells = np.full(len(rows), None, dtype=object)
        at = np.flatnonzero(pos)
        cells[at] = layer.cell_ids(rows[at])
        columns.append(cells)
        names += ("cell",)
    head = (("datum", view.datum.value), ("precision_m", _number(view.grid_m)))
    alt = decisions.batch.alt[rows]
    alt_out = pos & np.isfinite(alt) & view.allows_altitude
    alt_out &= (applied & np.uint32(Applied.ALTITUDE_REMOVED)) == 0
    alt_extra: tuple[tuple[str, Any], ...] = ()
    if view.altitude is AltitudeMode.COARSEN and view.altitude_step_m is not None:
        alt = coarsen_altitude(alt, view.altitude_step_m)
        alt_out &= np.isfinite(alt)
        alt_extra = (("alt_step_m", _number(view.altitude_step_m)),)
    elif view.altitude is not AltitudeMode.KEEP:
        alt_out[:] = False
    return _Location(columns, names, head, alt, alt_extra, pos, alt_out)


def _objects(
    decisions: Decisions,
    cls: Classified,
    s: int,
    rows: IntpArray,
    applied: npt.NDArray[np.uint32],
    vehicle_out: list[str],
    stamps: list[str],
) -> list[dict[str, Any]]:
    """The output object of each of ``rows`` for subscriber ``s``.

    Rows are grouped by which optional parts they carry (each partial signal, a location, an
    altitude); each group's objects are built by one generated function per row, whose
    nested dict displays make the object, its location and its signals in one call.
    """
    view = decisions.plan.views[s]
    n = len(rows)
    full_names, full_columns, partial = _signal_columns(decisions, cls, s, rows, applied)
    optional: list[npt.NDArray[np.bool_]] = [where for _, _, where in partial]
    loc = _location(decisions, s, rows, applied) if view.allows_location else None
    if loc is not None:
        optional += [loc.shown, loc.alt_shown]
    loc_columns = loc.columns if loc is not None else []
    loc_names = loc.names if loc is not None else ()
    loc_head = loc.head if loc is not None else ()
    alt_extra = loc.alt_extra if loc is not None else ()
    alt: FloatArray = loc.alt if loc is not None else np.empty(0)
    head = (
        ("schema", VIEW_SCHEMA),
        ("subscriber", view.id),
        ("policy_version", decisions.plan.bundle.version),
    )
    common: list[npt.NDArray[Any] | list[Any]] = [vehicle_out, stamps, *full_columns]
    if not optional:
        maker = _object_maker(head, view.allows_location, None, tuple(full_names))
        return list(map(maker, *(c if isinstance(c, list) else c.tolist() for c in common)))
    kinds, inverse = _patterns(optional)
    if len(kinds) > 1:
        common = [np.asarray(c, dtype=object) if isinstance(c, list) else c for c in common]
    result = np.empty(n, dtype=object) if len(kinds) > 1 else None
    k_loc = len(partial)
    for k, code in enumerate(kinds):
        chosen = [j for j in range(len(partial)) if code >> j & 1]
        names = (*full_names, *(partial[j][0] for j in chosen))
        location: tuple[tuple[str, Any], ...] | None = None
        loc_cols: list[npt.NDArray[Any]] = []
        if view.allows_location and code >> k_loc & 1:
            loc_cols = list(loc_columns)
            location = (*loc_head, *((name, None) for name in loc_names))
            if code >> (k_loc + 1) & 1:
                loc_cols.append(alt)
                location += (("alt_m", None), *alt_extra)
        maker = _object_maker(head, view.allows_location, location, names)
        columns = [*common[:2], *loc_cols, *common[2:], *(partial[j][1] for j in chosen)]
        if result is None:
            return list(map(maker, *(c if isinstance(c, list) else c.tolist() for c in columns)))
        at = np.flatnonzero(inverse == k)
        result[at] = list(map(maker, *(np.asarray(c)[at].tolist() for c in columns)))
    assert result is not None
    built: list[dict[str, Any]] = result.tolist()
    return built


def _patterns(flags: list[npt.NDArray[np.bool_]]) -> tuple[list[int], IntpArray]:
    """The distinct combinations of ``flags`` over the rows, each as an int (bit ``j`` set if
    ``flags[j]`` holds), and each row's index into them."""
    if len(flags) < 63:  # the combination fits one int64 per row
        pattern = np.zeros(len(flags[0]), dtype=np.int64)
        for j, where in enumerate(flags):
            pattern |= where.astype(np.int64) << j
        kinds, inverse = np.unique(pattern, return_inverse=True)
        return kinds.tolist(), inverse.reshape(-1)
    rows, inverse = np.unique(np.column_stack(flags), axis=0, return_inverse=True)
    codes = [sum(1 << j for j in np.flatnonzero(r).tolist()) for r in rows]
    return codes, inverse.reshape(-1)


def _signal_columns(
    decisions: Decisions,
    cls: Classified,
    s: int,
    rows: IntpArray,
    applied: npt.NDArray[np.uint32],
) -> tuple[
    list[str], list[npt.NDArray[Any]], list[tuple[str, npt.NDArray[Any], npt.NDArray[np.bool_]]]
]:
    """The signals subscriber ``s`` receives for ``rows``: names and columns of those every
    row carries, and (name, column, which rows carry it) of the others."""
    view = decisions.plan.views[s]
    derived_ok = (applied & np.uint32(Applied.DERIVED_REMOVED)) == 0
    unlinked = (applied & np.uint32(Applied.LINKING_REMOVED)) != 0
    step = view.subscriber.view.time_precision_s
    full_names: list[str] = []
    full_columns: list[npt.NDArray[Any]] = []
    partial: list[tuple[str, npt.NDArray[Any], npt.NDArray[np.bool_]]] = []
    for path in sorted(cls.specs):
        spec = cls.specs[path]
        if path not in view.allowed or spec.category in _OUTSIDE_SIGNALS or path == TIMESTAMP:
            continue
        present = cls.present[path][rows]
        if spec.links_trips:
            present = present & ~unlinked
        column: npt.NDArray[Any]
        if spec.category is FieldCategory.LOCATION_DERIVED:
            if view.derived is DerivedMode.SUPPRESS:
                continue
            present = present & derived_ok
            if view.derived is DerivedMode.COARSEN:
                if path not in cls.coarsened:
                    continue
                column = cls.coarsened[path][rows]
                present &= np.isfinite(column)
            else:
                column = cls.values[path][rows]
        elif spec.category is FieldCategory.TIME:
            times = _time_column(cls.values[path][rows].tolist(), present, step)
            column = np.fromiter(times, dtype=object, count=len(times))
            present = present & np.not_equal(column, _NONE)
        else:
            column = cls.values[path][rows]
        if not present.any():
            continue
        if present.all():
            full_names.append(path)
            full_columns.append(column)
        else:
            if column.dtype == object:
                present = present & np.not_equal(column, _NONE)
            partial.append((path, column, present))
    return full_names, full_columns, partial


@functools.lru_cache(maxsize=512)
def _object_maker(
    head: tuple[tuple[str, Any], ...],
    has_location: bool,
    location: tuple[tuple[str, Any], ...] | None,
    signals: tuple[str, ...],
) -> Callable[..., dict[str, Any]]:
    """A function of (vehicle, time, the location's ``None`` entries in order, the signals in
    order) returning the output object: ``head`` items, ``vehicle``, ``time``, ``location``
    if ``has_location`` (``None`` if ``location`` is; else its items, the ``None`` ones
    filled from the arguments) and ``signals``. Compiled once per shape; every name and
    constant is written as a literal with ``repr`` (strings and numbers only), so any string
    is safe."""
    params: list[str] = ["vo", "ts"]
    items = [f"{k!r}: {v!r}" for k, v in head]
    items += ["'vehicle': vo", "'time': ts"]
    if location is None:
        if has_location:
            items.append("'location': None")
    else:
        parts = []
        for k, v in location:
            if v is None:
                params.append(f"l{len(params)}")
                parts.append(f"{k!r}: {params[-1]}")
            else:
                parts.append(f"{k!r}: {v!r}")
        items.append(f"'location': {{{', '.join(parts)}}}")
    sig = []
    for name in signals:
        params.append(f"s{len(params)}")
        sig.append(f"{name!r}: {params[-1]}")
    items.append(f"'signals': {{{', '.join(sig)}}}")
    maker: Callable[..., dict[str, Any]] = eval(
        f"lambda {', '.join(params)}: {{{', '.join(items)}}}", {}
    )
    return maker


def _time_column(values: list[Any], present: npt.NDArray[np.bool_], step: float) -> list[Any]:
    """Other time signals, truncated like the record time; unparseable values are dropped."""
    out: list[Any] = []
    for v, p in zip(values, present.tolist(), strict=True):
        if not p:
            out.append(None)
        elif isinstance(v, str):
            try:
                parsed = datetime.fromisoformat(v)
            except ValueError:
                out.append(None)
                continue
            if parsed.tzinfo is None:
                out.append(None)
                continue
            out.append(iso_times(_truncate(np.array([parsed.timestamp()]), step))[0])
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(math.floor(v / step) * step))
        else:
            out.append(None)
    return out
