"""Open311 GeoReport v2 mapping: services, service requests -> app reports, queries, case progress -> status."""
from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import orjson
import pytest
from test_gateway import APP_KEY, Clock, _stored_request, gw_settings, keys, publisher, serve, topic_records  # noqa: F401  (fixtures)

from schemas.catalog import default_catalog
from schemas.serde import Serde, from_record, to_record
from sinks.clickhouse import ServerEngine
from sinks.sink import CASE_EVENT_COLUMNS, case_event_values
from streams.domain.calendar import load_calendar
from streams.domain.case import Kind, fold
from streams.domain.enrich import Enricher, common_parent
from streams.domain.model import ActionKind, HandlingAction, ResidentReport
from streams.domain.normalize import normalize_app_report
from streams.domain.pii import PersonalDataHasher
from streams.domain.sla import CaseBook, DeadlineKind, deadlines_for, load_policies, policy_in_force
from whistle.edges import open311
from whistle.edges.gateway import build_app
from whistle.ground.errors import DomainError, ValidationError
from whistle.ground.times import from_epoch_ms

NOW = datetime(2025, 6, 12, 8, 0, tzinfo=UTC)
CASE = "S10-20250612-0a0a0a0a0a"
UNDER_V2 = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)  # a Tuesday under policy-v2 (oversight urges the holder)
HASHER = PersonalDataHasher("test-key")
SERDE = Serde(default_catalog())


@pytest.fixture(scope="module")
def ref():
    from streams.domain.reference import load_reference

    return load_reference()


def post(ref, received_at=NOW, **fields):
    base = {"service_code": "drainage_blockage", "lat": "27.8307", "long": "113.1402", "email": "Li.Wei@example.cn",
            "description": "下水道堵了", "media_url": "https://img.example.cn/1.jpg"}
    return open311.app_event({k: v for k, v in {**base, **fields}.items() if v is not None}, report_id="o311-1", received_at=received_at,
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


# ---------------------------------------------------------------------------------------------- the rest of the standard
# The shapes of the GeoReport v2 wiki's examples (wiki.open311.org/GeoReport_v2): the fields each method's answer has.
WIKI_SERVICE = {"service_code", "service_name", "description", "metadata", "type", "keywords", "group"}
WIKI_DEFINITION = {"service_code", "attributes"}
WIKI_ATTRIBUTE = {"variable", "code", "datatype", "required", "datatype_description", "order", "description", "values"}
WIKI_POST_ANSWER = {"service_request_id", "service_notice", "account_id"}
WIKI_TOKEN = {"service_request_id", "token"}
WIKI_REQUEST = {"service_request_id", "status", "status_notes", "service_name", "service_code", "description", "agency_responsible",
                "service_notice", "requested_datetime", "updated_datetime", "expected_datetime", "address", "address_id", "zipcode",
                "lat", "long", "media_url"}
HOUSE = "建设路19号"  # a house of the gazetteer (streams/reference/district-v1/gazetteer.csv)
POLICIES = load_policies()
CALENDAR = load_calendar()


def test_a_service_definition_has_the_wiki_shape_and_the_time_limits_of_the_policy_in_force(ref, policy):
    services = {s.service_code: s for s in open311.services(default_catalog().categories.values(), ref, policy)}
    for code in ("garbage", "fire_smoke"):
        definition = services[code].definition()
        assert set(definition) == WIKI_DEFINITION and definition["service_code"] == code
        assert all(set(a) == WIKI_ATTRIBUTE and a["variable"] is False for a in definition["attributes"])
        assert [a["order"] for a in definition["attributes"]] == [1, 2]
    limits = {code: policy.limits["initial"][policy.class_of(code, ref.categories[code].default_urgency)] for code in ("garbage", "fire_smoke")}
    assert limits["garbage"] != limits["fire_smoke"]  # the control: the two services must show different limits
    for code, limit in limits.items():
        said = services[code].definition()["attributes"][0]["description"]
        assert f"within {str(limit.accept).replace('_', ' ')} of dispatch" in said and policy.version in said
    garbage = services["garbage"].definition()["attributes"][1]["description"]
    assert ref.departments[ref.categories["garbage"].owner_department_id].name in garbage


def test_an_address_without_coordinates_is_placed_where_the_gazetteer_has_it(ref):
    entry = ref.gazetteer.lookup(HOUSE)
    report = post(ref, lat=None, long=None, address_string=f" 清河区{HOUSE}3栋 ")["event"][1]
    assert (report["lat"], report["lon"], report["address_text"]) == (entry.lat, entry.lon, f"清河区{HOUSE}3栋")
    landmark = post(ref, lat="", long="", address_string="清河区人民医院")["event"][1]
    assert (landmark["lat"], landmark["lon"]) == (28.197046, 113.07634)
    assert problems_of(ref, lat=None, long=None, address_string="火星路1号").keys() == {"address_string"}
    assert "gazetteer" in problems_of(ref, lat=None, long=None, address_string="火星路1号")["address_string"]
    assert "road 建设路" in problems_of(ref, lat=None, long=None, address_string="建设路")["address_string"]
    assert problems_of(ref, lat=None, long=None).keys() == {"lat", "long"}
    # the control: with coordinates the address is the reporter's text, not looked up, so an unknown one is no problem
    given = post(ref, address_string="火星路1号")["event"][1]
    assert (given["lat"], given["lon"], given["address_text"]) == (27.8307, 113.1402, "火星路1号")


def test_pages_are_counted_from_one_and_hold_at_most_1000_requests():
    def query(**params):
        return open311.request_query(params, now=NOW, service_codes={"garbage"})

    assert (query().offset, query().limit) == (0, 1000)
    assert (query(page="3", page_size="25").offset, query(page="3", page_size="25").limit) == (50, 25)
    assert (query(page="2").offset, query(page="2").limit) == (1000, 1000)
    for params, named in (({"page": "0"}, "page"), ({"page": "x"}, "page"), ({"page": "-1"}, "page"), ({"page": "1.5"}, "page"),
                          ({"page_size": "1001"}, "page_size"), ({"page_size": "0"}, "page_size"), ({"page_size": "٣"}, "page_size")):
        with pytest.raises(ValidationError) as refused:
            query(**params)
        assert [field for field, _ in refused.value.problems] == [named], params


def case_log(ref, record, case_id, steps=(), until=None):
    """The case events an app report (an AppEvent record) leads to, by the worker's own functions: normalize,
    enrich, CaseBook (open, then each (action kind, minutes after the report, fields) by the unit holding the case,
    then the SLA engine's time moved to `until`)."""
    report = normalize_app_report(from_record(ResidentReport, record["event"][1]), ref, HASHER.reporter, "resident-app")
    book = CaseBook(POLICIES, CALENDAR, functools.partial(common_parent, ref))
    events, _ = book.open(Enricher(ref).enrich(report), case_id, report.occurred_at)
    for n, (kind, minutes, fields) in enumerate(steps):
        unit = fields.pop("unit_id", book.states[case_id].assignee.unit_id)
        more, _ = book.act(HandlingAction(f"act-{n}", case_id, kind, unit, report.occurred_at + timedelta(minutes=minutes), **fields))
        events = events + more
    if until is not None:
        events = events + book.advance(until)[0]
    return events


def pending(events, kind):
    """The deadline of `kind` the SLA engine has pending for the case these events fold to (the test's reference)."""
    state = fold(events)[events[0].case_id]
    return [from_epoch_ms(d.deadline_ms) for d in deadlines_for(state, POLICIES[state.policy_version], CALENDAR) if d.kind == kind]


def test_expected_datetime_is_the_pending_accept_or_resolve_deadline_of_the_sla_engine(ref):
    record = post(ref)
    dispatched = case_log(ref, record, CASE)
    accepted = case_log(ref, record, CASE, [(ActionKind.ACCEPT, 30, {})])
    resolved = case_log(ref, record, CASE, [(ActionKind.ACCEPT, 30, {}), (ActionKind.RESOLVE, 90, {})])
    accept_by = open311.expected_datetime(dispatched, POLICIES, CALENDAR)
    resolve_by = open311.expected_datetime(accepted, POLICIES, CALENDAR)
    assert [accept_by] == pending(dispatched, DeadlineKind.ACCEPT_OVERDUE) and accept_by.tzinfo is not None
    assert [resolve_by] == pending(accepted, DeadlineKind.RESOLVE_OVERDUE)
    assert accept_by != resolve_by  # the control: accepting moves the promise from the accept to the resolve deadline
    assert open311.expected_datetime(resolved, POLICIES, CALENDAR) is None and open311.expected_datetime((), POLICIES, CALENDAR) is None
    urged = case_log(ref, post(ref, received_at=UNDER_V2), CASE, [(ActionKind.ACCEPT, 30, {})], until=UNDER_V2 + timedelta(days=20))
    assert urged[-1].kind == "urged" and [open311.expected_datetime(urged, POLICIES, CALENDAR)] == pending(urged, DeadlineKind.RESOLVE_OVERDUE)
    assert open311.expected_datetime(urged, POLICIES, CALENDAR) != open311.expected_datetime(urged[:-1], POLICIES, CALENDAR)  # urging set a new one
    with pytest.raises(DomainError):  # a chain with a hole is refused, not folded into a wrong promise
        open311.expected_datetime([accepted[0], accepted[-1]], POLICIES, CALENDAR)


def test_every_lifecycle_kind_maps_to_one_of_fixmystreets_statuses_and_a_merged_report_is_a_duplicate(ref):
    # every kind either sets a status or keeps it, never both: a new kind of case event fails here until it is placed
    assert set(open311.EXTENDED_STATUS) | set(open311.STATUS_KEEPING_KINDS) == set(Kind)
    assert not set(open311.EXTENDED_STATUS) & set(open311.STATUS_KEEPING_KINDS)
    assert set(open311._STATUS_NOTES) == set(Kind) - {Kind.REPORT_MERGED, Kind.LATE_ACTION}  # and has a note
    assert set(open311.EXTENDED_STATUS.values()) <= set(open311.EXTENDED_STATUSES) and len(open311.EXTENDED_STATUSES) == 12
    assert open311.extended_status(progress()) == "FOR_TRIAGE"
    assert open311.extended_status(progress(case_id="C1", own_kind="opened", last_kind="accepted")) == "IN_PROGRESS"
    assert open311.extended_status(progress(case_id="C1", own_kind="opened", last_kind="reopened")) == "REOPEN"
    assert open311.extended_status(progress(case_id="C1", own_kind="report_merged", last_kind="accepted")) == "DUPLICATE"
    events = case_log(ref, post(ref, received_at=UNDER_V2), CASE, [(ActionKind.ACCEPT, 30, {})], until=UNDER_V2 + timedelta(days=20))
    assert [e.kind for e in events][-2:] == ["accepted", "urged"]  # policy-v2's supervision urged the holder
    urged = progress(case_id=CASE, own_kind="opened", last_kind="urged", events=tuple(events))
    assert open311.extended_status(urged) == "IN_PROGRESS"  # oversight keeps the case where it was
    assert open311.extended_status(progress(case_id=CASE, own_kind="opened", last_kind="urged")) == "FOR_TRIAGE"  # the control: no event sets it


def test_notes_list_the_cases_events_without_anything_a_person_wrote(ref):
    record = post(ref)
    events = case_log(ref, record, CASE, [(ActionKind.ACCEPT, 30, {"note": "已联系张三 13812345678"}),
                                          (ActionKind.RESOLVE, 90, {"note": "张三家门口已清理", "evidence": ("s3://e/1.jpg",)}),
                                          (ActionKind.RATE, 120, {"unit_id": "reporter", "rating": 2, "note": "还是脏，电话13812345678",
                                                                   "report_id": "app:resident-app:o311-1"})])
    assert any(e.note and "13812345678" in e.note for e in events) and any(e.rating == 2 for e in events)  # the control: it is there
    shown = open311.update_notes(progress(case_id=CASE, own_kind="opened", last_kind="rated", sender="resident-app", events=tuple(events)), ref)
    assert [set(note) for note in shown] == [{"datetime", "description"}] * len(events)
    assert [note["datetime"] for note in shown] == [e.at.isoformat().replace("+00:00", "Z") for e in events]
    text = orjson.dumps(shown).decode()
    assert not any(secret in text for secret in ("张三", "13812345678", "s3://", "脏"))
    holder = ref.units[events[1].assignee_unit_id].name
    assert shown[1]["description"] == f"dispatched to the responsible unit: {holder}"


def test_xml_has_the_standards_elements_and_parses_back_to_the_json():
    body = [{"service_request_id": "o311-1", "status": "open", "expected_datetime": None, "lat": 27.83, "metadata": True,
             "notes": [{"datetime": "2025-06-12T08:00:00Z", "description": "case opened"}], "extended_attributes": {"x_status": "FOR_TRIAGE"}}]
    root = ElementTree.fromstring(open311.xml_document("service_requests", body))
    assert root.tag == "service_requests" and [child.tag for child in root] == ["request"]
    request = root.find("request")
    assert (request.findtext("service_request_id"), request.findtext("expected_datetime"), request.findtext("lat")) == ("o311-1", "", "27.83")
    assert request.findtext("metadata") == "true" and request.findtext("extended_attributes/x_status") == "FOR_TRIAGE"
    assert [note.findtext("description") for note in request.findall("notes/note")] == ["case opened"]
    errors = ElementTree.fromstring(open311.xml_document("errors", [{"code": 400, "description": "page: bad", "field": "page"}]))
    assert [(e.tag, e.findtext("code"), e.findtext("description")) for e in errors] == [("error", "400", "page: bad")]
    escaped = ElementTree.fromstring(open311.xml_document("services", [{"description": "<b>&</b>"}]))
    assert escaped.findtext("service/description") == "<b>&</b>"


# ---------------------------------------------------------------------------------------------- the gateway, real Kafka and ClickHouse


def fetch(client, method, path, **kwargs):
    async def call():
        response = await client.request(method, path, **kwargs)
        return response.status, response.content_type, await response.read()

    return call()


def xml_items(body: bytes, root: str, item: str) -> list[ElementTree.Element]:
    """The items of a GeoReport v2 XML list, checking the root and item element names."""
    parsed = ElementTree.fromstring(body)
    assert parsed.tag == root and all(child.tag == item for child in parsed), (parsed.tag, [child.tag for child in parsed])
    return list(parsed)


def as_text(value) -> str:
    """How a JSON value reads in the XML (null: empty, booleans: true/false)."""
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def flat(element: ElementTree.Element) -> dict[str, str]:
    return {child.tag: child.text or "" for child in element if not len(child)}


def test_every_method_answers_in_json_and_xml_in_the_shapes_of_the_standards_examples(gw_settings, publisher, keys):
    form = {"service_code": "garbage", "lat": "28.174905", "long": "113.078988", "email": "li.wei@example.cn", "description": "垃圾堆了三天"}
    key = {"X-API-Key": APP_KEY}

    async def scenario(client):
        got = {}
        for name in ("services.json", "services.xml", "services/garbage.json", "services/garbage.xml", "services/potholes.xml"):
            got[name] = await fetch(client, "GET", f"/open311/v2/{name}")
        got["post.json"] = await fetch(client, "POST", "/open311/v2/requests.json", data=form, headers=key)
        got["post.xml"] = await fetch(client, "POST", "/open311/v2/requests.xml", data=form, headers=key)
        first = orjson.loads(got["post.json"][2])[0]["token"]
        second = xml_items(got["post.xml"][2], "service_requests", "request")[0].findtext("token")
        for fmt in ("json", "xml"):
            got[f"token.{fmt}"] = await fetch(client, "GET", f"/open311/v2/tokens/{first}.{fmt}")
            got[f"request.{fmt}"] = await fetch(client, "GET", f"/open311/v2/requests/{second}.{fmt}", headers=key)
            got[f"requests.{fmt}"] = await fetch(client, "GET", f"/open311/v2/requests.{fmt}?service_request_id={first},{second}", headers=key)
        got["unknown token"] = await fetch(client, "GET", "/open311/v2/tokens/o311-nobody.json")
        got["bad page.xml"] = await fetch(client, "GET", "/open311/v2/requests.xml?page=0")
        return got

    got = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    services = orjson.loads(got["services.json"][2])
    assert got["services.json"][:2] == (200, "application/json") and all(set(s) == WIKI_SERVICE for s in services)
    assert got["services.xml"][:2] == (200, "text/xml")
    listed = xml_items(got["services.xml"][2], "services", "service")
    assert [flat(s) for s in listed] == [{k: as_text(v) for k, v in s.items()} for s in services]  # XML says what JSON says

    definition = orjson.loads(got["services/garbage.json"][2])
    assert set(definition) == WIKI_DEFINITION and all(set(a) == WIKI_ATTRIBUTE for a in definition["attributes"])
    parsed = ElementTree.fromstring(got["services/garbage.xml"][2])
    assert parsed.tag == "service_definition" and parsed.findtext("service_code") == "garbage"
    assert [a.findtext("code") for a in parsed.findall("attributes/attribute")] == [a["code"] for a in definition["attributes"]]
    assert [a.findtext("variable") for a in parsed.findall("attributes/attribute")] == ["false", "false"]
    status, _, body = got["services/potholes.xml"]
    assert status == 404 and [(e.findtext("code"), e.findtext("field")) for e in xml_items(body, "errors", "error")] == [("404", "service_code")]

    posted = orjson.loads(got["post.json"][2])
    assert got["post.json"][0] == 202 and set(posted[0]) == WIKI_POST_ANSWER | {"token"}
    posted_xml = xml_items(got["post.xml"][2], "service_requests", "request")
    assert got["post.xml"][0] == 202 and set(flat(posted_xml[0])) == WIKI_POST_ANSWER | {"token"}
    first, second = posted[0]["service_request_id"], posted_xml[0].findtext("service_request_id")
    assert first != second and posted[0]["token"] == first

    assert got["token.json"][0] == 200 and orjson.loads(got["token.json"][2]) == [{"service_request_id": first, "token": first}]
    assert [flat(t) for t in xml_items(got["token.xml"][2], "service_requests", "request")] == [{"service_request_id": first, "token": first}]
    assert got["unknown token"][0] == 404 and orjson.loads(got["unknown token"][2])[0]["field"] == "token"

    request = orjson.loads(got["request.json"][2])
    assert got["request.json"][0] == 200 and WIKI_REQUEST <= set(request[0]) and request[0]["service_request_id"] == second
    assert request[0]["extended_attributes"] == {"x_status": "FOR_TRIAGE"} and request[0]["notes"] == []
    as_xml = xml_items(got["request.xml"][2], "service_requests", "request")
    assert {k: v for k, v in flat(as_xml[0]).items() if k != "notes"} == {k: as_text(v) for k, v in request[0].items()
                                                                       if k not in ("notes", "extended_attributes")}
    assert as_xml[0].findtext("extended_attributes/x_status") == "FOR_TRIAGE"
    both = {r["service_request_id"] for r in orjson.loads(got["requests.json"][2])}
    assert both == {first, second} == {r.findtext("service_request_id") for r in xml_items(got["requests.xml"][2], "service_requests", "request")}
    status, _, body = got["bad page.xml"]
    assert status == 400 and [e.findtext("field") for e in xml_items(body, "errors", "error")] == ["page"]


def test_a_request_with_only_an_address_lands_on_kafka_at_the_gazetteers_position(gw_settings, publisher, keys, ref):
    mark = uuid.uuid4().hex
    form = {"service_code": "garbage", "device_id": "d-9", "address_string": f"{HOUSE}3栋", "description": f"垃圾 {mark}"}

    async def scenario(client):
        known = await fetch(client, "POST", "/open311/v2/requests.json", data=form, headers={"X-API-Key": APP_KEY})
        unknown = await fetch(client, "POST", "/open311/v2/requests.json", data={**form, "address_string": "火星路1号", "description": f"x {mark}"},
                              headers={"X-API-Key": APP_KEY})
        return known, unknown

    known, unknown = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    assert known[0] == 202 and unknown[0] == 400
    assert [(p["field"], p["code"]) for p in orjson.loads(unknown[2])] == [("address_string", 400)]
    entry = ref.gazetteer.lookup(HOUSE)
    reports = [r["event"][1] for r in topic_records(gw_settings, publisher, "app") if mark in r["event"][1].get("description", "")]
    assert [(r["report_id"], r["lat"], r["lon"], r["address_text"]) for r in reports] == [
        (orjson.loads(known[2])[0]["service_request_id"], entry.lat, entry.lon, f"{HOUSE}3栋")]  # the refused one was never published


def store_case(gw_settings, events, offset: int) -> None:
    """Case events as the sink stores them (sinks.sink.case_event_values), at case-stream offsets from `offset`."""
    ch = gw_settings.clickhouse
    admin = ServerEngine(ch.host, ch.port, user=ch.admin_user, password=ch.admin_password.value)
    admin.insert(f"{ch.database}.case_events", CASE_EVENT_COLUMNS,
                 [case_event_values(to_record(e)) + ("whistle.cases.events", 0, offset + n, 0) for n, e in enumerate(events)])
    admin.close()


def test_a_stored_case_gives_notes_extended_status_and_the_sla_engines_deadline_page_by_page(gw_settings, publisher, keys, ref):
    clock = Clock()
    start = NOW + timedelta(days=10)  # a window of this test's own in the module's store
    form = {"service_code": "garbage", "lat": "28.174905", "long": "113.078988", "account_id": "u-9", "description": "垃圾"}

    async def file(client):
        ids = []
        for minutes in (0, 1, 2):
            clock.now = start + timedelta(minutes=minutes)
            status, _, body = await fetch(client, "POST", "/open311/v2/requests.json", data=form, headers={"X-API-Key": APP_KEY})
            assert status == 202
            ids.append(orjson.loads(body)[0]["service_request_id"])
        return ids

    ids = serve(build_app(gw_settings, publisher, keys, clock), file)
    for request_id in ids:
        _stored_request(gw_settings, publisher, keys, request_id, None)
    record = next(r for r in topic_records(gw_settings, publisher, "app") if r["event"][1]["report_id"] == ids[0])
    case_id = "S10-20250622-0b0b0b0b0b"
    events = case_log(ref, record, case_id, [(ActionKind.ACCEPT, 30, {"note": "张三 13812345678"})])
    assert [e.kind for e in events] == ["opened", "dispatched", "accepted"]
    store_case(gw_settings, events[:2] * 2, 0)  # every event stored twice: copies collapse
    window = f"start_date={start.isoformat()}&end_date={(start + timedelta(hours=1)).isoformat()}".replace("+", "%2B")

    async def read(client):
        answers = {}
        answers["dispatched"] = await fetch(client, "GET", f"/open311/v2/requests/{ids[0]}.json")
        for page in (1, 2, 3):
            answers[page] = await fetch(client, "GET", f"/open311/v2/requests.json?{window}&page_size=2&page={page}")
        answers["too big"] = await fetch(client, "GET", f"/open311/v2/requests.json?{window}&page_size=1001")
        return answers

    clock.now = start + timedelta(minutes=40)
    answers = serve(build_app(gw_settings, publisher, keys, clock), read)
    dispatched = orjson.loads(answers["dispatched"][2])[0]
    accept_by = pending(events[:2], DeadlineKind.ACCEPT_OVERDUE)
    assert len(accept_by) == 1 and dispatched["expected_datetime"] == accept_by[0].isoformat().replace("+00:00", "Z")
    assert dispatched["extended_attributes"] == {"x_status": "INVESTIGATING"} and dispatched["status"] == "open"
    assert [n["description"] for n in dispatched["notes"]] == ["case opened", f"dispatched to the responsible unit: {ref.units[events[1].assignee_unit_id].name}"]
    pages = [[r["service_request_id"] for r in orjson.loads(answers[page][2])] for page in (1, 2, 3)]
    assert pages == [[ids[2], ids[1]], [ids[0]], []]  # newest first, each request on one page
    assert answers["too big"][0] == 400 and orjson.loads(answers["too big"][2])[0]["field"] == "page_size"

    store_case(gw_settings, events[2:], 10)  # the unit accepts: the promise becomes the resolve deadline

    async def read_again(client):
        return [await fetch(client, "GET", f"/open311/v2/requests/{ids[0]}.{fmt}") for fmt in ("json", "xml")]

    (_, _, as_json), (_, _, as_xml) = serve(build_app(gw_settings, publisher, keys, clock), read_again)
    accepted = orjson.loads(as_json)[0]
    resolve_by = pending(events, DeadlineKind.RESOLVE_OVERDUE)
    assert accepted["expected_datetime"] == resolve_by[0].isoformat().replace("+00:00", "Z") != dispatched["expected_datetime"]
    assert accepted["extended_attributes"] == {"x_status": "IN_PROGRESS"} and len(accepted["notes"]) == 3
    assert "13812345678" not in as_json.decode() and "张三" not in as_json.decode()  # the unit's note stays out of the public notes
    request = xml_items(as_xml, "service_requests", "request")[0]
    assert request.findtext("expected_datetime") == accepted["expected_datetime"]
    assert [n.findtext("description") for n in request.findall("notes/note")] == [n["description"] for n in accepted["notes"]]
