"""The policy bundle: what may be shared with whom, as validated, versioned data.

* :func:`load_bundle` reads a bundle directory and returns a :class:`PolicyBundle`, or raises
  :class:`~gateway.errors.PolicyError` listing every problem as ``file:line: field: message``.
* :class:`PolicyHolder` keeps the bundle in force and reloads it on change; a bundle that
  fails to load leaves the last good one in force.
* :class:`RuleId` is the closed set of rule ids decisions cite.
* :func:`gateway.policy.view_schema.view_schema` is the JSON Schema of a subscriber's
  output records.

The names are imported on first use, so importing ``gateway.cli.policy`` (every ``icvgw``
start) does not pay for pydantic models, shapely and pyproj.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from gateway.policy.bundle import PolicyBundle
    from gateway.policy.holder import PolicyHolder
    from gateway.policy.loader import load_bundle
    from gateway.policy.rules import RuleId

__all__ = ["PolicyBundle", "PolicyHolder", "RuleId", "load_bundle"]

_WHERE = {
    "PolicyBundle": "gateway.policy.bundle",
    "PolicyHolder": "gateway.policy.holder",
    "RuleId": "gateway.policy.rules",
    "load_bundle": "gateway.policy.loader",
}


def __getattr__(name: str) -> _typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
