"""Vehicle identification numbers: ISO 3779 structure with the GB 16735 / North American
check digit at position 9.

The check digit: each character is transliterated to a number (digits as themselves,
``A``–``Z`` by the ISO 3779 table; ``I``, ``O`` and ``Q`` never occur), multiplied by the weight
of its position (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2), the products summed and
taken modulo 11; a remainder of 10 is written ``X``.

Generated VINs use world manufacturer identifiers assigned in China (``L..``); they are valid
in form and check digit, not registered to real vehicles.
"""

from __future__ import annotations

import hashlib

import numpy as np

from gateway.policy.codes import is_valid_vin, vin_check_digit

__all__ = [
    "CHINESE_WMIS",
    "check_digit",
    "is_valid_vin",
    "random_vins",
    "vin_for_id",
]

VIN_ALPHABET = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
"""The 33 characters allowed in a VIN (no ``I``, ``O``, ``Q``)."""

# Position 10, model year: letters without I, O, Q, U, Z and the digit 0; 2024 = R, 2025 = S...
_MODEL_YEARS = "LMNPRSTV"  # 2020..2027
_VDS_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"

CHINESE_WMIS = (
    "LSV",  # SAIC Volkswagen
    "LFV",  # FAW-Volkswagen
    "LGW",  # Great Wall
    "LVS",  # Changan Ford
    "LSG",  # SAIC General Motors
    "LVG",  # GAC Toyota
    "LHG",  # GAC Honda
    "LBV",  # BMW Brilliance
    "LRW",  # Tesla Shanghai
    "LGX",  # BYD
    "LSJ",  # SAIC MG
    "LNB",  # BAIC
)
"""World manufacturer identifiers assigned to manufacturers in China, used for generated VINs."""


def check_digit(vin: str) -> str:
    """The check digit (``0``–``9`` or ``X``) that position 9 of ``vin`` must hold (upper-
    cased first); the policy's VIN rule (:func:`gateway.policy.codes.vin_check_digit`).

    Raises ``ValueError`` if ``vin`` is not 17 characters of the VIN alphabet.
    """
    return vin_check_digit(vin.upper())


def _with_check_digit(body: str) -> str:
    """``body`` (17 characters, any position 9) with its check digit filled in."""
    return body[:8] + check_digit(body) + body[9:]


def _from_bytes(digest: bytes) -> str:
    """A valid VIN whose characters are chosen by ``digest`` (at least 17 bytes)."""
    wmi = CHINESE_WMIS[digest[0] % len(CHINESE_WMIS)]
    vds = "".join(_VDS_ALPHABET[b % len(_VDS_ALPHABET)] for b in digest[1:6])
    year = _MODEL_YEARS[digest[6] % len(_MODEL_YEARS)]
    plant = VIN_ALPHABET[digest[7] % len(VIN_ALPHABET)]
    serial = f"{int.from_bytes(digest[8:16], 'big') % 1_000_000:06d}"
    return _with_check_digit(f"{wmi}{vds}0{year}{plant}{serial}")


def random_vins(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct valid VINs drawn from ``rng`` (deterministic for a seeded generator)."""
    vins: list[str] = []
    seen: set[str] = set()
    while len(vins) < n:
        vin = _from_bytes(rng.bytes(16))
        if vin not in seen:
            seen.add(vin)
            vins.append(vin)
    return vins


def vin_for_id(vehicle_id: str) -> str:
    """The VIN a trace id is published under.

    A valid VIN (any case) is returned upper-cased. Anything else maps deterministically to a
    valid VIN derived from the SHA-256 of the id: the same id always gives the same VIN, on
    every machine and every run.
    """
    upper = vehicle_id.strip().upper()
    if is_valid_vin(upper):
        return upper
    return _from_bytes(hashlib.sha256(vehicle_id.encode("utf-8")).digest())
