"""Open311 GeoReport v2 <-> Whistle: pure mapping, no HTTP, Kafka or ClickHouse.

The app channel speaks GeoReport v2 so that existing Open311 clients (resident apps, FixMyStreet-style
front ends) can report without a Whistle SDK. This module owns everything standard-specific:

- services: our incident categories (schemas/categories.yaml) as Open311 services, with keywords
  (Chinese name and the call-centre labels) and group (the owning district department) taken from the
  district reference data; each has a service definition whose attributes are informational
  (variable=false): its time limits under the SLA policy in force and who handles it first;
- POST requests: Open311 fields -> one `AppEvent` (ResidentReport) record; problems are reported
  under the *Open311* names the client sent (`long`, `media_url`, `service_code`), every one at once.
  A request without lat/long is placed at its `address_string`'s position in the district's gazetteer
  (streams.domain.reference.Gazetteer, the lookup the worker's enrichment uses);
- reporter identity: `email`, `phone`, `device_id` and `account_id` are personal data. They never
  reach Kafka: the record's `reporter_id` is a keyed hash (streams.domain.pii) of the strongest identity given.
  `first_name`/`last_name` are accepted (clients send them) and dropped;
- GET requests: query parameters -> `RequestQuery` (at most 90 days, 1,000 results a page, `page` /
  `page_size`), and a case's progress (as read from ClickHouse) -> an Open311 service request;
- the wire: JSON, or XML with the standard's element names (`xml_document`).

Status: Open311 knows only open|closed; a request is closed when its case's latest lifecycle event is
`closed`. `status_notes` carries the finer state ("received" until the report became a case), the
`extended_attributes.x_status` FixMyStreet's extended status (EXTENDED_STATUS, the one mapping), `notes`
the case's events as an update history (fixed texts and office names only: no personal data), and
`expected_datetime` the case's pending accept or resolve deadline as the SLA engine computes it (the
function `expected_datetime`: the case's events folded, then streams.domain.sla.deadlines_for).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.catalog import Category as SchemaCategory
from schemas.validation import id_problem, instant_problem, invalid
from streams.domain.calendar import BusinessCalendar
from streams.domain.case import WAITING_ON_RESIDENT, CaseEvent, Kind, fold
from streams.domain.model import Source, scoped_report_id
from streams.domain.pii import PersonalDataHasher, normalize_phone
from streams.domain.reference import DistrictReference, Gazetteer
from streams.domain.sla import INITIAL_STAGE, DeadlineKind, SlaPolicy, deadlines_for, policy_of
from whistle.ground.errors import ValidationError
from whistle.ground.times import from_epoch_ms

MAX_QUERY_SPAN = timedelta(days=90)
MAX_QUERY_RESULTS = 1000  # per query, i.e. per page
MAX_PAGE = 100_000
FORMATS = ("json", "xml")  # the format suffix of every GeoReport v2 path
STATUSES = ("open", "closed")
CLOSED_KINDS = (Kind.CLOSED,)  # case event kinds after which the request is closed
RECEIVED_NOTE = "received"
_IDENTITIES = ("account_id", "email", "phone", "device_id")  # strongest first
_MAX_EMAIL_LENGTH = 254
_MAX_IDENTITY_LENGTH = 200
_MAX_MEDIA_URL_LENGTH = 2048

# POST fields of GeoReport v2 this endpoint accepts (attribute[...] aside), as the gateway's OpenAPI describes them.
REQUEST_FIELDS: Mapping[str, str] = {
    "api_key": "The integrator's API key (or the X-API-Key header).",
    "jurisdiction_id": "The district this endpoint serves; optional.",
    "service_code": "A service_code from services.json.",
    "lat": "WGS-84 latitude, decimal degrees (-90..90), with long; or leave both out and give address_string.",
    "long": "WGS-84 longitude, decimal degrees (-180..180), with lat; or leave both out and give address_string.",
    "address_string": ("The address as the reporter typed it, up to 1000 characters. Without lat and long it must be a house "
                       "number or landmark of the district's gazetteer: the request is placed there."),
    "address_id": "Not supported: send lat and long, or address_string.",
    "email": f"The reporter's email (at most {_MAX_EMAIL_LENGTH} characters); kept only as a keyed hash.",
    "device_id": f"The reporter's device id (at most {_MAX_IDENTITY_LENGTH} characters); kept only as a keyed hash.",
    "account_id": f"The reporter's account id (at most {_MAX_IDENTITY_LENGTH} characters); kept only as a keyed hash.",
    "first_name": "Accepted and dropped.",
    "last_name": "Accepted and dropped.",
    "phone": "The reporter's phone number; kept only as a keyed hash.",
    "description": "What the reporter wrote, up to 4000 characters.",
    "media_url": f"One http(s) URL of a photo, at most {_MAX_MEDIA_URL_LENGTH} characters.",
}
QUERY_PARAMETERS: Mapping[str, str] = {
    "api_key": "The integrator's API key (or the X-API-Key header).",
    "jurisdiction_id": "The district this endpoint serves; optional.",
    "service_request_id": f"Comma-separated request ids (at most {MAX_QUERY_RESULTS}); the other filters are then ignored.",
    "service_code": "Comma-separated service codes from services.json.",
    "start_date": "ISO 8601 date-time with a time zone; default: 90 days before end_date.",
    "end_date": "ISO 8601 date-time with a time zone; default: now. The range may span at most 90 days.",
    "status": "open, closed, or both comma-separated.",
    "page": f"1 (the default) to {MAX_PAGE}: which page of page_size requests, newest first.",
    "page_size": f"1 to {MAX_QUERY_RESULTS} (the default): requests per page.",
}
# POST requests/{id}/feedback.json (a Whistle extension: the reporter rates or reopens through the request they filed).
FEEDBACK_FIELDS: Mapping[str, str] = {
    "api_key": "The integrator's API key (or the X-API-Key header): the app that filed the request.",
    "rating": "1 (very unsatisfied) to 5 (very satisfied): rates a resolved request.",
    "reopen": "true: the problem is not solved; reopens a resolved or closed request (instead of rating).",
    "description": "The reporter's comment, up to 4000 characters.",
    "email": "The identity the request was filed with (any one of email, phone, device_id, account_id): it must match.",
    "phone": "As email.",
    "device_id": "As email.",
    "account_id": "As email.",
}
# What anyone may read of a request that is not their own: the standard's GET is public, personal data is not.
PUBLIC_FIELDS = ("service_request_id", "status", "status_notes", "service_name", "service_code", "agency_responsible",
                 "service_notice", "requested_datetime", "updated_datetime", "expected_datetime", "lat", "long", "notes",
                 "extended_attributes")
PUBLIC_COORDINATE_DECIMALS = 3  # about 100 m: the block, not the door
_REQUEST_FIELDS = frozenset(REQUEST_FIELDS)
_QUERY_PARAMETERS = frozenset(QUERY_PARAMETERS)
_MISNAMED = {"lon": "long", "lng": "long", "latitude": "lat", "longitude": "long", "address": "address_string", "category": "service_code"}
# ResidentReport field (as the schema validator names it inside the AppEvent envelope) -> Open311 name.
_OPEN311_NAME = {
    "event.category": "service_code",
    "event.lat": "lat",
    "event.lon": "long",
    "event.description": "description",
    "event.address_text": "address_string",
    "event.photo_refs": "media_url",
    "event.photo_refs[0]": "media_url",
}
_STATUS_NOTES: dict[str, str] = {  # by case event kind (Kind is a StrEnum: plain strings look up)
    Kind.OPENED: "case opened",
    Kind.DISPATCHED: "dispatched to the responsible unit",
    Kind.ACCEPTED: "accepted by the responsible unit",
    Kind.TRANSFERRED: "returned as not the unit's responsibility; being dispatched again",
    Kind.ESCALATED: "escalated to a higher level",
    Kind.EXTENSION_GRANTED: "deadline extended",
    Kind.RESOLVED: "resolved; awaiting the reporter's rating",
    Kind.RATED: "rated by the reporter",
    Kind.REOPENED: "reopened",
    Kind.CLOSED: "closed",
    Kind.URGED: "the unit responsible was urged by the supervision office",
    Kind.CRITICIZED: "the unit responsible was criticised in writing for letting an urging lapse",
    Kind.REFERRED: "referred to the discipline commission",
    Kind.EXTENSION_REQUESTED: "more time requested",
    Kind.EXTENSION_DENIED: "more time denied",
    Kind.RESUMED: "work resumed",
}
_MERGED_NOTE = "merged with an earlier report of the same incident"
_OTHER_MERGED_NOTE = "another report of the same incident merged into the case"
_WAITING_NOTE = "waiting on the reporter"
_UTC = UTC

# FixMyStreet's extended status of a request, by its case's latest event that sets one: the one mapping (x_status).
# STATUS_KEEPING_KINDS leave it as it was: oversight (the holder keeps the case), an extension asked or refused
# (the work goes on), merges of other reports and late actions.
# Of FixMyStreet's set, NOT_COUNCILS_RESPONSIBILITY, NO_FURTHER_ACTION and CANCELLED never occur: no case event of
# Whistle's ends a case but closing it after its resolution (a unit returning a case passes it on inside the district).
EXTENDED_STATUSES = ("FIXED", "IN_PROGRESS", "ACTION_SCHEDULED", "INVESTIGATING", "DUPLICATE", "NOT_COUNCILS_RESPONSIBILITY",
                     "NO_FURTHER_ACTION", "INTERNAL_REFERRAL", "FOR_TRIAGE", "CLOSED", "CANCELLED", "REOPEN")
EXTENDED_STATUS: Mapping[str, str] = {
    Kind.OPENED: "FOR_TRIAGE",
    Kind.DISPATCHED: "INVESTIGATING",  # with the unit responsible, not accepted yet
    Kind.ACCEPTED: "IN_PROGRESS",
    Kind.EXTENSION_GRANTED: "ACTION_SCHEDULED",  # accepted, more time granted (or waiting on the reporter)
    Kind.TRANSFERRED: "INTERNAL_REFERRAL",  # returned as not the unit's: passed to another unit of the district
    Kind.ESCALATED: "INTERNAL_REFERRAL",  # passed up the chain
    Kind.RESOLVED: "FIXED",
    Kind.RATED: "FIXED",  # an unsatisfied rating: still resolved until the SLA engine escalates it
    Kind.REOPENED: "REOPEN",
    Kind.CLOSED: "CLOSED",
    Kind.RESUMED: "IN_PROGRESS",  # the wait on the reporter is over
}
STATUS_KEEPING_KINDS = (Kind.REPORT_MERGED, Kind.LATE_ACTION, Kind.URGED, Kind.CRITICIZED, Kind.REFERRED, Kind.EXTENSION_REQUESTED,
                        Kind.EXTENSION_DENIED)
RECEIVED_STATUS = "FOR_TRIAGE"  # not a case yet
MERGED_STATUS = "DUPLICATE"  # a report merged into an earlier report's case: its progress is that case's (notes)
_EXPECTED_KINDS = (DeadlineKind.ACCEPT_OVERDUE, DeadlineKind.RESOLVE_OVERDUE)  # the deadlines expected_datetime shows


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute of a service definition. Whistle's are informational (variable=false): they take no value."""

    code: str
    description: str
    order: int
    variable: bool = False
    datatype: str = "string"
    required: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"variable": self.variable, "code": self.code, "datatype": self.datatype, "required": self.required,
                "datatype_description": None, "order": self.order, "description": self.description, "values": []}


@dataclass(frozen=True, slots=True)
class Service:
    """One Open311 service: an incident category, with the attributes of its service definition."""

    service_code: str
    service_name: str
    description: str
    keywords: tuple[str, ...]
    group: str
    attributes: tuple[Attribute, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The GeoReport v2 representation (GET services); metadata says whether it has a service definition."""
        return {
            "service_code": self.service_code,
            "service_name": self.service_name,
            "description": self.description,
            "metadata": bool(self.attributes),
            "type": "realtime",
            "keywords": ",".join(self.keywords),
            "group": self.group,
        }

    def definition(self) -> dict[str, Any]:
        """The GeoReport v2 service definition (GET services/{service_code})."""
        return {"service_code": self.service_code, "attributes": [attribute.as_json() for attribute in self.attributes]}


def services(categories: Iterable[SchemaCategory], reference: DistrictReference, policy: SlaPolicy) -> tuple[Service, ...]:
    """Every category as a service, in file order; keywords and group from the responsibility matrix, the
    definition's attributes from the matrix and `policy` (the SLA policy in force)."""
    listed = []
    for category in categories:
        matrix = reference.categories.get(category.code)
        labels = matrix.hotline_labels if matrix else ()
        department = reference.departments.get(matrix.owner_department_id) if matrix else None
        keywords = tuple(dict.fromkeys((category.name_zh, *labels)))
        attributes: list[Attribute] = []
        if matrix is not None:
            klass = policy.class_of(category.code, matrix.default_urgency)
            limits = policy.limits[INITIAL_STAGE][klass]
            attributes.append(Attribute("time_limits", f"Accepted within {_spoken(limits.accept)} of dispatch, resolved within "
                                                       f"{_spoken(limits.resolve)} of acceptance (SLA {policy.version}, class {klass}).", 1))
            owner = department.name if department else matrix.owner_department_id
            first = f"the grid team where it is, then its community and street, then {owner}" if matrix.territorial else owner
            attributes.append(Attribute("handled_by", f"Handled first by {first}.", 2))
        listed.append(Service(category.code, category.name, category.description, keywords, department.name if department else "",
                              tuple(attributes)))
    return tuple(listed)


def _spoken(limit: Any) -> str:
    return str(limit).replace("_", " ")


def app_event(
    fields: Mapping[str, Any],
    *,
    report_id: str,
    received_at: datetime,
    hasher: PersonalDataHasher,
    jurisdiction_id: str,
    gazetteer: Gazetteer,
    validate: Callable[[Mapping[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """The validated AppEvent record (Python form) for an Open311 POST requests.json.

    `fields` are the POSTed parameters (form or JSON); `validate` is the AppEvent schema validator.
    Open311 has no report time, so the report is dated `received_at`. Without lat and long the report is
    placed at the gazetteer's position of `address_string` (a house or landmark; a road has none).
    Raises ValidationError whose problems name every invalid Open311 field.
    """
    problems: list[tuple[str, str]] = []
    for name in fields:
        if name.startswith("attribute["):
            problems.append((name, "the attributes of every service are informational (variable=false): they take no value"))
        elif name not in _REQUEST_FIELDS:
            hint = f"; Open311 calls it {_MISNAMED[name]}" if name in _MISNAMED else ""
            problems.append((name, f"unknown field{hint}"))
    jurisdiction = fields.get("jurisdiction_id")
    if jurisdiction not in (None, "", jurisdiction_id):
        problems.append(("jurisdiction_id", f"{jurisdiction!r} is not served here; this endpoint serves {jurisdiction_id!r}"))
    if fields.get("address_id") not in (None, ""):
        problems.append(("address_id", "address ids are not supported; send lat and long, or address_string"))
    report: dict[str, Any] = {
        "report_id": report_id,
        "reporter_role": "resident",
        "reported_at": received_at,
        "description": _text(fields, "description", problems) or "",
    }
    if "service_code" in fields:
        report["category"] = _text(fields, "service_code", problems)
    for open311_name, schema_name in (("lat", "lat"), ("long", "lon")):
        if fields.get(open311_name) not in (None, ""):
            report[schema_name] = _number(fields, open311_name, problems)
    address = _text(fields, "address_string", problems)
    if address:
        report["address_text"] = address
    unplaced: tuple[str, ...] = ()  # no position: said once (address_string, or lat and long), not again by the schema
    if "lat" not in report and "lon" not in report:
        if address:
            report["lat"], report["lon"] = _gazetteer_position(address, gazetteer, problems)
        else:
            problems.extend((name, "required: send lat and long, or an address_string of the district's gazetteer") for name in ("lat", "long"))
        if report.get("lat") is None:
            unplaced = ("lat", "long")
    media_url = _media_url(fields, problems)
    if media_url:
        report["photo_refs"] = [media_url]
    pseudonym = _reporter_pseudonym(fields, hasher, problems)
    if pseudonym:
        report["reporter_id"] = pseudonym
    reported = {name for name, _ in problems} | set(unplaced)
    try:
        record = validate({"event": {"ResidentReport": {k: v for k, v in report.items() if v is not None}}})
    except ValidationError as exc:
        for field, reason in exc.problems:
            name = _OPEN311_NAME.get(field, field)
            if name not in reported and field != "event.reporter_id":  # identity problems are reported above
                problems.append((name, reason))
        raise invalid(problems or exc.problems, schema="AppEvent") from exc
    if problems:
        raise invalid(problems, schema="AppEvent")
    return record


@dataclass(frozen=True, slots=True)
class Feedback:
    """A reporter's rating (or reopening) of their request, parsed; `pseudonym` is the identity they presented, hashed."""

    rating: int | None
    reopen: bool
    comment: str | None
    pseudonym: str


def feedback(fields: Mapping[str, Any], hasher: PersonalDataHasher) -> Feedback:
    """Parse POST requests/{id}/feedback.json; ValidationError naming every bad field."""
    problems: list[tuple[str, str]] = [(name, "unknown field") for name in fields if name not in FEEDBACK_FIELDS]
    rating_text = _text(fields, "rating", problems)
    reopen_text = (_text(fields, "reopen", problems) or "").lower()
    rating = None
    if reopen_text not in ("", "true", "false"):
        problems.append(("reopen", "must be true or false"))
    reopen = reopen_text == "true"
    if rating_text:
        if not rating_text.strip().isdigit() or not 1 <= int(rating_text) <= 5:
            problems.append(("rating", "must be a whole number 1 to 5"))
        else:
            rating = int(rating_text)
    if (rating is None) == (not reopen) and not any(name == "rating" for name, _ in problems):
        problems.append(("rating", "give either a rating (1 to 5) or reopen=true"))
    comment = _text(fields, "description", problems)
    if comment and len(comment) > 4000:
        problems.append(("description", f"is {len(comment)} characters long, the limit is 4000"))
    pseudonym = _reporter_pseudonym(fields, hasher, problems)
    if problems or pseudonym is None:
        raise invalid(problems, schema="feedback")
    return Feedback(rating, reopen, comment or None, pseudonym)


def _gazetteer_position(address: str, gazetteer: Gazetteer, problems: list[tuple[str, str]]) -> tuple[float | None, float | None]:
    """Where the gazetteer places `address` (the lookup enrichment makes); (None, None) with a problem when it cannot."""
    entry = gazetteer.lookup(address)
    if entry is None:
        problems.append(("address_string", "is not an address the district's gazetteer knows; send lat and long"))
    elif entry.lat is None or entry.lon is None:
        problems.append(("address_string", f"names the road {entry.address}, not a place on it: add the house number or send lat and long"))
    else:
        return entry.lat, entry.lon
    return None, None


def _text(fields: Mapping[str, Any], name: str, problems: list[tuple[str, str]]) -> str | None:
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value.strip() if value else value
    problems.append((name, f"expected text, got {type(value).__name__}"))
    return None


def _number(fields: Mapping[str, Any], name: str, problems: list[tuple[str, str]]) -> float | None:
    value = fields[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        try:
            number = float(value) if isinstance(value, str) else math.nan
        except ValueError:
            number = math.nan
    if math.isfinite(number):
        return number
    problems.append((name, f"{value!r} is not a number of decimal degrees"))
    return None


def _media_url(fields: Mapping[str, Any], problems: list[tuple[str, str]]) -> str | None:
    url = _text(fields, "media_url", problems)
    if not url:
        return None
    if not url.startswith(("https://", "http://")) or len(url) > _MAX_MEDIA_URL_LENGTH or any(c.isspace() for c in url):
        problems.append(("media_url", f"must be one http(s) URL of at most {_MAX_MEDIA_URL_LENGTH} characters"))
        return None
    return url


def _reporter_pseudonym(fields: Mapping[str, Any], hasher: PersonalDataHasher, problems: list[tuple[str, str]]) -> str | None:
    """Keyed hash of the strongest identity given (account, email, phone, device), tagged with its kind.

    None (with a problem) when none is given: a report must link to its reporter for ratings and repeats.

    Each kind hashes in its own domain so that an email and an account id spelled alike never collide;
    emails are compared case-insensitively and phones in their normalized national form, as pii does.
    """
    for kind in _IDENTITIES:
        value = _text(fields, kind, problems)
        if not value:
            continue
        if kind == "phone":
            try:
                value = normalize_phone(value)
            except ValidationError as exc:
                problems.append(("phone", exc.message))
                return None
        elif kind == "email":
            local, at, domain = value.rpartition("@")
            if not (at and local and "." in domain) or len(value) > _MAX_EMAIL_LENGTH or any(c.isspace() for c in value):
                problems.append(("email", "is not an email address"))
                return None
            value = value.lower()
        elif len(value) > _MAX_IDENTITY_LENGTH:
            problems.append((kind, f"is {len(value)} characters long, the limit is {_MAX_IDENTITY_LENGTH}"))
            return None
        return f"o311-{kind}-{hasher.reporter(f'open311:{kind}:{value}')}"
    if not any(name in _IDENTITIES for name, _ in problems):
        problems.append(("email", "identify the reporter with email, phone, device_id or account_id"))
    return None


@dataclass(frozen=True, slots=True)
class RequestQuery:
    """A validated GET requests.json query. `ids` set: those requests only (the other filters are ignored, per the spec)."""

    ids: tuple[str, ...]
    service_codes: tuple[str, ...]
    start: datetime
    end: datetime
    statuses: tuple[str, ...]
    limit: int = MAX_QUERY_RESULTS
    offset: int = 0  # requests skipped: the pages before this one


def request_query(params: Mapping[str, str], *, now: datetime, service_codes: Iterable[str]) -> RequestQuery:
    """Parse GET requests.json parameters; the window defaults to the 90 days before `end_date` (or now),
    the page to the first of `MAX_QUERY_RESULTS` requests."""
    problems: list[tuple[str, str]] = []
    for name in params:
        if name not in _QUERY_PARAMETERS:
            problems.append((name, "unknown parameter"))
    ids = _comma_list(params.get("service_request_id"))
    if len(ids) > MAX_QUERY_RESULTS:
        problems.append(("service_request_id", f"at most {MAX_QUERY_RESULTS} ids per query"))
    bad_id = next((reason for reason in map(id_problem, ids) if reason), None)
    if bad_id:
        problems.append(("service_request_id", f"an id {bad_id}"))
    codes = _comma_list(params.get("service_code"))
    known = frozenset(service_codes)
    unknown_codes = [code for code in codes if code not in known]
    if unknown_codes:
        problems.append(("service_code", f"{', '.join(unknown_codes)} not listed in services.json"))
    statuses = _comma_list(params.get("status"))
    if any(status not in STATUSES for status in statuses):
        problems.append(("status", f"must be {' or '.join(STATUSES)}, got {params['status']!r}"))
    end = _datetime(params, "end_date", problems) or now
    start = _datetime(params, "start_date", problems) or end - MAX_QUERY_SPAN
    if start > end:
        problems.append(("start_date", "is after end_date"))
    elif end - start > MAX_QUERY_SPAN:
        problems.append(("end_date", f"the range may span at most {MAX_QUERY_SPAN.days} days"))
    page = _whole(params, "page", 1, MAX_PAGE, problems)
    page_size = _whole(params, "page_size", 1, MAX_QUERY_RESULTS, problems)
    if problems:
        raise invalid(problems)
    size = page_size or MAX_QUERY_RESULTS
    return RequestQuery(ids=ids, service_codes=codes, start=start, end=end, statuses=statuses or STATUSES, limit=size,
                        offset=((page or 1) - 1) * size)


def _whole(params: Mapping[str, str], name: str, low: int, high: int, problems: list[tuple[str, str]]) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        problems.append((name, f"must be a whole number {low} to {high}, got {raw!r}"))
        return None
    return int(text)


def _comma_list(raw: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item.strip() for item in raw.split(",") if item.strip())) if raw else ()


def _datetime(params: Mapping[str, str], name: str, problems: list[tuple[str, str]]) -> datetime | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        problems.append((name, f"{raw!r} is not an ISO 8601 date-time"))
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        problems.append((name, f"{raw!r} has no time zone; add Z or an offset such as +08:00"))
        return None
    reason = instant_problem(value)
    if reason:
        problems.append((name, reason))
        return None
    return value.astimezone(_UTC)


@dataclass(frozen=True, slots=True)
class RequestProgress:
    """What the audit store knows of one app report and its case (a row of sinks/queries/open311_requests.sql).

    `case_id` is None until the report has been processed into a case. `last_kind` is the case's latest
    lifecycle event (merges of other reports aside); `own_kind` is opened or report_merged for this report.
    """

    report_id: str
    category: str
    description: str
    lat: float | None
    lon: float | None
    address_text: str | None
    media_url: str | None
    requested_at: datetime
    case_id: str | None = None
    own_kind: str | None = None
    last_kind: str | None = None
    updated_at: datetime | None = None
    assignee_unit_id: str | None = None
    expected_at: datetime | None = None
    sender: str = ""  # the integrator that filed it (its signature verified)
    reporter_hash: str = ""  # the stored keyed hash of the reporter's pseudonym (never returned)
    events: tuple[CaseEvent, ...] = ()  # the case's events as stored, one copy each, in seq order


def expected_datetime(events: Sequence[CaseEvent], policies: Mapping[str, SlaPolicy], calendar: BusinessCalendar) -> datetime | None:
    """The case's pending accept or resolve deadline, as the SLA engine computes it; None when it has none
    (resolved, rated, closed, or held where no limit applies). `events` are one case's, in seq order.

    Not a second copy of the rule: the events are folded (streams.domain.case.fold) and
    streams.domain.sla.deadlines_for asked, with the policy the case is judged by. DomainError when the
    events do not form the case's chain; ConfigError when its policy is not loaded.
    """
    if not events:
        return None
    state = fold(events)[events[0].case_id]
    policy = policy_of(policies, state)  # the worker's own choice of policy
    due = [deadline.deadline_ms for deadline in deadlines_for(state, policy, calendar) if deadline.kind in _EXPECTED_KINDS]
    return from_epoch_ms(min(due)) if due else None


def extended_status(progress: RequestProgress) -> str:
    """FixMyStreet's extended status of a request: EXTENDED_STATUS of its case's latest event that sets one (its
    events, else its latest lifecycle kind); a merged report is a DUPLICATE, one not yet a case FOR_TRIAGE."""
    if progress.case_id is None:
        return RECEIVED_STATUS
    if progress.own_kind == Kind.REPORT_MERGED:
        return MERGED_STATUS
    kinds = [event.kind for event in progress.events] or [progress.last_kind or ""]
    return next((EXTENDED_STATUS[kind] for kind in reversed(kinds) if kind in EXTENDED_STATUS), RECEIVED_STATUS)


def update_notes(progress: RequestProgress, reference: DistrictReference) -> list[dict[str, Any]]:
    """The case's events as GeoReport update notes {datetime, description}, oldest first.

    Only fixed texts and the names of the offices involved: never a unit's free-text note or reason, nor a
    rating, which may quote or identify the reporter. Late actions (recorded for the auditors) are left out.
    """
    own = scoped_report_id(Source.APP.value, progress.sender, progress.report_id) if progress.sender else None
    listed = []
    for event in progress.events:
        if event.kind == Kind.LATE_ACTION:
            continue
        if event.kind == Kind.REPORT_MERGED:
            text = _MERGED_NOTE if event.report_id == own else _OTHER_MERGED_NOTE
        elif event.kind == Kind.EXTENSION_GRANTED and event.reason == WAITING_ON_RESIDENT:
            text = _WAITING_NOTE
        else:
            text = _STATUS_NOTES.get(event.kind, event.kind)
            if event.kind in (Kind.DISPATCHED, Kind.ACCEPTED, Kind.TRANSFERRED, Kind.ESCALATED, Kind.RESOLVED):
                text = f"{text}: {_unit_name(reference, event.assignee_unit_id)}"
        listed.append({"datetime": _iso(event.at), "description": text})
    return listed


def _unit_name(reference: DistrictReference, unit_id: str | None) -> str | None:
    unit = reference.units.get(unit_id) if unit_id else None
    return unit.name if unit else unit_id


def status_of(progress: RequestProgress) -> str:
    """open or closed."""
    return "closed" if progress.last_kind in CLOSED_KINDS else "open"


def service_request(progress: RequestProgress, reference: DistrictReference, service_names: Mapping[str, str], *,
                    full: bool) -> dict[str, Any]:
    """The GeoReport v2 service request for a report's progress; agency is the unit now responsible.

    `full` for the integrator that filed it; anyone else gets the public fields only (PUBLIC_FIELDS:
    no description, address or photo, which may hold a name, a phone number or a home), and the
    location rounded to the block.
    """
    request = _service_request(progress, reference, service_names)
    if full:
        return request
    public = {name: request[name] for name in PUBLIC_FIELDS}
    for name in ("lat", "long"):
        if public[name] is not None:
            public[name] = round(public[name], PUBLIC_COORDINATE_DECIMALS)
    return public


def _service_request(progress: RequestProgress, reference: DistrictReference, service_names: Mapping[str, str]) -> dict[str, Any]:
    if progress.case_id is None:
        notes = RECEIVED_NOTE
    else:
        notes = _STATUS_NOTES.get(progress.last_kind, progress.last_kind) if progress.last_kind else RECEIVED_NOTE
        if progress.own_kind == Kind.REPORT_MERGED:
            notes = f"{notes}; {_MERGED_NOTE}"
    return {
        "service_request_id": progress.report_id,
        "status": status_of(progress),
        "status_notes": notes,
        "service_name": service_names.get(progress.category, progress.category),
        "service_code": progress.category,
        "description": progress.description,
        "agency_responsible": _unit_name(reference, progress.assignee_unit_id),
        "service_notice": None,
        "requested_datetime": _iso(progress.requested_at),
        "updated_datetime": _iso(progress.updated_at or progress.requested_at),
        "expected_datetime": _iso(progress.expected_at),
        "address": progress.address_text,
        "address_id": None,
        "zipcode": None,
        "lat": progress.lat,
        "long": progress.lon,
        "media_url": progress.media_url,
        "notes": update_notes(progress, reference),
        "extended_attributes": {"x_status": extended_status(progress)},
    }


def received(record: Mapping[str, Any], sender: str) -> RequestProgress:
    """The progress of a report this gateway just published (not yet in the audit store): received."""
    report = record["event"][1]
    photos = report.get("photo_refs") or ()
    return RequestProgress(
        report_id=report["report_id"],
        category=report["category"],
        description=report["description"],
        lat=report["lat"],
        lon=report["lon"],
        address_text=report.get("address_text"),
        media_url=photos[0] if photos else None,
        requested_at=report["reported_at"],
        sender=sender,
    )


# XML: the element of each item of a list, by the list's element name (GeoReport v2's names).
_XML_ITEMS = {"service_requests": "request", "services": "service", "errors": "error", "attributes": "attribute", "values": "value",
              "notes": "note"}


def xml_document(root: str, body: Any) -> bytes:
    """`body` (a JSON-able response) as GeoReport v2 XML under `root`: a list's items are elements named by
    _XML_ITEMS (`<service_requests><request>`, `<services><service>`, `<errors><error>`), a null an empty
    element, a boolean true/false."""
    element = ET.Element(root)
    _xml_fill(element, body)
    return ET.tostring(element, encoding="utf-8", xml_declaration=True)


def _xml_fill(element: ET.Element, value: Any) -> None:
    if isinstance(value, Mapping):
        for name, item in value.items():
            _xml_fill(ET.SubElement(element, name), item)
    elif isinstance(value, (list, tuple)):
        item_name = _XML_ITEMS[element.tag]
        for item in value:
            _xml_fill(ET.SubElement(element, item_name), item)
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:
        element.text = str(value)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(_UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else None
