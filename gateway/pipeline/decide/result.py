"""What the decision stage hands on: a :class:`Verdict` and :class:`Applied` transformations
per (subscriber, record) pair, in :class:`Decisions`, and the audit entry's transformations."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.model import Batch, BoolArray, Datum, ErrorCode, FloatArray
from gateway.pipeline.classify import Classified
from gateway.pipeline.decide.plan import Plan, ResolvedView
from gateway.pipeline.decide.rulebits import IntpArray, bits_of, rule_ids
from gateway.pipeline.geo import GeoLayer, Located
from gateway.policy.rules import RuleId
from gateway.state.snapshot import StateDelta

__all__ = ["Applied", "Decisions", "Verdict"]


class Verdict(IntEnum):
    """What one (record, subscriber) pair gets. ``HELD``: decided, waiting on trip-end trim."""

    SHARE = 0
    REDACT = 1
    BLOCK = 2
    HELD = 3

    @property
    def label(self) -> str:
        """``"share"``, ``"redact"``, ``"block"`` or ``"held"``."""
        return self.name.lower()


class Applied(IntFlag):
    """Transformations applied to one pair's output (a bit set per pair)."""

    GRID = 1
    DATUM_GCJ02 = 2
    POSITION_REMOVED = 4
    ALTITUDE_REMOVED = 8
    ALTITUDE_COARSENED = 16
    DERIVED_COARSENED = 32
    DERIVED_REMOVED = 64
    KEYED_PSEUDONYM = 128
    TRIP_PSEUDONYM = 256
    VIN = 512
    TIME_TRUNCATED = 1024
    FIELDS_REMOVED = 2048
    UNCLASSIFIED_REMOVED = 4096
    ZONE_MASKED = 8192
    TRIMMED = 16384
    LINKING_REMOVED = 32768
    PER_TRIP_TRIM = 65536


@dataclass(frozen=True, slots=True, eq=False)
class Decisions:
    """Decisions for every (subscriber, row) of a batch: arrays of shape ``(S, n)``.

    ``verdict`` (:class:`Verdict`), ``rules`` (uint64 bit set over :class:`RuleId`, see
    :func:`rule_ids`), ``applied`` (:class:`Applied` bits), ``consent`` / ``basis`` (ids or
    ``None``), ``position`` (the output carries a position), ``redacted`` (what a held pair
    becomes when released: redact if true, else share). Per row: ``trip_start`` (the trip a
    row belongs to, NaN for rejected rows) and ``trip_lat``/``trip_lon`` (its position,
    carried forward within the trip, for the trip-end release test). ``delta`` is the state
    change to persist with the batch.
    """

    plan: Plan
    batch: Batch
    classified: Classified
    located: Located
    verdict: npt.NDArray[np.uint8]
    rules: npt.NDArray[np.uint64]
    applied: npt.NDArray[np.uint32]
    consent: npt.NDArray[np.object_]
    basis: npt.NDArray[np.object_]
    position: BoolArray
    redacted: BoolArray
    trip_start: FloatArray
    trip_lat: FloatArray
    trip_lon: FloatArray
    delta: StateDelta = field(default_factory=StateDelta)
    inherited: Located | None = None
    _transform_cache: dict[tuple[Any, ...], dict[str, Any]] = field(
        default_factory=dict, repr=False
    )

    @property
    def shape(self) -> tuple[int, int]:
        """``(subscribers, rows)``."""
        return (len(self.plan.views), len(self.batch))

    def columns(self) -> dict[str, npt.NDArray[Any]]:
        """The pairs as flat columns, subscriber-major: ``row``, ``subscriber`` (index into
        ``plan.views``), ``verdict``, ``rules`` (bit sets), ``applied``, ``precision_m``
        (NaN where no position goes), ``consent``, ``basis``."""
        S, n = self.shape
        precision = np.array([v.grid_m for v in self.plan.views], dtype=np.float64)
        return {
            "row": np.tile(np.arange(n, dtype=np.intp), S),
            "subscriber": np.repeat(np.arange(S, dtype=np.intp), n),
            "verdict": self.verdict.ravel(),
            "rules": self.rules.ravel(),
            "applied": self.applied.ravel(),
            "precision_m": np.where(self.position, precision[:, None], np.nan).ravel(),
            "consent": self.consent.ravel(),
            "basis": self.basis.ravel(),
        }

    def layer(self, s: int) -> GeoLayer:
        """The geo layer subscriber ``s`` is decided on."""
        return self.located.layer(self.plan.views[s].grid_m)

    def rule_ids(self, s: int, row: int) -> tuple[str, ...]:
        """Rule ids cited for (subscriber ``s``, ``row``), in catalogue order."""
        return rule_ids(int(self.rules[s, row]))

    def zone_ids(self, s: int, row: int) -> tuple[str, ...]:
        """Ids of the zones the row's reported cell touches at subscriber ``s``'s grid (for a
        row without a position, the cell of its trip's last known one, which it was judged
        on)."""
        own = self.layer(s).zone_ids(row)
        if own or self.inherited is None:
            return own
        return self.inherited.layer(self.plan.views[s].grid_m).zone_ids(row)

    def reason(self, row: int) -> str | None:
        """Why a rejected row was rejected (e.g. ``"missing-timestamp"``), else ``None``."""
        code = int(self.batch.error[row])
        return ErrorCode(code).reason if code else None

    def precision_m(self, s: int, row: int) -> float | None:
        """Output precision in metres (0 = raw) if a position goes, else ``None``."""
        if not self.position[s, row]:
            return None
        return self.plan.views[s].grid_m

    def datum(self, s: int, row: int) -> Datum:
        """Datum of the output position, ``Datum.NONE`` if none goes."""
        if not self.position[s, row]:
            return Datum.NONE
        return self.plan.views[s].datum.datum

    def crossborder_blocked(self) -> dict[str, int]:
        """Per cross-border subscriber: records blocked because a threshold lacks a covering
        legal basis or the recipient lacks a PI impact assessment (the alert metric)."""
        alert = bits_of(RuleId.XBORDER_BASIS_MISSING, RuleId.XBORDER_IMPACT_ASSESSMENT)
        out: dict[str, int] = {}
        for view in self.plan.views:
            if not view.cross_border:
                continue
            hit = (self.verdict[view.index] == Verdict.BLOCK) & (
                (self.rules[view.index] & alert) != 0
            )
            if n := int(hit.sum()):
                out[view.id] = n
        return out

    def transforms(self, s: int, row: int) -> dict[str, Any]:
        """The transformations of one pair as JSON for the audit entry (no floats)."""
        return self.transforms_of(s, np.array([row], dtype=np.intp))[0]

    def transforms_of(self, s: int, rows: IntpArray) -> list[dict[str, Any]]:
        """:meth:`transforms` of many rows of subscriber ``s`` (each a fresh dict)."""
        layer = self.layer(s)
        site = layer.site[rows]
        zoned = np.zeros(len(rows), dtype=bool)
        has_site = site >= 0
        zoned[has_site] = layer.mask.level[site[has_site]] != 0
        # Rows without a position were judged on their trip's last known one: its zones.
        carried = (
            None if self.inherited is None else self.inherited.layer(self.plan.views[s].grid_m)
        )
        if carried is not None:
            c_site = carried.site[rows]
            c_has = ~has_site & (c_site >= 0)
            zoned[c_has] = carried.mask.level[c_site[c_has]] != 0
        bits_list = self.applied[s, rows].tolist()
        pos_list = self.position[s, rows].tolist()
        dropped = self.classified.dropped[rows].tolist()
        view = self.plan.views[s]
        cache = self._transform_cache
        names_of: dict[int, tuple[int, tuple[str, ...]]] = {0: (0, ())}
        out: list[dict[str, Any]] = []
        for row, bits, pos, in_zone, kind in zip(
            rows.tolist(), bits_list, pos_list, zoned.tolist(), dropped, strict=True
        ):
            zones = (
                (layer if carried is None or layer.site[row] >= 0 else carried).zone_ids(row)
                if in_zone
                else ()
            )
            names: tuple[int, tuple[str, ...]] = (0, ())
            if bits & _UNCLASSIFIED_BIT:
                known = names_of.get(kind) if kind > 0 else None
                if known is None:
                    known = self._dropped(row)
                    if kind > 0:
                        names_of[kind] = known
                names = known
            key = (s, bits, pos, zones, names)
            cached = cache.get(key)
            if cached is None:
                cached = cache[key] = _transforms(view, bits, pos, zones, names)
            out.append(dict(cached))
        return out

    def _dropped(self, row: int) -> tuple[int, tuple[str, ...]]:
        """How many fields outside the catalogue ``row`` carried, and the catalogued fields
        dropped for their type. Names outside the catalogue are input (they may hold a VIN
        or a position): they are counted, never named."""
        names = self.classified.unclassified_names(row)
        fields = self.plan.bundle.fields
        catalogued = tuple(name for name in names if name in fields)
        return len(names) - len(catalogued), catalogued

    def rules_of(self, s: int, rows: IntpArray) -> list[tuple[str, ...]]:
        """:meth:`rule_ids` of many rows of subscriber ``s``."""
        return [rule_ids(b) for b in self.rules[s, rows].tolist()]

    def bases_of(self, s: int, rows: IntpArray) -> list[str | None]:
        """Consent id and legal basis ids used for many rows of subscriber ``s``,
        comma-separated, or ``None``."""
        return [
            ",".join(p for p in (c, b) if p) or None
            for c, b in zip(
                self.consent[s, rows].tolist(), self.basis[s, rows].tolist(), strict=True
            )
        ]

    def precisions_of(self, s: int, rows: IntpArray) -> list[float | None]:
        """:meth:`precision_m` of many rows of subscriber ``s``."""
        grid = self.plan.views[s].grid_m
        return [grid if p else None for p in self.position[s, rows].tolist()]


_UNCLASSIFIED_BIT = int(Applied.UNCLASSIFIED_REMOVED)


def _transforms(
    view: ResolvedView,
    bits: int,
    position: bool,
    zones: tuple[str, ...],
    dropped: tuple[int, tuple[str, ...]],
) -> dict[str, Any]:
    cfg = view.subscriber.view
    out: dict[str, Any] = {}
    if position:
        out["datum"] = view.datum.value
        out["grid_m"] = _json_number(view.grid_m)
    if bits & Applied.POSITION_REMOVED:
        out["position"] = "removed"
    if zones:
        out["zones"] = list(zones)
    if bits & Applied.TRIP_PSEUDONYM:
        out["pseudonym"] = "per-trip"
    elif bits & Applied.KEYED_PSEUDONYM:
        out["pseudonym"] = "per-subscriber"
    elif bits & Applied.VIN:
        out["pseudonym"] = "none"
    if bits & Applied.ALTITUDE_COARSENED and view.altitude_step_m is not None:
        out["altitude"] = f"coarsened:{_json_number(view.altitude_step_m)}"
    elif bits & Applied.ALTITUDE_REMOVED:
        out["altitude"] = "removed"
    if bits & Applied.DERIVED_REMOVED:
        out["location_derived"] = "removed"
    elif bits & Applied.DERIVED_COARSENED:
        out["location_derived"] = "coarsened"
    if bits & Applied.TIME_TRUNCATED:
        out["time_s"] = _json_number(cfg.time_precision_s)
    unknown, ill_typed = dropped
    if unknown:
        out["unclassified"] = unknown
    if ill_typed:
        out["ill_typed"] = list(ill_typed)
    if bits & Applied.TRIMMED:
        trim = view.per_trip_trim_m if bits & Applied.PER_TRIP_TRIM else cfg.trip_trim_m
        out["trip_trim_m"] = _json_number(trim)
    review = view.subscriber.map_review
    if position and review is not None:
        out["map_review"] = review.reference
    if bits & Applied.LINKING_REMOVED:
        out["links_trips"] = "removed"
    return out


def _json_number(value: float) -> int | str:
    return int(value) if float(value).is_integer() else repr(float(value))
