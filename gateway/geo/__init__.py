"""The geographic engine: datum transforms, metric grid, restricted zones, altitude.

Every function takes scalars or numpy arrays and works on whole columns. Bad coordinates
never raise: they are reported per row and treated as unshareable.
"""

from gateway.geo.coords import check_coordinates
from gateway.geo.datum import gcj02_to_wgs84, wgs84_to_gcj02

__all__ = ["check_coordinates", "gcj02_to_wgs84", "wgs84_to_gcj02"]
