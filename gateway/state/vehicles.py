"""Per-vehicle state as columns: a shared numbering of vehicle ids and tables keyed by it.

The decision engine reads and writes a few numbers per vehicle per batch (its trip, when each
subscriber was last sent a record of it). Kept as dicts of tuples, that meant a dict look-up
per vehicle per table per batch and a Python object per number; here each vehicle gets a
number once (:class:`VehicleIndex`), a batch looks its vehicles up once, and every table
(:class:`VehicleRows`) is a float array addressed by those numbers.

A :class:`VehicleIndex` only grows, and a number never changes meaning, so every snapshot
derived from another shares one index: a vehicle another snapshot added is simply absent
from the tables that do not hold it. Tables are immutable; :meth:`VehicleRows.merged`
returns a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import Any, Self

import numpy as np
import numpy.typing as npt

__all__ = ["VehicleIndex", "VehicleRows"]

IntpArray = npt.NDArray[np.intp]
FloatArray = npt.NDArray[np.float64]


class VehicleIndex:
    """Numbers for vehicle ids, 0, 1, 2, ... in order of first sight. Append-only."""

    __slots__ = ("_code", "_names")

    def __init__(self) -> None:
        self._code: dict[str, int] = {}
        self._names: list[str] = []

    def __len__(self) -> int:
        return len(self._names)

    def codes(self, vehicles: Sequence[str]) -> IntpArray:
        """The number of each vehicle id, numbering the ones not seen before."""
        n = len(vehicles)
        out = np.fromiter(map(self._code.get, vehicles, repeat(-1, n)), np.intp, count=n)
        for i in np.flatnonzero(out < 0).tolist():
            out[i] = self._add(vehicles[i])
        return out

    def find(self, vehicle: str) -> int:
        """The number of ``vehicle``, or -1 if it has none."""
        return self._code.get(vehicle, -1)

    def name(self, code: int) -> str:
        """The vehicle id numbered ``code``."""
        return self._names[code]

    def _add(self, vehicle: str) -> int:
        code = self._code.get(vehicle)
        if code is None:
            code = self._code[vehicle] = len(self._names)
            self._names.append(vehicle)
        return code


class VehicleRows:
    """An immutable table of ``width`` floats per vehicle, keyed by :class:`VehicleIndex`
    numbers: ``codes`` (sorted, unique) and ``data[i]`` the row of ``codes[i]``."""

    __slots__ = ("codes", "data", "index")
    width = 1

    def __init__(self, index: VehicleIndex, codes: IntpArray, data: FloatArray) -> None:
        self.index = index
        self.codes = codes
        self.data = data

    @classmethod
    def empty(cls, index: VehicleIndex) -> Self:
        """A table without rows."""
        return cls(index, np.empty(0, dtype=np.intp), np.empty((0, cls.width)))

    @classmethod
    def of_codes(cls, index: VehicleIndex, codes: IntpArray, data: FloatArray) -> Self:
        """A table of ``data[i]`` for vehicle number ``codes[i]`` (unique, any order)."""
        data = np.asarray(data, dtype=np.float64).reshape(len(codes), cls.width)
        order = np.argsort(codes, kind="stable")
        return cls(index, np.asarray(codes, dtype=np.intp)[order], data[order])

    @classmethod
    def of_rows(
        cls, index: VehicleIndex, vehicles: Sequence[str], data: Sequence[Sequence[float]]
    ) -> Self:
        """A table of ``data[i]`` for ``vehicles[i]`` (unique ids)."""
        rows = np.array(data, dtype=np.float64).reshape(len(vehicles), cls.width)
        return cls.of_codes(index, index.codes(vehicles), rows)

    @classmethod
    def of_mapping(
        cls,
        values: Mapping[str, Any] | None,
        index: VehicleIndex,
        row: Callable[[Any], Sequence[float]],
    ) -> Self:
        """``values`` (vehicle id -> value, ``row(value)`` its floats) as a table on ``index``;
        a table of this class is rebased rather than rebuilt."""
        if isinstance(values, cls):
            return values.rebased(index)
        items = list((values or {}).items())
        return cls.of_rows(index, [v for v, _ in items], [row(x) for _, x in items])

    def take(self, codes: IntpArray, missing: Sequence[float]) -> FloatArray:
        """The rows of vehicle numbers ``codes`` (shape ``(len(codes), width)``), ``missing``
        where the table has none."""
        found, out = self.lookup(codes)
        out[~found] = np.asarray(missing, dtype=np.float64)
        return out

    def lookup(self, codes: IntpArray) -> tuple[npt.NDArray[np.bool_], FloatArray]:
        """Which of vehicle numbers ``codes`` the table holds, and their rows (undefined
        where not held)."""
        out = np.empty((len(codes), self.width))
        found = np.zeros(len(codes), dtype=bool)
        if len(self.codes) and len(codes):
            pos = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
            found = self.codes[pos] == codes
            out[found] = self.data[pos[found]]
        return found, out

    def merged(self, newer: VehicleRows) -> Self:
        """A copy where the vehicles of ``newer`` (on the same index) take its rows."""
        if newer.index is not self.index:
            raise ValueError("tables on different vehicle indexes")
        if len(newer.codes) == 0:
            return self
        pos = np.minimum(np.searchsorted(self.codes, newer.codes), max(len(self.codes) - 1, 0))
        found = (self.codes[pos] == newer.codes) if len(self.codes) else pos < 0
        if found.all():
            data = self.data.copy()
            data[pos] = newer.data
            return type(self)(self.index, self.codes, data)
        codes = np.concatenate([self.codes, newer.codes[~found]])
        data = np.concatenate([self.data, newer.data[~found]])
        data[pos[found]] = newer.data[found]
        order = np.argsort(codes, kind="stable")
        return type(self)(self.index, codes[order], data[order])

    def rebased(self, index: VehicleIndex) -> Self:
        """The same rows on another index."""
        if index is self.index:
            return self
        names = [self.index.name(c) for c in self.codes.tolist()]
        return type(self).of_codes(index, index.codes(names), self.data)

    def _row(self, vehicle: str) -> FloatArray | None:
        code = self.index.find(vehicle)
        if code < 0 or len(self.codes) == 0:
            return None
        pos = int(np.searchsorted(self.codes, code))
        if pos >= len(self.codes) or self.codes[pos] != code:
            return None
        row: FloatArray = self.data[pos]
        return row

    def __iter__(self) -> Iterator[str]:
        name = self.index.name
        return (name(c) for c in self.codes.tolist())

    def __len__(self) -> int:
        return len(self.codes)

    def __contains__(self, vehicle: object) -> bool:
        return isinstance(vehicle, str) and self._row(vehicle) is not None

    def __eq__(self, other: object) -> bool:
        # Rows compared as arrays, NaN equal to NaN (a trip without a position yet is NaN
        # there); against anything else, mapping equality.
        if isinstance(other, VehicleRows) and type(other) is type(self):
            other = other.rebased(self.index)
            return np.array_equal(self.codes, other.codes) and np.array_equal(
                self.data, other.data, equal_nan=True
            )
        equal: bool = super().__eq__(other)  # Mapping equality in the subclasses
        return equal

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(zip(self, self.data.tolist(), strict=True))!r})"
