"""The cross-border gate (RULES.md §4): tiers of people counted per recipient and year.

:func:`crossborder_gate` takes a recipient's records in export order and allows each only
if every data class it belongs to is, with its vehicle counted, at a tier a valid legal
basis covers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from gateway.pipeline.decide.rulebits import BIT
from gateway.policy.rules import RuleId
from gateway.policy.schema import (
    CrossBorderRules,
    ExportDataClass,
    LegalBasisKind,
    Subscriber,
    Tier,
)
from gateway.state.snapshot import CounterKey, CrossBorderCount

__all__ = ["TIER_RULES", "GateResult", "crossborder_gate"]


@dataclass(frozen=True, slots=True)
class GateResult:
    """Per record (in the order given): allowed or not, rule bits cited, legal basis used.

    ``counted`` lists the vehicles newly counted (``(subscriber, year, class, vehicle)``).
    """

    allowed: tuple[bool, ...]
    rules: tuple[int, ...]
    basis: tuple[str | None, ...]
    counted: tuple[tuple[str, int, ExportDataClass, str], ...]


TIER_RULES = (RuleId.XBORDER_EXEMPT, RuleId.XBORDER_TIER_CONTRACT, RuleId.XBORDER_TIER_ASSESSMENT)
_CONTRACT_KINDS = (
    LegalBasisKind.STANDARD_CONTRACT,
    LegalBasisKind.CERTIFICATION,
    LegalBasisKind.SECURITY_ASSESSMENT,
)
_GBA_KINDS = (*_CONTRACT_KINDS, LegalBasisKind.GBA_STANDARD_CONTRACT)


_IMPORTANT_PI_OVER = 100_000
"""Automobile provisions art. 3: PI of more than this many people is important data."""


def _tier(count: int, tier: Tier, ciio: bool, important_over: float = math.inf) -> int:
    if count >= tier.assessment_from or (ciio and count >= 1) or count > important_over:
        return 2
    return 1 if count >= tier.contract_from else 0


def _covering(sub: Subscriber, day: date, data_class: ExportDataClass, tier: int) -> str | None:
    """Id of the first valid legal basis covering ``data_class`` at ``tier``; "" if exempt."""
    if tier == 0:
        return ""
    kinds: tuple[LegalBasisKind, ...] = (LegalBasisKind.SECURITY_ASSESSMENT,)
    if tier == 1:
        kinds = _GBA_KINDS if sub.hong_kong_or_macao else _CONTRACT_KINDS
    for basis in sub.legal_bases_on(day, data_class):
        if basis.kind in kinds:
            return basis.id
    return None


def crossborder_gate(
    subscriber: Subscriber,
    rules: CrossBorderRules,
    day: date,
    year: int,
    counts: Mapping[CounterKey, CrossBorderCount],
    vehicles: Sequence[str],
    sensitive: Sequence[bool],
) -> GateResult:
    """Check an export to a cross-border ``subscriber`` against the thresholds (RULES.md §4).

    One entry per record, in the order the records are exported (time order): its vehicle
    and whether it is sensitive (it carries a position — a trajectory, pseudonymised or not —
    or a field flagged sensitive in fields.yaml: health, biometrics, identity, images).
    Every record is personal information (PI) of its vehicle's people; a sensitive one is
    also sensitive PI. A vehicle not yet counted this year for a class raises that class's
    count by one. A record is allowed only if, for each of its classes, the tier of the count
    (with its vehicle) is covered by a legal basis valid on ``day``: none below
    ``contract_from``; a standard contract, certification or security assessment from
    ``contract_from``; a security assessment from ``assessment_from`` (from the first person
    for a CIIO, and beyond 100,000 people of personal information when
    ``vehicle_pi_over_100k_important`` is set: important data under the automobile
    provisions). A GBA standard contract counts as a standard contract for a recipient in
    Hong Kong or Macao only. Without a PI impact assessment completed by ``day`` nothing is
    allowed (``xborder.impact-assessment``). A record that is not allowed counts nothing.
    """
    if not subscriber.assessed_on(day):
        bits = int(BIT[RuleId.XBORDER_IMPACT_ASSESSMENT])
        n = len(vehicles)
        return GateResult((False,) * n, (bits,) * n, (None,) * n, ())
    ledgers = _ledgers(subscriber.id, rules, year, counts)
    allowed: list[bool] = []
    cited: list[int] = []
    used: list[str | None] = []
    counted: list[tuple[str, int, ExportDataClass, str]] = []
    for vehicle, is_sensitive in zip(vehicles, sensitive, strict=True):
        classes = _CLASSES if is_sensitive else _CLASSES[:1]
        ok = True
        bits = 0
        ids: list[str] = []
        for c in classes:
            ledger = ledgers[c]
            fresh = vehicle not in ledger.known
            count = ledger.total + (1 if fresh else 0)
            tier = _tier(count, ledger.tier, rules.ciio, ledger.important_over)
            basis = _covering(subscriber, day, c, tier)
            bits |= int(BIT[TIER_RULES[tier]])
            if basis is None:
                ok = False
            elif basis:
                ids.append(basis)
        if ok:
            for c in classes:
                ledger = ledgers[c]
                if vehicle not in ledger.known:
                    ledger.known.add(vehicle)
                    ledger.total += 1
                    counted.append((subscriber.id, year, c, vehicle))
        else:
            bits |= int(BIT[RuleId.XBORDER_BASIS_MISSING])
        allowed.append(ok)
        cited.append(bits)
        used.append(",".join(dict.fromkeys(ids)) or None if ok else None)
    return GateResult(tuple(allowed), tuple(cited), tuple(used), tuple(counted))


_CLASSES = (ExportDataClass.PERSONAL_INFORMATION, ExportDataClass.SENSITIVE_PERSONAL_INFORMATION)
"""The classes a record counts in: PI always, sensitive PI if it is sensitive."""


@dataclass(slots=True)
class _Ledger:
    """One data class's count for a recipient and year: who is counted, how many, its tiers."""

    known: set[str]
    total: int
    tier: Tier
    important_over: float


def _ledgers(
    sub_id: str, rules: CrossBorderRules, year: int, counts: Mapping[CounterKey, CrossBorderCount]
) -> dict[ExportDataClass, _Ledger]:
    """The ledgers of both classes, from the counts stored before the batch."""
    pi, spi = _CLASSES
    tiers = {pi: rules.personal_information, spi: rules.sensitive_personal_information}
    over = {
        pi: _IMPORTANT_PI_OVER if rules.vehicle_pi_over_100k_important else math.inf,
        spi: math.inf,
    }
    out = {}
    for c in _CLASSES:
        stored = counts.get((sub_id, year, c), CrossBorderCount())
        out[c] = _Ledger(set(stored.known), stored.count, tiers[c], over[c])
    return out
