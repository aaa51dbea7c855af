"""Duplicate merging: same incident, same open case; everything else opens its own case."""
from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from streams.domain.enrich import haversine_m
from streams.domain.merge import MergeIndex
from streams.domain.model import EnrichedReport, Location, Report, Source, Urgency
from streams.domain.reference import Gazetteer
from whistle.ground.errors import ConfigError

T0 = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)
BASE = (28.19, 113.10)
NORMALIZE = Gazetteer([], ["湖南省", "湘江市", "清河区"], {}).normalize


def offset(lat: float, lon: float, north_m: float = 0.0, east_m: float = 0.0) -> tuple[float, float]:
    return lat + north_m / 111_195.0, lon + east_m / (111_195.0 * math.cos(math.radians(lat)))


_REPORT_NUMBERS = itertools.count(1)


def report(lat=None, lon=None, *, category="garbage", at=T0, street="S01", grid=None, address=None, camera=None) -> EnrichedReport:
    number = next(_REPORT_NUMBERS)
    base = Report(f"app:{number}", Source.APP, at, category, Urgency.NORMAL, "", lat=lat, lon=lon, address_text=address, camera_id=camera)
    location = Location("D01", street, None, grid, lat, lon, "point" if lat is not None else "dispatch_desk")
    return EnrichedReport(base, location, ())


def opened(index: MergeIndex, case_id: str, enriched: EnrichedReport) -> None:
    index.add(index.open_case(case_id, enriched))


@pytest.fixture
def index():
    idx = MergeIndex(NORMALIZE)
    opened(idx, "S01-case-a", report(*BASE))
    return idx


@pytest.mark.parametrize("metres, joins", [(0, True), (100, True), (249, True), (251, False), (400, False)])
def test_a_report_joins_an_open_case_of_the_same_category_within_250_m(index, metres, joins):
    for bearing in range(0, 360, 45):
        north, east = metres * math.cos(math.radians(bearing)), metres * math.sin(math.radians(bearing))
        expected = "S01-case-a" if joins else None
        assert index.find_case_to_join(report(*offset(*BASE, north, east), at=T0 + timedelta(hours=1))) == expected


def test_another_category_opens_its_own_case(index):
    assert index.find_case_to_join(report(*BASE, category="noise")) is None


def test_another_partition_opens_its_own_case(index):
    assert index.find_case_to_join(report(*BASE, street="S02")) is None


@pytest.mark.parametrize("hours, joins", [(-25, False), (-23, True), (0, True), (23.9, True), (24.1, False), (48, False)])
def test_a_report_joins_only_within_24_h_of_the_case(index, hours, joins):
    assert (index.find_case_to_join(report(*BASE, at=T0 + timedelta(hours=hours))) == "S01-case-a") is joins


def test_each_merged_report_extends_the_window(index):
    index.touch("S01-case-a", T0 + timedelta(hours=20))
    assert index.find_case_to_join(report(*BASE, at=T0 + timedelta(hours=40))) == "S01-case-a"
    index.touch("S01-case-a", T0 + timedelta(hours=1))  # an older report never shrinks it
    assert index.find_case_to_join(report(*BASE, at=T0 + timedelta(hours=40))) == "S01-case-a"


def test_now_can_be_given_explicitly(index):
    late = report(*BASE)
    assert index.find_case_to_join(late, now=T0 + timedelta(days=3)) is None


def test_a_resolved_or_closed_case_takes_no_more_reports(index):
    assert index.remove("S01-case-a").case_id == "S01-case-a"
    assert index.find_case_to_join(report(*BASE)) is None
    assert index.remove("S01-case-a") is None and len(index) == 0


def test_the_nearest_case_wins(index):
    opened(index, "S01-case-b", report(*offset(*BASE, 150)))
    assert index.find_case_to_join(report(*offset(*BASE, 100))) == "S01-case-b"
    assert index.find_case_to_join(report(*offset(*BASE, 50))) == "S01-case-a"


def test_at_equal_distance_the_oldest_then_the_smallest_id_wins():
    idx = MergeIndex(NORMALIZE)
    north, south = offset(*BASE, 100), offset(*BASE, -100)
    opened(idx, "S01-z", report(*north, at=T0))
    opened(idx, "S01-y", report(*south, at=T0 + timedelta(minutes=5)))
    assert idx.find_case_to_join(report(*BASE, at=T0 + timedelta(hours=1))) == "S01-z"
    opened(idx, "S01-x", report(*north, at=T0))
    assert idx.find_case_to_join(report(*BASE, at=T0 + timedelta(hours=1))) == "S01-x"


def test_adding_a_case_again_replaces_it(index):
    moved = report(*offset(*BASE, 1000))
    opened(index, "S01-case-a", moved)
    assert len(index) == 1 and "S01-case-a" in index
    assert index.find_case_to_join(report(*BASE)) is None
    assert index.find_case_to_join(report(*offset(*BASE, 1000))) == "S01-case-a"


@pytest.mark.parametrize("first, second, joins", [
    ({"grid": "G-S01-C01-001"}, {"grid": "G-S01-C01-001"}, True),
    ({"grid": "G-S01-C01-001"}, {"grid": "G-S01-C01-002"}, False),
    ({"address": "和平巷"}, {"address": "清河区 和平巷"}, True),
    ({"address": "菜市场旁边"}, {"address": "湘江市清河区菜市场旁边"}, True),
    ({"address": "菜市场旁边"}, {"address": "公交站旁边"}, False),
    ({"camera": "CAM-999"}, {"camera": "CAM-999"}, True),
    ({"camera": "CAM-999"}, {"camera": "CAM-998"}, False),
    ({}, {}, False),
])
def test_reports_without_coordinates_join_only_the_same_grid_address_or_camera(first, second, joins):
    idx = MergeIndex(NORMALIZE)
    opened(idx, "DESK-case", report(street=None, **first))
    assert (idx.find_case_to_join(report(street=None, at=T0 + timedelta(hours=2), **second)) == "DESK-case") is joins


def test_coordinates_and_place_keys_never_meet(index):
    assert index.find_case_to_join(report(grid="G-S01-C01-001")) is None
    idx = MergeIndex(NORMALIZE)
    opened(idx, "S01-desk", report(address="和平巷"))
    assert idx.find_case_to_join(report(*BASE, address="和平巷")) is None


def test_an_index_with_an_own_distance_and_window_uses_them():
    idx = MergeIndex(NORMALIZE, max_distance_m=50.0, window=timedelta(hours=2))
    opened(idx, "S01-a", report(*BASE))
    assert idx.find_case_to_join(report(*offset(*BASE, 40))) == "S01-a"
    assert idx.find_case_to_join(report(*offset(*BASE, 60))) is None
    assert idx.find_case_to_join(report(*BASE, at=T0 + timedelta(hours=3))) is None


def brute_force(cases, query, max_m, window):
    best = None
    for case_id, lat, lon, at in cases:
        if not (at - window <= query.report.occurred_at <= at + window):
            continue
        distance = haversine_m(query.location.lat, query.location.lon, lat, lon)
        if distance <= max_m and (best is None or (distance, at, case_id) < best):
            best = (distance, at, case_id)
    return best[2] if best else None


@pytest.mark.parametrize("latitude", [28.19, -33.9, 69.6, 89.99])
def test_the_cell_index_finds_exactly_what_a_full_scan_finds(latitude):
    """The neighbour-cell search must miss nothing at any latitude (cells narrow towards the poles) nor across the antimeridian."""
    rng = random.Random(int(latitude * 100))
    northmost = min(3000.0, (90.0 - latitude) * 111_195.0 - 1.0)

    def somewhere() -> tuple[float, float]:
        lat, lon = offset(latitude, 179.9, rng.uniform(-3000, northmost), rng.uniform(-3000, 3000))
        return lat, (lon + 180.0) % 360.0 - 180.0  # straddles the antimeridian

    idx = MergeIndex(NORMALIZE, max_distance_m=250.0)
    cases = []
    for i in range(300):
        lat, lon = somewhere()
        at = T0 + timedelta(minutes=rng.randrange(0, 3000))
        cases.append((f"c{i:04d}", lat, lon, at))
        opened(idx, f"c{i:04d}", report(lat, lon, at=at))
    found = 0
    for _ in range(1000):
        query = report(*somewhere(), at=T0 + timedelta(minutes=rng.randrange(0, 3000)))
        expected = brute_force(cases, query, 250.0, timedelta(hours=24))
        assert idx.find_case_to_join(query) == expected
        found += expected is not None
    assert found > 100


def test_rebuilding_in_another_order_gives_the_same_answers():
    rng = random.Random(3)
    entries = [(f"S01-{i}", report(*offset(*BASE, rng.uniform(-800, 800), rng.uniform(-800, 800)), at=T0 + timedelta(minutes=i))) for i in range(200)]
    forward, backward = MergeIndex(NORMALIZE), MergeIndex(NORMALIZE)
    for case_id, enriched in entries:
        opened(forward, case_id, enriched)
    for case_id, enriched in reversed(entries):
        opened(backward, case_id, enriched)
    assert sorted(c.case_id for c in forward) == sorted(c.case_id for c in backward)
    for _ in range(300):
        query = report(*offset(*BASE, rng.uniform(-900, 900), rng.uniform(-900, 900)), at=T0 + timedelta(hours=3))
        assert forward.find_case_to_join(query) == backward.find_case_to_join(query)


@pytest.mark.parametrize("settings", [{"max_distance_m": 0.0}, {"window": timedelta(0)}])
def test_a_useless_merge_setting_is_refused(settings):
    with pytest.raises(ConfigError):
        MergeIndex(NORMALIZE, **settings)
