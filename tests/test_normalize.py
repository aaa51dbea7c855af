"""Each channel's raw record becomes one canonical Report; personal data only as keyed hashes."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from schemas.serde import from_record
from streams.domain.model import CameraDetection, HotlineTicket, ResidentReport, Source, Urgency
from streams.domain.normalize import normalize_app_report, normalize_camera, normalize_hotline
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from whistle.ground.errors import ValidationError

AT = datetime(2024, 6, 3, 1, 2, 3, 456000, tzinfo=UTC)
HASHER = PersonalDataHasher("test-key")
SENDER = "acme"  # the integrator whose credential sent the record: ids are scoped by it


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def detection(**changes):
    record = {"detection_id": "d-1", "camera_id": "CAM-007", "detected_at": AT, "category": "garbage", "confidence": 0.91,
              "lat": None, "lon": None, "snapshot_ref": "s3://evidence/d-1.jpg", "model_version": "gv-3.2", "bbox": None}
    return from_record(CameraDetection, {**record, **changes})


def ticket(**changes):
    record = {"ticket_id": "T-1", "received_at": AT, "caller_phone": "+86 138 1234 5678", "address_text": "建设路19号",
              "description": "  垃圾没人清运  ", "operator_category": "garbage", "urgency": "normal"}
    return from_record(HotlineTicket, {**record, **changes})


def app_report(**changes):
    record = {"report_id": "r-1", "reporter_id": "wx-user-42", "reporter_role": "resident", "reported_at": AT, "lat": 28.19,
              "lon": 113.1, "category": "noise", "description": "", "photo_refs": ["s3://a.jpg", "s3://b.jpg"], "address_text": None}
    return from_record(ResidentReport, {**record, **changes})


def test_a_camera_detection_becomes_a_report(ref):
    report = normalize_camera(detection(), ref, SENDER)
    assert (report.report_id, report.source, report.occurred_at, report.category) == ("camera:acme:d-1", Source.CAMERA, AT, "garbage")
    assert report.urgency is Urgency.NORMAL and report.camera_id == "CAM-007" and report.confidence == 0.91
    assert report.media == ("s3://evidence/d-1.jpg",) and (report.lat, report.lon) == (None, None)
    assert "CAM-007" in report.description and "gv-3.2" in report.description


def test_a_low_confidence_detection_is_kept_not_dropped(ref):
    assert normalize_camera(detection(confidence=0.05), ref, SENDER).confidence == 0.05


def test_a_geolocating_camera_keeps_the_object_position(ref):
    report = normalize_camera(detection(lat=28.2, lon=113.1), ref, SENDER)
    assert (report.lat, report.lon) == (28.2, 113.1)


@pytest.mark.parametrize("changes, field", [
    ({"confidence": 1.2}, "confidence"), ({"confidence": None}, "confidence"), ({"confidence": True}, "confidence"),
    ({"category": "ufo"}, "category"), ({"camera_id": " "}, "camera_id"), ({"detection_id": None}, "detection_id"),
    ({"lat": 28.2}, "lon"), ({"lat": float("nan"), "lon": 113.1}, "lat"), ({"lat": 28.2, "lon": 200.0}, "lon"),
    ({"detected_at": datetime(2024, 6, 3, 1, 2)}, "detected_at"), ({"detected_at": "2024-06-03"}, "detected_at"),  # noqa: DTZ001 (a naive datetime is the input under test)
    ({"snapshot_ref": ""}, "snapshot_ref"),
])
def test_a_broken_detection_is_refused_naming_the_field(ref, changes, field):
    with pytest.raises(ValidationError) as caught:
        normalize_camera(detection(**changes), ref, SENDER)
    assert caught.value.context == {"field": field, "source": "camera"}


def test_times_are_utc_whether_given_with_an_offset_or_as_epoch_milliseconds(ref):
    beijing = AT.astimezone(timezone(timedelta(hours=8)))
    assert normalize_camera(detection(detected_at=beijing), ref, SENDER).occurred_at.utcoffset() == timedelta(0)
    assert normalize_camera(detection(detected_at=beijing), ref, SENDER).occurred_at == AT
    assert normalize_camera(detection(detected_at=1717376523456), ref, SENDER).occurred_at == AT


def test_a_hotline_ticket_becomes_a_report_with_the_phone_only_hashed(ref):
    report = normalize_hotline(ticket(), ref, HASHER.phone, SENDER)
    assert (report.report_id, report.source, report.category, report.address_text) == ("hotline:acme:T-1", Source.HOTLINE, "garbage", "建设路19号")
    assert report.description == "垃圾没人清运"
    assert report.reporter_hash == HASHER.phone("13812345678")
    assert "1234" not in repr(report)


def test_the_same_caller_written_differently_hashes_the_same(ref):
    hashes = {normalize_hotline(ticket(caller_phone=p), ref, HASHER.phone, SENDER).reporter_hash for p in ("13812345678", "0086 138-1234-5678", "+86 138 1234 5678")}
    assert len(hashes) == 1


def test_a_withheld_number_has_no_reporter_hash(ref):
    assert normalize_hotline(ticket(caller_phone=None), ref, HASHER.phone, SENDER).reporter_hash is None


@pytest.mark.parametrize("label, code", [("垃圾清运", "garbage"), ("飞线充电", "ebike_charging_hazard"), ("闻到煤气味", "gas_leak"), ("road_damage", "road_damage"),
                                         ("垃圾堆放", "garbage"), (" 井盖缺失 ", "road_damage"), ("拉圾堆放", "garbage"), ("燃气泄露", "gas_leak")])
def test_operator_labels_map_to_categories(ref, label, code):
    assert normalize_hotline(ticket(operator_category=label), ref, HASHER.phone, SENDER).category == code


def test_an_unknown_operator_category_is_refused(ref):
    with pytest.raises(ValidationError) as caught:
        normalize_hotline(ticket(operator_category="其他"), ref, HASHER.phone, SENDER)
    assert caught.value.context["field"] == "operator_category"
    assert "'其他'" in caught.value.message and "hotline-v1" in caught.value.message


@pytest.mark.parametrize("category, stated, expected", [
    ("garbage", "normal", Urgency.NORMAL), ("garbage", "urgent", Urgency.URGENT), ("garbage", None, Urgency.NORMAL),
    ("gas_leak", "normal", Urgency.EMERGENCY), ("drainage_blockage", "normal", Urgency.URGENT), ("drainage_blockage", "emergency", Urgency.EMERGENCY),
])
def test_an_operator_may_raise_urgency_but_not_below_the_category_floor(ref, category, stated, expected):
    assert normalize_hotline(ticket(operator_category=category, urgency=stated), ref, HASHER.phone, SENDER).urgency is expected


def test_an_unknown_urgency_is_refused(ref):
    with pytest.raises(ValidationError, match="urgency"):
        normalize_hotline(ticket(urgency="whenever"), ref, HASHER.phone, SENDER)


@pytest.mark.parametrize("address", ["", "   ", None])
def test_an_empty_address_becomes_none(ref, address):
    assert normalize_hotline(ticket(address_text=address), ref, HASHER.phone, SENDER).address_text is None


def test_a_malformed_phone_is_refused_naming_the_field(ref):
    with pytest.raises(ValidationError) as caught:
        normalize_hotline(ticket(caller_phone="call me maybe"), ref, HASHER.phone, SENDER)
    assert caught.value.context["field"] == "caller_phone"


def test_an_app_report_becomes_a_report_with_the_account_only_hashed(ref):
    report = normalize_app_report(app_report(), ref, HASHER.reporter, SENDER)
    assert (report.report_id, report.source, report.category, report.urgency) == ("app:acme:r-1", Source.APP, "noise", Urgency.NORMAL)
    assert (report.lat, report.lon, report.reporter_role) == (28.19, 113.1, "resident")
    assert report.media == ("s3://a.jpg", "s3://b.jpg")
    assert report.reporter_hash == HASHER.reporter("wx-user-42") and "wx-user-42" not in repr(report)


def test_an_app_report_without_a_gps_fix_falls_back_to_its_address(ref):
    report = normalize_app_report(app_report(lat=0.0, lon=0.0, address_text=" 建设路19号 "), ref, HASHER.reporter, SENDER)
    assert (report.lat, report.lon, report.address_text) == (None, None, "建设路19号")


@pytest.mark.parametrize("changes, field", [
    ({"reporter_id": ""}, "reporter_id"), ({"category": None}, "category"), ({"photo_refs": [""]}, "photo_refs"),
    ({"reported_at": None}, "reported_at"), ({"lon": None}, "lon"), ({"description": 5}, "description"),
])
def test_a_broken_app_report_is_refused_naming_the_field(ref, changes, field):
    with pytest.raises(ValidationError) as caught:
        normalize_app_report(app_report(**changes), ref, HASHER.reporter, SENDER)
    assert caught.value.context["field"] == field
