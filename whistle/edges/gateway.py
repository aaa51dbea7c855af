"""`whistle gateway`: HTTP ingest for systems that cannot speak Kafka.

Endpoints
- POST /v1/camera/detections      a CameraDetection as JSON (camera platforms' webhooks)
- POST /v1/hotline/tickets        a HotlineTicket as JSON (the 12345 call-centre system)
- POST /v1/cases/{id}/actions     a handling unit's action; the unit is the key's, the time the gateway's clock
- Open311 GeoReport v2, every path in .json or .xml (the standard's element names):
  GET  /open311/v2/services         our categories as Open311 services (public)
  GET  /open311/v2/services/{code}  a service definition (its informational attributes)
  POST /open311/v2/requests         a service request (form-encoded or JSON) -> app report; its id and token
  GET  /open311/v2/tokens/{token}   the request id of a token
  GET  /open311/v2/requests and /open311/v2/requests/{id}   request status from the audit store, paged (page,
                                    page_size), with notes, extended status and expected_datetime (no key: public
                                    fields only; the filer's key: its own requests in full)
  POST /open311/v2/requests/{id}/feedback   the reporter rates or reopens their request (a Whistle extension)
- GET  /openapi.json              this API as OpenAPI 3.0, generated from the Avro schemas and the Open311 mapping (public)

Who may do what is `streams.domain.credentials`'s (the key file, re-read when it changes); every record the
gateway publishes is signed as the key's integrator, as the worker verifies it.

Guarantees, in the order a request meets them:
- 401 without a known API key (`X-API-Key` header; Open311 clients may send the `api_key` parameter),
  403 naming the rule the key breaks (a channel it may not publish on, a unit it may not act as, a rating by a unit);
- 429 when the key's token bucket is empty (per key: rate per second and burst, from the key file);
- 413 over the body size limit (default 64 KiB; an Open311 POST is read first, as its key may be in the body);
- 400 naming every invalid field at once: {"errors": [{"field", "message"}]} on /v1, and the Open311
  error list [{"code", "description", "field"}] on /open311 (`<errors><error>` for a .xml path; bodies
  that do not decode in their charset, unknown charsets and file uploads included: field `body` or the form field);
- 202 with the event id only after Kafka acknowledged the write, 503 with Retry-After when Kafka did not
  take it (refused, or no ack within `Settings.gateway_kafka_timeout_s`, 2 s by default, so that a Kafka
  outage does not hold connections): nothing is acknowledged that was not written.
No other 5xx: a 500 is a bug (the fuzz tests in tests/test_gateway_contract.py look for them).

Idempotency: a retried POST never creates a second event. The client's id (the `Idempotency-Key`
header, else the record's own id: detection_id, ticket_id) maps to the acknowledged response in a
bounded LRU, and a retry gets that response again (`Idempotent-Replayed: true`); the same id with a
different body is refused with 409. Concurrent retries wait for the first attempt. The LRU is per
gateway process. Across several gateway instances (or after a restart, or when Kafka took a write
whose acknowledgement timed out) a retry may write a second record, but with the same deterministic
id: the record's id field equals the client's id (Open311: `o311-` + a hash of the integrator and
its Idempotency-Key), and downstream deduplicates on it: report ids derive from it, the case deciders
skip a report already applied, and audit queries collapse rows by id. An Open311 POST without an
Idempotency-Key has no client id (the standard defines none), so each one is a new report.

Access log: one JSON line per request on logger `whistle.edges.gateway.access`: method, path (no query
string), status, duration, integrator, source, event id, invalid field names. Never keys, bodies,
phone numbers or problem messages (a message may quote the value it refuses).
"""
from __future__ import annotations

import asyncio
import codecs
import dataclasses
import hashlib
import hmac
import logging
import math
import re
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from schemas.serde import Serde, from_record
from schemas.validation import ID_RULE, id_problem, json_schema
from sinks.audit import run_query, stored_case_event
from sinks.clickhouse import Engine, ServerEngine
from streams.domain.calendar import BusinessCalendar
from streams.domain.case import CaseEvent, Kind, decode_chain
from streams.domain.case_id import partition_key_of_case
from streams.domain.credentials import (
    REPORTER,
    REPORTER_ACTIONS,
    RETURN_VISIT,
    Credential,
    Credentials,
    CredentialsFile,
    action_refusal,
    derived_signer,
    may_publish,
    not_a_unit,
)
from streams.domain.model import HandlingAction, Source, scoped_report_id
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import DistrictReference, load_district
from streams.domain.rules import Rules
from streams.domain.sla import SlaPolicy, policy_in_force
from whistle.edges import open311
from whistle.edges.sdk import Delivery, Publisher
from whistle.ground.errors import ConfigError, ContractError, DeliveryError, StoreError, ValidationError, WhistleError
from whistle.ground.settings import ClickHouseSettings, Settings
from whistle.ground.times import from_epoch_ms, to_epoch_ms, utc_now

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_IDEMPOTENCY_CAPACITY = 100_000
REQUESTS_QUERY = "open311_requests"  # sinks/queries/open311_requests.sql
CASE_EVENTS_QUERY = "open311_case_events"  # sinks/queries/open311_case_events.sql
CASE_UNITS_QUERY = "case_units"  # sinks/queries/case_units.sql
API_KEY_HEADER = "X-API-Key"
IDEMPOTENCY_HEADER = "Idempotency-Key"

Clock = Callable[[], datetime]
_log = logging.getLogger("whistle.edges.gateway")
_access_log = logging.getLogger("whistle.edges.gateway.access")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces
_OPEN311_PREFIX = "/open311/"
_OPEN311_FORMAT = "{fmt:" + "|".join(open311.FORMATS) + "}"  # the format suffix of every GeoReport v2 path: {fmt:json|xml}
_LOG_ENTRY = web.RequestKey("log_entry", dict)  # what the access log line will say about the request
_SET_BY_WHISTLE = ("case_id", "at", "actor", "report_id")  # fields of a handling action the gateway sets, never the client
RETURN_VISIT_RESULT = "return_visit_result"  # a return-visit key's rating as 12345 records it (满意 / 基本满意 / 不满意)
_RECEIVED_NOTICE = "Received. A case is opened once the report has been routed to the responsible unit."



# ---------------------------------------------------------------------------------------------- rate limits


@dataclass(slots=True)
class TokenBucket:
    """`burst` tokens, refilled at `rate` per second of the injected clock; a request takes one."""

    rate: float
    burst: int
    tokens: float
    updated: datetime

    def take(self, now: datetime) -> float:
        """0.0 if a token was taken, else the seconds until one is available."""
        elapsed = max(0.0, (now - self.updated).total_seconds())  # a clock stepping back refills nothing
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated = max(now, self.updated)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


# ---------------------------------------------------------------------------------------------- refusals


class Refused(WhistleError):
    """A request the gateway answers with an error status; `problems` are (field or None, message)."""

    stage = "gateway"

    def __init__(self, status: int, problems: list[tuple[str | None, str]], headers: Mapping[str, str] | None = None) -> None:
        super().__init__("; ".join(message for _, message in problems), status=status)
        self.status = status
        self.problems = problems
        self.headers = dict(headers or {})


def _invalid(exc: ValidationError, envelope: str = "") -> Refused:
    """400 naming every invalid field; `envelope` is the prefix a field of an enveloped record carries (`event.`), left out."""
    return Refused(400, [(field.removeprefix(envelope) or None, reason) for field, reason in exc.problems]
                   or [(exc.context.get("field"), exc.message)])


def _error_response(refusal: Refused, open311_format: str | None) -> web.Response:
    """The refusal as the caller's format speaks errors: /v1 JSON, or Open311 (`open311_format` json or xml)."""
    if open311_format:  # GeoReport v2 errors: a list of {code, description}; `field` added
        body: Any = [{"code": refusal.status, "description": f"{name}: {message}" if name else message, "field": name}
                     for name, message in refusal.problems]
        return _open311(open311_format, "errors", body, refusal.status, refusal.headers)
    body = {"errors": [{"field": name, "message": message} for name, message in refusal.problems]}
    return web.Response(status=refusal.status, body=orjson.dumps(body), content_type="application/json", headers=refusal.headers)


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _open311(fmt: str, root: str, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """An Open311 response in the path's format: JSON, or XML under the standard's `root` element."""
    if fmt == "xml":
        return web.Response(status=status, body=open311.xml_document(root, body), content_type="text/xml", charset="utf-8",
                            headers=headers)
    return _json(body, status, headers)


def _open311_format(path: str) -> str | None:
    """json or xml for an Open311 path (by its suffix: a .xml path is answered in XML, errors included); None off Open311."""
    if not path.startswith(_OPEN311_PREFIX):
        return None
    return "xml" if path.endswith(".xml") else "json"


# ---------------------------------------------------------------------------------------------- idempotency


class BoundedLru:
    """A dict keeping the `capacity` most recently used entries."""

    __slots__ = ("capacity", "_entries")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def pop(self, key: Any) -> None:
        self._entries.pop(key, None)


@dataclass(slots=True)
class _Receipt:
    """The first attempt of an idempotency key: its body digest and, once settled, the 202 body (None: failed)."""

    digest: bytes
    settled: asyncio.Future = field(repr=False)


# ---------------------------------------------------------------------------------------------- audit store


class RequestStatusReader:
    """Open311 request progress from ClickHouse (sinks/queries/open311_requests.sql), as the read-only
    auditor user: the gateway faces the internet and must not be able to change the audit store.
    One connection per thread (clickhouse-driver clients are not thread-safe)."""

    def __init__(self, clickhouse: ClickHouseSettings) -> None:
        self._clickhouse = clickhouse
        self._local = threading.local()

    def lookup(self, query: open311.RequestQuery) -> list[open311.RequestProgress]:
        """Reports matching `query`, newest first, with their cases' events (blocking: call it in a thread). StoreError if ClickHouse fails."""
        return find_requests(self._engine(), self._clickhouse.database, query)

    def case_units(self, case_id: str) -> frozenset[str]:
        """Every unit on the case's handling chains or that held it (empty: the store does not know the case yet)."""
        return case_units(self._engine(), self._clickhouse.database, case_id)

    def _engine(self) -> Engine:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            ch = self._clickhouse
            engine = self._local.engine = ServerEngine.from_settings(dataclasses.replace(ch, user=ch.auditor_user, password=ch.auditor_password),
                                                                     connect_timeout=5.0, send_receive_timeout=30.0)
        return engine


def find_requests(engine: Engine, database: str, query: open311.RequestQuery) -> list[open311.RequestProgress]:
    """Run sinks/queries/open311_requests.sql for `query` on any engine (the server, or chdb in tests), then
    open311_case_events.sql for the cases they reached: each progress carries its case's events."""
    params = {
        "by_id": int(bool(query.ids)),
        "ids": query.ids or ("",),
        "start_ms": to_epoch_ms(query.start, "start_date"),
        "end_ms": to_epoch_ms(query.end, "end_date"),
        "all_codes": int(not query.service_codes),
        "codes": query.service_codes or ("",),
        "want_open": int("open" in query.statuses),
        "want_closed": int("closed" in query.statuses),
        "closed_kinds": open311.CLOSED_KINDS,
        "offset": query.offset,
        "limit": query.limit,
    }
    found = [_progress(row) for row in run_query(engine, database, REQUESTS_QUERY, params).rows]
    events = case_events_of(engine, database, {p.case_id for p in found if p.case_id})
    return [dataclasses.replace(p, events=events.get(p.case_id, ())) if p.case_id else p for p in found]


def case_events_of(engine: Engine, database: str, case_ids: set[str]) -> dict[str, tuple[CaseEvent, ...]]:
    """Run sinks/queries/open311_case_events.sql: each case's stored events in seq order, the first stored copy of each."""
    if not case_ids:
        return {}
    events: dict[str, list[CaseEvent]] = {}
    for row in run_query(engine, database, CASE_EVENTS_QUERY, {"case_ids": tuple(sorted(case_ids))}).rows:
        event, _ = stored_case_event(row)
        chain = events.setdefault(event.case_id, [])
        if not chain or chain[-1].seq != event.seq:
            chain.append(event)
    return {case_id: tuple(chain) for case_id, chain in events.items()}


def case_units(engine: Engine, database: str, case_id: str) -> frozenset[str]:
    """Run sinks/queries/case_units.sql: the units of the case's chains (as recorded on its opened and merged events) and its holders."""
    units: set[str] = set()
    for kind, chain_text, holder in run_query(engine, database, CASE_UNITS_QUERY, {"case_id": case_id}).rows:
        units.add(holder)
        if kind in (Kind.OPENED, Kind.REPORT_MERGED) and chain_text:
            units.update(link.unit_id for link in decode_chain(chain_text))
    return frozenset(units)


def _progress(row: tuple) -> open311.RequestProgress:
    (report_id, sender, reporter_hash, category, description, lat, lon, address, photos_json, requested_ms, case_id, own_kind,
     last_kind, updated_ms, unit) = row
    photos = orjson.loads(photos_json) if photos_json else []
    return open311.RequestProgress(
        report_id=report_id, category=category, description=description, lat=lat, lon=lon, address_text=address or None,
        media_url=photos[0] if photos else None, requested_at=from_epoch_ms(requested_ms),
        case_id=case_id or None, own_kind=own_kind or None, last_kind=last_kind or None,
        updated_at=from_epoch_ms(updated_ms) if updated_ms else None, assignee_unit_id=unit or None,
        sender=sender, reporter_hash=reporter_hash,
    )


# ---------------------------------------------------------------------------------------------- the app


class Gateway:
    """Request handlers and their state (keys, buckets, receipts). Build it with `build_app`."""

    def __init__(self, settings: Settings, publisher: Publisher, credentials: Callable[[], Credentials], clock: Clock, *, serde: Serde,
                 reference: DistrictReference, policies: Mapping[str, SlaPolicy], calendar: BusinessCalendar, reader: RequestStatusReader,
                 max_body_bytes: int, idempotency_capacity: int) -> None:
        self.publisher = publisher
        self.credentials = credentials
        self.master = settings.record_signing_key.value
        self.clock = clock
        self.serde = serde
        self.reference = reference
        self.policies = policies
        self.calendar = calendar
        self.reader = reader
        self.hasher = PersonalDataHasher(settings.pii_hmac_key)
        self.max_body_bytes = max_body_bytes
        self.kafka_timeout_s = settings.gateway_kafka_timeout_s
        self._buckets: dict[str, TokenBucket] = {}
        self._receipts = BoundedLru(idempotency_capacity)
        self._received = BoundedLru(idempotency_capacity)  # Open311 reports this process published, by report id
        self._services_by_policy: dict[str, dict[str, open311.Service]] = {}
        self._service_names = {service.service_code: service.service_name for service in self._services().values()}
        self._openapi_body = orjson.dumps(openapi_document(serde, self._service_names, max_body_bytes))

    # -- middleware ------------------------------------------------------------------------------

    @web.middleware
    async def access_log(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Turn refusals into JSON error responses, and log one structured line per request."""
        started = time.perf_counter()
        entry: dict[str, Any] = {"method": request.method, "path": request.path}
        request[_LOG_ENTRY] = entry
        open311_format = _open311_format(request.path)
        try:
            response = await handler(request)
        except Refused as refusal:
            entry["invalid"] = [name for name, _ in refusal.problems if name] or None
            response = _error_response(refusal, open311_format)
        except web.HTTPRequestEntityTooLarge:
            response = _error_response(Refused(413, [("body", f"the body is larger than the limit of {self.max_body_bytes} bytes")]), open311_format)
        except web.HTTPException as exc:  # routing: 404, 405
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            response = _error_response(Refused(exc.status, [(None, exc.reason)], allow), open311_format)
        except Exception:  # a bug: the client gets a JSON 500, the log the traceback
            _log.exception("unhandled error in %s %s", request.method, request.path)
            response = _error_response(Refused(500, [(None, "internal error")]), open311_format)
        entry["status"] = response.status
        entry["ms"] = round((time.perf_counter() - started) * 1000, 2)
        _access_log.info(orjson.dumps({"at": self.clock().isoformat(), **{k: v for k, v in entry.items() if v is not None}}).decode())
        return response

    # -- handlers ----------------------------------------------------------------------------------

    async def post_camera(self, request: web.Request) -> web.Response:
        return await self._post_record(request, Source.CAMERA.value)

    async def post_hotline(self, request: web.Request) -> web.Response:
        return await self._post_record(request, Source.HOTLINE.value)

    async def get_services(self, request: web.Request) -> web.Response:
        return _open311(request.match_info["fmt"], "services", [service.as_json() for service in self._services().values()])

    async def get_service_definition(self, request: web.Request) -> web.Response:
        code = request.match_info["service_code"]
        service = self._services().get(code)
        if service is None:
            raise Refused(404, [("service_code", f"no service {code!r}; services.json lists them")])
        return _open311(request.match_info["fmt"], "service_definition", service.definition())

    def _services(self) -> dict[str, open311.Service]:
        """The services, by code, with the time limits of the SLA policy in force now (built once per policy version)."""
        policy = policy_in_force(self.policies, self.clock())
        built = self._services_by_policy.get(policy.version)
        if built is None:
            built = self._services_by_policy[policy.version] = {
                service.service_code: service for service in open311.services(self.serde.catalog.categories.values(), self.reference, policy)}
        return built

    async def get_openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi_body, content_type="application/json")

    async def post_open311_request(self, request: web.Request) -> web.Response:
        fields = await self._open311_fields(request)
        key = self._authenticate(request, Source.APP.value, fields)
        fields = {name: value for name, value in fields.items() if name != "api_key"}
        idempotency_key = self._idempotency_key(request)
        if idempotency_key:
            digest = hashlib.sha256(f"{key.integrator}\n{idempotency_key}".encode()).hexdigest()[:32]
            report_id = f"o311-{digest}"
        else:  # Open311 has no client id: without Idempotency-Key every POST is a new report
            report_id = f"o311-{uuid.uuid4().hex}"
        try:
            record = open311.app_event(fields, report_id=report_id, received_at=self.clock(), hasher=self.hasher,
                                       jurisdiction_id=self.reference.district_id, gazetteer=self.reference.gazetteer,
                                       validate=self._validator("AppEvent"))
        except ValidationError as exc:
            raise _invalid(exc) from exc

        def acknowledged(delivery: Delivery) -> Any:
            self._received.put(report_id, open311.received(record, key.integrator))
            # Whistle assigns the id at once, so the token (for GET tokens/{token}) is the id itself
            return [{"service_request_id": report_id, "token": report_id, "service_notice": _RECEIVED_NOTICE, "account_id": None}]

        return await self._publish_once(request, key, Source.APP.value, report_id, idempotency_key or report_id, fields, record, acknowledged,
                                        self._open311_answer(request, "service_requests"))

    async def get_open311_requests(self, request: web.Request) -> web.Response:
        reader = self._reader_of(request)
        params = {name: ",".join(request.query.getall(name)) for name in request.query}
        try:
            query = open311.request_query(params, now=self.clock(), service_codes=self._service_names)
        except ValidationError as exc:
            raise _invalid(exc) from exc
        found = await self._lookup(query)
        return _open311(request.match_info["fmt"], "service_requests", [self._service_request(p, reader) for p in found])

    async def get_open311_request(self, request: web.Request) -> web.Response:
        reader = self._reader_of(request)
        found = await self._request_by_id(request.match_info["report_id"])
        return _open311(request.match_info["fmt"], "service_requests", [self._service_request(p, reader) for p in found])

    async def get_open311_token(self, request: web.Request) -> web.Response:
        """The request id of a token (the token is the id: Whistle assigns ids at once); 404 for a token no request has."""
        token = request.match_info["token"]
        found = await self._request_by_id(token, "token")
        return _open311(request.match_info["fmt"], "service_requests", [{"service_request_id": p.report_id, "token": token} for p in found[:1]])

    async def post_open311_feedback(self, request: web.Request) -> web.Response:
        """The reporter rates (or reopens) a request they filed, proving it by the identity they filed it with.

        Only the integrator that filed the request may send it (its key), and only with the reporter's
        identity (its keyed hash must equal the stored one): a unit can never rate what it handled.
        """
        fields = await self._open311_fields(request)
        key = self._authenticate(request, Source.APP.value, fields)
        fields = {name: value for name, value in fields.items() if name != "api_key"}
        try:
            given = open311.feedback(fields, self.hasher)
        except ValidationError as exc:
            raise _invalid(exc) from exc
        report_id = request.match_info["report_id"]
        mine = [p for p in await self._request_by_id(report_id) if p.sender == key.integrator]
        if not mine:
            raise Refused(404, [("service_request_id", f"no service request {report_id!r} filed by this integrator")])
        progress = mine[0]
        if not progress.reporter_hash or not hmac.compare_digest(self.hasher.reporter(given.pseudonym), progress.reporter_hash):
            raise Refused(403, [("email", "the identity given is not the one this request was filed with")])
        if progress.case_id is None:
            raise Refused(409, [("service_request_id", "the request has not become a case yet; rate it once it is resolved")])
        action_id = self._idempotency_key(request) or f"fb-{uuid.uuid4().hex}"
        action = {"action_id": action_id, "case_id": progress.case_id, "kind": "reopen" if given.reopen else "rate",
                  "unit_id": REPORTER, "at": self.clock(), "rating": given.rating, "note": given.comment,
                  "reason": "reopened by the reporter" if given.reopen else None,
                  "report_id": scoped_report_id(Source.APP.value, key.integrator, progress.report_id)}
        return await self._publish_action(request, key, action, fields, self._open311_answer(request, "service_requests"))

    async def post_case_action(self, request: web.Request) -> web.Response:
        """A handling unit's action on a case. The unit is the key's (one of its units, or one under them);
        the time is the gateway's clock; nothing of who or when is taken from the body."""
        key = self._authenticate(request, None, {})
        body = self._parse_json(await request.read())
        set_by_whistle = [name for name in _SET_BY_WHISTLE if name in body]
        if set_by_whistle:
            raise Refused(400, [(name, "is set by Whistle (case from the path, time from its clock, actor from the key), not by the request")
                                for name in set_by_whistle])
        acting = self.credentials().acting.get(key.integrator, frozenset())
        kind = body.get("kind")
        if isinstance(kind, str) and kind in REPORTER_ACTIONS:
            body = {**self._rated_return_visit(key, body), "unit_id": RETURN_VISIT if key.return_visit else REPORTER}
        elif not key.units:
            raise Refused(403, [("kind", not_a_unit(key, str(kind)).message)])
        elif "unit_id" not in body and len(key.units) == 1 and not key.below:
            body = {**body, "unit_id": next(iter(key.units))}
        elif "unit_id" not in body:
            raise Refused(400, [("unit_id", f"this key acts for {len(acting)} units: name the acting one")])
        action = {**body, "case_id": request.match_info["case_id"], "at": self.clock()}
        return await self._publish_action(request, key, action, body)

    # -- steps -------------------------------------------------------------------------------------

    def _rated_return_visit(self, key: Credential, body: dict[str, Any]) -> dict[str, Any]:
        """The body with the return visit's result (`return_visit_result`) as the rating the reference data gives it
        (hotline.yaml), the result kept as the note when there is none; the body as it is without one."""
        if RETURN_VISIT_RESULT not in body:
            return body
        result = body[RETURN_VISIT_RESULT]
        if not key.return_visit:
            raise Refused(403, [(RETURN_VISIT_RESULT, f"{key.integrator} is not the hotline's return visit (a return_visit key)")])
        if body.get("rating") is not None:
            raise Refused(400, [(RETURN_VISIT_RESULT, "give the return visit's result or a rating, not both")])
        rating = self.reference.rating_for_return_visit(result) if isinstance(result, str) else None
        if rating is None:
            known = ", ".join(sorted(self.reference.return_visit_ratings))
            raise Refused(400, [(RETURN_VISIT_RESULT, f"{result!r} is not a return-visit result of {self.reference.hotline_version} "
                                                      f"(hotline.yaml: {known})")])
        rest = {name: value for name, value in body.items() if name != RETURN_VISIT_RESULT}
        return {**rest, "rating": rating, "note": rest.get("note") or f"回访: {result}"}

    async def _publish_action(self, request: web.Request, key: Credential, action: Mapping[str, Any], body: Any,
                              respond: Callable[[Any, int, Mapping[str, str] | None], web.Response] = _json) -> web.Response:
        """Validate `action` as the worker will, check the key may send it (the worker's own rules), publish it once."""
        try:
            record = self.serde.validate("AppEvent", {"event": {"HandlingAction": action}})
            partition_key_of_case(action["case_id"])
        except ValidationError as exc:
            raise _invalid(exc, "event.") from exc
        except ContractError as exc:
            raise Refused(404, [("case_id", exc.message)]) from exc
        refusal = action_refusal(self.credentials(), key, from_record(HandlingAction, record["event"][1]))
        if refusal is not None:
            raise Refused(403, [(refusal.context.get("field"), refusal.message)])
        refusal_on_case = await self._case_refusal(action)
        if refusal_on_case is not None:
            raise Refused(403, [("unit_id", refusal_on_case)])
        action_id = record["event"][1]["action_id"]

        def acknowledged(delivery: Delivery) -> Any:
            return {"action_id": action_id, "topic": delivery.topic, "partition": delivery.partition, "offset": delivery.offset}

        return await self._publish_once(request, key, Source.APP.value, action_id, f"action:{action_id}", body, record, acknowledged, respond)

    async def _case_refusal(self, action: Mapping[str, Any]) -> str | None:
        """Why the case (as the audit store knows it) does not allow the acting unit; None if it may, or the
        store does not know the case yet (the worker holds an early action and decides it once the case opens)."""
        if action["kind"] in REPORTER_ACTIONS:
            return None
        try:
            units = await asyncio.to_thread(self.reader.case_units, action["case_id"])
        except StoreError as exc:
            raise Refused(503, [(None, "the case store is unavailable; retry later")], {"Retry-After": "5"}) from exc
        if not units or action["unit_id"] in units:
            return None
        return f"{action['unit_id']} is on none of case {action['case_id']}'s handling chains ({', '.join(sorted(units))})"

    def _reader_of(self, request: web.Request) -> str | None:
        """Who reads Open311 requests: the integrator of a valid key (its own requests in full), None for the public."""
        if self._presented_key(request, request.query) is None:
            return None
        return self._authenticate(request, None, request.query).integrator

    def _service_request(self, progress: open311.RequestProgress, reader: str | None) -> dict[str, Any]:
        """The request as `reader` may see it, with expected_datetime from its case's events (the SLA engine's deadline)."""
        if progress.events:
            try:
                progress = dataclasses.replace(progress, expected_at=open311.expected_datetime(progress.events, self.policies, self.calendar))
            except WhistleError as exc:  # a chain the store holds broken, or a policy not loaded: no deadline to promise
                _log.warning("no expected_datetime for case %s: %s", progress.case_id, exc)
        return open311.service_request(progress, self.reference, self._service_names, full=reader is not None and progress.sender == reader)

    def _open311_answer(self, request: web.Request, root: str) -> Callable[[Any, int, Mapping[str, str] | None], web.Response]:
        """How a POST on an Open311 path answers: in the path's format, under `root` in XML."""
        fmt = request.match_info["fmt"]
        return lambda body, status, headers: _open311(fmt, root, body, status, headers)

    async def _request_by_id(self, report_id: str, field_name: str = "service_request_id") -> list[open311.RequestProgress]:
        bad_id = id_problem(report_id)
        if bad_id:
            raise Refused(400, [(field_name, f"an id {bad_id}")])
        now = self.clock()
        found = await self._lookup(open311.RequestQuery(ids=(report_id,), service_codes=(), start=now, end=now, statuses=open311.STATUSES))
        if not found:
            raise Refused(404, [(field_name, f"no service request {report_id!r}")])
        return found

    def _authenticate(self, request: web.Request, source: str | None, parameters: Mapping[str, Any]) -> Credential:
        """The caller's credential (401 unknown; 403 when it may not publish on `source`), with one token taken from its bucket (429)."""
        presented = self._presented_key(request, parameters)
        if presented is None:
            raise Refused(401, [(API_KEY_HEADER, f"an API key is required ({API_KEY_HEADER} header)")], {"WWW-Authenticate": API_KEY_HEADER})
        key = self.credentials().find(presented)
        if key is None:
            raise Refused(401, [(API_KEY_HEADER, "unknown API key")], {"WWW-Authenticate": API_KEY_HEADER})
        entry = request[_LOG_ENTRY]
        entry["integrator"], entry["source"] = key.integrator, source
        if source is not None and (refusal := may_publish(key, source)) is not None:
            raise Refused(403, [(API_KEY_HEADER, refusal.message)])
        now = self.clock()
        bucket = self._buckets.get(key.sha256)
        if bucket is None:
            bucket = self._buckets[key.sha256] = TokenBucket(key.rate_per_second, key.burst, float(key.burst), now)
        wait_s = bucket.take(now)
        if wait_s:
            raise Refused(429, [(None, f"rate limit of {key.rate_per_second:g}/s (burst {key.burst}) exceeded")],
                          {"Retry-After": str(max(1, math.ceil(wait_s)))})
        return key

    @staticmethod
    def _presented_key(request: web.Request, parameters: Mapping[str, Any]) -> str | None:
        presented = request.headers.get(API_KEY_HEADER) or parameters.get("api_key")
        return presented if presented and isinstance(presented, str) else None

    async def _open311_fields(self, request: web.Request) -> Mapping[str, Any]:
        """The POSTed Open311 parameters: a JSON object, or form fields (url-encoded or multipart), text only."""
        if request.content_type == "application/json":
            return self._parse_json(await request.read())
        if request.content_type == "application/x-www-form-urlencoded":
            return _parse_urlencoded(await request.read(), request.charset)
        try:
            form = await request.post()
        except web.HTTPException:  # over the size limit: 413 from the middleware
            raise
        except LookupError as exc:  # the charset parameter names no codec Python knows
            raise Refused(400, [("body", f"unknown charset {request.charset!r}; send UTF-8")]) from exc
        except UnicodeError as exc:
            raise Refused(400, [("body", f"the form does not decode as {request.charset or 'utf-8'}: {exc}")]) from exc
        except (ValueError, AssertionError, RuntimeError) as exc:  # aiohttp's multipart reader on malformed parts
            raise Refused(400, [("body", f"not a readable form: {exc}")]) from exc
        fields: dict[str, Any] = {}
        for name in form:
            value = form.getall(name)[-1]
            if not isinstance(value, str):
                raise Refused(400, [(name, "file uploads are not accepted; send media_url")])
            fields[name] = value
        return fields

    async def _post_record(self, request: web.Request, source: str) -> web.Response:
        key = self._authenticate(request, source, {})
        idempotency_key = self._idempotency_key(request)
        body = self._parse_json(await request.read())
        spec = self.serde.catalog.topic_for_source(source)
        try:
            record = self.serde.validate(spec.schema, body)
        except ValidationError as exc:
            raise _invalid(exc) from exc
        event_id = record[self.serde.catalog.record_facts(spec.schema).id_field]

        def acknowledged(delivery: Delivery) -> Any:
            return {"event_id": event_id, "topic": delivery.topic, "partition": delivery.partition, "offset": delivery.offset}

        return await self._publish_once(request, key, source, event_id, idempotency_key or event_id, body, record, acknowledged)

    async def _publish_once(self, request: web.Request, key: Credential, source: str, event_id: str, client_id: str,
                            body: Any, record: Mapping[str, Any], acknowledged: Callable[[Delivery], Any],
                            respond: Callable[[Any, int, Mapping[str, str] | None], web.Response] = _json) -> web.Response:
        """Publish `record` unless this client id already was: 202 after Kafka's ack, the first response on a retry
        (`respond` renders the answer: JSON, or an Open311 path's format)."""
        request[_LOG_ENTRY]["event_id"] = event_id
        receipt_key = (key.integrator, source, client_id)
        digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
        receipt: _Receipt | None = self._receipts.get(receipt_key)
        if receipt is not None:
            if receipt.digest != digest:
                raise Refused(409, [(IDEMPOTENCY_HEADER, f"{client_id!r} was already used for a different request")])
            answer = await asyncio.shield(receipt.settled)
            if answer is None:
                raise _kafka_unavailable()
            request[_LOG_ENTRY]["replayed"] = True
            return respond(answer, 202, {"Idempotent-Replayed": "true"})
        receipt = _Receipt(digest, asyncio.get_running_loop().create_future())
        self._receipts.put(receipt_key, receipt)
        try:
            # bounded: while Kafka is away a request is answered 503 within kafka_timeout_s, not held open
            delivery = await asyncio.wait_for(self.publisher.publish_async(source, record, signer=derived_signer(self.master, key)), self.kafka_timeout_s)
        except BaseException as exc:  # not written (or not known to be): forget the attempt so a retry publishes again
            self._receipts.pop(receipt_key)
            receipt.settled.set_result(None)
            if isinstance(exc, ValidationError):
                raise _invalid(exc) from exc
            if isinstance(exc, (DeliveryError, asyncio.TimeoutError)):
                raise _kafka_unavailable() from exc
            raise
        answer = acknowledged(delivery)
        receipt.settled.set_result(answer)
        return respond(answer, 202, None)

    async def _lookup(self, query: open311.RequestQuery) -> list[open311.RequestProgress]:
        """Progress from the audit store; a query by id also finds reports this process published that the
        sink has not stored yet (as received), so a client can read back its request at once."""
        try:
            found = await asyncio.to_thread(self.reader.lookup, query)
        except StoreError as exc:
            raise Refused(503, [(None, "the case status store is unavailable; retry later")], {"Retry-After": "5"}) from exc
        if query.ids and "open" in query.statuses:
            known = {progress.report_id for progress in found}
            found.extend(p for p in map(self._received.get, query.ids) if p is not None and p.report_id not in known)
        return found

    def _idempotency_key(self, request: web.Request) -> str | None:
        value = request.headers.get(IDEMPOTENCY_HEADER)
        if value is not None and not _IDEMPOTENCY_KEY.fullmatch(value):
            raise Refused(400, [(IDEMPOTENCY_HEADER, "must be 1 to 200 printable ASCII characters without spaces")])
        return value

    def _parse_json(self, raw: bytes) -> Any:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, [("body", f"not valid JSON: {exc}")]) from exc
        if not isinstance(body, dict):
            raise Refused(400, [("body", f"expected a JSON object, got {type(body).__name__}")])
        return body

    def _validator(self, schema: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        return lambda record: self.serde.validate(schema, record)


def _parse_urlencoded(raw: bytes, charset: str | None) -> dict[str, str]:
    """A url-encoded form, decoded strictly: bytes (raw or %-escaped) that are not text in the charset are
    refused naming the field, never replaced by U+FFFD; the last of repeated fields wins."""
    encoding = charset or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise Refused(400, [("body", f"unknown charset {charset!r}; send UTF-8")]) from exc
    try:
        text = raw.decode(encoding)
    except UnicodeError as exc:
        raise Refused(400, [("body", f"the form is not {encoding} text: {exc}")]) from exc
    fields: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair.strip():
            continue
        raw_name, _, raw_value = pair.partition("=")
        try:
            name = urllib.parse.unquote_plus(raw_name, encoding=encoding, errors="strict")
        except UnicodeError as exc:
            raise Refused(400, [("body", f"a field name is not {encoding} text once %-decoded")]) from exc
        try:
            fields[name] = urllib.parse.unquote_plus(raw_value, encoding=encoding, errors="strict")
        except UnicodeError as exc:
            raise Refused(400, [(name, f"is not {encoding} text once %-decoded")]) from exc
    return fields


def _kafka_unavailable() -> Refused:
    return Refused(503, [(None, "Kafka did not take the write; nothing was accepted, retry later")], {"Retry-After": "1"})


# ---------------------------------------------------------------------------------------------- OpenAPI

_ERRORS_V1 = {"type": "object", "required": ["errors"], "properties": {"errors": {"type": "array", "items": {
    "type": "object", "required": ["field", "message"],
    "properties": {"field": {"type": "string", "nullable": True}, "message": {"type": "string"}}}}}}
_ERRORS_OPEN311 = {"type": "array", "items": {"type": "object", "required": ["code", "description", "field"], "properties": {
    "code": {"type": "integer"}, "description": {"type": "string"}, "field": {"type": "string", "nullable": True}}}}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}
_REFUSALS = {
    "400": "Invalid request: every invalid field is named.",
    "401": "No API key, or an unknown one.",
    "403": "The key may not use this channel.",
    "404": "No such resource.",
    "405": "Method not allowed.",
    "409": "The idempotency key was already used for a different request.",
    "413": "The body is over the size limit.",
    "429": "The key's rate limit is exceeded (Retry-After).",
    "503": "Kafka (or, for GET, the audit store) is unavailable; nothing was accepted (Retry-After).",
}


def _responses(success: str, success_schema: Mapping[str, Any], statuses: tuple[str, ...], errors: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {success: {"description": "Accepted: Kafka acknowledged the write." if success == "202" else "OK",
                                     "content": {"application/json": {"schema": success_schema}}}}
    for status in statuses:
        entry: dict[str, Any] = {"description": _REFUSALS[status], "content": {"application/json": {"schema": errors}}}
        if status in ("429", "503"):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


def openapi_document(serde: Serde, service_names: Mapping[str, str], max_body_bytes: int) -> dict[str, Any]:
    """This gateway as OpenAPI 3.0: request bodies from the Avro schemas (schemas.validation.json_schema, the
    rules `validate` applies), Open311 parameters from whistle.edges.open311, every status it answers."""
    catalog, vocabularies = serde.catalog, serde.catalog.vocabularies()
    keyed: list[dict[str, list[str]]] = [{"ApiKeyHeader": []}]
    idempotency = {"name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
                   "description": "Makes retries idempotent (else the record's own id does).",
                   "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,200}$", "minLength": 1, "maxLength": 200}}
    paths: dict[str, Any] = {}
    post_statuses = ("400", "401", "403", "409", "413", "429", "503")
    for source, path in ((Source.CAMERA.value, "/v1/camera/detections"), (Source.HOTLINE.value, "/v1/hotline/tickets")):
        spec = catalog.topic_for_source(source)
        schema = catalog.schema(spec.schema)
        accepted = {"type": "object", "required": ["event_id", "topic", "partition", "offset"], "properties": {
            "event_id": {"type": "string"}, "topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}}}
        paths[path] = {"post": {
            "operationId": f"post_{source}", "summary": f"Publish one {schema.name} to {spec.name}", "description": spec.doc,
            "security": keyed, "parameters": [idempotency],
            "requestBody": {"required": True, "description": f"JSON, at most {max_body_bytes} bytes.",
                            "content": {"application/json": {"schema": json_schema(schema.definition, vocabularies)}}},
            "responses": _responses("202", accepted, post_statuses, _ERRORS_V1)}}
    text: dict[str, Any] = {"type": "string"}
    form_properties: dict[str, Any] = {name: {**text, "description": doc} for name, doc in open311.REQUEST_FIELDS.items()}
    json_properties = {**form_properties, **{name: {"oneOf": [{"type": "number"}, text], "description": open311.REQUEST_FIELDS[name]}
                                             for name in ("lat", "long")}}
    service_code = {"type": "string", "enum": list(service_names)}
    form_properties["service_code"] = json_properties["service_code"] = {**service_code, "description": open311.REQUEST_FIELDS["service_code"]}
    request_schema = {"type": "object", "required": ["service_code"], "additionalProperties": False}  # lat and long, or address_string
    open311_keyed: list[dict[str, list[str]]] = [{"ApiKeyHeader": []}, {"ApiKeyQuery": []}]
    service_request = {"type": "object", "additionalProperties": True, "properties": {
        "service_request_id": text, "status": {"type": "string", "enum": list(open311.STATUSES)}, "status_notes": text,
        "service_code": text, "description": text, "requested_datetime": text, "updated_datetime": text,
        "expected_datetime": {"type": "string", "nullable": True, "description": "The case's pending accept or resolve deadline."},
        "notes": {"type": "array", "items": {"type": "object", "properties": {"datetime": text, "description": text}}},
        "extended_attributes": {"type": "object", "properties": {"x_status": {"type": "string", "enum": list(open311.EXTENDED_STATUSES)}}}}}
    query_schemas: dict[str, Any] = {"status": {**text, "enum": list(open311.STATUSES)},
                                     "page": {"type": "integer", "minimum": 1, "maximum": open311.MAX_PAGE},
                                     "page_size": {"type": "integer", "minimum": 1, "maximum": open311.MAX_QUERY_RESULTS}}
    query = [{"name": name, "in": "query", "required": False, "description": doc, "schema": query_schemas.get(name, text)}
             for name, doc in open311.QUERY_PARAMETERS.items() if name != "api_key"]
    get_statuses = ("400", "401", "403", "429", "503")
    paths["/open311/v2/services.json"] = {"get": {
        "operationId": "open311_services", "summary": "Our incident categories as Open311 services", "security": [],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "array", "items": {
            "type": "object", "properties": {"service_code": text, "service_name": text, "description": text, "metadata": {"type": "boolean"},
                                             "type": text, "keywords": text, "group": text}}}}}}}}}
    attribute = {"type": "object", "properties": {"variable": {"type": "boolean"}, "code": text, "datatype": text, "required": {"type": "boolean"},
                                                  "datatype_description": {"type": "string", "nullable": True}, "order": {"type": "integer"},
                                                  "description": text, "values": {"type": "array", "items": {"type": "object"}}}}
    paths["/open311/v2/services/{service_code}.json"] = {"get": {
        "operationId": "open311_service_definition", "summary": "A service's definition: its attributes (informational)", "security": [],
        "parameters": [{"name": "service_code", "in": "path", "required": True, "description": "A service_code from services.json.",
                        "schema": {"type": "string"}}],
        "responses": _responses("200", {"type": "object", "properties": {"service_code": text, "attributes": {"type": "array", "items": attribute}}},
                                ("404",), _ERRORS_OPEN311)}}
    paths["/open311/v2/tokens/{token}.json"] = {"get": {
        "operationId": "open311_token", "summary": "The request id of a token (the POST's answer gives both)", "security": [],
        "parameters": [{"name": "token", "in": "path", "required": True, "description": f"The token: {ID_RULE}.", "schema": {"type": "string"}}],
        "responses": _responses("200", {"type": "array", "items": {"type": "object", "properties": {"service_request_id": text, "token": text}}},
                                ("400", "404", "503"), _ERRORS_OPEN311)}}
    paths["/open311/v2/requests.json"] = {
        "post": {"operationId": "open311_post_request", "summary": "Open311 GeoReport v2 service request: one resident report",
                 "security": open311_keyed, "parameters": [idempotency],
                 "requestBody": {"required": True, "content": {
                     "application/x-www-form-urlencoded": {"schema": {**request_schema, "properties": form_properties}},
                     "application/json": {"schema": {**request_schema, "properties": json_properties}}}},
                 "responses": _responses("202", {"type": "array", "items": {"type": "object", "properties": {
                     "service_request_id": text, "token": text, "service_notice": text, "account_id": {"type": "string", "nullable": True}}}},
                     post_statuses, _ERRORS_OPEN311)},
        "get": {"operationId": "open311_get_requests", "summary": "Service requests and their status, from the audit store",
                "security": open311_keyed, "parameters": query,
                "responses": _responses("200", {"type": "array", "items": service_request}, get_statuses, _ERRORS_OPEN311)},
    }
    paths["/open311/v2/requests/{service_request_id}.json"] = {"get": {
        "operationId": "open311_get_request", "summary": "One service request and its status", "security": open311_keyed,
        "parameters": [{"name": "service_request_id", "in": "path", "required": True, "description": f"The request's id: {ID_RULE}.",
                        "schema": {"type": "string"}}],
        "responses": _responses("200", {"type": "array", "items": service_request}, (*get_statuses, "404"), _ERRORS_OPEN311)}}
    action_schema = json_schema(catalog.schema("HandlingAction").definition, vocabularies)
    for name in _SET_BY_WHISTLE:
        action_schema["properties"].pop(name, None)
    action_schema["required"] = [name for name in action_schema.get("required", []) if name not in (*_SET_BY_WHISTLE, "unit_id")]
    action_schema["additionalProperties"] = False
    action_schema["properties"]["unit_id"] = {**action_schema["properties"]["unit_id"], "description": (
        "The acting unit: one of the key's units (or under them). May be left out when the key acts for exactly one unit.")}
    action_schema["properties"][RETURN_VISIT_RESULT] = {"type": "string", "description": (
        "For rate, by a return_visit key instead of rating: the return visit's result as 12345 records it (满意, 基本满意, 不满意), "
        "rated as the reference data's hotline.yaml says.")}
    accepted_action = {"type": "object", "required": ["action_id", "topic", "partition", "offset"], "properties": {
        "action_id": text, "topic": text, "partition": {"type": "integer"}, "offset": {"type": "integer"}}}
    paths["/v1/cases/{case_id}/actions"] = {"post": {
        "operationId": "post_case_action", "security": keyed, "parameters": [
            {"name": "case_id", "in": "path", "required": True, "description": "The case (CaseEvent.case_id).", "schema": {"type": "string"}}],
        "summary": "A handling unit's action on a case: accept, transfer (return as not ours), resolve, request_extension",
        "description": "The unit is the key's (units, below), the time the gateway's clock: neither is taken from the body. Rating and "
                       "reopening are the reporter's (Open311 feedback) or the hotline return visit's (a return_visit key).",
        "requestBody": {"required": True, "content": {"application/json": {"schema": action_schema}}},
        "responses": _responses("202", accepted_action, (*post_statuses, "404"), _ERRORS_V1)}}
    feedback_properties = {name: {**text, "description": doc} for name, doc in open311.FEEDBACK_FIELDS.items() if name != "api_key"}
    feedback_body = {"type": "object", "additionalProperties": False, "properties": feedback_properties}
    paths["/open311/v2/requests/{service_request_id}/feedback.json"] = {"post": {
        "operationId": "open311_post_feedback", "security": open311_keyed, "parameters": [
            {"name": "service_request_id", "in": "path", "required": True, "description": "The request's id.", "schema": {"type": "string"}},
            idempotency],
        "summary": "The reporter rates (or reopens) a request they filed (a Whistle extension of GeoReport v2)",
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": feedback_body},
                                                      "application/json": {"schema": feedback_body}}},
        "responses": _responses("202", accepted_action, (*post_statuses, "404"), _ERRORS_OPEN311)}}
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This description", "security": [],
                                      "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Whistle HTTP gateway", "version": "1",
                 "description": ("HTTP ingest for camera platforms, the 12345 hotline and Open311 clients (whistle/edges/gateway.py). "
                                 "Every Open311 path listed with .json is also served with .xml (GeoReport v2's element names).")},
        "paths": paths,
        "components": {"securitySchemes": {
            "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
            "ApiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"}}},
    }


def build_app(
    settings: Settings,
    publisher: Publisher,
    credentials: Credentials | Callable[[], Credentials],
    clock: Clock = utc_now,
    *,
    reader: RequestStatusReader | None = None,
    reference: DistrictReference | None = None,
    policies: Mapping[str, SlaPolicy] | None = None,
    calendar: BusinessCalendar | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    idempotency_capacity: int = DEFAULT_IDEMPOTENCY_CAPACITY,
) -> web.Application:
    """The gateway's aiohttp application. `clock` (UTC-aware) drives rate limits and Open311 report times.

    A write is answered 503 once `settings.gateway_kafka_timeout_s` passed without Kafka's acknowledgement
    (give `publisher` the same delivery timeout, as `gateway_publisher` does, so the write is abandoned too).
    `idempotency_capacity` bounds the per-process LRU of client ids. `policies` and `calendar` (default: the
    worker's, streams.domain.rules.Rules of `settings.reference_dir`) give Open311's expected_datetime and the
    services' time limits.
    """
    if clock().utcoffset() is None:
        raise ConfigError("the gateway clock returns naive datetimes; it must return UTC-aware ones", field="clock")
    current = credentials if callable(credentials) else (lambda: credentials)
    if policies is None or calendar is None:  # the worker's rules (streams.domain.rules.Rules) of the reference directory
        rules = Rules.load(settings.reference_dir)
        policies, calendar, reference = rules.policies if policies is None else policies, calendar or rules.calendar, reference or rules.reference
    gateway = Gateway(settings, publisher, current, clock, serde=publisher.serde, reference=reference or load_district(settings.reference_dir),
                      policies=policies, calendar=calendar,
                      reader=reader or RequestStatusReader(settings.clickhouse), max_body_bytes=max_body_bytes,
                      idempotency_capacity=idempotency_capacity)
    app = web.Application(middlewares=[gateway.access_log], client_max_size=max_body_bytes)
    app.add_routes([
        web.get("/openapi.json", gateway.get_openapi),
        web.post("/v1/camera/detections", gateway.post_camera),
        web.post("/v1/hotline/tickets", gateway.post_hotline),
        web.post("/v1/cases/{case_id}/actions", gateway.post_case_action),
        web.post(f"/open311/v2/requests/{{report_id}}/feedback.{_OPEN311_FORMAT}", gateway.post_open311_feedback),
        web.get(f"/open311/v2/services.{_OPEN311_FORMAT}", gateway.get_services),
        web.get(f"/open311/v2/services/{{service_code}}.{_OPEN311_FORMAT}", gateway.get_service_definition),
        web.post(f"/open311/v2/requests.{_OPEN311_FORMAT}", gateway.post_open311_request),
        web.get(f"/open311/v2/requests.{_OPEN311_FORMAT}", gateway.get_open311_requests),
        web.get(f"/open311/v2/requests/{{report_id}}.{_OPEN311_FORMAT}", gateway.get_open311_request),
        web.get(f"/open311/v2/tokens/{{token}}.{_OPEN311_FORMAT}", gateway.get_open311_token),
    ])
    return app


def gateway_publisher(settings: Settings) -> Publisher:
    """The gateway's producer: a write not acknowledged within `gateway_kafka_timeout_s` fails (and is answered 503)."""
    return Publisher(settings, delivery_timeout_s=settings.gateway_kafka_timeout_s)


def run_gateway(settings: Settings, host: str, port: int, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Serve until SIGINT/SIGTERM, then flush the producer: every acknowledged write is on Kafka before exit.

    The key file (`settings.keys_file`) is re-read when it changes: keys rotate without a restart."""
    rules = Rules.load(settings.reference_dir)
    credentials = CredentialsFile(settings.keys_file, rules.reference)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    publisher = gateway_publisher(settings)
    app = build_app(settings, publisher, credentials.current, reference=rules.reference, policies=rules.policies, calendar=rules.calendar,
                    max_body_bytes=max_body_bytes)

    async def close_publisher(_app: web.Application) -> None:
        try:
            await asyncio.to_thread(publisher.close)
        except DeliveryError as exc:  # their requests were cancelled by the shutdown: none was answered 202
            _log.error("gateway stopped: %s", exc)

    app.on_cleanup.append(close_publisher)
    web.run_app(app, host=host, port=port, access_log=None, print=_log.info)
