"""RFC 8785 (JSON Canonicalization Scheme) bytes for audit entries.

Entries hold only strings, integers, booleans, null, lists and objects with string keys.
Floats are refused: RFC 8785 number serialisation is not needed when no entry holds one, and
refusing them keeps every stored, exported and hashed byte sequence unambiguous. Integers
must be exactly representable as IEEE 754 doubles (|n| <= 2**53 - 1), as RFC 8785 requires.

Serialisation is orjson (whose string escaping is exactly RFC 8785's: ``\\b \\t \\n \\f \\r``,
``\\"``, ``\\\\``, other controls as lowercase ``\\u00xx``, everything else as UTF-8). Object
keys are sorted by UTF-16 code units; orjson's byte-wise sort agrees for ASCII keys, so
only objects with a non-ASCII key take the slow path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import orjson

from gateway.errors import AuditError
from gateway.jsonbytes import tight

Json: TypeAlias = "str | int | bool | Sequence[Json] | Mapping[str, Json] | None"

MAX_SAFE_INTEGER = 2**53 - 1


def _check(value: Any, depth: int = 0) -> bool:
    """Validate ``value``; return True if some object key is non-ASCII."""
    t = type(value)
    if t is str or value is None or t is bool:
        return False
    if t is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return False
        raise AuditError(f"canonical JSON: integer {value} is not exactly representable")
    if depth > 64:
        raise AuditError("canonical JSON: nested too deeply")
    if t is dict or isinstance(value, dict):
        slow = False
        for key, item in value.items():
            if type(key) is not str:
                raise AuditError(f"canonical JSON: object key {key!r} is not a string")
            if not key.isascii():
                slow = True
            if _check(item, depth + 1):
                slow = True
        return slow
    if t is list or t is tuple or isinstance(value, list | tuple):
        slow = False
        for item in value:
            if _check(item, depth + 1):
                slow = True
        return slow
    if isinstance(value, str):
        return False
    if isinstance(value, float):
        raise AuditError("canonical JSON: floats are not allowed in audit entries")
    if isinstance(value, int) and not isinstance(value, bool):
        return _check(int(value), depth)
    raise AuditError(f"canonical JSON: unsupported type {t.__name__}")


def check_json(value: Any) -> bool:
    """Check that ``value`` may be canonicalised (raises :class:`AuditError` if not); True
    if some object key in it is non-ASCII (then keys need the UTF-16 sort)."""
    return _check(value)


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", errors="surrogatepass")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value, key=_utf16_key)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical bytes of ``value`` (UTF-8, no whitespace, sorted keys).

    Raises :class:`AuditError` for floats, integers beyond 2**53-1, non-string keys, lone
    surrogates or any other type.
    """
    return dumps_checked(value, _check(value))


def dumps_checked(value: Any, non_ascii_keys: bool) -> bytes:
    """Serialise a value already validated by :func:`check_json` (whose result is
    ``non_ascii_keys``)."""
    try:
        if non_ascii_keys:
            return tight(orjson.dumps(_sorted(value)))
        return tight(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise AuditError(f"canonical JSON: {exc}") from exc


def parse_canonical(data: bytes) -> Any:
    """Parse entry bytes, refusing anything that is not exactly its own canonical form."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise AuditError(f"not JSON: {exc}") from exc
    if canonical_json(value) != data:
        raise AuditError("not in RFC 8785 canonical form")
    return value
