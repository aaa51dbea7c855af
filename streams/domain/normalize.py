"""Raw channel records (typed at the serializer) -> one canonical `Report`, whatever the channel.

Each channel's quirks live in its own function here and nowhere else:

camera   report id "camera:<integrator>:<detection_id>" (ids are scoped by the sender: `scoped_report_id`); the snapshot is the evidence (media); urgency is the
         category's default. Low-confidence detections are NOT rejected: they become reports like
         any other and enrich routes them to a dispatch desk for review (the threshold is per
         category in the reference data, since a model's precision differs by category and a
         missed fire costs more than a false one). Dropping them would hide data from auditors.
hotline  report id "hotline:<integrator>:<ticket_id>"; the operator's category may be a code or one of the
         operator labels listed in the reference data (categories.json, hotline.yaml: 垃圾清运 -> garbage,
         井盖缺失 -> road_damage; the schema takes any label, an unknown one is refused here, naming it); an empty address
         becomes None (enrich sends it to the district desk, flagged); the caller's phone leaves
         only as a keyed hash (`hash_phone`, streams.domain.pii).
app      report id "app:<integrator>:<report_id>"; the account id leaves only as a keyed hash (`hash_reporter`);
         (0, 0) coordinates are a phone's "no fix" and count as absent, so the typed address (if
         any) is used instead.

Coordinates (camera and app) come in the system their source declares (`coord_system`: wgs84, gcj02 from
Amap/Tencent SDKs, bd09 from Baidu's) and leave as WGS-84, the map's system (streams.domain.coords).

Free text (every channel's `description` and `address_text`) leaves only redacted
(streams.domain.redact): phone, ID-card numbers and e-mail addresses typed into it become fixed
marks ([电话], [身份证], [邮箱]); the raw topics keep what was sent.

Urgency everywhere: the higher of what the channel says and the category's default: an operator
may raise urgency but a gas leak is always an emergency.
Times: UTC-aware datetimes (fastavro's decoding of timestamp-millis) or epoch milliseconds;
naive datetimes are refused.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.domain.coords import COORD_SYSTEMS, to_wgs84
from streams.domain.model import CameraDetection, HotlineTicket, Report, ResidentReport, Source, Urgency, scoped_report_id
from streams.domain.redact import redact
from streams.domain.reference import DistrictReference
from whistle.ground.errors import ValidationError

HashPii = Callable[[str], str]
RawRecord = CameraDetection | HotlineTicket | ResidentReport
_URGENCY_RANK = {urgency: rank for rank, urgency in enumerate(Urgency)}
_URGENCIES = {urgency.value: urgency for urgency in Urgency}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def normalize_camera(record: CameraDetection, reference: DistrictReference, integrator: str) -> Report:
    """An AI camera detection (whistle.raw.camera) as a Report."""
    source = "camera"
    category = _category(reference, record, "category", source)
    confidence = record.confidence
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 <= confidence <= 1.0:
        raise _invalid(source, "confidence", f"must be a number in [0, 1], got {confidence!r}")
    camera_id = _text(record, "camera_id", source)
    lat, lon = _coordinates(record, source)
    return Report(
        report_id=scoped_report_id(source, integrator, _text(record, 'detection_id', source)),
        source=Source.CAMERA,
        occurred_at=_instant(record, "detected_at", source),
        category=category,
        urgency=reference.categories[category].default_urgency,
        description=redact(f"camera {camera_id} detected {category} (confidence {confidence:.2f}, model {_text(record, 'model_version', source)})")[0],
        lat=lat,
        lon=lon,
        camera_id=camera_id,
        media=(_text(record, "snapshot_ref", source),),
        confidence=float(confidence),
    )


def normalize_hotline(record: HotlineTicket, reference: DistrictReference, hash_phone: HashPii, integrator: str) -> Report:
    """A 12345 hotline ticket (whistle.raw.hotline) as a Report; the caller's phone only as its keyed hash."""
    source = "hotline"
    category = _category(reference, record, "operator_category", source)
    phone = record.caller_phone
    try:
        reporter_hash = hash_phone(phone) if phone else None
    except ValidationError as exc:
        raise exc.with_context(source=source, field="caller_phone") from exc
    address = record.address_text
    if address is not None and not isinstance(address, str):
        raise _invalid(source, "address_text", f"must be a string, got {type(address).__name__}")
    return Report(
        report_id=scoped_report_id(source, integrator, _text(record, 'ticket_id', source)),
        source=Source.HOTLINE,
        occurred_at=_instant(record, "received_at", source),
        category=category,
        urgency=_urgency(reference, category, record.urgency, source),
        description=_description(record, source),
        address_text=_redacted(address.strip() or None) if address else None,
        reporter_hash=reporter_hash,
    )


def normalize_app_report(record: ResidentReport, reference: DistrictReference, hash_reporter: HashPii, integrator: str) -> Report:
    """A resident's or grid worker's app report (ResidentReport in whistle.raw.app) as a Report."""
    source = "app"
    category = _category(reference, record, "category", source)
    lat, lon = _coordinates(record, source)
    address = record.address_text
    photos = record.photo_refs or ()
    if not isinstance(photos, (list, tuple)) or not all(isinstance(p, str) and p for p in photos):
        raise _invalid(source, "photo_refs", "must be a list of non-empty strings")
    return Report(
        report_id=scoped_report_id(source, integrator, _text(record, 'report_id', source)),
        source=Source.APP,
        occurred_at=_instant(record, "reported_at", source),
        category=category,
        urgency=reference.categories[category].default_urgency,
        description=_description(record, source),
        lat=lat,
        lon=lon,
        address_text=_redacted(address.strip() or None) if isinstance(address, str) else None,
        reporter_hash=hash_reporter(_text(record, "reporter_id", source)),
        reporter_role=_text(record, "reporter_role", source),
        media=tuple(photos),
    )


def _text(record: RawRecord, field: str, source: str) -> str:
    value = getattr(record, field)
    if not isinstance(value, str) or not value.strip():
        raise _invalid(source, field, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _description(record: HotlineTicket | ResidentReport, source: str) -> str:
    value = record.description
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid(source, "description", f"must be a string, got {type(value).__name__}")
    return redact(value.strip())[0]


def _redacted(text: str | None) -> str | None:
    """Free text with personal data replaced by marks (streams.domain.redact); None stays None."""
    return None if text is None else redact(text)[0]


def _category(reference: DistrictReference, record: RawRecord, field: str, source: str) -> str:
    label = getattr(record, field)
    code = reference.category_for_label(label) if isinstance(label, str) else None
    if code is None:
        raise _invalid(source, field, f"{label!r} is not a category code nor an operator label of {reference.version} "
                                      f"(categories.json, hotline.yaml {reference.hotline_version})")
    return code


def _urgency(reference: DistrictReference, category: str, stated: Any, source: str) -> Urgency:
    floor = reference.categories[category].default_urgency
    if stated is None:
        return floor
    urgency = _URGENCIES.get(stated.value if isinstance(stated, Urgency) else stated)
    if urgency is None:
        raise _invalid(source, "urgency", f"must be one of {list(_URGENCIES)}, got {stated!r}")
    return urgency if _URGENCY_RANK[urgency] > _URGENCY_RANK[floor] else floor


def _instant(record: RawRecord, field: str, source: str) -> datetime:
    value = getattr(record, field)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _invalid(source, field, f"{value.isoformat()} has no time zone; Whistle only takes UTC-aware times")
        return value if value.tzinfo is UTC else value.astimezone(UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH + timedelta(milliseconds=value)
    raise _invalid(source, field, f"must be a UTC-aware datetime or epoch milliseconds, got {value!r}")


def _coordinates(record: CameraDetection | ResidentReport, source: str) -> tuple[float | None, float | None]:
    lat, lon = record.lat, record.lon
    if lat is None and lon is None:
        return None, None
    for field, value, limit in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > limit:
            raise _invalid(source, field, f"must be a finite number within ±{limit:g} (with lat and lon both given), got {value!r}")
    if lat == 0 and lon == 0:
        return None, None
    assert lat is not None and lon is not None  # both checked above to be finite numbers
    system = record.coord_system
    if system not in COORD_SYSTEMS:
        raise _invalid(source, "coord_system", f"must be one of {list(COORD_SYSTEMS)}, got {system!r}")
    return to_wgs84(system, float(lat), float(lon))


def _invalid(source: str, field: str, message: str) -> ValidationError:
    return ValidationError(f"{source} record: {field} {message}", field=field, source=source)
