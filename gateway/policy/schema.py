"""The policy bundle's file formats, as closed, typed, immutable pydantic models.

One document model per file (:class:`FieldsDoc`, :class:`SubscribersDoc`,
:class:`ConsentsDoc`, :class:`RulesDoc`); zones are GeoJSON, read by
:mod:`gateway.geo.zones`. Every model forbids unknown keys and is frozen. These models check
each value on its own (types, ranges, code formats); checks that need more than one value or
more than one file live in :mod:`gateway.policy.checks`.

Scalars are read strictly: a number field does not take ``true`` or ``"50"``, a date field
does not take a number. Dates (``expires`` of qualifications, authorisations and legal bases)
are inclusive calendar days in Beijing time (UTC+8): a certificate expiring 2026-06-30 is
valid until 2026-06-30T24:00+08:00. Consent times are instants and must carry a UTC offset.
Expiry is evaluated when a decision is made, never at load time.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import model_validator as _model_validator

from gateway.geo.grid import MAX_SIZE_M, MIN_SIZE_M
from gateway.model import Datum
from gateway.policy.codes import (
    is_hk_or_mo,
    is_mainland,
    is_valid_region,
    is_valid_vin,
    vin_check_digit,
)

__all__ = [
    "BEIJING",
    "AltitudeMode",
    "Channel",
    "Coarsen",
    "Consent",
    "ConsentsDoc",
    "CrossBorderRules",
    "DataType",
    "Delivery",
    "DerivedMode",
    "ExportDataClass",
    "FieldCategory",
    "FieldSpec",
    "FieldsDoc",
    "GeoRules",
    "IdentifierMode",
    "ImpactAssessment",
    "IngestRules",
    "LegalBasis",
    "LegalBasisKind",
    "MapReview",
    "NoConsentFallback",
    "OutputDatum",
    "Qualification",
    "QualificationKind",
    "RetentionRules",
    "RuleSpec",
    "RulesDoc",
    "Subscriber",
    "SubscribersDoc",
    "Tier",
    "TripRules",
    "View",
    "ZoneAuthorisation",
    "beijing_date",
    "counting_year",
]

BEIJING = timezone(timedelta(hours=8), "Beijing")
"""China Standard Time, UTC+8, no daylight saving: expiry days and counting years use it."""


def beijing_date(when: datetime | float) -> date:
    """The calendar day in Beijing time of an aware datetime or a Unix time in seconds."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError("a naive datetime has no defined Beijing date")
        return when.astimezone(BEIJING).date()
    return datetime.fromtimestamp(when, UTC).astimezone(BEIJING).date()


def counting_year(offset_hours: int, when: float) -> int:
    """The calendar year cross-border counts are kept under at Unix time ``when``
    (``crossborder.year_utc_offset_hours``; Beijing time, +8, by default). Every reader and
    writer of the counts uses this one function."""
    return (
        datetime.fromtimestamp(when, UTC).astimezone(timezone(timedelta(hours=offset_hours))).year
    )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- strict scalars ---------------------------------------------------------------------


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number")
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected a whole number")
    return value


def _day(value: Any) -> Any:
    if isinstance(value, datetime) or not isinstance(value, (date, str)):
        raise ValueError("expected a date (YYYY-MM-DD)")
    return value


def _region(value: str) -> str:
    if not is_valid_region(value):
        raise ValueError(
            f"{value!r} is not an ISO 3166 region code "
            "(a country such as CN, HK, DE, or a subdivision such as CN-SH, DE-BY)"
        )
    return value


def _vin(value: str) -> str:
    if not is_valid_vin(value):
        try:
            expected = vin_check_digit(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a VIN: {exc}") from None
        raise ValueError(
            f"{value!r} is not a valid VIN: check digit (position 9) is {value[8]!r}, "
            f"expected {expected!r}"
        )
    return value


def _precision(value: float) -> float:
    if value != 0 and not MIN_SIZE_M <= value <= MAX_SIZE_M:
        raise ValueError(f"is 0 (raw) or between {MIN_SIZE_M:g} and {MAX_SIZE_M:g} metres")
    return value


_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError(
            f"{value!r} is not an id: 1-63 characters of a-z, 0-9 and '-', not starting with '-'"
        )
    return value


Number = Annotated[float, BeforeValidator(_number)]
PositiveNumber = Annotated[float, BeforeValidator(_number), Field(gt=0)]
NonNegativeNumber = Annotated[float, BeforeValidator(_number), Field(ge=0)]
Count = Annotated[int, BeforeValidator(_integer), Field(ge=1)]
Precision = Annotated[float, BeforeValidator(_number), AfterValidator(_precision)]
Day = Annotated[date, BeforeValidator(_day)]
Region = Annotated[str, AfterValidator(_region)]
Vin = Annotated[str, AfterValidator(_vin)]
Id = Annotated[str, AfterValidator(_id)]
Text = Annotated[str, Field(min_length=1)]


# --- fields.yaml ------------------------------------------------------------------------


class FieldCategory(StrEnum):
    """What a signal is, which decides how every view treats it."""

    LOCATION = "location"
    """The position (latitude, longitude): gridded, transformed, zone-masked."""
    LOCATION_DERIVED = "location_derived"
    """Heading, speed, odometer, acceleration, yaw rate...: coarsened or suppressed with the
    position, never shared at full precision beside a coarse position (dead reckoning)."""
    ALTITUDE = "altitude"
    """Height: removed, coarsened or kept per view."""
    TIME = "time"
    """Timestamps: truncated to the view's time precision."""
    VEHICLE_ID = "vehicle_id"
    """The VIN: replaced by a pseudonym unless the view allows it."""
    PERSONAL = "personal"
    """About the people in the vehicle (driver identity, occupancy, biometrics)."""
    IMAGERY = "imagery"
    """Camera images and video: surveying data and possibly faces and licence plates."""
    VEHICLE_STATE = "vehicle_state"
    """Doors, lights, body and cabin state."""
    ENERGY = "energy"
    """Battery, charging, range."""
    DIAGNOSTICS = "diagnostics"
    """OBD values and trouble codes."""


class DataType(StrEnum):
    """VSS data types the gateway knows."""

    BOOLEAN = "boolean"
    STRING = "string"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    UINT64 = "uint64"
    FLOAT = "float"
    DOUBLE = "double"
    STRING_ARRAY = "string[]"

    @property
    def numeric(self) -> bool:
        """True for the integer and floating-point types."""
        return self not in (DataType.BOOLEAN, DataType.STRING, DataType.STRING_ARRAY)

    @property
    def integer_range(self) -> tuple[int, int] | None:
        """``(min, max)`` of an integer type, both included; ``None`` for other types."""
        return _INT_RANGES.get(self)


_INT_RANGES = {
    DataType.INT8: (-(2**7), 2**7 - 1),
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT8: (0, 2**8 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


class Coarsen(_Model):
    """How to coarsen a ``location_derived`` value: round to the nearest ``step``.

    With ``wrap`` (e.g. 360 for a heading) values are taken modulo ``wrap`` after
    rounding, so 359° with a 45° step becomes 0°, not 360°.
    """

    step: PositiveNumber
    wrap: PositiveNumber | None = None

    @_model_validator(mode="after")
    def _wrap_is_multiple_of_step(self) -> Coarsen:
        if self.wrap is not None:
            ratio = self.wrap / self.step
            if abs(ratio - round(ratio)) > 1e-9:
                raise ValueError("wrap must be a whole multiple of step")
        return self


class FieldSpec(_Model):
    """One signal the gateway knows: its category, VSS data type and unit.

    ``sensitive``: sensitive personal information (PIPL art. 28: biometrics, health,
    identity numbers, images of people); an export carrying it counts toward the
    sensitive-PI tier (RULES.md §4). Positions are sensitive by rule and need no flag.
    ``important``: important data (automobile provisions art. 3: images with faces or
    licence plates, and references to them such as frame URIs): never abroad without a
    security assessment covering important data, and to a mainland subscriber only for one
    of ``purposes`` (RULES.md §2).
    """

    category: FieldCategory
    datatype: DataType
    unit: str | None = None
    description: str = ""
    coarsen: Coarsen | None = None
    sensitive: bool = False
    important: bool = False
    purposes: tuple[str, ...] = ()
    links_trips: bool = False
    """The value carries over from one trip to the next (odometer, energy levels): it links
    trips, so it never goes beside a per-trip pseudonym."""


class FieldsDoc(_Model):
    """``fields.yaml``: the known signals by VSS path, and OEM names mapped to them."""

    fields: dict[str, FieldSpec]
    aliases: dict[str, str] = Field(default_factory=dict)


# --- subscribers.yaml -------------------------------------------------------------------


class QualificationKind(StrEnum):
    """Kinds of qualification the rules ask for."""

    NAVIGATION_MAP_SURVEYING = "navigation_map_surveying"
    """Navigation electronic map surveying qualification (导航电子地图制作测绘资质)."""


class Qualification(_Model):
    """A qualification a subscriber holds, with its certificate and last valid day."""

    kind: QualificationKind
    certificate: Text
    issuer: str = ""
    expires: Day

    def valid_on(self, day: date) -> bool:
        """True if ``day`` (a Beijing-time date) is not after the expiry day."""
        return day <= self.expires


class ZoneAuthorisation(_Model):
    """Permission to receive located data inside one restricted zone."""

    zone: Text
    reference: Text
    expires: Day

    def valid_on(self, day: date) -> bool:
        """True if ``day`` (a Beijing-time date) is not after the expiry day."""
        return day <= self.expires


class LegalBasisKind(StrEnum):
    """The legal bases for sending data out of mainland China."""

    SECURITY_ASSESSMENT = "security_assessment"
    """CAC security assessment (数据出境安全评估)."""
    STANDARD_CONTRACT = "standard_contract"
    """Filed standard contract for personal information export (个人信息出境标准合同)."""
    CERTIFICATION = "certification"
    """Personal information protection certification (个人信息保护认证)."""
    GEODATA_EXPORT_APPROVAL = "geodata_export_approval"
    """Approval to provide geographic data abroad (地理信息数据对外提供审批)."""
    GBA_STANDARD_CONTRACT = "gba_standard_contract"
    """Greater Bay Area standard contract (粤港澳大湾区个人信息跨境流动标准合同, 2023
    implementation guidelines): only for recipients in Hong Kong or Macao."""


class ExportDataClass(StrEnum):
    """Classes of exported data a legal basis may cover."""

    PERSONAL_INFORMATION = "personal_information"
    SENSITIVE_PERSONAL_INFORMATION = "sensitive_personal_information"
    IMPORTANT_DATA = "important_data"
    GEOGRAPHIC_DATA = "geographic_data"


class LegalBasis(_Model):
    """A recorded legal basis for export: what it is, what it covers, until when."""

    kind: LegalBasisKind
    id: Text
    covers: tuple[ExportDataClass, ...] = Field(min_length=1)
    expires: Day

    def valid_on(self, day: date) -> bool:
        """True if ``day`` (a Beijing-time date) is not after the expiry day."""
        return day <= self.expires


class ImpactAssessment(_Model):
    """A personal-information protection impact assessment (PIPL art. 55-56) of an export
    to one recipient: its reference and the day it was completed (Beijing time)."""

    reference: Text
    date: Day


class MapReview(_Model):
    """The map review (地图审核) of a navigation-map subscriber's maps: its reference and
    the day it was granted (MNR notice of 26 July 2024: rigorous review of navigation maps)."""

    reference: Text
    date: Day


class OutputDatum(StrEnum):
    """The datum a view's coordinates are written in; always stated in the output."""

    WGS84 = "WGS-84"
    GCJ02 = "GCJ-02"

    @property
    def datum(self) -> Datum:
        """The matching :class:`gateway.model.Datum` code."""
        return Datum.WGS84 if self is OutputDatum.WGS84 else Datum.GCJ02


class IdentifierMode(StrEnum):
    """What a view shows in place of the vehicle identifier."""

    KEYED_PSEUDONYM = "keyed_pseudonym"
    """A keyed hash of the VIN, different for each subscriber, stable over time."""
    TRIP_PSEUDONYM = "trip_pseudonym"
    """A pseudonym that changes with every trip: trips cannot be linked."""
    VIN = "vin"
    """The VIN itself (only if the view allows the VIN field)."""


class AltitudeMode(StrEnum):
    """Altitude handling of a view."""

    REMOVE = "remove"
    COARSEN = "coarsen"
    KEEP = "keep"


class DerivedMode(StrEnum):
    """How a view treats ``location_derived`` fields beside a coarsened position."""

    COARSEN = "coarsen"
    """Round each to its field's ``coarsen`` step; fields without a step are suppressed."""
    SUPPRESS = "suppress"
    KEEP = "keep"
    """Full precision: only beside raw positions."""


class NoConsentFallback(StrEnum):
    """What a view gets for a trajectory without the vehicle's consent for its purpose."""

    DROP_LOCATION = "drop_location"
    """Remove the position and every location-derived field; the rest may go."""
    TRIP_PSEUDONYM = "trip_pseudonym"
    """Keep the (coarsened) position under a per-trip pseudonym that cannot link trips."""


class Channel(StrEnum):
    """How a subscriber receives its view."""

    MQTT = "mqtt"
    HTTP_STREAM = "http_stream"
    WEBHOOK = "webhook"


MAX_BATCH_VIEWS = 1000
"""Most views one batch carries (~0.5 MB of JSON at the views' usual size)."""
MAX_LINGER_MS = 5000


class Delivery(_Model):
    """Delivery channel: ``mqtt`` needs a ``topic``, ``webhook`` an https ``url``.

    ``batch_max_views`` > 1 opts into batches: one MQTT message, webhook POST or SSE event
    carries up to that many views as a JSON array (each view keeps its own ``message_id``),
    waiting at most ``linger_ms`` for a batch to fill (:mod:`gateway.deliver.batch`)."""

    channel: Channel
    topic: Text | None = None
    url: Text | None = None
    batch_max_views: Annotated[int, BeforeValidator(_integer), Field(ge=1, le=MAX_BATCH_VIEWS)] = 1
    linger_ms: Annotated[int, BeforeValidator(_integer), Field(ge=0, le=MAX_LINGER_MS)] = 0

    @_model_validator(mode="after")
    def _channel_settings(self) -> Delivery:
        if self.channel is Channel.MQTT:
            if self.topic is None or self.url is not None:
                raise ValueError("channel mqtt takes a topic and no url")
            if any(c in self.topic for c in "#+\0"):
                raise ValueError("an mqtt topic to publish on has no wildcards (+, #)")
        elif self.channel is Channel.WEBHOOK:
            if self.url is None or self.topic is not None:
                raise ValueError("channel webhook takes a url and no topic")
            if not self.url.startswith("https://"):
                raise ValueError("a webhook url must start with https://")
        elif self.topic is not None or self.url is not None:
            raise ValueError("channel http_stream takes neither topic nor url")
        if self.linger_ms and self.batch_max_views == 1:
            raise ValueError("linger_ms waits for a batch: it needs batch_max_views above 1")
        return self

    @property
    def batched(self) -> bool:
        """True if this subscriber's views travel in batches."""
        return self.batch_max_views > 1


class View(_Model):
    """What one subscriber receives: which fields, at which precision, in which form."""

    categories: tuple[FieldCategory, ...] = ()
    fields: tuple[str, ...] = ()
    location_precision_m: Precision
    datum: OutputDatum
    datum_transform: Text = "gcj02"
    time_precision_s: PositiveNumber
    min_interval_s: NonNegativeNumber
    identifier: IdentifierMode
    trip_trim_m: NonNegativeNumber
    altitude: AltitudeMode
    altitude_step_m: PositiveNumber | None = None
    location_derived: DerivedMode
    delivery: Delivery
    no_consent: NoConsentFallback

    @_model_validator(mode="after")
    def _consistent(self) -> View:
        if (self.altitude is AltitudeMode.COARSEN) != (self.altitude_step_m is not None):
            raise ValueError("altitude_step_m is required with altitude: coarsen, and only then")
        return self

    @property
    def raw_location(self) -> bool:
        """True if positions are shared as received (no grid)."""
        return self.location_precision_m == 0


class Subscriber(_Model):
    """A platform that receives a view: who it is, where it is, what it may receive."""

    id: Id
    name: Text
    region: Region
    storage_region: Region
    purposes: tuple[str, ...] = Field(min_length=1)
    qualifications: tuple[Qualification, ...] = ()
    zone_authorisations: tuple[ZoneAuthorisation, ...] = ()
    legal_bases: tuple[LegalBasis, ...] = ()
    impact_assessment: ImpactAssessment | None = None
    map_review: MapReview | None = None
    view: View

    @property
    def mainland(self) -> bool:
        """True if both the subscriber and its storage are in mainland China."""
        return is_mainland(self.region) and is_mainland(self.storage_region)

    @property
    def cross_border(self) -> bool:
        """True if the subscriber or its storage is outside mainland China (RULES.md §4)."""
        return not self.mainland

    @property
    def hong_kong_or_macao(self) -> bool:
        """True if both the subscriber and its storage are in Hong Kong or Macao (the
        recipients a Greater Bay Area standard contract can cover)."""
        return is_hk_or_mo(self.region) and is_hk_or_mo(self.storage_region)

    def assessed_on(self, day: date) -> bool:
        """True if a PI impact assessment completed on or before ``day`` is recorded."""
        return self.impact_assessment is not None and self.impact_assessment.date <= day

    @property
    def has_qualification(self) -> bool:
        """True if a navigation-map surveying qualification is recorded (expired or not)."""
        return any(
            q.kind is QualificationKind.NAVIGATION_MAP_SURVEYING for q in self.qualifications
        )

    def qualified_on(self, day: date) -> bool:
        """True if a navigation-map surveying qualification is valid on ``day``."""
        return any(
            q.kind is QualificationKind.NAVIGATION_MAP_SURVEYING and q.valid_on(day)
            for q in self.qualifications
        )

    def authorised_zones_on(self, day: date) -> frozenset[str]:
        """Ids of the zones this subscriber holds a valid authorisation for on ``day``."""
        return frozenset(a.zone for a in self.zone_authorisations if a.valid_on(day))

    def legal_bases_on(self, day: date, covering: ExportDataClass) -> tuple[LegalBasis, ...]:
        """The legal bases valid on ``day`` that cover ``covering``."""
        return tuple(b for b in self.legal_bases if covering in b.covers and b.valid_on(day))


class SubscribersDoc(_Model):
    """``subscribers.yaml``: the purposes catalogue and every subscriber."""

    purposes: dict[str, Text]
    subscribers: tuple[Subscriber, ...]


# --- consents.yaml ----------------------------------------------------------------------


class Consent(_Model):
    """A vehicle's consent for one purpose, from ``granted`` until ``expires`` or revocation."""

    id: Id
    vin: Vin
    purpose: Text
    granted: AwareDatetime
    expires: AwareDatetime
    revoked: AwareDatetime | None = None

    def active_at(self, when: datetime) -> bool:
        """True if granted, not expired and not revoked at ``when`` (an aware datetime)."""
        if when < self.granted or when >= self.expires:
            return False
        return self.revoked is None or when < self.revoked


class ConsentsDoc(_Model):
    """``consents.yaml``: the consents that seed the consent state of the store."""

    consents: tuple[Consent, ...] = ()


# --- rules.yaml -------------------------------------------------------------------------


class Tier(_Model):
    """Distinct-person counts from which an export needs a contract or an assessment."""

    contract_from: Count
    assessment_from: Count


class CrossBorderRules(_Model):
    """Cross-border thresholds (RULES.md §4), counted per calendar year."""

    personal_information: Tier
    sensitive_personal_information: Tier
    ciio: bool
    year_utc_offset_hours: Annotated[int, BeforeValidator(_integer), Field(ge=-12, le=14)]
    vehicle_pi_over_100k_important: bool
    """Automobile provisions art. 3: PI of more than 100,000 people is important data, so an
    export of PI beyond 100,000 people needs a security assessment, not a standard contract
    (the conservative reading of RULES.md §2; a documented legal position)."""


class GeoRules(_Model):
    """Geographic defaults (RULES.md §1)."""

    grid_floor_m: PositiveNumber
    altitude_floor_m: PositiveNumber
    """Finest altitude step for a subscriber without a valid qualification (§1)."""


class RetentionRules(_Model):
    """How long records are kept (RULES.md §5); the legal minima are the lower bounds."""

    audit_years: Annotated[int, BeforeValidator(_integer), Field(ge=3)]
    network_log_months: Annotated[int, BeforeValidator(_integer), Field(ge=6)]
    outbox_days: PositiveNumber
    """Views (delivered or not) are deleted this long after they were decided (PIPL art. 47)."""
    deadletter_days: PositiveNumber
    """Unusable inputs (raw payloads) are deleted this long after they arrived."""
    vehicle_state_days: PositiveNumber
    """A vehicle's decision state is deleted after this long without a record from it."""


class TripRules(_Model):
    """How records are split into trips (for trimming and per-trip pseudonyms)."""

    split_gap_s: PositiveNumber
    pseudonym_trim_m: NonNegativeNumber = 200.0
    """The least trip trim (start and end) of records sent under a per-trip pseudonym: where
    one trip ends the next begins, so untrimmed trip ends would link the trips."""


class IngestRules(_Model):
    """Limits on input."""

    dedup_window_s: PositiveNumber
    max_payload_bytes: Count
    max_records_per_payload: Count
    verify_vin_check_digit: Annotated[bool, Field(strict=True)]
    # a future time silences down-sampled views of its vehicle until then: at most a day
    max_future_s: Annotated[float, BeforeValidator(_number), Field(gt=0, le=86400)]
    max_age_s: PositiveNumber
    oversize_keep_bytes: Annotated[int, BeforeValidator(_integer), Field(ge=0, le=65536)]


class RuleSpec(_Model):
    """A rule a decision may cite: where it comes from and what it says."""

    section: Annotated[int, BeforeValidator(_integer), Field(ge=1, le=6)]
    description: Text


class RulesDoc(_Model):
    """``rules.yaml``: thresholds and defaults, and the catalogue of rule ids."""

    geo: GeoRules
    crossborder: CrossBorderRules
    retention: RetentionRules
    trips: TripRules
    ingest: IngestRules
    catalogue: dict[str, RuleSpec]
