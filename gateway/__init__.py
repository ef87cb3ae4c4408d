"""icv-gateway: policy-driven sharing of connected-vehicle telemetry.

The public surface is small on purpose; everything else is internal and may change:

* :class:`Gateway` runs the pipeline: ``Gateway(load_config(path))``, then ``start()``,
  ``run()`` until ``stop()``, ``shutdown()``; ``process(envelopes)`` takes one micro-batch of
  :class:`Envelope` through decode, decide and shape and commits it;
* :func:`load_config` reads ``gateway.yaml`` into a :class:`GatewayConfig`;
* the model: :class:`Envelope` (one MQTT message), :class:`Batch` (records as columns),
  :class:`Datum`, :class:`RowStatus`, :class:`ErrorCode`;
* the error tree of :mod:`gateway.errors`, rooted at :class:`GatewayError`;
* the datum transforms :func:`wgs84_to_gcj02` and :func:`gcj02_to_wgs84`.

The names are imported on first use, so ``import gateway.errors`` (and every ``icvgw``
start) does not pay for numpy, pyproj and shapely.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from gateway.config import GatewayConfig, load_config
    from gateway.errors import (
        AuditError,
        BrokerError,
        ConfigError,
        ConnectInterrupted,
        DatumError,
        DeliveryError,
        GatewayError,
        GeoError,
        IngestError,
        KeyStoreError,
        PolicyError,
        Problem,
        PublishError,
        StaleDecisionError,
        StoreError,
        VerificationError,
        ZoneFileError,
    )
    from gateway.geo.datum import gcj02_to_wgs84, wgs84_to_gcj02
    from gateway.model import Batch, Datum, Envelope, ErrorCode, RowStatus
    from gateway.service import Gateway

__version__ = "0.1.0"

__all__ = [
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

_ERRORS = (
    "AuditError",
    "BrokerError",
    "ConfigError",
    "ConnectInterrupted",
    "DatumError",
    "DeliveryError",
    "GatewayError",
    "GeoError",
    "IngestError",
    "KeyStoreError",
    "PolicyError",
    "Problem",
    "PublishError",
    "StaleDecisionError",
    "StoreError",
    "VerificationError",
    "ZoneFileError",
)

_WHERE = {
    **dict.fromkeys(_ERRORS, "gateway.errors"),
    **dict.fromkeys(("Batch", "Datum", "Envelope", "ErrorCode", "RowStatus"), "gateway.model"),
    **dict.fromkeys(("GatewayConfig", "load_config"), "gateway.config"),
    **dict.fromkeys(("gcj02_to_wgs84", "wgs84_to_gcj02"), "gateway.geo.datum"),
    "Gateway": "gateway.service",
}


def __getattr__(name: str) -> _typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
