"""GCJ-02 and BD-09 to WGS-84: published reference points, round trips, and what ingest does with a declared system.

Reference points: wandergis/coordtransform (test/app.js), the de-facto reference implementation, at (116.404, 39.915)
near Tiananmen: its forward transforms are the published closed forms and must agree to 1e-9 degrees (~0.1 mm); its
inverses are one-step approximations, so ours (iterated) must agree within 0.1 m and round-trip to 1e-7 degrees (~1 cm).
"""
from __future__ import annotations

import pytest

from schemas.catalog import default_catalog
from schemas.serde import Serde, from_record
from streams.domain.coords import BD09, GCJ02, WGS84, bd09_to_gcj02, bd09_to_wgs84, gcj02_to_bd09, gcj02_to_wgs84, to_wgs84, wgs84_to_gcj02
from streams.domain.enrich import haversine_m
from streams.domain.model import ResidentReport
from streams.domain.normalize import normalize_app_report
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from whistle.ground.errors import ValidationError

LAT, LON = 39.915, 116.404
FORWARD_DEG = 1e-9
INVERSE_M = 0.1
ROUND_TRIP_DEG = 1e-7
GRID_CENTRE = (28.194743, 113.11386)  # inside G-S05-C02-003 of the sample district (WGS-84)


def test_forward_transforms_match_the_published_points():
    assert wgs84_to_gcj02(LAT, LON) == pytest.approx((39.91640428150164, 116.41024449916938), abs=FORWARD_DEG)
    assert gcj02_to_bd09(LAT, LON) == pytest.approx((39.92133699351021, 116.41036949371029), abs=FORWARD_DEG)


def test_inverse_transforms_match_the_published_points_and_round_trip():
    assert haversine_m(*gcj02_to_wgs84(LAT, LON), 39.91359571849836, 116.39775550083061) < INVERSE_M
    assert haversine_m(*bd09_to_gcj02(LAT, LON), 39.90865673957631, 116.39762729119315) < INVERSE_M
    assert wgs84_to_gcj02(*gcj02_to_wgs84(LAT, LON)) == pytest.approx((LAT, LON), abs=ROUND_TRIP_DEG)
    assert gcj02_to_bd09(*bd09_to_gcj02(LAT, LON)) == pytest.approx((LAT, LON), abs=ROUND_TRIP_DEG)
    assert bd09_to_wgs84(*gcj02_to_bd09(*wgs84_to_gcj02(*GRID_CENTRE))) == pytest.approx(GRID_CENTRE, abs=ROUND_TRIP_DEG)


def test_outside_china_gcj02_is_wgs84_and_unknown_systems_are_refused():
    assert wgs84_to_gcj02(48.8584, 2.2945) == (48.8584, 2.2945)
    assert to_wgs84(WGS84, LAT, LON) == (LAT, LON)
    with pytest.raises(ValueError, match="wgs99"):
        to_wgs84("wgs99", LAT, LON)


def app_report(**changes) -> ResidentReport:
    record = {"report_id": "r-1", "reporter_id": "wx-user-42", "reporter_role": "resident", "reported_at": 1_750_000_000_000,
              "category": "noise", "description": "", "photo_refs": [], "address_text": None}
    return from_record(ResidentReport, {**record, **changes})


def test_ingest_converts_a_declared_system_and_an_unconverted_gcj02_point_lands_hundreds_of_metres_off():
    ref, hasher = load_reference(), PersonalDataHasher("k")
    gcj = wgs84_to_gcj02(*GRID_CENTRE)
    bd = gcj02_to_bd09(*gcj)
    assert ref.locate(*GRID_CENTRE).grid_id == "G-S05-C02-003"
    for system, (lat, lon) in ((GCJ02, gcj), (BD09, bd), (WGS84, GRID_CENTRE)):
        report = normalize_app_report(app_report(lat=lat, lon=lon, coord_system=system), ref, hasher.reporter, "app")
        assert (report.lat, report.lon) == pytest.approx(GRID_CENTRE, abs=ROUND_TRIP_DEG), system
        assert ref.locate(report.lat, report.lon).grid_id == "G-S05-C02-003"
    # Negative control: the GCJ-02 point taken for WGS-84 is ~680 m off, in another grid.
    assert 300 < haversine_m(*gcj, *GRID_CENTRE) < 1000
    unconverted = normalize_app_report(app_report(lat=gcj[0], lon=gcj[1]), ref, hasher.reporter, "app")
    assert ref.locate(unconverted.lat, unconverted.lon).grid_id != "G-S05-C02-003"
    with pytest.raises(ValidationError, match="coord_system"):
        normalize_app_report(app_report(lat=gcj[0], lon=gcj[1], coord_system="mars"), ref, hasher.reporter, "app")


def test_the_schemas_default_to_wgs84_and_refuse_an_unknown_system():
    serde = Serde(default_catalog())
    camera = default_catalog().topic("whistle.raw.camera").examples[0]
    assert serde.validate("CameraDetection", camera)["coord_system"] == WGS84
    assert serde.validate("CameraDetection", {**camera, "coord_system": BD09})["coord_system"] == BD09
    with pytest.raises(ValidationError) as refused:
        serde.validate("CameraDetection", {**camera, "coord_system": "mars"})
    assert [field for field, _ in refused.value.problems] == ["coord_system"]
