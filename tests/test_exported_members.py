"""The public API is what ``__all__`` says, no more and no less (as httpx pins its own)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pytest

import gateway

GATEWAY = Path(gateway.__file__).parent

PUBLIC_API = [
    "AuditError",
    "Batch",
    "BrokerError",
    "ConfigError",
    "ConnectInterrupted",
    "Datum",
    "DatumError",
    "DeliveryError",
    "Envelope",
    "ErrorCode",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "GeoError",
    "IngestError",
    "KeyStoreError",
    "PolicyError",
    "Problem",
    "PublishError",
    "RowStatus",
    "StaleDecisionError",
    "StoreError",
    "VerificationError",
    "ZoneFileError",
    "__version__",
    "gcj02_to_wgs84",
    "load_config",
    "wgs84_to_gcj02",
]
"""Changing the public API is a decision: this list changes with it, in the same commit."""

SUBPACKAGES = sorted(p.parent.name for p in GATEWAY.glob("*/__init__.py"))


def public_members(module: ModuleType) -> set[str]:
    """What ``dir(module)`` offers that is not private and not a submodule."""
    return {
        name
        for name in dir(module)
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(getattr(module, name), ModuleType)
    }


def test_the_public_api_is_pinned() -> None:
    assert gateway.__all__ == PUBLIC_API


def test_all_imports_are_exported() -> None:
    assert sorted(public_members(gateway)) == gateway.__all__


def test_every_exported_name_is_the_gateways_own() -> None:
    for name in gateway.__all__:
        value = getattr(gateway, name)
        if name != "__version__":
            assert value.__module__.startswith("gateway."), name
    assert gateway.Gateway is importlib.import_module("gateway.service").Gateway
    assert issubclass(gateway.PolicyError, gateway.GatewayError)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = gateway.Nope


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_a_subpackage_declares_all_or_is_empty(package: str) -> None:
    tree = ast.parse((GATEWAY / package / "__init__.py").read_text(encoding="utf-8"))
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    declares = any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        for node in body
    )
    assert declares or not body, f"gateway/{package}/__init__.py: declare __all__ or hold nothing"
    if declares:
        module = importlib.import_module(f"gateway.{package}")
        assert sorted(public_members(module)) == sorted(module.__all__)
