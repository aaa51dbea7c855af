"""Chinese map coordinate systems -> WGS-84, the one system Whistle's map (grids.geojson) and records use.

A source declares what it sends (the raw reports' `coord_system`): GPS devices WGS-84; Amap and Tencent SDKs
GCJ-02, the lawful offset of WGS-84 (up to several hundred metres); Baidu's SDK BD-09, a further offset of
GCJ-02. Ingest converts before anything is located, because a GCJ-02 point taken for WGS-84 lands in the
wrong grid (the tests measure ~500 m at the sample district).

The forward transforms are the published closed forms (the GCJ-02 offset polynomial on the Krasovsky
ellipsoid, a = 6378245 m, e² = 0.00669342162296594323; BD-09's rotation and scaling around GCJ-02). Their
inverses have no closed form, so they are found by fixed-point iteration on the forward transform until it
reproduces the given point to within 1e-10 degrees (~1 cm; 2-4 iterations). Outside China's bounding box
GCJ-02 is WGS-84 itself, as the published algorithm has it.
"""
from __future__ import annotations

import math
from collections.abc import Callable

WGS84, GCJ02, BD09 = "wgs84", "gcj02", "bd09"
COORD_SYSTEMS = (WGS84, GCJ02, BD09)

_A = 6378245.0  # Krasovsky 1940 semi-major axis, m
_EE = 0.00669342162296594323  # its first eccentricity squared
_X_PI = math.pi * 3000.0 / 180.0
_BD_LON, _BD_LAT = 0.0065, 0.006
_TOLERANCE_DEG = 1e-10
_MAX_ITERATIONS = 30

LatLon = tuple[float, float]


def out_of_china(lat: float, lon: float) -> bool:
    """The published algorithm's bounding box: outside it, GCJ-02 coordinates are WGS-84 ones."""
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def wgs84_to_gcj02(lat: float, lon: float) -> LatLon:
    if out_of_china(lat, lon):
        return lat, lon
    x, y = lon - 105.0, lat - 35.0
    d_lat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    d_lat += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    d_lat += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    d_lat += (160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    d_lon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    d_lon += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    d_lon += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    d_lon += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    rad_lat = lat / 180.0 * math.pi
    magic = 1.0 - _EE * math.sin(rad_lat) ** 2
    sqrt_magic = math.sqrt(magic)
    d_lat = (d_lat * 180.0) / ((_A * (1.0 - _EE)) / (magic * sqrt_magic) * math.pi)
    d_lon = (d_lon * 180.0) / (_A / sqrt_magic * math.cos(rad_lat) * math.pi)
    return lat + d_lat, lon + d_lon


def gcj02_to_bd09(lat: float, lon: float) -> LatLon:
    z = math.hypot(lon, lat) + 0.00002 * math.sin(lat * _X_PI)
    theta = math.atan2(lat, lon) + 0.000003 * math.cos(lon * _X_PI)
    return z * math.sin(theta) + _BD_LAT, z * math.cos(theta) + _BD_LON


def gcj02_to_wgs84(lat: float, lon: float) -> LatLon:
    return _inverse(wgs84_to_gcj02, lat, lon)


def bd09_to_gcj02(lat: float, lon: float) -> LatLon:
    return _inverse(gcj02_to_bd09, lat, lon)


def bd09_to_wgs84(lat: float, lon: float) -> LatLon:
    return gcj02_to_wgs84(*bd09_to_gcj02(lat, lon))


def to_wgs84(system: str, lat: float, lon: float) -> LatLon:
    """(lat, lon) given in `system` (one of COORD_SYSTEMS) as WGS-84."""
    if system == WGS84:
        return lat, lon
    if system == GCJ02:
        return gcj02_to_wgs84(lat, lon)
    if system == BD09:
        return bd09_to_wgs84(lat, lon)
    raise ValueError(f"unknown coordinate system {system!r}: one of {list(COORD_SYSTEMS)}")


def _inverse(forward: Callable[[float, float], LatLon], lat: float, lon: float) -> LatLon:
    """The point that `forward` maps to (lat, lon): each step moves the guess by what its image misses (the offsets vary
    slowly, so this contracts fast)."""
    guess_lat, guess_lon = lat, lon
    for _ in range(_MAX_ITERATIONS):
        image_lat, image_lon = forward(guess_lat, guess_lon)
        miss_lat, miss_lon = image_lat - lat, image_lon - lon
        if abs(miss_lat) < _TOLERANCE_DEG and abs(miss_lon) < _TOLERANCE_DEG:
            break
        guess_lat, guess_lon = guess_lat - miss_lat, guess_lon - miss_lon
    return guess_lat, guess_lon
