"""Classify: which signal of a batch is what, and which values a view may ever carry.

Every signal column of a :class:`~gateway.model.Batch` is looked up in the bundle's field list
(after the alias map: an OEM name and its VSS path are one column). A column that is not
listed is *unclassified*: it is dropped from every view, and each row carrying it reports the
drop (rule ``field.unclassified``); the rest of the row still goes. A classified value whose
JSON type does not fit the field's data type (a string for a speed, ``300`` for a ``uint8``)
is treated the same way: it is not the classified signal, so it is dropped and reported
under ``field.unclassified``. Fail closed, never blocking.

The position, altitude, timestamp and vehicle id are batch columns, not signals (decode put
them there); their classification is fixed by the bundle's checks.

The result, :class:`Classified`, holds per column its field spec, its values and a
``present`` mask (value there and of the right type); ``location_derived`` columns with a
``coarsen`` step also get their values as float64 and their coarsened values, computed once
per batch and shared by every view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.model import Batch, BoolArray, FloatArray
from gateway.policy.bundle import PolicyBundle
from gateway.policy.schema import Coarsen, DataType, FieldCategory, FieldSpec
from gateway.state.snapshot import KEY_OFF_SIGNAL, KEY_OFF_VALUES

__all__ = ["Classified", "classify", "coarsen_values", "value_fits"]

ObjectArray = npt.NDArray[np.object_]
_NONE = np.array(None, dtype=object)


def _is_number(v: Any) -> bool:
    t = type(v)
    return (t is float and v == v and v not in (float("inf"), float("-inf"))) or t is int


def _checker(datatype: DataType) -> Callable[[Any], bool]:
    if datatype is DataType.BOOLEAN:
        return lambda v: type(v) is bool
    if datatype is DataType.STRING:
        return lambda v: type(v) is str
    if datatype is DataType.STRING_ARRAY:
        return lambda v: type(v) is list and all(type(x) is str for x in v)
    bounds = datatype.integer_range
    if bounds is not None:
        low, high = bounds

        def integer(v: Any) -> bool:
            t = type(v)
            if t is int:
                return bool(low <= v <= high)
            return t is float and v.is_integer() and low <= v <= high

        return integer
    return _is_number


_FAST_TYPES: dict[DataType | None, frozenset[type]] = {
    DataType.BOOLEAN: frozenset({bool}),
    DataType.STRING: frozenset({str}),
    None: frozenset({int, float}),
}


def _fits(datatype: DataType, column: ObjectArray, has: BoolArray) -> BoolArray:
    """Rows whose value fits ``datatype``. A column whose values all have one plain type
    (every speed a number, every flag a bool) is checked in bulk; others value by value."""
    values = column[has].tolist()
    kinds = set(map(type, values))
    numeric = datatype.numeric
    fast = _FAST_TYPES.get(None if numeric else datatype)
    if fast is not None and kinds <= fast:
        fits = has.copy()
        if not numeric or not values:
            return fits
        try:
            floats = np.asarray(values, dtype=np.float64)
        except OverflowError:
            floats = None
        bounds = datatype.integer_range
        # Bulk checks are exact up to 2**53; beyond that, look at the values themselves.
        if floats is not None and (bounds is None or np.abs(floats).max() < 2.0**53):
            good = np.isfinite(floats)
            if bounds is not None:
                good &= (floats == np.floor(floats)) & (floats >= bounds[0])
                good &= floats <= bounds[1]
            fits[has] = good
            return fits
    check = _checker(datatype)
    out = np.zeros(len(column), dtype=bool)
    out[has] = [check(v) for v in values]
    return out


def value_fits(spec: FieldSpec, value: Any) -> bool:
    """True if ``value`` (as parsed from JSON) fits ``spec``'s data type; ``None`` never does."""
    return value is not None and _checker(spec.datatype)(value)


def coarsen_values(values: FloatArray, coarsen: Coarsen) -> FloatArray:
    """Round to the nearest multiple of ``coarsen.step`` (halves up), modulo ``wrap`` if set.

    NaN stays NaN. Every finite result is ``k * step`` for an integer ``k``; with ``wrap``
    it lies in ``[0, wrap)``.
    """
    step = coarsen.step
    with np.errstate(invalid="ignore", over="ignore"):
        k = np.floor(values / step + 0.5)
        if coarsen.wrap is not None:
            k = np.mod(k, round(coarsen.wrap / step))
        out: FloatArray = k * step + 0.0
    out[~np.isfinite(out)] = np.nan
    return out


@dataclass(frozen=True, slots=True)
class Classified:
    """The classified signal columns of one batch.

    * ``specs``: VSS path -> field spec, for each classified signal column present;
    * ``values``: VSS path -> object column (``None`` where a row lacks the value);
    * ``present``: VSS path -> rows whose value is there and fits the data type;
    * ``numbers`` / ``coarsened``: for ``location_derived`` columns, the values as float64
      (NaN where absent or not a number) and rounded to the field's ``coarsen`` step (only
      for fields that have one);
    * ``unclassified``: signal name as received -> rows carrying it, for every column that is
      unclassified or holds values that do not fit their type (``invalid``);
    * ``key_off``: rows that carry a key-off value (they end their trip);
    * ``dropped``: per row, a bit per ``unclassified`` column it carries (0: none; -1: more
      columns than bits, look the names up).
    """

    specs: Mapping[str, FieldSpec]
    values: Mapping[str, ObjectArray]
    present: Mapping[str, BoolArray]
    numbers: Mapping[str, FloatArray]
    coarsened: Mapping[str, FloatArray]
    unclassified: Mapping[str, BoolArray]
    key_off: BoolArray
    dropped: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _names: dict[int, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.dropped) != len(self.key_off):
            object.__setattr__(self, "dropped", _dropped_bits(self.unclassified, len(self.key_off)))

    @property
    def any_unclassified(self) -> BoolArray:
        """Rows that carry at least one dropped (unclassified or ill-typed) value."""
        out: BoolArray = self.dropped != 0
        return out

    def unclassified_names(self, row: int) -> tuple[str, ...]:
        """The names dropped as unclassified from ``row``, sorted."""
        key = int(self.dropped[row])
        names = self._names.get(key)
        if names is None:
            names = tuple(sorted(name for name, mask in self.unclassified.items() if mask[row]))
            if key > 0:  # a bit set names the same columns in every row
                self._names[key] = names
        return names

    def category_present(self, category: FieldCategory) -> dict[str, BoolArray]:
        """``present`` of the columns of one category."""
        return {p: m for p, m in self.present.items() if self.specs[p].category is category}


def classify(batch: Batch, bundle: PolicyBundle) -> Classified:
    """Classify every signal column of ``batch`` with ``bundle``'s field list.

    Never raises on content. Columns named by an alias are merged into their VSS path (a
    value under the path wins over one under an alias in the same row).
    """
    n = len(batch)
    merged: dict[str, ObjectArray] = {}
    unclassified: dict[str, BoolArray] = {}
    for name in sorted(batch.signals):
        column = batch.signals[name]
        path = bundle.resolve(name)
        has = _not_none(column)
        if path is None:
            if has.any():
                unclassified[name] = has
            continue
        if path in merged:
            base = merged[path]
            fill = ~_not_none(base) & has
            if fill.any():
                base = base.copy()
                base[fill] = column[fill]
                merged[path] = base
        else:
            merged[path] = np.asarray(column, dtype=object)
    key_off = _key_off(batch, bundle, n)

    specs: dict[str, FieldSpec] = {}
    present: dict[str, BoolArray] = {}
    numbers: dict[str, FloatArray] = {}
    coarsened: dict[str, FloatArray] = {}
    for path, column in merged.items():
        spec = bundle.fields[path]
        has = _not_none(column)
        fits = _fits(spec.datatype, column, has)
        bad = has & ~fits
        if bad.any():
            unclassified[path] = unclassified[path] | bad if path in unclassified else bad
        specs[path] = spec
        present[path] = fits
        if spec.category is FieldCategory.LOCATION_DERIVED:
            values = np.full(n, np.nan)
            if fits.any() and spec.datatype.numeric:
                values[fits] = np.asarray(column[fits].tolist(), dtype=np.float64)
            numbers[path] = values
            if spec.coarsen is not None:
                coarsened[path] = coarsen_values(values, spec.coarsen)
    return Classified(
        specs=specs,
        values=merged,
        present=present,
        numbers=numbers,
        coarsened=coarsened,
        unclassified=unclassified,
        key_off=key_off,
    )


def _dropped_bits(unclassified: Mapping[str, BoolArray], n: int) -> npt.NDArray[np.int64]:
    out = np.zeros(n, dtype=np.int64)
    for bit, name in enumerate(sorted(unclassified)):
        mask = unclassified[name]
        if bit < 62:
            out[mask] |= np.int64(1) << np.int64(bit)
        else:
            out[mask] = -1
    return out


def _key_off(batch: Batch, bundle: PolicyBundle, n: int) -> BoolArray:
    out = np.zeros(n, dtype=bool)
    for name, column in batch.signals.items():
        if name == KEY_OFF_SIGNAL or bundle.resolve(name) == KEY_OFF_SIGNAL:
            out |= np.fromiter(
                (type(v) is str and v in KEY_OFF_VALUES for v in column), dtype=bool, count=n
            )
    return out


def _not_none(column: npt.NDArray[Any]) -> BoolArray:
    if column.dtype != object:
        return np.ones(len(column), dtype=bool)
    mask: BoolArray = np.not_equal(column, _NONE)
    return mask
