"""Region codes, mainland China, and VIN check digits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.codes import (
    CN_SUBDIVISIONS,
    ISO3166_ALPHA2,
    is_mainland,
    is_valid_region,
    is_valid_vin,
    vin_check_digit,
)

VIN_ALPHABET = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"


def test_code_tables() -> None:
    assert len(ISO3166_ALPHA2) == 249
    assert len(CN_SUBDIVISIONS) == 34
    assert all(len(c) == 2 and c.isupper() for c in ISO3166_ALPHA2)


@pytest.mark.parametrize(
    ("code", "valid", "mainland"),
    [
        ("CN", True, True),
        ("CN-SH", True, True),
        ("CN-BJ", True, True),
        ("CN-XZ", True, True),
        ("CN-HK", True, False),
        ("CN-MO", True, False),
        ("CN-TW", True, False),
        ("HK", True, False),
        ("MO", True, False),
        ("TW", True, False),
        ("DE", True, False),
        ("DE-BY", True, False),
        ("US-CA", True, False),
        ("CN-XX", False, False),
        ("cn", False, False),
        ("XX", False, False),
        ("XX-AB", False, False),
        ("CHN", False, False),
        ("", False, False),
    ],
)
def test_regions(code: str, valid: bool, mainland: bool) -> None:
    assert is_valid_region(code) is valid
    assert is_mainland(code) is mainland


def test_published_vins() -> None:
    assert is_valid_vin("1M8GDM9AXKP042788")  # the classic example: check digit X
    assert is_valid_vin("11111111111111111")
    assert not is_valid_vin("1M8GDM9A1KP042788")
    assert not is_valid_vin("1M8GDM9AXKP04278")  # 16 characters
    assert not is_valid_vin("1M8GDM9AXKP04278I")  # I is not allowed
    assert not is_valid_vin("1M8GDM9AXKP042788\n")  # a final newline is not the end


def _reference_check_digit(vin: str) -> str:
    values = {
        **{str(d): d for d in range(10)},
        "A": 1, "B": 2, "C": 3, "D": 4, "E": 5, "F": 6, "G": 7, "H": 8,
        "J": 1, "K": 2, "L": 3, "M": 4, "N": 5, "P": 7, "R": 9,
        "S": 2, "T": 3, "U": 4, "V": 5, "W": 6, "X": 7, "Y": 8, "Z": 9,
    }  # fmt: skip
    weights = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2]
    total = 0
    for position in range(17):
        total += values[vin[position]] * weights[position]
    return "X" if total % 11 == 10 else str(total % 11)


@given(st.text(alphabet=VIN_ALPHABET, min_size=17, max_size=17))
def test_check_digit_matches_reference(body: str) -> None:
    digit = vin_check_digit(body)
    assert digit == _reference_check_digit(body)
    vin = body[:8] + digit + body[9:]
    assert is_valid_vin(vin)
    wrong = "0" if digit != "0" else "1"
    assert not is_valid_vin(vin[:8] + wrong + vin[9:])


def test_check_digit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="17 characters"):
        vin_check_digit("SHORT")
