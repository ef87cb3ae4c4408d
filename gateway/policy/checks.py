"""Checks that need more than one value, or more than one file, of a policy bundle.

The pydantic models of :mod:`gateway.policy.schema` check each value on its own; here the
bundle is checked as a whole: references between files (purposes, fields, zones), duplicate
ids, and the rules of RULES.md that can already be decided from the policy alone (raw
positions and grids below the floor need a qualification, and so on). Expiry dates are not
checked: they are evaluated when a decision is made.

The checks run on whatever parts of the bundle could be read, so one broken file does not
hide the problems of the others; a part that could not be read at all is ``None`` and the
checks that need it are skipped (rather than reporting every reference to it as unknown).
Each finding names the file, the path inside it and a message; the loader adds the line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.geo.datum import available_transforms
from gateway.located_yaml import Loc
from gateway.policy.rules import RuleId
from gateway.policy.schema import (
    AltitudeMode,
    Channel,
    Consent,
    CrossBorderRules,
    DerivedMode,
    ExportDataClass,
    FieldCategory,
    FieldSpec,
    GeoRules,
    IdentifierMode,
    LegalBasisKind,
    OutputDatum,
    Subscriber,
)
from gateway.vss import ALTITUDE, LATITUDE, LONGITUDE, TIMESTAMP, VIN

__all__ = [
    "COLUMN_CATEGORIES",
    "CONSENTS",
    "FIELDS",
    "RULES",
    "SUBSCRIBERS",
    "Finding",
    "Parts",
    "check",
]

FIELDS = "fields.yaml"
SUBSCRIBERS = "subscribers.yaml"
CONSENTS = "consents.yaml"
RULES = "rules.yaml"

COLUMN_CATEGORIES = {
    LATITUDE: FieldCategory.LOCATION,
    LONGITUDE: FieldCategory.LOCATION,
    ALTITUDE: FieldCategory.ALTITUDE,
    TIMESTAMP: FieldCategory.TIME,
    VIN: FieldCategory.VEHICLE_ID,
}
"""Signals decode turns into batch columns: every bundle lists them, in these categories."""

_VSS_PATH = re.compile(r"^Vehicle(\.[A-Z][A-Za-z0-9]*)+$")


@dataclass(frozen=True)
class Finding:
    """A problem found by a check: which file, where in it, what."""

    file: str
    loc: Loc
    message: str


@dataclass
class Parts:
    """What could be read of a bundle. ``None``: that part could not be read at all.

    ``field_names``/``purpose_names`` hold every name declared, even those whose entry is
    invalid (so a reference to them is not reported as unknown a second time); ``fields``
    holds the valid entries. Lists of entities keep each item's index in its file.
    """

    field_names: frozenset[str] | None = None
    fields: dict[str, FieldSpec] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    purpose_names: frozenset[str] | None = None
    subscribers: list[tuple[int, Subscriber]] = field(default_factory=list)
    consents: list[tuple[int, Consent]] = field(default_factory=list)
    geo: GeoRules | None = None
    crossborder: CrossBorderRules | None = None
    catalogue_ids: frozenset[str] | None = None
    zone_ids: frozenset[str] | None = None


def check(parts: Parts) -> list[Finding]:
    """Every cross-value and cross-file problem of ``parts``, in file order."""
    out: list[Finding] = []
    _check_fields(parts, out)
    _check_subscribers(parts, out)
    _check_consents(parts, out)
    _check_rules(parts, out)
    return out


# --- fields.yaml ------------------------------------------------------------------------


def _check_fields(parts: Parts, out: list[Finding]) -> None:
    if parts.field_names is None:
        return
    for name in sorted(parts.field_names):
        if not _VSS_PATH.match(name):
            out.append(
                Finding(
                    FIELDS,
                    ("fields", name),
                    "not a VSS signal path: Vehicle.Branch.Signal, each part starting with "
                    "a capital letter",
                )
            )
    for name, spec in parts.fields.items():
        if spec.coarsen is not None and spec.category is not FieldCategory.LOCATION_DERIVED:
            out.append(
                Finding(
                    FIELDS,
                    ("fields", name, "coarsen"),
                    f"coarsen applies only to location_derived fields, not {spec.category}",
                )
            )
        elif spec.coarsen is not None and not spec.datatype.numeric:
            out.append(
                Finding(
                    FIELDS,
                    ("fields", name, "coarsen"),
                    f"coarsen needs a numeric datatype, not {spec.datatype}",
                )
            )
        if spec.category is FieldCategory.LOCATION and name not in (LATITUDE, LONGITUDE):
            out.append(
                Finding(
                    FIELDS,
                    ("fields", name, "category"),
                    f"category location is reserved for {LATITUDE} and {LONGITUDE}, the "
                    "position the geo stage grids and masks; other coordinates would pass "
                    "uncoarsened (leave them unclassified to drop them)",
                )
            )
    _check_data_classes(parts, out)
    for name, category in COLUMN_CATEGORIES.items():
        column = parts.fields.get(name)
        if name not in parts.field_names:
            out.append(Finding(FIELDS, ("fields",), f"{name} must be listed, as {category}"))
        elif column is not None and column.category is not category:
            out.append(Finding(FIELDS, ("fields", name, "category"), f"must be {category}"))
    for alias, target in parts.aliases.items():
        if alias in parts.field_names:
            out.append(
                Finding(
                    FIELDS,
                    ("aliases", alias),
                    "is a field path itself; an alias must not shadow a field",
                )
            )
        elif target not in parts.field_names:
            out.append(
                Finding(
                    FIELDS,
                    ("aliases", alias),
                    f"maps to unknown field {target!r}{_suggest(target, parts.field_names)}",
                )
            )


def _check_data_classes(parts: Parts, out: list[Finding]) -> None:
    """Images are important data (RULES.md §2); only important fields name purposes."""
    for name, spec in parts.fields.items():
        if spec.category is FieldCategory.IMAGERY and not spec.important:
            out.append(
                Finding(
                    FIELDS,
                    ("fields", name, "category"),
                    "imagery may show faces or licence plates: it must be flagged important "
                    "(RULES.md §2)",
                )
            )
        if spec.purposes and not spec.important:
            out.append(
                Finding(
                    FIELDS,
                    ("fields", name, "purposes"),
                    "purposes name the uses of an important field; this one is not important",
                )
            )
        if parts.purpose_names is None:
            continue
        for k, purpose in enumerate(spec.purposes):
            if purpose not in parts.purpose_names:
                out.append(
                    Finding(
                        FIELDS,
                        ("fields", name, "purposes", k),
                        f"unknown purpose {purpose!r} (purposes are listed in {SUBSCRIBERS})"
                        f"{_suggest(purpose, parts.purpose_names)}",
                    )
                )


# --- subscribers.yaml -------------------------------------------------------------------


def _check_subscribers(parts: Parts, out: list[Finding]) -> None:
    first_id: dict[str, int] = {}
    topics: dict[str, str] = {}
    floor = parts.geo.grid_floor_m if parts.geo is not None else None
    alt_floor = parts.geo.altitude_floor_m if parts.geo is not None else None
    for i, sub in parts.subscribers:
        at: Loc = ("subscribers", i)
        if sub.id in first_id:
            out.append(
                Finding(
                    SUBSCRIBERS,
                    (*at, "id"),
                    f"duplicate subscriber id {sub.id!r} (also subscribers[{first_id[sub.id]}])",
                )
            )
        else:
            first_id[sub.id] = i
        if parts.purpose_names is not None:
            for k, purpose in enumerate(sub.purposes):
                if purpose not in parts.purpose_names:
                    out.append(
                        Finding(
                            SUBSCRIBERS,
                            (*at, "purposes", k),
                            f"unknown purpose {purpose!r}{_suggest(purpose, parts.purpose_names)}",
                        )
                    )
        _check_authorisations(parts, sub, at, out)
        _check_legal_bases(sub, at, out)
        _check_view(parts, sub, at, floor, out)
        _check_altitude_floor(sub, at, alt_floor, out)
        _check_sensitive_data(parts, sub, at, out)
        _check_records(sub, at, out)
        topic = sub.view.delivery.topic
        if sub.view.delivery.channel is Channel.MQTT and topic is not None:
            if topic in topics and topics[topic] != sub.id:
                out.append(
                    Finding(
                        SUBSCRIBERS,
                        (*at, "view", "delivery", "topic"),
                        f"topic already used by subscriber {topics[topic]!r}: each subscriber "
                        "gets its own topic, so feeds cannot be joined",
                    )
                )
            topics.setdefault(topic, sub.id)


def _check_authorisations(parts: Parts, sub: Subscriber, at: Loc, out: list[Finding]) -> None:
    seen: set[str] = set()
    for k, auth in enumerate(sub.zone_authorisations):
        loc = (*at, "zone_authorisations", k, "zone")
        if parts.zone_ids is not None and auth.zone not in parts.zone_ids:
            out.append(
                Finding(
                    SUBSCRIBERS,
                    loc,
                    f"unknown zone {auth.zone!r}{_suggest(auth.zone, parts.zone_ids)}",
                )
            )
        if auth.zone in seen:
            out.append(Finding(SUBSCRIBERS, loc, f"zone {auth.zone!r} is authorised twice"))
        seen.add(auth.zone)


_CONTRACT_KINDS = (
    LegalBasisKind.STANDARD_CONTRACT,
    LegalBasisKind.CERTIFICATION,
    LegalBasisKind.GBA_STANDARD_CONTRACT,
)
_NEEDS_APPROVAL = (ExportDataClass.IMPORTANT_DATA, ExportDataClass.GEOGRAPHIC_DATA)


def _check_legal_bases(sub: Subscriber, at: Loc, out: list[Finding]) -> None:
    seen: set[str] = set()
    for k, basis in enumerate(sub.legal_bases):
        loc = (*at, "legal_bases", k)
        if basis.id in seen:
            out.append(Finding(SUBSCRIBERS, (*loc, "id"), f"duplicate legal basis id {basis.id!r}"))
        seen.add(basis.id)
        if basis.kind in _CONTRACT_KINDS:
            for c, covered in enumerate(basis.covers):
                if covered in _NEEDS_APPROVAL:
                    out.append(
                        Finding(
                            SUBSCRIBERS,
                            (*loc, "covers", c),
                            f"a {basis.kind} cannot cover {covered}: important data needs a "
                            "security assessment and geographic data an export approval",
                        )
                    )
        if basis.kind is LegalBasisKind.GBA_STANDARD_CONTRACT and not sub.hong_kong_or_macao:
            out.append(
                Finding(
                    SUBSCRIBERS,
                    (*loc, "kind"),
                    "a gba_standard_contract covers only recipients in Hong Kong or Macao that "
                    "store there (region and storage_region HK or MO; RULES.md §4)",
                )
            )
        if basis.kind is LegalBasisKind.GEODATA_EXPORT_APPROVAL and (
            ExportDataClass.GEOGRAPHIC_DATA not in basis.covers
        ):
            out.append(
                Finding(
                    SUBSCRIBERS,
                    (*loc, "covers"),
                    "a geodata_export_approval must cover geographic_data",
                )
            )


def _check_view(
    parts: Parts, sub: Subscriber, at: Loc, floor: float | None, out: list[Finding]
) -> None:
    view = sub.view
    vat: Loc = (*at, "view")
    if not view.categories and not view.fields:
        out.append(Finding(SUBSCRIBERS, vat, "the view allows nothing: list categories or fields"))
    if parts.field_names is not None:
        for k, name in enumerate(view.fields):
            if name in parts.field_names:
                continue
            if name in parts.aliases:
                hint = f": it is an alias of {parts.aliases[name]!r}; views name VSS paths"
            else:
                hint = _suggest(name, parts.field_names)
            out.append(Finding(SUBSCRIBERS, (*vat, "fields", k), f"unknown field {name!r}{hint}"))
    qualified = sub.has_qualification
    why = "needs a navigation_map_surveying qualification (RULES.md §1)"
    if view.raw_location:
        if not qualified:
            out.append(Finding(SUBSCRIBERS, (*vat, "location_precision_m"), f"0 (raw) {why}"))
        if not sub.mainland:
            out.append(
                Finding(
                    SUBSCRIBERS,
                    (*vat, "location_precision_m"),
                    "0 (raw) is only for a subscriber in mainland China that stores there",
                )
            )
    elif floor is not None and view.location_precision_m < floor and not qualified:
        out.append(
            Finding(
                SUBSCRIBERS,
                (*vat, "location_precision_m"),
                f"{view.location_precision_m:g} m is below the grid floor of {floor:g} m "
                "(rules.yaml geo.grid_floor_m) for a subscriber without a "
                "navigation_map_surveying qualification",
            )
        )
    if view.datum is OutputDatum.WGS84 and not qualified:
        out.append(Finding(SUBSCRIBERS, (*vat, "datum"), f"WGS-84 output {why}"))
    if view.datum is OutputDatum.GCJ02 and view.datum_transform not in available_transforms():
        out.append(
            Finding(
                SUBSCRIBERS,
                (*vat, "datum_transform"),
                f"unknown datum transform {view.datum_transform!r}; registered: "
                f"{', '.join(available_transforms())}",
            )
        )
    if view.altitude is AltitudeMode.KEEP and not qualified:
        out.append(Finding(SUBSCRIBERS, (*vat, "altitude"), f"keep {why}; use remove or coarsen"))
    if view.location_derived is DerivedMode.KEEP and not view.raw_location:
        out.append(
            Finding(
                SUBSCRIBERS,
                (*vat, "location_derived"),
                "keep (full precision) is only allowed beside raw positions: heading, speed "
                "and odometer at 1 Hz rebuild the path finer than the grid; use coarsen or "
                "suppress",
            )
        )
    if view.identifier is IdentifierMode.VIN and not _allows_vin(parts, sub):
        out.append(
            Finding(
                SUBSCRIBERS,
                (*vat, "identifier"),
                f"vin needs the view to allow {VIN} (category vehicle_id or the field itself)",
            )
        )


def _check_altitude_floor(
    sub: Subscriber, at: Loc, floor: float | None, out: list[Finding]
) -> None:
    """geo.altitude-coarsened: a coarsened altitude is never finer than the altitude floor
    for a subscriber without a qualification (RULES.md §1), like the grid floor."""
    step = sub.view.altitude_step_m
    if floor is None or step is None or step >= floor or sub.has_qualification:
        return
    out.append(
        Finding(
            SUBSCRIBERS,
            (*at, "view", "altitude_step_m"),
            f"{step:g} m is below the altitude floor of {floor:g} m (rules.yaml "
            "geo.altitude_floor_m) for a subscriber without a navigation_map_surveying "
            "qualification",
        )
    )


def _check_sensitive_data(parts: Parts, sub: Subscriber, at: Loc, out: list[Finding]) -> None:
    """xborder.basis-missing / xborder.important-data / view.important-data, decided from
    the policy alone: each view entry (category or field) that lets a sensitive or important
    field through is reported once, naming the fields (RULES.md §2, §4)."""
    # Only a kind the engine accepts for a PI tier covers sensitive PI (not, say, a geodata
    # export approval listing it; a GBA contract only for Hong Kong or Macao).
    kinds = {*_CONTRACT_KINDS, LegalBasisKind.SECURITY_ASSESSMENT}
    if not sub.hong_kong_or_macao:
        kinds.discard(LegalBasisKind.GBA_STANDARD_CONTRACT)
    covers = {c for b in sub.legal_bases if b.kind in kinds for c in b.covers}
    assessed = any(
        b.kind is LegalBasisKind.SECURITY_ASSESSMENT and ExportDataClass.IMPORTANT_DATA in b.covers
        for b in sub.legal_bases
    )
    entries: list[tuple[Loc, list[str]]] = [
        (
            (*at, "view", "categories", k),
            sorted(p for p, s in parts.fields.items() if s.category is c),
        )
        for k, c in enumerate(sub.view.categories)
    ]
    entries += [((*at, "view", "fields", k), [p]) for k, p in enumerate(sub.view.fields)]
    for loc, paths in entries:
        specs = [(p, parts.fields[p]) for p in paths if p in parts.fields]
        problems = []
        if sub.cross_border:
            spi = [p for p, s in specs if s.sensitive and (assessed or not s.important)]
            if spi and ExportDataClass.SENSITIVE_PERSONAL_INFORMATION not in covers:
                problems.append(
                    f"{', '.join(spi)}: sensitive personal information (fields.yaml) goes "
                    "abroad only under a legal basis covering sensitive_personal_information "
                    "(RULES.md §4)"
                )
            important = [p for p, s in specs if s.important]
            if important and not assessed:
                problems.append(
                    f"{', '.join(important)}: important data (images of faces or licence "
                    "plates) goes abroad only under a security_assessment covering "
                    "important_data (RULES.md §2)"
                )
        else:
            unnamed = [
                p for p, s in specs if s.important and not set(s.purposes) & set(sub.purposes)
            ]
            if unnamed:
                problems.append(
                    f"{', '.join(unnamed)}: important data (images of faces or licence plates) "
                    "reaches a mainland subscriber only for a purpose the field names "
                    "(fields.yaml purposes); none of this subscriber's purposes is named "
                    "(RULES.md §2)"
                )
        out.extend(Finding(SUBSCRIBERS, loc, message) for message in problems)


def _check_records(sub: Subscriber, at: Loc, out: list[Finding]) -> None:
    """xborder.impact-assessment: a cross-border subscriber records its PI impact
    assessment (PIPL art. 55-56); a navigation-map subscriber (one holding the surveying
    qualification) records its map review (MNR notice of 26 July 2024)."""
    if sub.cross_border and sub.impact_assessment is None:
        out.append(
            Finding(
                SUBSCRIBERS,
                (*at, "id"),
                "a cross-border subscriber needs impact_assessment (reference, date): no "
                "personal information goes abroad without a PI protection impact assessment "
                "(PIPL art. 55-56, RULES.md §4)",
            )
        )
    if sub.has_qualification and sub.map_review is None:
        out.append(
            Finding(
                SUBSCRIBERS,
                (*at, "qualifications"),
                "a navigation-map subscriber needs map_review (reference, date) of its maps "
                "(MNR notice of 26 July 2024, RULES.md §1)",
            )
        )


def _allows_vin(parts: Parts, sub: Subscriber) -> bool:
    if VIN in sub.view.fields:
        return True
    spec = parts.fields.get(VIN)
    category = spec.category if spec is not None else FieldCategory.VEHICLE_ID
    return category in sub.view.categories


# --- consents.yaml ----------------------------------------------------------------------


def _check_consents(parts: Parts, out: list[Finding]) -> None:
    first_id: dict[str, int] = {}
    for i, consent in parts.consents:
        at: Loc = ("consents", i)
        if consent.id in first_id:
            out.append(
                Finding(
                    CONSENTS,
                    (*at, "id"),
                    f"duplicate consent id {consent.id!r} (also consents[{first_id[consent.id]}])",
                )
            )
        else:
            first_id[consent.id] = i
        if parts.purpose_names is not None and consent.purpose not in parts.purpose_names:
            out.append(
                Finding(
                    CONSENTS,
                    (*at, "purpose"),
                    f"unknown purpose {consent.purpose!r} (purposes are listed in "
                    f"{SUBSCRIBERS}){_suggest(consent.purpose, parts.purpose_names)}",
                )
            )
        if consent.expires <= consent.granted:
            out.append(Finding(CONSENTS, (*at, "expires"), "must be later than granted"))
        if consent.revoked is not None and consent.revoked < consent.granted:
            out.append(Finding(CONSENTS, (*at, "revoked"), "must not be earlier than granted"))


# --- rules.yaml -------------------------------------------------------------------------


def _check_rules(parts: Parts, out: list[Finding]) -> None:
    if parts.crossborder is not None:
        for name in ("personal_information", "sensitive_personal_information"):
            tier = getattr(parts.crossborder, name)
            if tier.assessment_from <= tier.contract_from:
                out.append(
                    Finding(
                        RULES,
                        ("crossborder", name, "assessment_from"),
                        f"must be greater than contract_from ({tier.contract_from})",
                    )
                )
    if parts.catalogue_ids is None:
        return
    known = frozenset(str(r) for r in RuleId)
    for rule_id in sorted(parts.catalogue_ids - known):
        out.append(
            Finding(
                RULES,
                ("catalogue", rule_id),
                f"unknown rule id{_suggest(rule_id, known)}; decisions cite only the ids "
                "of gateway.policy.rules.RuleId",
            )
        )
    for rule_id in sorted(known - parts.catalogue_ids):
        out.append(
            Finding(RULES, ("catalogue",), f"missing rule {rule_id}: every RuleId is described")
        )


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
