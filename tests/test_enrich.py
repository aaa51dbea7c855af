"""Placing reports on the map and routing them: grids, desks, flags, chains, disputes, case keys."""
from __future__ import annotations

import hashlib
import random
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from streams.domain.case_id import case_id_for
from streams.domain.enrich import CAMERA_RANGE_M, Enricher, case_partition_key, common_parent, haversine_m
from streams.domain.model import LADDER, Report, Source, Tier, Urgency
from streams.domain.reference import Grid, load_reference
from whistle.ground.errors import DomainError, ValidationError

AT = datetime(2024, 6, 3, 2, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def ref():
    return load_reference()


@pytest.fixture(scope="module")
def enricher(ref):
    return Enricher(ref)


def centre(polygon) -> tuple[float, float]:
    return sum(y for _, y in polygon.ring[:-1]) / 4, sum(x for x, _ in polygon.ring[:-1]) / 4


def app(category="garbage", lat=None, lon=None, address=None, report_id="app:r1", at=AT) -> Report:
    return Report(report_id, Source.APP, at, category, Urgency.NORMAL, "", lat=lat, lon=lon, address_text=address)


def camera(camera_id, category="garbage", confidence=0.95, lat=None, lon=None) -> Report:
    return Report("camera:d1", Source.CAMERA, AT, category, Urgency.NORMAL, "", lat=lat, lon=lon, camera_id=camera_id, confidence=confidence)


def hotline(address, category="garbage") -> Report:
    return Report("hotline:t1", Source.HOTLINE, AT, category, Urgency.NORMAL, "", address_text=address)


def ids(enriched) -> list[str]:
    return [u.unit_id for u in enriched.chain]


def test_a_point_in_a_grid_goes_to_that_grid_team_up_the_territorial_ladder(ref, enricher):
    grid = ref.grids["G-S03-C02-003"]
    enriched = enricher.enrich(app(lat=centre(grid)[0], lon=centre(grid)[1]))
    location = enriched.location
    assert (location.grid_id, location.community_id, location.street_id, location.district_id) == (grid.grid_id, "C-S03-02", "S03", "D01")
    assert location.resolved_by == "point" and enriched.flags == ()
    assert ids(enriched) == [grid.grid_id, "C-S03-02", "S03", "DEP-URBAN", "SUP", "DIS"]
    assert enriched.responsible.tier is Tier.GRID


def test_a_departmental_category_goes_straight_to_its_department(ref, enricher):
    lat, lon = centre(ref.grids["G-S03-C02-003"])
    assert ids(enricher.enrich(app("illegal_parking", lat, lon))) == ["DEP-TRAFFIC", "SUP", "DIS"]
    assert ids(enricher.enrich(app("gas_leak", lat, lon))) == ["DEP-EMERGENCY", "SUP", "DIS"]


@pytest.mark.parametrize("category", ["garbage", "drainage_blockage", "illegal_construction", "illegal_parking", "illegal_lpg_refilling",
                                      "ebike_charging_hazard", "fire_smoke", "road_damage", "noise", "neighbour_dispute",
                                      "elderly_assistance", "gas_leak"])
def test_every_chain_climbs_the_ladder_and_ends_at_the_discipline_commission(ref, enricher, category):
    reports = [app(category, *centre(g)) for g in ref.grids.values()]
    reports += [app(category, 28.0, 113.0), app(category, *centre(next(iter(ref.ungridded_areas.values())))), app(category)]
    owner = ref.categories[category].owner_department_id
    for enriched in map(enricher.enrich, reports):
        ranks = [LADDER.index(u.tier) for u in enriched.chain]
        assert ranks == sorted(set(ranks)), ids(enriched)
        assert enriched.chain[-2:] == (ref.supervision, ref.discipline)
        assert owner in ids(enriched) or enriched.chain[0] == ref.district_desk


def test_a_point_outside_the_district_goes_to_the_district_desk_flagged(enricher):
    enriched = enricher.enrich(app(lat=28.0, lon=113.0))
    assert ids(enriched) == ["DESK-D01", "SUP", "DIS"]
    assert enriched.flags == ("outside_grid",)
    assert (enriched.location.street_id, enriched.location.grid_id, enriched.location.resolved_by) == (None, None, "dispatch_desk")
    assert (enriched.location.lat, enriched.location.lon) == (28.0, 113.0)


def test_a_point_in_a_park_goes_to_that_street_desk_flagged(ref, enricher):
    park = next(iter(ref.ungridded_areas.values()))
    enriched = enricher.enrich(app("drainage_blockage", *centre(park)))
    assert ids(enriched) == [f"DESK-{park.street_id}", "DEP-WATER", "SUP", "DIS"]
    assert enriched.flags == ("outside_grid",) and enriched.location.street_id == park.street_id


def test_a_point_on_a_street_boundary_belongs_to_exactly_one_grid(ref, enricher):
    a, b = next((a, b) for a in ref.grids.values() for b in ref.grids.values()
                if a.street_id < b.street_id and len(set(a.ring) & set(b.ring)) == 2)
    (x1, y1), (x2, y2) = sorted(set(a.ring) & set(b.ring))
    enriched = enricher.enrich(app(lat=(y1 + y2) / 2, lon=(x1 + x2) / 2))
    assert enriched.location.grid_id in (a.grid_id, b.grid_id) and enriched.flags == ()


def test_a_registered_camera_is_placed_by_the_registry(ref, enricher):
    cam = next(c for c in ref.cameras.values() if c.grid_id)
    enriched = enricher.enrich(camera(cam.camera_id))
    assert (enriched.location.lat, enriched.location.lon, enriched.location.grid_id) == (cam.lat, cam.lon, cam.grid_id)
    assert enriched.location.resolved_by == "camera" and enriched.flags == ()


def test_a_camera_geolocating_an_object_nearby_places_the_object(ref, enricher):
    cam = next(c for c in ref.cameras.values() if c.grid_id)
    grid = ref.grids[cam.grid_id]
    target = min((g for g in ref.grids.values() if g is not grid), key=lambda g: haversine_m(cam.lat, cam.lon, *centre(g)))
    lat, lon = centre(target)
    assert haversine_m(cam.lat, cam.lon, lat, lon) < CAMERA_RANGE_M
    enriched = enricher.enrich(camera(cam.camera_id, lat=lat, lon=lon))
    assert enriched.location.grid_id == target.grid_id and enriched.location.resolved_by == "camera" and enriched.flags == ()


def test_an_implausibly_far_camera_geolocation_falls_back_to_the_camera(ref, enricher):
    cam = next(c for c in ref.cameras.values() if c.grid_id)
    enriched = enricher.enrich(camera(cam.camera_id, lat=cam.lat + 0.01, lon=cam.lon))
    assert enriched.location.grid_id == cam.grid_id and enriched.location.lat == cam.lat
    assert enriched.flags == ("geolocation_implausible",)


def test_an_unknown_camera_with_coordinates_is_placed_by_them_and_flagged(ref, enricher):
    lat, lon = centre(ref.grids["G-S05-C01-002"])
    enriched = enricher.enrich(camera("CAM-999", lat=lat, lon=lon))
    assert enriched.location.grid_id == "G-S05-C01-002" and enriched.flags == ("camera_unknown",)


def test_an_unknown_camera_without_coordinates_goes_to_the_district_desk(enricher):
    enriched = enricher.enrich(camera("CAM-999"))
    assert ids(enriched)[0] == "DESK-D01" and enriched.flags == ("camera_unknown",)


def test_a_registered_camera_outside_every_grid_goes_to_a_desk_flagged(ref, enricher):
    for cam in (c for c in ref.cameras.values() if c.grid_id is None):
        enriched = enricher.enrich(camera(cam.camera_id))
        assert enriched.flags == ("outside_grid",)
        assert ids(enriched)[0] == (f"DESK-{cam.street_id}" if cam.street_id else "DESK-D01")


def test_a_low_confidence_detection_goes_to_the_street_desk_for_review_but_keeps_its_place(ref, enricher):
    cam = next(c for c in ref.cameras.values() if c.grid_id)
    threshold = ref.categories["illegal_parking"].camera_min_confidence
    below = enricher.enrich(camera(cam.camera_id, "illegal_parking", confidence=threshold - 0.01))
    assert ids(below) == [f"DESK-{cam.street_id}", "DEP-TRAFFIC", "SUP", "DIS"]
    assert below.flags == ("low_confidence",) and below.location.grid_id == cam.grid_id
    assert ids(enricher.enrich(camera(cam.camera_id, "illegal_parking", confidence=threshold))) == ["DEP-TRAFFIC", "SUP", "DIS"]


@pytest.mark.parametrize("text", ["建设路19号", "清河区建设路１９號", "湘江市清河区 建设路 19 号附近"])
def test_a_hotline_address_is_placed_through_the_gazetteer(ref, enricher, text):
    entry = ref.gazetteer.lookup("建设路19号")
    enriched = enricher.enrich(hotline(text))
    assert (enriched.location.grid_id, enriched.location.lat, enriched.location.resolved_by) == (entry.grid_id, entry.lat, "gazetteer")
    assert enriched.flags == ()


def test_an_unknown_address_goes_to_the_district_desk_flagged(enricher):
    enriched = enricher.enrich(hotline("菜市场旁边"))
    assert ids(enriched) == ["DESK-D01", "SUP", "DIS"] and enriched.flags == ("address_unresolved",)


def test_a_lane_without_a_number_goes_to_its_street_desk(ref, enricher):
    lane = ref.gazetteer.lookup("和平巷")
    enriched = enricher.enrich(hotline("清河区和平巷"))
    assert ids(enriched)[0] == f"DESK-{lane.street_id}" and enriched.flags == ("address_road_only",)


def test_a_road_crossing_streets_without_a_number_goes_to_the_district_desk(enricher):
    enriched = enricher.enrich(hotline("建设路"))
    assert ids(enriched)[0] == "DESK-D01" and enriched.flags == ("address_road_only",)


def test_a_park_landmark_goes_to_its_street_desk(ref, enricher):
    park = ref.gazetteer.lookup("清河公园")
    enriched = enricher.enrich(hotline("清河公园"))
    assert ids(enriched)[0] == f"DESK-{park.street_id}" and enriched.flags == ("outside_grid",)


def test_an_app_report_without_gps_uses_its_typed_address(ref, enricher):
    entry = ref.gazetteer.lookup("建设路19号")
    assert enricher.enrich(app(address="建设路19号")).location.grid_id == entry.grid_id


def test_a_report_with_no_location_at_all_goes_to_the_district_desk(enricher):
    enriched = enricher.enrich(app())
    assert ids(enriched)[0] == "DESK-D01" and enriched.flags == ("no_location",)


def test_an_unknown_category_is_refused(enricher):
    with pytest.raises(ValidationError) as caught:
        enricher.enrich(app("alien_invasion", 28.19, 113.1))
    assert caught.value.context["field"] == "category"


def test_partition_key_is_the_street_or_the_district_desk(ref, enricher):
    assert case_partition_key(enricher.enrich(app(lat=centre(ref.grids["G-S07-C01-001"])[0], lon=centre(ref.grids["G-S07-C01-001"])[1]))) == "S07"
    assert case_partition_key(enricher.enrich(app())) == "DESK-D01"


def test_case_id_is_derived_from_street_utc_day_and_first_report(ref, enricher):
    local_morning = datetime(2024, 6, 3, 7, 0, tzinfo=timezone(timedelta(hours=8)))  # 2024-06-02 23:00 UTC
    lat, lon = centre(ref.grids["G-S07-C01-001"])
    enriched = enricher.enrich(app(lat=lat, lon=lon, report_id="app:abc", at=local_morning))
    assert case_id_for(enriched) == f"S07-20240602-{hashlib.sha256(b'app:abc').hexdigest()[:10]}"
    assert case_id_for(enricher.enrich(app(report_id="app:abc", at=local_morning))).startswith("DESK-D01-20240602-")


@pytest.mark.parametrize("a, b, category, expected", [
    ("G-S01-C01-001", "G-S01-C01-002", None, "C-S01-01"),
    ("G-S01-C01-001", "G-S01-C02-001", "garbage", "S01"),
    ("G-S01-C01-001", "G-S02-C01-001", "drainage_blockage", "DEP-WATER"),
    ("G-S01-C01-001", "G-S02-C01-001", None, "DESK-D01"),
    ("S01", "S02", "noise", "DEP-ECOLOGY"),
    ("C-S01-01", "G-S01-C01-003", "garbage", "C-S01-01"),
    ("DESK-S01", "G-S01-C02-001", "garbage", "S01"),
    ("DESK-S01", "DESK-S02", "garbage", "DEP-URBAN"),
    ("G-S01-C01-001", "DEP-WATER", "drainage_blockage", "DEP-WATER"),
    ("G-S01-C01-001", "DEP-HOUSING", "drainage_blockage", "SUP"),
    ("DEP-WATER", "DEP-URBAN", None, "SUP"),
    ("DESK-D01", "S03", "garbage", "SUP"),
    ("SUP", "G-S04-C01-001", "garbage", "SUP"),
    ("DIS", "DEP-FIRE", None, "DIS"),
    ("G-S01-C01-001", "G-S01-C01-001", None, "G-S01-C01-001"),
])
def test_common_parent_settles_a_dispute_at_the_lowest_shared_unit(ref, a, b, category, expected):
    assert common_parent(ref, a, b, category).unit_id == expected
    assert common_parent(ref, b, a, category).unit_id == expected


@pytest.mark.parametrize("a, b, category", [("G-S01-C01-001", "G-NOPE", None), ("G-S01-C01-001", "S02", "alien_invasion")])
def test_common_parent_refuses_unknown_units_and_categories(ref, a, b, category):
    with pytest.raises(DomainError):
        common_parent(ref, a, b, category)


def test_point_lookup_is_about_a_microsecond(ref):
    rng = random.Random(11)
    points = [(rng.uniform(28.168, 28.214), rng.uniform(113.070, 113.126)) for _ in range(50_000)]
    locate = ref.spatial.locate
    started = time.perf_counter()
    found = [locate(lat, lon) for lat, lon in points]
    per_point_us = (time.perf_counter() - started) / len(points) * 1e6
    assert sum(isinstance(f, Grid) for f in found) > 30_000
    assert per_point_us < 10, f"{per_point_us:.2f} µs per point"


# -- per-area exceptions to the responsibility matrix (exceptions.geojson) ---------------------------------------------


def test_inside_a_property_managed_compound_its_manager_takes_the_grid_rung_for_the_listed_categories(ref, enricher):
    compound = ref.exception_areas["PM-S01-001"]
    lat, lon = centre(compound)
    inside = enricher.enrich(app("garbage", lat, lon))
    assert [u.unit_id for u in inside.chain] == ["PM-XJHY", "C-S01-01", "S01", "DEP-URBAN", "SUP", "DIS"]
    assert inside.chain[0].tier == Tier.GRID and inside.location.grid_id == "G-S01-C01-001"
    assert inside.flags == ("property_managed:PM-S01-001",)
    unlisted = enricher.enrich(app("neighbour_dispute", lat, lon))  # not the manager's: the grid team's, as anywhere
    assert unlisted.chain[0].unit_id == "G-S01-C01-001" and unlisted.flags == ()
    outside = enricher.enrich(app("garbage", lat + 0.0006, lon))  # the same grid, outside the compound (negative control)
    assert outside.location.grid_id == "G-S01-C01-001" and outside.chain[0].unit_id == "G-S01-C01-001" and outside.flags == ()


def test_on_a_trunk_road_its_department_takes_the_listed_categories_first(ref, enricher):
    road = ref.exception_areas["TR-HONGQI-S07"]
    lat, lon = centre(road)
    on_road = enricher.enrich(app("garbage", lat, lon))
    assert [u.unit_id for u in on_road.chain] == ["DEP-URBAN", "SUP", "DIS"] and on_road.flags == ("trunk_road:TR-HONGQI-S07",)
    assert on_road.location.grid_id is not None  # still placed on its grid (and street: the case stream's key)
    off_road = enricher.enrich(app("garbage", lat, lon + 0.003))
    assert off_road.chain[0].tier == Tier.GRID and off_road.flags == ()
