"""Schema helpers the decision engine relies on: expiry days, consent windows, scopes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.model import Datum
from gateway.policy import load_bundle
from gateway.policy.schema import (
    BEIJING,
    Consent,
    ExportDataClass,
    OutputDatum,
    beijing_date,
)


def test_beijing_date_of_instants() -> None:
    # 16:30 UTC on 31 December is already 1 January in Beijing
    assert beijing_date(datetime(2025, 12, 31, 16, 30, tzinfo=UTC)) == date(2026, 1, 1)
    assert beijing_date(datetime(2025, 12, 31, 15, 59, tzinfo=UTC)) == date(2025, 12, 31)
    assert beijing_date(datetime(2025, 12, 31, 16, 0, tzinfo=UTC).timestamp()) == date(2026, 1, 1)
    with pytest.raises(ValueError, match="naive"):
        beijing_date(datetime(2025, 1, 1))


def test_consent_window_and_revocation() -> None:
    granted = datetime(2025, 1, 1, tzinfo=BEIJING)
    consent = Consent(
        id="c-1",
        vin="1M8GDM9AXKP042788",
        purpose="p",
        granted=granted,
        expires=granted + timedelta(days=10),
        revoked=granted + timedelta(days=5),
    )
    assert not consent.active_at(granted - timedelta(seconds=1))
    assert consent.active_at(granted)
    assert consent.active_at(granted + timedelta(days=5) - timedelta(seconds=1))
    assert not consent.active_at(granted + timedelta(days=5))
    unrevoked = consent.model_copy(update={"revoked": None})
    assert unrevoked.active_at(granted + timedelta(days=9))
    assert not unrevoked.active_at(granted + timedelta(days=10))


def test_expiry_days_are_inclusive() -> None:
    mapco = load_bundle().subscribers["mapco-nav"]
    last = mapco.qualifications[0].expires
    assert mapco.qualified_on(last)
    assert not mapco.qualified_on(last + timedelta(days=1))
    zone = mapco.zone_authorisations[0]
    assert mapco.authorised_zones_on(zone.expires) == {zone.zone}
    assert mapco.authorised_zones_on(zone.expires + timedelta(days=1)) == frozenset()


def test_scopes_and_legal_bases() -> None:
    subs = load_bundle().subscribers
    oem = subs["oem-hq-de"]
    assert oem.cross_border and not oem.mainland
    basis = oem.legal_bases[0]
    assert oem.legal_bases_on(basis.expires, ExportDataClass.PERSONAL_INFORMATION) == (basis,)
    assert oem.legal_bases_on(basis.expires, ExportDataClass.GEOGRAPHIC_DATA) == ()
    assert oem.legal_bases_on(basis.expires + timedelta(days=1), basis.covers[0]) == ()
    assert subs["insureco-ubi"].mainland  # CN-SH, stored in CN-GD
    assert OutputDatum.GCJ02.datum is Datum.GCJ02
    assert OutputDatum.WGS84.datum is Datum.WGS84
