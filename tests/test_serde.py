"""The wire format, validation messages, domain conversion and personal-data hashing."""
from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO

import pytest
from fastavro import schemaless_reader, schemaless_writer

from schemas.catalog import default_catalog, schema_fingerprint
from schemas.codec import Codec
from schemas.registry import LocalSchemaRegistry
from schemas.serde import Serde, from_record, record_name, to_branch, to_record
from streams.domain.model import ActionKind, EnrichedReport, HandlingAction, Location, Report, Source, Tier, Unit, Urgency
from streams.domain.pii import PersonalDataHasher, normalize_phone
from whistle.ground.errors import ConfigError, DecodeError, ValidationError
from whistle.ground.settings import Secret

CATALOG = default_catalog()
SERDE = Serde(CATALOG)
CONFLUENT = Serde(CATALOG, LocalSchemaRegistry(CATALOG))
EXAMPLES = [(spec.schema, example) for spec in CATALOG.topics.values() for example in spec.examples]
AT = datetime(2025, 6, 12, 1, 2, 3, 456000, tzinfo=UTC)


def camera(**changes):
    return {**CATALOG.topic("whistle.raw.camera").examples[0], **changes}


def enriched_report() -> EnrichedReport:
    report = Report(
        report_id="hotline:12345-1", source=Source.HOTLINE, occurred_at=AT, category="ebike_charging_hazard",
        urgency=Urgency.URGENT, description="charging in the stairwell", address_text="建设北路 17号",
        reporter_hash="ab" * 32, media=("s3://x/1.jpg",),
    )
    location = Location("D-SHIFENG", "ST03", None, None, 27.8, 113.1, "gazetteer")
    chain = (Unit("street-ST03", Tier.STREET, "Qingshuitang"), Unit("discipline", Tier.DISCIPLINE, "Commission"))
    return EnrichedReport(report, location, chain, ("address_unresolved",))


@pytest.mark.parametrize("serde", [SERDE, CONFLUENT], ids=["single-object", "confluent"])
@pytest.mark.parametrize(("schema", "example"), EXAMPLES)
def test_every_example_round_trips(serde, schema, example):
    record = serde.validate(schema, example)
    decoded = serde.decode(serde.encode(schema, record), expect=schema)
    assert decoded.schema == schema and decoded.record == record


@pytest.mark.parametrize(("schema", "example"), EXAMPLES)
def test_the_compiled_codec_writes_and_reads_what_fastavro_does(schema, example):
    """cavro (schemas.codec) is used for speed only: its bytes and records must be fastavro's, on every example."""
    version = CATALOG.schema(schema)
    record = SERDE.validate(schema, example)
    reference = BytesIO()
    schemaless_writer(reference, version.parsed, record)
    codec = Codec(version.definition, version.parsed)
    assert codec.write(record) == reference.getvalue()
    assert codec.read(BytesIO(reference.getvalue())) == schemaless_reader(BytesIO(reference.getvalue()), version.parsed, None, True, True)


def test_the_compiled_codec_leaves_what_cavro_refuses_to_fastavro():
    """A bool where a long belongs: cavro refuses it, fastavro writes it (as 1): the bytes stay fastavro's."""
    version = CATALOG.schema("CaseEvent")
    codec = Codec(version.definition, version.parsed)
    event = {name: None for name in (f["name"] for f in version.definition["fields"])}
    event.update(event_id="c:1", case_id="c", seq=True, kind="opened", at=AT, cause_id="r", assignee_unit_id="u", assignee_tier="grid",
                 category="ebike_charging_hazard", urgency="urgent", district_id="D", policy_version="policy-v1", prev_hash="0" * 64, hash="1" * 64)
    with pytest.raises(ValueError):
        codec.compiled.binary_encode(event)
    reference = BytesIO()
    schemaless_writer(reference, version.parsed, event)
    assert codec.write(event) == reference.getvalue()


def test_single_object_header_carries_the_spec_fingerprint():
    # Avro specification test vector: CRC-64-AVRO of the canonical form "null" is 7195948357588979594
    assert schema_fingerprint("null")[1] == (7195948357588979594).to_bytes(8, "little")
    data = SERDE.encode("CameraDetection", SERDE.validate("CameraDetection", camera()))
    assert data[:2] == b"\xc3\x01" and data[2:10] == CATALOG.schema("CameraDetection").fingerprint


def test_confluent_framing_uses_registry_ids_and_needs_a_registry_to_decode():
    data = CONFLUENT.encode("CameraDetection", SERDE.validate("CameraDetection", camera()))
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == LocalSchemaRegistry.id_of(CATALOG.schema("CameraDetection").fingerprint)
    with pytest.raises(DecodeError, match="no schema registry is configured"):
        SERDE.decode(data)


def test_data_written_with_an_old_release_decodes_into_the_current_schema_in_both_framings():
    record = SERDE.validate("CameraDetection", camera())
    assert SERDE.encode("CameraDetection", record, release=1)[2:10] == CATALOG.release("CameraDetection", 1).fingerprint
    for serde in (SERDE, CONFLUENT):
        decoded = serde.decode(serde.encode("CameraDetection", record, release=1))
        assert decoded.writer.release == 1
        assert decoded.record == {**record, "bbox": None}


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty value"),
    (b'{"camera_id": "cam-1"}', "unknown framing: first bytes 7b22"),
    (b"\xc3\x01" + bytes(8) + b"\x02", "unknown schema fingerprint 0000000000000000"),
    (b"\xc3\x01\x01", "single-object header cut short"),
])
def test_undecodable_bytes_raise_decode_error_saying_why(data, reason):
    with pytest.raises(DecodeError, match=reason):
        SERDE.decode(data)


def test_truncated_and_padded_bodies_and_unexpected_types_are_decode_errors():
    data = SERDE.encode("CameraDetection", SERDE.validate("CameraDetection", camera()))
    with pytest.raises(DecodeError, match="CameraDetection body does not decode"):
        SERDE.decode(data[:-5])
    with pytest.raises(DecodeError, match="2 bytes left after the CameraDetection body"):
        SERDE.decode(data + b"\x00\x00")
    with pytest.raises(DecodeError, match="expected a HotlineTicket record, got CameraDetection"):
        SERDE.decode(data, expect="HotlineTicket")


@pytest.mark.parametrize(("record", "field", "reason"), [
    (camera(confidence=1.7), "confidence", "1.7 is above 1.0"),
    (camera(lat=91), "lat", "91.0 is above 90.0"),
    (camera(detected_at="2025-06-12T08:15:02"), "detected_at", "2025-06-12T08:15:02 has no time zone"),
    (camera(detected_at="yesterday"), "detected_at", "'yesterday' is not an ISO 8601 date-time"),
    (camera(confidence="high"), "confidence", "expected a number, got a string"),
    (camera(camera_id=42), "camera_id", "expected a string, got an integer"),
    (camera(detection_id="  "), "detection_id", "must not be empty"),
    (camera(category="pothole"), "category", "'pothole' is not a known code"),
    (camera(bbox={"x": 0.1, "y": 0.2, "width": 1.5, "height": 0.1}), "bbox.width", "1.5 is above 1.0"),
    (camera(colour="red"), "colour", "unknown field"),
    ({k: v for k, v in camera().items() if k != "snapshot_ref"}, "snapshot_ref", "is required"),
])
def test_invalid_fields_are_named_with_the_reason(record, field, reason):
    with pytest.raises(ValidationError) as caught:
        SERDE.validate("CameraDetection", record)
    (problem,) = caught.value.problems
    assert problem[0] == field and reason in problem[1]
    assert str(caught.value).startswith(f"{field}: {reason}")


def test_every_problem_of_a_record_is_reported_at_once():
    with pytest.raises(ValidationError) as caught:
        SERDE.validate("CameraDetection", camera(confidence=-0.1, lat=-100, model_version=""))
    assert [field for field, _ in caught.value.problems] == ["confidence", "lat", "model_version"]
    assert caught.value.context["field"] == "confidence"


@pytest.mark.parametrize(("action", "field", "reason"), [
    ({"kind": "transfer"}, "event.reason", "is required when kind is transfer"),
    ({"kind": "rate"}, "event.rating", "is required when kind is rate"),
    ({"kind": "rate", "rating": 0}, "event.rating", "0 is below 1"),
    ({"kind": "request_extension", "extension_hours": 721}, "event.extension_hours", "721 is above 720"),
    ({"kind": "approve"}, "event.kind", "'approve' is not one of accept, transfer"),
])
def test_handling_action_rules(action, field, reason):
    event = {"action_id": "a-1", "case_id": "c-1", "unit_id": "u-1", "at": "2025-06-12T09:00:00+08:00", **action}
    with pytest.raises(ValidationError) as caught:
        SERDE.validate("AppEvent", {"event": {"HandlingAction": event}})
    assert caught.value.problems[0][0] == field and reason in caught.value.problems[0][1]


def test_a_union_value_must_name_its_record_type():
    report = CATALOG.topic("whistle.raw.app").examples[0]["event"]["ResidentReport"]
    with pytest.raises(ValidationError, match='event: must name its record type'):
        SERDE.validate("AppEvent", {"event": report})
    as_tuple = SERDE.validate("AppEvent", {"event": ("ResidentReport", report)})
    assert as_tuple == SERDE.validate("AppEvent", {"event": {"org.whistle.v1.ResidentReport": report}})
    assert as_tuple["event"][0] == "org.whistle.v1.ResidentReport"


def test_times_become_utc_milliseconds_whatever_the_input_offset():
    record = SERDE.validate("CameraDetection", camera(detected_at="2025-06-12T08:15:02.117999+08:00"))
    assert record["detected_at"] == datetime(2025, 6, 12, 0, 15, 2, 117000, tzinfo=UTC)


def test_out_of_range_bytes_on_a_topic_fail_decoding_as_invalid_not_silently():
    bad = SERDE.validate("CameraDetection", camera()) | {"confidence": 1.7}
    data = SERDE.encode("CameraDetection", bad, validate=False)
    with pytest.raises(ValidationError, match=r"^confidence: 1.7 is above 1.0"):
        SERDE.decode(data)
    with pytest.raises(ValidationError, match="confidence: 1.7 is above 1.0"):
        SERDE.encode("CameraDetection", bad)


def test_domain_objects_round_trip_through_the_case_inbox():
    report = enriched_report()
    action = HandlingAction("a-9", "ST03-20250612-x", ActionKind.REQUEST_EXTENSION, "street-ST03", AT, reason="waiting for parts", extension_hours=48)
    for obj in (report, action):
        decoded = SERDE.decode(SERDE.encode("CaseInboxEvent", {"event": to_branch(obj)}), expect="CaseInboxEvent")
        name, record = decoded.record["event"]
        assert name == record_name(type(obj))
        assert from_record(type(obj), record) == obj


def test_enriched_report_travels_flat_with_location_prefixed():
    record = to_record(enriched_report())
    assert record["report_id"] == "hotline:12345-1" and record["source"] == "hotline" and record["urgency"] == "urgent"
    assert record["location_street_id"] == "ST03" and record["location_resolved_by"] == "gazetteer"
    assert record["chain"][0] == {"unit_id": "street-ST03", "tier": "street", "name": "Qingshuitang"}
    assert record["media"] == ["s3://x/1.jpg"] and record["flags"] == ["address_unresolved"]


def test_a_naive_datetime_in_a_domain_object_is_refused():
    action = HandlingAction("a-1", "c-1", ActionKind.ACCEPT, "u-1", datetime(2025, 6, 12, 9, 0))  # noqa: DTZ001 (a naive datetime is the input under test)
    with pytest.raises(ValidationError, match="event.at: 2025-06-12T09:00:00 has no time zone"):
        SERDE.encode("AppEvent", {"event": to_branch(action)})


def test_an_unknown_schema_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown schema 'Camera'"):
        SERDE.validate("Camera", {})


# ---- personal data

HASHER = PersonalDataHasher(Secret("test-key"))


@pytest.mark.parametrize("spelling", ["+86 138-1234-5678", "0086 13812345678", "8613812345678", "138 1234 5678", "１３８１２３４５６７８"])
def test_every_spelling_of_a_mobile_number_hashes_the_same(spelling):
    assert normalize_phone(spelling) == "13812345678"
    assert HASHER.phone(spelling) == HASHER.phone("13812345678")


def test_landlines_keep_their_trunk_zero_when_written_internationally():
    assert normalize_phone("+86 10 6512 3456") == normalize_phone("010-6512 3456") == "01065123456"
    assert normalize_phone("+86 755 8888 9999") == "075588889999"


def test_hashes_depend_on_the_key_and_never_show_the_number():
    other = PersonalDataHasher(Secret("another-key"))
    digest = HASHER.phone("13812345678")
    assert digest != other.phone("13812345678") and digest != HASHER.phone("13812345679")
    assert len(digest) == 64 and "13812345678" not in digest
    assert HASHER.reporter("u-20931") == HASHER.reporter(" u-20931 ") != other.reporter("u-20931")


def test_bad_phone_numbers_and_an_empty_key_are_refused():
    with pytest.raises(ValidationError, match="is not a phone number"):
        normalize_phone("call me maybe")
    with pytest.raises(ValidationError, match="caller_phone: 'n/a' is not a phone number"):
        SERDE.validate("HotlineTicket", {**CATALOG.topic("whistle.raw.hotline").examples[0], "caller_phone": "n/a"})
    with pytest.raises(ConfigError, match="WHISTLE_PII_HMAC_KEY is empty"):
        PersonalDataHasher(Secret(""))


def test_registry_ids_are_unique_over_every_known_schema():
    registry = LocalSchemaRegistry(CATALOG)
    ids = {registry.id_of(fp) for fp in CATALOG.by_fingerprint}
    assert len(ids) == len(CATALOG.by_fingerprint)
    assert {registry.lookup(i)["name"] for i in ids} == set(CATALOG.schemas)
    unknown = next(i for i in range(1, 1000) if i not in ids)
    with pytest.raises(DecodeError, match=f"schema id {unknown} is not among the local schema files"):
        registry.lookup(unknown)
