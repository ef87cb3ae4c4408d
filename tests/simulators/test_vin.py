"""VIN check digits against a reference written independently of the module."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.vin import (
    CHINESE_WMIS,
    VIN_ALPHABET,
    check_digit,
    is_valid_vin,
    random_vins,
    vin_for_id,
)


def reference_check_digit(vin: str) -> str:
    """ISO 3779 / GB 16735 check digit, from the arithmetic rule of the transliteration
    table (A–I and J–R count 1–9, S–Z count 2–9) rather than the table itself."""
    weights = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2]
    total = 0
    for c, w in zip(vin, weights, strict=True):
        if c.isdigit():
            value = int(c)
        elif c <= "R":
            value = (ord(c) - ord("A")) % 9 + 1
        else:
            value = ord(c) - ord("S") + 2
        total += value * w
    r = total % 11
    return "X" if r == 10 else str(r)


@pytest.mark.parametrize("vin", ["1M8GDM9AXKP042788", "11111111111111111"])
def test_known_valid_vins(vin: str) -> None:
    assert check_digit(vin) == vin[8]
    assert reference_check_digit(vin) == vin[8]
    assert is_valid_vin(vin)


def test_check_digit_x_and_ignores_position_9() -> None:
    assert check_digit("1M8GDM9A0KP042788") == "X"
    assert check_digit("1M8GDM9A5KP042788") == "X"


@pytest.mark.parametrize(
    "vin",
    [
        "1M8GDM9A1KP042788",  # wrong check digit
        "1M8GDM9AXKP042789",  # a changed serial breaks the check digit
        "1M8GDM9AXKP04278",  # 16 characters
        "1M8GDM9AXKP0427888",  # 18 characters
        "1M8GDM9AXKP04278I",  # I is not a VIN character
        "1m8gdm9axkp042788",  # lower case is not the canonical form
    ],
)
def test_invalid_vins(vin: str) -> None:
    assert not is_valid_vin(vin)


def test_check_digit_rejects_non_vin_characters() -> None:
    with pytest.raises(ValueError, match="17 characters from 0-9 and A-Z without I, O and Q"):
        check_digit("1M8GDM9AXKP04278O")
    with pytest.raises(ValueError, match="17 characters from 0-9 and A-Z without I, O and Q"):
        check_digit("SHORT")


vin_bodies = st.text(alphabet=VIN_ALPHABET, min_size=17, max_size=17)


@settings(max_examples=300)
@given(vin_bodies)
def test_check_digit_matches_reference(body: str) -> None:
    assert check_digit(body) == reference_check_digit(body)
    fixed = body[:8] + check_digit(body) + body[9:]
    assert is_valid_vin(fixed)


def test_random_vins_are_valid_distinct_chinese_and_seeded() -> None:
    vins = random_vins(np.random.default_rng(7), 500)
    assert len(set(vins)) == 500
    for vin in vins:
        assert is_valid_vin(vin)
        assert reference_check_digit(vin) == vin[8]
        assert vin[:3] in CHINESE_WMIS
        assert vin[11:].isdigit()
    assert random_vins(np.random.default_rng(7), 500) == vins
    assert random_vins(np.random.default_rng(8), 500) != vins


def test_vin_for_id_keeps_valid_vins() -> None:
    assert vin_for_id("1M8GDM9AXKP042788") == "1M8GDM9AXKP042788"
    assert vin_for_id(" 1m8gdm9axkp042788 ") == "1M8GDM9AXKP042788"


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=40))
def test_vin_for_id_is_a_deterministic_valid_vin(vehicle_id: str) -> None:
    vin = vin_for_id(vehicle_id)
    assert is_valid_vin(vin)
    assert reference_check_digit(vin) == vin[8]
    assert vin_for_id(vehicle_id) == vin


def test_vin_for_id_is_stable_across_versions_and_distinct() -> None:
    # Pinned: replayed traces must map to the same VIN on every machine, in every release.
    assert vin_for_id("taxi-0001") == "LGXHNZNG1RN343417"
    assert vin_for_id("42") == "LBVF3SLX4T9669438"
    ids = [f"taxi-{i:05d}" for i in range(5000)]
    assert len({vin_for_id(i) for i in ids}) == len(ids)
    assert vin_for_id("1M8GDM9A1KP042788") != "1M8GDM9A1KP042788"  # bad check digit: mapped


def test_the_readme_example_vin_is_valid() -> None:
    assert is_valid_vin("LSVKD2XG8RN123456")
