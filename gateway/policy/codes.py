"""Identifier codes the policy validates: ISO 3166 regions and ISO 3779 VINs.

Regions. A region is an ISO 3166-1 alpha-2 country code (``CN``, ``HK``, ``DE``) or an
ISO 3166-2 subdivision code (``CN-SH``, ``DE-BY``). Chinese subdivisions are checked against
the full ISO 3166-2:CN list (2017 letter codes); other countries' subdivisions are checked
for shape only (``CC-XXX`` with a valid country ``CC``), since the gateway only needs to
tell mainland China from everything else.

Mainland China is ``CN`` or ``CN-xx``, except ``CN-HK``, ``CN-MO`` and ``CN-TW``: Hong Kong,
Macao and Taiwan count as outside mainland China for data-localisation purposes, whether
written ``HK`` or ``CN-HK``.

VINs. A VIN is 17 characters from ``0-9 A-Z`` without ``I``, ``O`` and ``Q``, with the check
digit in position 9 (ISO 3779 transliteration and weights; GB 16735 makes the check digit
mandatory in China).
"""

from __future__ import annotations

import re

__all__ = [
    "CN_SUBDIVISIONS",
    "ISO3166_ALPHA2",
    "is_hk_or_mo",
    "is_mainland",
    "is_valid_region",
    "is_valid_vin",
    "vin_check_digit",
]

ISO3166_ALPHA2 = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ
    BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
    DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET
    FI FJ FK FM FO FR
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY
    HK HM HN HR HT HU
    ID IE IL IM IN IO IQ IR IS IT
    JE JM JO JP
    KE KG KH KI KM KN KP KR KW KY KZ
    LA LB LC LI LK LR LS LT LU LV LY
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
    NA NC NE NF NG NI NL NO NP NR NU NZ
    OM
    PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA
    RE RO RS RU RW
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ
    TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ
    UA UG UM US UY UZ
    VA VC VE VG VI VN VU
    WF WS
    YE YT
    ZA ZM ZW
    """.split()  # noqa: SIM905 - a table reads better than 249 quoted strings
)
"""The 249 officially assigned ISO 3166-1 alpha-2 codes."""

CN_SUBDIVISIONS = frozenset(
    f"CN-{code}"
    for code in """
    AH BJ CQ FJ GD GS GX GZ HA HB HE HI HK HL HN JL JS JX LN MO NM NX QH SC SD SH SN SX TJ TW
    XJ XZ YN ZJ
    """.split()  # noqa: SIM905
)
"""The 34 ISO 3166-2:CN codes (provinces, autonomous regions, municipalities, SARs, Taiwan)."""

_OUTSIDE_MAINLAND = frozenset({"HK", "MO", "TW", "CN-HK", "CN-MO", "CN-TW"})
_SUBDIVISION = re.compile(r"^([A-Z]{2})-[A-Z0-9]{1,3}$")

_VIN_CHARS = re.compile(r"[A-HJ-NPR-Z0-9]{17}")  # fullmatch: "$" would take a final "\n"
_VIN_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def is_valid_region(code: str) -> bool:
    """True if ``code`` is an ISO 3166-1 alpha-2 code or a well-formed ISO 3166-2 code.

    ``CN-xx`` must be one of the 34 ISO 3166-2:CN codes; other subdivisions need a valid
    country prefix. Codes are case-sensitive (upper case), as ISO writes them.
    """
    if code in ISO3166_ALPHA2:
        return True
    if code.startswith("CN-"):
        return code in CN_SUBDIVISIONS
    match = _SUBDIVISION.match(code)
    return match is not None and match.group(1) in ISO3166_ALPHA2


def is_mainland(code: str) -> bool:
    """True only for mainland China: ``CN`` or a ``CN-xx`` code other than HK, MO and TW.

    Invalid codes are never mainland (fail closed: an unknown place counts as abroad).
    """
    if code in _OUTSIDE_MAINLAND or not is_valid_region(code):
        return False
    return code == "CN" or code.startswith("CN-")


def is_hk_or_mo(code: str) -> bool:
    """True for Hong Kong or Macao, written ``HK``/``MO`` or ``CN-HK``/``CN-MO``."""
    return code in ("HK", "MO", "CN-HK", "CN-MO")


def vin_check_digit(vin: str) -> str:
    """The ISO 3779 check character (``0``-``9`` or ``X``) for a 17-character VIN.

    Position 9 of ``vin`` is ignored. Raises ``ValueError`` if ``vin`` has the wrong length
    or a character outside ``0-9 A-Z`` without ``I``/``O``/``Q``.
    """
    if not _VIN_CHARS.fullmatch(vin):
        raise ValueError("a VIN is 17 characters from 0-9 and A-Z without I, O and Q")
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True))
    remainder = total % 11
    return "X" if remainder == 10 else str(remainder)


def is_vin_shaped(vin: str) -> bool:
    """True if ``vin`` (any case, surrounding blanks ignored) is 17 characters of ISO 3779's
    alphabet; the check digit is not verified (a policy may waive it)."""
    return bool(_VIN_CHARS.fullmatch(vin.strip().upper()))


def is_valid_vin(vin: str) -> bool:
    """True if ``vin`` is well formed and its position-9 check digit is right."""
    return bool(_VIN_CHARS.fullmatch(vin)) and vin[8] == vin_check_digit(vin)
