"""The geographic engine: datum transforms, metric grid, restricted zones, altitude.

Every function takes scalars or numpy arrays and works on whole columns. Bad coordinates
never raise: they are reported per row and treated as unshareable.
"""

from gateway.geo.altitude import coarsen_altitude
from gateway.geo.coords import check_coordinates
from gateway.geo.datum import (
    DatumResult,
    DatumTransform,
    available_transforms,
    gcj02_to_wgs84,
    get_transform,
    register_transform,
    transform,
    transform_back,
    wgs84_to_gcj02,
)
from gateway.geo.grid import (
    GridResult,
    band_crs,
    band_of,
    band_transformers,
    cell_centres,
    cell_corners,
    cell_id,
    cell_projected_bounds,
    cell_side,
    format_cell_id,
    parse_cell_id,
    snap,
    split_cell_id,
)
from gateway.geo.zones import MaskResult, Zone, ZoneLevel, ZoneSet, load_zones

__all__ = [
    "DatumResult",
    "DatumTransform",
    "GridResult",
    "MaskResult",
    "Zone",
    "ZoneLevel",
    "ZoneSet",
    "available_transforms",
    "band_crs",
    "band_of",
    "band_transformers",
    "cell_centres",
    "cell_corners",
    "cell_id",
    "cell_projected_bounds",
    "cell_side",
    "check_coordinates",
    "coarsen_altitude",
    "format_cell_id",
    "gcj02_to_wgs84",
    "get_transform",
    "load_zones",
    "parse_cell_id",
    "register_transform",
    "snap",
    "split_cell_id",
    "transform",
    "transform_back",
    "wgs84_to_gcj02",
]
