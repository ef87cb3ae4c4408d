"""Rule bit sets: each :class:`~gateway.policy.rules.RuleId` is one bit of a ``uint64``.

A pair's cited rules are a bit set (``Decisions.rules``); :func:`rule_ids` names them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.model import BoolArray
from gateway.policy.rules import RuleId

IntpArray = npt.NDArray[np.intp]
U64 = np.uint64

_RULES = tuple(RuleId)
BIT = {rule: U64(1 << i) for i, rule in enumerate(_RULES)}
"""The bit of each rule id."""
_RULE_CACHE: dict[int, tuple[str, ...]] = {}


def rule_ids(bits: int) -> tuple[str, ...]:
    """The rule ids of a rule bit set, in catalogue (:class:`RuleId`) order."""
    key = int(bits)
    cached = _RULE_CACHE.get(key)
    if cached is None:
        cached = tuple(str(r) for i, r in enumerate(_RULES) if key >> i & 1)
        _RULE_CACHE[key] = cached
    return cached


def set_where(bits: npt.NDArray[Any], where: BoolArray, value: Any) -> None:
    """``bits[where] |= value`` in place, in one pass (no temporary selection)."""
    np.bitwise_or(bits, value, out=bits, where=where)


def bits_of(*rules: RuleId) -> U64:
    """The bit set of ``rules``."""
    out = U64(0)
    for rule in rules:
        out |= BIT[rule]
    return out
