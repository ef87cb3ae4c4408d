"""Cursors of the API's pages and streams: where a reader is in each audit shard.

A cursor is the base64url (no padding) of compact JSON mapping each audit shard to the last
seq read in it (``{"icv-gateway/gw-1": 576}``), so a reader resumes every shard where it
was, however the shards grow meanwhile: an entry appended to one shard while a reader is in
another is not skipped. Anything else is :class:`BadCursor` (a 400, never a 500).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

import orjson

__all__ = ["MAX_CURSOR_CHARS", "BadCursor", "decode_cursor", "encode_cursor"]

MAX_CURSOR_CHARS = 4096
MAX_CURSOR_SHARDS = 256
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class BadCursor(ValueError):
    """A cursor this API did not make (the client's error: 400)."""


def encode_cursor(positions: Mapping[str, int]) -> str:
    """The opaque cursor of ``positions`` (shard -> last seq read)."""
    raw = orjson.dumps(dict(positions), option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> dict[str, int]:
    """The positions (shard -> last seq read) of a cursor; :class:`BadCursor` if ``text``
    is not one."""
    if len(text) > MAX_CURSOR_CHARS or not _BASE64URL.fullmatch(text):
        raise BadCursor("the cursor is not one this API made (not base64url)")
    try:
        value = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error) as exc:  # orjson.JSONDecodeError is a ValueError
        raise BadCursor("the cursor is not one this API made") from exc
    if (
        not isinstance(value, dict)
        or len(value) > MAX_CURSOR_SHARDS
        or not all(type(v) is int and 0 <= v < 2**63 for v in value.values())
    ):
        raise BadCursor("the cursor is not one this API made (shard -> seq)")
    return value
