"""Open311 GeoReport v2 mapping: services, service requests -> app reports, queries, case progress -> status."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.catalog import default_catalog
from schemas.serde import Serde
from streams.domain.pii import PersonalDataHasher
from streams.domain.sla import load_policies, policy_in_force
from whistle.edges import open311
from whistle.ground.errors import ValidationError

NOW = datetime(2025, 6, 12, 8, 0, tzinfo=UTC)
HASHER = PersonalDataHasher("test-key")
SERDE = Serde(default_catalog())


@pytest.fixture(scope="module")
def ref():
    from streams.domain.reference import load_reference

    return load_reference()


def post(ref, **fields):
    base = {"service_code": "drainage_blockage", "lat": "27.8307", "long": "113.1402", "email": "Li.Wei@example.cn",
            "description": "下水道堵了", "media_url": "https://img.example.cn/1.jpg"}
    return open311.app_event({k: v for k, v in {**base, **fields}.items() if v is not None}, report_id="o311-1", received_at=NOW,
                             hasher=HASHER, jurisdiction_id=ref.district_id, gazetteer=ref.gazetteer,
                             validate=lambda r: SERDE.validate("AppEvent", r))


def problems_of(ref, **fields):
    with pytest.raises(ValidationError) as caught:
        post(ref, **fields)
    return dict(caught.value.problems)


@pytest.fixture(scope="module")
def policy():
    return policy_in_force(load_policies(), NOW)


def test_every_category_is_a_service_with_keywords_and_its_department_as_group(ref, policy):
    services = {s.service_code: s.as_json() for s in open311.services(default_catalog().categories.values(), ref, policy)}
    assert list(services) == list(default_catalog().categories)
    garbage = services["garbage"]
    assert garbage["metadata"] is True and garbage["type"] == "realtime"
    assert "垃圾清运" in garbage["keywords"].split(",")
    assert garbage["group"] == ref.departments[ref.categories["garbage"].owner_department_id].name


def test_a_service_request_becomes_a_resident_report_with_a_hashed_reporter(ref):
    name, report = post(ref, address_string="建设北路17号")["event"]
    assert name.endswith("ResidentReport")
    assert (report["category"], report["lat"], report["lon"]) == ("drainage_blockage", 27.8307, 113.1402)
    assert report["reported_at"] == NOW and report["photo_refs"] == ["https://img.example.cn/1.jpg"]
    assert report["address_text"] == "建设北路17号"
    assert "li.wei" not in report["reporter_id"].lower() and report["reporter_id"].startswith("o311-email-")


def test_the_same_person_gets_the_same_pseudonym_however_they_write_it(ref):
    def reporter(**identity):
        return post(ref, **{"email": None, **identity})["event"][1]["reporter_id"]

    assert reporter(email="Li.Wei@Example.CN") == reporter(email=" li.wei@example.cn ")
    assert reporter(phone="+86 138-1234-5678") == reporter(phone="13812345678")
    assert reporter(account_id="u-1") != reporter(device_id="u-1")


def test_every_invalid_field_is_named_as_the_client_sent_it(ref):
    problems = problems_of(ref, service_code="potholes", lat="north", long=None, lon="113.1", description="x" * 4001,
                           media_url="ftp://x", email=None, **{"attribute[depth]": "3"})
    assert set(problems) == {"service_code", "lat", "long", "lon", "description", "media_url", "email", "attribute[depth]"}
    assert "Open311 calls it long" in problems["lon"]
    assert problems["description"] == "is 4001 characters long, the limit is 4000"


def test_out_of_range_coordinates_and_bad_identities_are_refused(ref):
    assert problems_of(ref, lat="95") == {"lat": "95.0 is above 90.0"}
    assert set(problems_of(ref, email=None, phone="call me")) == {"phone"}
    assert set(problems_of(ref, email="nobody")) == {"email"}
    assert set(problems_of(ref, jurisdiction_id="elsewhere.gov")) == {"jurisdiction_id"}


def test_a_query_defaults_to_the_last_90_days_and_may_not_span_more():
    query = open311.request_query({}, now=NOW, service_codes={"garbage"})
    assert (query.start, query.end, query.statuses, query.limit) == (NOW - timedelta(days=90), NOW, ("open", "closed"), 1000)
    narrowed = open311.request_query({"service_code": "garbage", "status": "closed", "start_date": "2025-06-01T00:00:00+08:00"},
                                     now=NOW, service_codes={"garbage"})
    assert narrowed.start == datetime(2025, 5, 31, 16, tzinfo=UTC) and narrowed.statuses == ("closed",)
    with pytest.raises(ValidationError) as caught:
        open311.request_query({"start_date": "2025-01-01T00:00:00Z", "end_date": "2025-06-01", "status": "pending",
                               "service_code": "potholes", "pages": "2"}, now=NOW, service_codes={"garbage"})
    assert {field for field, _ in caught.value.problems} == {"end_date", "status", "service_code", "pages"}


def test_ids_are_a_comma_separated_list():
    query = open311.request_query({"service_request_id": "o311-a, o311-b,o311-a"}, now=NOW, service_codes=())
    assert query.ids == ("o311-a", "o311-b")


def progress(**changes):
    base = dict(report_id="o311-1", category="garbage", description="垃圾", lat=27.83, lon=113.14, address_text=None,
                media_url=None, requested_at=NOW)
    return open311.RequestProgress(**{**base, **changes})


def test_a_report_not_yet_a_case_is_open_and_received(ref):
    request = open311.service_request(progress(), ref, {"garbage": "Garbage piled up"}, full=True)
    assert (request["status"], request["status_notes"], request["service_name"]) == ("open", "received", "Garbage piled up")
    assert request["requested_datetime"] == request["updated_datetime"] == "2025-06-12T08:00:00Z"


def test_a_case_status_follows_its_latest_event_and_names_the_unit_responsible(ref):
    unit_id, unit = next(iter(ref.units.items()))
    later = NOW + timedelta(hours=5)
    dispatched = open311.service_request(progress(case_id="C1", own_kind="opened", last_kind="dispatched", updated_at=later,
                                                  assignee_unit_id=unit_id), ref, {}, full=True)
    assert (dispatched["status"], dispatched["agency_responsible"]) == ("open", unit.name)
    assert dispatched["updated_datetime"] == "2025-06-12T13:00:00Z"
    closed = open311.service_request(progress(case_id="C1", own_kind="report_merged", last_kind="closed"), ref, {}, full=True)
    assert closed["status"] == "closed" and "merged" in closed["status_notes"]


def test_someone_elses_request_shows_only_its_public_fields_and_the_block_not_the_door(ref):
    """GeoReport's GET is public, personal data is not: a description with a name and a phone, a home address and a
    photo leave only for the integrator that filed the request."""
    private = progress(description="请回电 137 3100 2288 张三", address_text="建设路19号3栋2单元401", media_url="https://img.example/1.jpg",
                       lat=27.830712, lon=113.140251)
    public = open311.service_request(private, ref, {}, full=False)
    assert set(public) == set(open311.PUBLIC_FIELDS)
    assert not {"description", "address", "media_url"} & set(public)
    assert (public["lat"], public["long"]) == (27.831, 113.14)
    own = open311.service_request(private, ref, {}, full=True)  # the negative control: its filer sees everything
    assert (own["description"], own["address"], own["media_url"], own["lat"]) == (private.description, private.address_text,
                                                                                   private.media_url, 27.830712)


def test_feedback_takes_a_rating_or_a_reopening_with_the_reporters_identity():
    given = open311.feedback({"rating": "2", "description": "还是很脏", "email": "Resident@Example.cn"}, HASHER)
    assert (given.rating, given.reopen, given.comment) == (2, False, "还是很脏")
    again = open311.feedback({"reopen": "true", "email": "resident@example.cn"}, HASHER)
    assert (again.rating, again.reopen) == (None, True)
    assert again.pseudonym == given.pseudonym  # the same reporter, however the address is cased: one keyed hash


@pytest.mark.parametrize("fields, named", [
    ({"rating": "6", "email": "a@b.cn"}, "rating"),
    ({"rating": "2", "reopen": "true", "email": "a@b.cn"}, "rating"),
    ({"email": "a@b.cn"}, "rating"),
    ({"rating": "3"}, "email"),
    ({"rating": "3", "email": "a@b.cn", "unit_id": "S01"}, "unit_id"),
    ({"reopen": "maybe", "email": "a@b.cn"}, "reopen"),
])
def test_bad_feedback_is_refused_naming_the_field(fields, named):
    with pytest.raises(ValidationError) as refused:
        open311.feedback(fields, HASHER)
    assert named in {field for field, _ in refused.value.problems}
