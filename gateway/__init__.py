"""icv-gateway: policy-driven sharing of connected-vehicle telemetry.

The public surface is small on purpose; everything else is internal and may change.
"""

from gateway.errors import GatewayError
from gateway.geo import gcj02_to_wgs84, wgs84_to_gcj02
from gateway.model import Batch, Datum, Envelope, ErrorCode

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Datum",
    "Envelope",
    "ErrorCode",
    "GatewayError",
    "__version__",
    "gcj02_to_wgs84",
    "wgs84_to_gcj02",
]
