"""Scenario files: what mix of traffic the fleet simulator produces.

A scenario is a YAML file validated by a closed pydantic model (unknown keys are errors).
Every problem is reported as :class:`gateway.errors.ConfigError` naming the file, the line
and the dotted field, all problems at once. Every section is optional; an empty file (or no
file) is a clean fleet: every message valid, every vehicle consenting, no zone crossings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.located_yaml import read_yaml, validation_problems

__all__ = [
    "Batches",
    "Consent",
    "Faults",
    "LatLon",
    "Network",
    "Scenario",
    "Trips",
    "ZoneCrossing",
    "load_scenario",
]

Share = Annotated[float, Field(ge=0.0, le=1.0)]


def _min_max(value: tuple[Any, Any]) -> tuple[Any, Any]:
    if value[0] > value[1]:
        raise ValueError("must be [min, max] with min <= max")
    return value


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatLon(_Closed):
    """A WGS-84 point."""

    lat: Annotated[float, Field(ge=-90.0, le=90.0)]
    lon: Annotated[float, Field(ge=-180.0, le=180.0)]


class ZoneCrossing(_Closed):
    """Which vehicles drive through restricted zones, and which zones those are.

    ``share`` of the vehicles (rounded to a whole number) start just outside a zone on a road
    leading through it; every other vehicle keeps ``clearance_m`` (plus each zone's own
    ``buffer_m``) away from every zone for the whole run. ``zones`` are GeoJSON files
    (relative paths are relative to the scenario file); ``None`` means the default policy
    bundle's ``zones*.geojson``. ``targets`` are extra points crossing vehicles drive to.
    """

    share: Share = 0.0
    zones: list[Path] | None = None
    targets: list[LatLon] = []
    clearance_m: Annotated[float, Field(ge=0.0, le=5000.0)] = 100.0


class Faults(_Closed):
    """Per-message probabilities of faulty traffic.

    ``malformed``, ``spoofed_vin`` and ``out_of_order`` are exclusive (their sum is at most
    1); ``duplicate`` applies on top: a message, whatever its kind, is sent again later
    with the same bytes and ``msg_id``.
    """

    malformed: Share = 0.0
    duplicate: Share = 0.0
    out_of_order: Share = 0.0
    spoofed_vin: Share = 0.0

    @model_validator(mode="after")
    def _exclusive(self) -> Self:
        if self.malformed + self.spoofed_vin + self.out_of_order > 1.0:
            raise ValueError("malformed + spoofed_vin + out_of_order must not exceed 1")
        return self


class Batches(_Closed):
    """``share`` of the messages carrying samples are JSON arrays of ``size`` samples."""

    share: Share = 0.0
    size: tuple[Annotated[int, Field(ge=2, le=1000)], Annotated[int, Field(ge=2, le=1000)]] = (
        2,
        10,
    )

    @field_validator("size")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _min_max(value)


class Consent(_Closed):
    """``share`` of the VINs (rounded to a whole number) recorded as consenting."""

    share: Share = 1.0


Seconds = Annotated[float, Field(gt=0.0, le=86_400.0)]


class Trips(_Closed):
    """Trip and key-off pause lengths, seconds, each drawn uniformly from ``[min, max]``."""

    duration_s: tuple[Seconds, Seconds] = (600.0, 1800.0)
    pause_s: tuple[Seconds, Seconds] = (60.0, 300.0)

    @field_validator("duration_s", "pause_s")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _min_max(value)


class Network(_Closed):
    """The ring-and-radial road network: centre, ring radii (km), number of radial roads."""

    center: LatLon = LatLon(lat=31.23, lon=121.47)
    rings_km: Annotated[list[Annotated[float, Field(gt=0.2, le=200.0)]], Field(min_length=1)] = [
        2.5,
        6.0,
        10.0,
        15.0,
        22.0,
    ]
    radials: Annotated[int, Field(ge=3, le=64)] = 12


class Scenario(_Closed):
    """The whole scenario; see the sections' docstrings and ``simulators/README.md``."""

    zone_crossing: ZoneCrossing = ZoneCrossing()
    faults: Faults = Faults()
    batches: Batches = Batches()
    consent: Consent = Consent()
    trips: Trips = Trips()
    network: Network = Network()


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario file.

    Relative ``zone_crossing.zones`` paths are resolved against the file's directory.
    Raises :class:`ConfigError` with one :class:`Problem` (file, line, field path) per
    invalid value, unknown or duplicate key, or YAML syntax error, in file order.
    """
    path = Path(path)
    source, problems = read_yaml(path, str(path))
    if source is None or problems:
        raise ConfigError(problems)
    if not isinstance(source.data, dict):
        raise ConfigError(source.problem((), "a scenario must be a mapping of sections"))
    try:
        scenario = Scenario.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(source, exc)) from exc
    zones = scenario.zone_crossing.zones
    if zones is not None:
        resolved = [z if z.is_absolute() else path.parent / z for z in zones]
        scenario = scenario.model_copy(
            update={"zone_crossing": scenario.zone_crossing.model_copy(update={"zones": resolved})}
        )
    return scenario
