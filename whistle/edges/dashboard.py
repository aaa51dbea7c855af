"""`whistle dashboard`: the auditors' and command centre's dashboard, read-only, on a loopback port.

Pages (HTML + Apache ECharts served from the project: the page loads nothing from outside the server)
- /            overview of a month: cases opened / resolved / closed, the "three rates", breaches by tier,
               change against the month before
- /ranking     grids, communities, streets or departments, each on the cases it held (sortable, the composite score,
               urgings / criticisms / referrals, the minimum-case rule, the as-of, provenance one click away)
- /map         the reference grid polygons (`echarts.registerMap`, no tiles) coloured by open / overdue cases
- /cases       case search, and a case's timeline with each event's hash-chain check
- /trends      breaches per day and tier, each street's on-time rate month by month, p50/p90 time to accept and
               to resolve per day or week
- /dead-letters  what the pipeline could not process (by stage and reason, the latest examples with their Kafka
               positions) and `whistle audit verify`'s verdict, run on request
- /export      every table as CSV or Excel (.xlsx, provenance on its own sheet)
Chinese by default; `?lang=en` switches to English (a small dictionary, dashboard_static/i18n.js).

Data endpoints (JSON; decimals as strings so they stay exact, as `whistle audit --format json`):
  GET /api/overview?month=YYYY-MM                 GET /api/ranking?month=&by=grid|community|street|department&min_cases=&as_of=
  GET /api/provenance?month=&by=&as_of=           GET /api/map?from=&to=      GET /api/grids (GeoJSON)
  (a ranking without as_of is pinned to now and answers with the as-of it used: ISO 8601 with a zone, which reproduces it;
   the page asks /api/provenance for that as-of when its provenance button is clicked)
  GET /api/cases?case_id=&street=&grid=&category=&status=&from=&to=&limit=
  GET /api/case/{case_id}                         GET /api/reference
  GET /api/trends?month=&months=&bucket=day|week  GET /api/dead_letters?month=&stage=&limit=
  GET /api/verify   runs `whistle audit verify`'s checks now (read-only; one run at a time, concurrent requests share it)
  GET /api/export/{table}.csv|.xlsx?...           (table: overview, breach_summary, ranking, provenance, map, cases, timeline,
                                                   trend_breaches, trend_on_time, trend_durations, dead_letters)
Every figure comes from a named SQL file in sinks/queries/ run through `sinks.audit` with bound
parameters (the same functions `whistle audit` calls), as the read-only `auditor` user.

Access: a users file (infra/dashboard-users.example.yaml) holds scrypt hashes of passwords, never a
password. POST /login sets a random session cookie (HttpOnly, SameSite=Strict, expiring); without a
valid session a page redirects to /login and everything else (data, static files) answers 401.
Sessions live in the process's memory: a restart logs everybody out.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import io
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from schemas.serde import Serde
from sinks import audit
from sinks.anchor import Anchor, read_anchors, verify_all
from sinks.clickhouse import Engine, ServerEngine
from streams.domain.case import GENESIS_HASH, CaseEvent, event_hash, verify_chain
from streams.domain.reference import DistrictReference, load_district, load_reference
from streams.domain.rules import SLA_DIR
from streams.domain.sla import SlaPolicy, load_policies
from whistle.ground.datafiles import read_entries
from whistle.ground.errors import ConfigError, StackError, StoreError, ValidationError, WhistleError
from whistle.ground.names import Topics
from whistle.ground.settings import ClickHouseSettings, Settings
from whistle.ground.times import to_epoch_ms

STATIC_DIR = Path(__file__).resolve().parent / "dashboard_static"
ECHARTS_JS = STATIC_DIR / "node_modules" / "echarts" / "dist" / "echarts.min.js"  # `npm ci` in dashboard_static (make bootstrap)
SESSION_COOKIE = "whistle_session"
DEFAULT_SESSION_TTL_S = 8 * 3600
MAX_CASES_LISTED = 500
MAX_DEAD_LETTERS_LISTED = 200
DEFAULT_TREND_MONTHS = 12
DEFAULT_DEAD_LETTER_POLICY = audit.DeadLetterPolicy()  # WHISTLE_VERIFY_DEAD_LETTER_* when served by `whistle dashboard`
LANGUAGES = ("zh-CN", "en")
PAGES = {"/": "overview", "/ranking": "ranking", "/map": "map", "/cases": "cases", "/trends": "trends", "/dead-letters": "dead_letters",
         "/export": "export"}
STATIC_FILES = {"app.js": "application/javascript", "i18n.js": "application/javascript", "style.css": "text/css"}
CASE_STATUSES = ("open", "opened", "dispatched", "accepted", "resolved", "rated", "reopened", "closed")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_END_OF_TIME_MS = 2**63 - 1
_USERNAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_HASH_FORMAT = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_log = logging.getLogger("whistle.edges.dashboard")
_USER = web.RequestKey("user", str)


# ---------------------------------------------------------------------------------------------- users and sessions


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash` (base64) of `password`: what a users file holds in `password_scrypt`."""
    if not isinstance(password, str) or len(password) < 8:
        raise ValidationError("a dashboard password needs at least 8 characters", field="password")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the `hash_password` string `stored` (constant-time comparison)."""
    match = _HASH_FORMAT.fullmatch(stored)
    if match is None:
        return False
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, expected = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    try:
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


@dataclass(frozen=True, slots=True)
class Users:
    by_name: Mapping[str, str]  # username -> password_scrypt

    def check(self, username: str, password: str) -> bool:
        stored = self.by_name.get(username)
        if stored is None:
            verify_password(password, _DUMMY_HASH)  # same work for an unknown name: no user enumeration by timing
            return False
        return verify_password(password, stored)


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + base64.b64encode(bytes(32)).decode()


def load_users(path: Path | str) -> Users:
    """Parse the users file (format: infra/dashboard-users.example.yaml); errors name the file and the field."""
    path = Path(path)
    entries = read_entries(path, "users")
    users: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"users[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"username", "password_scrypt"}:
            raise ConfigError(f"{path}: {where} needs exactly username, password_scrypt", file=str(path), field=where)
        name, stored = entry["username"], entry["password_scrypt"]
        if not isinstance(name, str) or not _USERNAME.fullmatch(name) or name in users:
            raise ConfigError(f"{path}: {where}.username {name!r} must be a new lowercase name (a-z, 0-9, _ . -)",
                              file=str(path), field=f"{where}.username")
        if not isinstance(stored, str) or not _HASH_FORMAT.fullmatch(stored):
            raise ConfigError(f"{path}: {where}.password_scrypt must be a hash_password() string (scrypt$N$r$p$salt$hash)",
                              file=str(path), field=f"{where}.password_scrypt")
        users[name] = stored
    return Users(users)


class Sessions:
    """Random session tokens -> (user, expiry), in memory. `clock` returns seconds (monotonic by default)."""

    def __init__(self, ttl_s: float = DEFAULT_SESSION_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._by_token: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def open(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._by_token = {t: v for t, v in self._by_token.items() if v[1] > now}  # drop expired ones
            self._by_token[token] = (user, now + self.ttl_s)
        return token

    def user(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            entry = self._by_token.get(token)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._by_token[token]
                return None
            return entry[0]

    def close(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


# ---------------------------------------------------------------------------------------------- the figures


class AuditReader:
    """Runs the named audit queries (sinks/audit.py) for the dashboard, blocking: call it in a thread.

    `connect()` makes an engine for a thread (clickhouse-driver clients are not thread-safe); with
    `serialize=True` every call takes one lock instead (for an engine shared across threads, e.g. chdb in tests).
    `kafka()` reads Kafka's offsets for `verify` as `whistle audit verify` does: (the audited topics' ranges, the
    case stream's); without it the dashboard cannot verify (503), since a verdict without Kafka could not say "behind".
    """

    def __init__(self, connect: Callable[[], Engine], database: str, *, serialize: bool = False, owns_engines: bool = True,
                 tz: str = audit.LOCAL_TIMEZONE, kafka: KafkaRanges | None = None,
                 dead_letter_policy: audit.DeadLetterPolicy = DEFAULT_DEAD_LETTER_POLICY, anchors: Anchors | None = None,
                 policies: Mapping[str, SlaPolicy] | None = None) -> None:
        self._connect = connect
        self.policies = load_policies() if policies is None else policies  # the rankings' rules, read once
        self._kafka = kafka
        self.anchors = anchors  # the anchored digests verify holds the store to (None: not checked)
        self.dead_letter_policy = dead_letter_policy
        self.database = database
        self.tz = tz
        self._zone = ZoneInfo(tz)
        self._local = threading.local()
        self._lock = threading.Lock() if serialize else None
        self._owns = owns_engines
        self._engines: list[Engine] = []

    @classmethod
    def for_auditor(cls, clickhouse: ClickHouseSettings, *, kafka: KafkaRanges | None = None,
                    dead_letter_policy: audit.DeadLetterPolicy = DEFAULT_DEAD_LETTER_POLICY, anchors: Anchors | None = None,
                    policies: Mapping[str, SlaPolicy] | None = None) -> AuditReader:
        """The read-only auditor user of `clickhouse` (the settings' auditor_user / auditor_password)."""
        ch = clickhouse

        def connect() -> Engine:
            return ServerEngine.from_settings(replace(ch, user=ch.auditor_user, password=ch.auditor_password), connect_timeout=5.0,
                                              send_receive_timeout=60.0)

        return cls(connect, ch.database, kafka=kafka, dead_letter_policy=dead_letter_policy, anchors=anchors, policies=policies)

    @classmethod
    def for_settings(cls, settings: Settings) -> AuditReader:
        """As `whistle audit verify` reads: the auditor user, Kafka's offsets and anchors of settings' deployment, its dead-letter policy."""
        inbox = Topics.with_prefix(settings.topic_prefix).inbox

        def kafka() -> tuple[list[audit.KafkaRange], list[audit.KafkaRange]]:
            return audit.read_kafka_ranges(settings), audit.read_kafka_ranges(settings, topics=[inbox])

        serde = Serde.from_settings(settings)
        policy = audit.DeadLetterPolicy(settings.verify_dead_letter_share, settings.verify_dead_letter_min)
        anchors = Anchors(lambda: read_anchors(settings, serde), settings.anchor_key.value.encode("utf-8") or None,
                          Topics.with_prefix(settings.topic_prefix).case_events)
        return cls.for_auditor(settings.clickhouse, kafka=kafka, dead_letter_policy=policy, anchors=anchors,
                               policies=load_policies(settings.reference_dir / SLA_DIR))

    def _engine(self) -> Engine:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = self._local.engine = self._connect()
            self._engines.append(engine)
        return engine

    def call(self, work: Callable[[Engine, str], Any]) -> Any:
        if self._lock is None:
            return work(self._engine(), self.database)
        with self._lock:
            return work(self._engine(), self.database)

    def close(self) -> None:
        if self._owns:
            for engine in self._engines:
                engine.close()
        self._engines.clear()

    # -- figures (each a named query of sinks/queries/, parameters bound) -----------------------------

    def overview(self, month: str) -> dict[str, Any]:
        previous = previous_month(month)

        def work(engine: Engine, db: str) -> dict[str, Any]:
            start_ms, split_ms = audit.month_bounds(previous, self.tz)
            end_ms = audit.month_bounds(month, self.tz)[1]
            both = audit.run_query(engine, db, "dashboard_overview", {"start_ms": start_ms, "split_ms": split_ms, "end_ms": end_ms,
                                                                       "as_of_ms": _END_OF_TIME_MS})
            figures: dict[str, Any] = {}
            for row in both.rows:  # one row per period, its name first
                figures[row[0]] = audit.Result(both.name, both.columns[1:], (row[1:],))
            for which, (from_ms, to_ms) in (("current", (split_ms, end_ms)), ("previous", (start_ms, split_ms))):
                figures[f"breaches_{which}"] = audit.run_query(engine, db, "breach_summary", {"from_ms": from_ms, "to_ms": to_ms})
            return figures

        figures = self.call(work)
        return {"month": month, "previous_month": previous, **{key: table(result) for key, result in figures.items()}}

    def ranking(self, month: str, by: str, min_cases: int | None, as_of: datetime) -> dict[str, Any]:
        """`whistle audit ranking --month --by --min-cases --as-of`, with the minimum-case rule, the as-of it used and the
        policy that scored it. Its provenance is `provenance(month, by, as_of)`, fetched when the auditor asks for it:
        reading the offsets of a month's case events is the slowest query of the page."""
        if min_cases is None:
            min_cases = audit.ranking_min_cases(self.policies, month, self.tz)
        ranking = self.call(lambda engine, db: audit.ranking(engine, db, month, by, min_cases, as_of=as_of, tz=self.tz,
                                                             policies=self.policies))
        return {"month": month, "by": by, "min_cases": min_cases, "as_of": audit.as_of_text(as_of, self.tz),
                "score_policy": audit.ranking_score_policy(self.policies, month, self.tz), "ranking": table(ranking)}

    def provenance(self, month: str, by: str, as_of: datetime) -> audit.Result:
        return self.call(lambda engine, db: audit.ranking_provenance(engine, db, month, by, as_of=as_of, tz=self.tz, policies=self.policies))

    def grid_cases(self, start_ms: int, end_ms: int) -> audit.Result:
        return self.call(lambda engine, db: audit.run_query(engine, db, "dashboard_grid_cases",
                                                                {"start_ms": start_ms, "end_ms": end_ms, "as_of_ms": _END_OF_TIME_MS}))

    def cases(self, params: Mapping[str, Any]) -> audit.Result:
        return self.call(lambda engine, db: audit.run_query(engine, db, "dashboard_case_search", params))

    def case(self, case_id: str) -> dict[str, Any]:
        def work(engine: Engine, db: str) -> tuple[audit.Result, audit.Result]:
            return audit.case_timeline(engine, db, case_id), audit.run_query(engine, db, "dashboard_case_chain", {"case_id": case_id})

        timeline, chain_rows = self.call(work)
        chain = check_case_chain(chain_rows.rows)
        rows = timeline.as_dicts()
        for row in rows:
            row["chain"] = chain["events"].get(row["seq"]) if row["record"] == "case_event" else None
        return {"case_id": case_id, "columns": [*timeline.columns, "chain"], "rows": rows, "chain": {k: v for k, v in chain.items() if k != "events"}}

    def trends(self, month: str, months: int, bucket: str) -> dict[str, Any]:
        """The trends page's three figures (the functions `whistle audit trends` calls), on one connection in turn."""

        def work(engine: Engine, db: str) -> tuple[audit.Result, audit.Result, audit.Result]:
            return (audit.trend_breaches(engine, db, month, tz=self.tz), audit.trend_on_time(engine, db, month, months, tz=self.tz),
                    audit.trend_durations(engine, db, month, bucket, tz=self.tz))

        breaches, on_time, durations = self.call(work)
        return {"month": month, "months": months, "bucket": bucket, "breaches": table(breaches), "on_time": table(on_time),
                "durations": table(durations)}

    def dead_letters(self, month: str, stage: str, limit: int) -> dict[str, Any]:
        """The month's dead letters (by failure time): counts per original partition, stage and reason (the query
        `audit verify` reports them with) and the latest `limit` of them (of `stage` only, unless '')."""
        from_ms, to_ms = audit.month_bounds(month, self.tz)

        def work(engine: Engine, db: str) -> tuple[audit.Result, audit.Result]:
            scope = {"from_ms": from_ms, "to_ms": to_ms}
            return (audit.run_query(engine, db, "verify_dead_letters", scope),
                    audit.run_query(engine, db, "dashboard_dead_letter_examples", {**scope, "stage": stage, "limit": limit}))

        counts, examples = self.call(work)
        return {"month": month, "stage": stage, "counts": table(counts), "examples": table(examples)}

    def verify(self) -> dict[str, Any]:
        """`whistle audit verify` now: Kafka's offsets read first (as the CLI does), then every check on ClickHouse
        (SELECTs only). Raises StackError when there is no Kafka to compare with or it does not answer."""
        if self._kafka is None:
            raise StackError("this dashboard has no Kafka settings: verify compares ClickHouse with Kafka")
        started = time.monotonic()
        kafka, case_stream = self._kafka()
        anchors = None if self.anchors is None else self.anchors.read()
        key, case_events = (None, "") if self.anchors is None else (self.anchors.key, self.anchors.case_events)
        findings = self.call(lambda engine, db: verify_all(engine, db, kafka, case_stream, self.dead_letter_policy, anchors, key, case_events))
        status = audit.status_of(findings)
        return {"status": status, "exit_code": audit.EXIT_CODES[status], "seconds": round(time.monotonic() - started, 3),
                "partitions": len(kafka), "records_in_kafka": sum(k.high - k.low for k in kafka),
                "broken": sum(f.status == audit.BROKEN for f in findings), "behind": sum(f.status == audit.BEHIND for f in findings),
                "dead_letters": sum(f.records for f in findings if f.kind == "dead_letters"),
                "findings": table(audit.findings_result(findings))}


KafkaRanges = Callable[[], tuple[list[audit.KafkaRange], list[audit.KafkaRange]]]


@dataclass(frozen=True)
class Anchors:
    """Where `verify` reads the anchors from (Kafka, as `whistle audit verify` does), their key, and the topic they anchor."""

    read: Callable[[], list[Anchor]]
    key: bytes | None
    case_events: str


def check_case_chain(rows: tuple[tuple, ...] | list[tuple]) -> dict[str, Any]:
    """One case's stored events (dashboard_case_chain.sql rows) checked as `audit verify` does: copies of an event
    collapsed (a differing copy is a problem), then `verify_chain`. Per seq: whether the row's hash matches its
    content and whether its prev_hash is the previous event's hash."""
    chain: list[CaseEvent] = []
    problems: list[str] = []
    events: dict[int, dict[str, Any]] = {}
    for row in rows:
        event, (topic, partition, offset) = audit.stored_case_event(row)
        if chain and chain[-1].seq == event.seq:
            if event != chain[-1]:
                problems.append(f"{event.event_id}: copy at {topic}[{partition}]@{offset} differs from the first copy")
                events[event.seq]["copies_agree"] = False
            events[event.seq]["copies"] += 1
            continue
        previous_hash = chain[-1].hash if chain else GENESIS_HASH
        expected_seq = chain[-1].seq + 1 if chain else 1
        try:
            hash_ok = event_hash(event) == event.hash
        except (ValueError, WhistleError):
            hash_ok = False
        events[event.seq] = {"hash_ok": hash_ok, "linked": event.prev_hash == previous_hash and event.seq == expected_seq,
                             "copies": 1, "copies_agree": True, "hash": event.hash, "position": f"{topic}[{partition}]@{offset}"}
        chain.append(event)
    problems.extend(verify_chain(chain))
    for entry in events.values():
        entry["verified"] = entry["hash_ok"] and entry["linked"] and entry["copies_agree"]
    return {"verified": not problems and bool(chain), "events_checked": len(chain), "problems": problems, "events": events}


def table(result: audit.Result) -> dict[str, Any]:
    """A Result as JSON-able columns + rows of objects (decimals stay Decimal until `dumps`)."""
    return {"name": result.name, "columns": list(result.columns), "rows": result.as_dicts()}


def previous_month(month: str) -> str:
    audit.month_bounds(month)  # validates
    year, number = int(month[:4]), int(month[5:7])
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# ---------------------------------------------------------------------------------------------- the application


class Dashboard:
    def __init__(self, reader: AuditReader, users: Users, sessions: Sessions, reference: DistrictReference,
                 clock: Callable[[], datetime]) -> None:
        self.reader = reader
        self.users = users
        self.sessions = sessions
        self.reference = reference
        self.clock = clock
        self._grids = (reference.directory / "grids.geojson").read_bytes()
        self._verifying: asyncio.Future | None = None  # the verify run in progress, shared by the requests that wait for it

    # -- access ---------------------------------------------------------------------------------------

    @web.middleware
    async def require_login(self, request: web.Request, handler):
        if request.path in ("/login", "/logout", "/favicon.ico") or request.path == "/healthz":
            response = await handler(request)
        else:
            user = self.sessions.user(request.cookies.get(SESSION_COOKIE))
            if user is None:
                if request.method == "GET" and request.path in PAGES:
                    target = request.path_qs
                    raise web.HTTPSeeOther(f"/login?next={quote(target, safe='')}")
                return _json_error(401, "login required")
            request[_USER] = user
            response = await handler(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                                    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'")
        return response

    async def get_login(self, request: web.Request) -> web.Response:
        return web.Response(text=_login_page(_lang(request), request.query.get("next", "/"), error=False), content_type="text/html")

    async def post_login(self, request: web.Request) -> web.Response:
        form = await request.post()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        lang = _lang(request)
        target = str(form.get("next", "/"))
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        ok = await asyncio.to_thread(self.users.check, username, password)
        if not ok:
            _log.info("dashboard login refused for %r", username[:64])
            return web.Response(status=401, text=_login_page(lang, target, error=True), content_type="text/html")
        response = web.HTTPSeeOther(target)
        response.set_cookie(SESSION_COOKIE, self.sessions.open(username), max_age=int(self.sessions.ttl_s), httponly=True,
                            samesite="Strict", path="/")
        raise response

    async def post_logout(self, request: web.Request) -> web.Response:
        self.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # -- pages and static files -----------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        name = PAGES[request.path]
        return web.Response(text=_app_page(name, _lang(request), request[_USER], self._default_month()), content_type="text/html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "echarts.min.js":
            if not ECHARTS_JS.is_file():
                return _json_error(500, f"{ECHARTS_JS} is missing: run `npm ci` in {STATIC_DIR} (make bootstrap does)")
            return web.FileResponse(ECHARTS_JS, headers={"Content-Type": "application/javascript"})
        if name not in STATIC_FILES:
            return _json_error(404, "no such file")
        return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": STATIC_FILES[name]})

    # -- data -----------------------------------------------------------------------------------------

    async def api_overview(self, request: web.Request) -> web.Response:
        month = request.query.get("month") or self._default_month()
        return _json(await asyncio.to_thread(self.reader.overview, month))

    async def api_ranking(self, request: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(self.reader.ranking, *self._ranking_args(request)))

    async def api_provenance(self, request: web.Request) -> web.Response:
        month, by, _, as_of = self._ranking_args(request)
        return _json(table(await asyncio.to_thread(self.reader.provenance, month, by, as_of)))

    async def api_grids(self, request: web.Request) -> web.Response:
        return web.Response(body=self._grids, content_type="application/json")

    async def api_map(self, request: web.Request) -> web.Response:
        start_ms, end_ms = self._period(request)
        return _json(table(await asyncio.to_thread(self.reader.grid_cases, start_ms, end_ms)))

    async def api_cases(self, request: web.Request) -> web.Response:
        return _json(table(await asyncio.to_thread(self.reader.cases, self._search_params(request))))

    async def api_case(self, request: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(self.reader.case, request.match_info["case_id"]))

    async def api_trends(self, request: web.Request) -> web.Response:
        month, months, bucket = self._trend_args(request)
        return _json(await asyncio.to_thread(self.reader.trends, month, months, bucket))

    async def api_dead_letters(self, request: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(self.reader.dead_letters, *self._dead_letter_args(request)))

    async def api_verify(self, request: web.Request) -> web.Response:
        """Runs verify, or waits for the run already in progress: one run at a time however many auditors ask."""
        if self._verifying is None:
            self._verifying = asyncio.ensure_future(asyncio.to_thread(self.reader.verify))
            self._verifying.add_done_callback(self._verified)
        result = await asyncio.shield(self._verifying)
        return _json({**result, "checked_at_ms": to_epoch_ms(self.clock(), "clock")})

    def _verified(self, _done: asyncio.Future) -> None:
        self._verifying = None

    async def api_reference(self, request: web.Request) -> web.Response:
        ref = self.reference
        return _json({
            "district": {"id": ref.district_id, "name": ref.district_name},
            "units": {unit_id: unit.name for unit_id, unit in ref.units.items()},
            "streets": [{"id": s.street_id, "name": s.name} for s in ref.streets.values()],
            "departments": [{"id": d.unit_id, "name": d.name} for d in ref.departments.values()],
            "categories": [{"code": c.code, "name": c.name} for c in ref.categories.values()],
            "grids": {g.grid_id: {"name": g.name, "street_id": g.street_id, "community_id": g.community_id} for g in ref.grids.values()},
            "statuses": list(CASE_STATUSES),
            "default_month": self._default_month(),
            "ranking_tiers": list(audit.RANKING_UNITS),
            "trend_months": DEFAULT_TREND_MONTHS,
        })

    async def api_export(self, request: web.Request) -> web.StreamResponse:
        name, fmt = request.match_info["name"], request.match_info["fmt"]
        sheets = await asyncio.to_thread(self._export_tables, name, request)
        filename = f"whistle-{name}"
        if fmt == "csv":
            body = "\ufeff" + audit.to_csv(sheets[0])  # the BOM: Excel opens a UTF-8 CSV with Chinese correctly
            return web.Response(body=body.encode("utf-8"), headers={"Content-Type": "text/csv; charset=utf-8",
                                                                    "Content-Disposition": f'attachment; filename="{filename}.csv"'})
        return web.Response(body=to_xlsx(sheets), headers={
            "Content-Type": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "Content-Disposition": f'attachment; filename="{filename}.xlsx"'})

    def _export_tables(self, name: str, request: web.Request) -> list[audit.Result]:
        """The tables of one export: the figure, and for a ranking its provenance (own sheet / own CSV section)."""
        query = request.query
        if name in ("overview", "breach_summary"):
            month = query.get("month") or self._default_month()
            figures = self.reader.overview(month)
            key = "current" if name == "overview" else "breaches_current"
            return [_result(figures[key])]
        if name == "ranking":
            month, by, min_cases, as_of = self._ranking_args(request)  # one as-of, pinned once, for both sheets
            figures = self.reader.ranking(month, by, min_cases, as_of)
            if request.match_info["fmt"] == "csv":  # one table per CSV: the provenance is /api/export/provenance.csv
                return [_result(figures["ranking"])]
            return [_result(figures["ranking"]), self.reader.provenance(month, by, as_of)]
        if name == "provenance":
            month, by, _, as_of = self._ranking_args(request)
            return [self.reader.provenance(month, by, as_of)]
        if name == "map":
            return [self.reader.grid_cases(*self._period(request))]
        if name == "cases":
            return [self.reader.cases(self._search_params(request))]
        if name in ("trend_breaches", "trend_on_time", "trend_durations"):  # the trends page's three figures, as it shows them
            return [_result(self.reader.trends(*self._trend_args(request))[name.removeprefix("trend_")])]
        if name == "dead_letters":
            return [_result(self.reader.dead_letters(*self._dead_letter_args(request))["examples"])]
        if name == "timeline":
            case_id = query.get("case_id", "")
            figures = self.reader.case(case_id)
            rows = tuple(tuple(_cell(row.get(c)) for c in figures["columns"]) for row in figures["rows"])
            return [audit.Result("case_timeline", tuple(figures["columns"]), rows)]
        raise ValidationError(f"no export named {name!r}", field="name")

    # -- inputs ---------------------------------------------------------------------------------------

    def _default_month(self) -> str:
        return self.clock().astimezone(ZoneInfo(self.reader.tz)).strftime("%Y-%m")

    def _ranking_args(self, request: web.Request) -> tuple[str, str, int | None, datetime]:
        """month, by, min_cases (None: the policy's rule), as_of (none given: now, to the millisecond)."""
        query = request.query
        month = query.get("month") or self._default_month()
        by = query.get("by", "street")
        raw = query.get("min_cases", "")
        if raw and not raw.isdigit():
            raise ValidationError(f"min_cases must be a whole number >= 0, got {raw!r}", field="min_cases")
        as_of = audit.as_of_from_text(query["as_of"]) if query.get("as_of") else audit.pinned(self.clock())
        return month, by, int(raw) if raw else None, as_of

    def _trend_args(self, request: web.Request) -> tuple[str, int, str]:
        query = request.query
        raw = query.get("months", str(DEFAULT_TREND_MONTHS))
        if not raw.isdigit():
            raise ValidationError(f"months must be a whole number from 1 to 36, got {raw!r}", field="months")
        return query.get("month") or self._default_month(), int(raw), query.get("bucket", "day")

    def _dead_letter_args(self, request: web.Request) -> tuple[str, str, int]:
        query = request.query
        raw = query.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_DEAD_LETTERS_LISTED:
            raise ValidationError(f"limit must be a whole number from 1 to {MAX_DEAD_LETTERS_LISTED}, got {raw!r}", field="limit")
        month = query.get("month") or self._default_month()
        audit.month_bounds(month)  # validates
        return month, query.get("stage", ""), int(raw)

    def _period(self, request: web.Request) -> tuple[int, int]:
        """`from` and `to` (YYYY-MM-DD, city time; `to` inclusive) as [start, end) epoch ms; missing = open-ended."""
        zone = ZoneInfo(self.reader.tz)
        bounds = []
        for name, default, shift in (("from", 0, 0), ("to", _END_OF_TIME_MS, 1)):
            raw = request.query.get(name, "")
            if not raw:
                bounds.append(default)
                continue
            if not _DAY.fullmatch(raw):
                raise ValidationError(f"{name} must be YYYY-MM-DD, got {raw!r}", field=name)
            try:
                day = date.fromisoformat(raw) + timedelta(days=shift)
            except ValueError as exc:
                raise ValidationError(f"{name} must be a date YYYY-MM-DD, got {raw!r}", field=name) from exc
            bounds.append(int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000))
        return bounds[0], bounds[1]

    def _search_params(self, request: web.Request) -> dict[str, Any]:
        query = request.query
        start_ms, end_ms = self._period(request)
        status = query.get("status", "")
        if status and status not in CASE_STATUSES:
            raise ValidationError(f"status must be one of {', '.join(CASE_STATUSES)}, got {status!r}", field="status")
        raw_limit = query.get("limit", "200")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_CASES_LISTED:
            raise ValidationError(f"limit must be a whole number from 1 to {MAX_CASES_LISTED}, got {raw_limit!r}", field="limit")
        return {"case_id": query.get("case_id", "").strip(), "street": query.get("street", ""), "grid": query.get("grid", ""),
                "category": query.get("category", ""), "status": status, "start_ms": start_ms, "end_ms": end_ms, "as_of_ms": _END_OF_TIME_MS,
                "limit": int(raw_limit)}


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ValidationError as exc:
        return _json_error(400, str(exc), field=getattr(exc, "context", {}).get("field"))
    except StoreError as exc:
        _log.error("dashboard query failed: %s", exc)
        return _json_error(503, "ClickHouse did not answer the query")
    except StackError as exc:
        _log.error("dashboard verify could not run: %s", exc)
        return _json_error(503, f"verify could not run: {exc}")


def build_app(reader: AuditReader, users: Users, *, sessions: Sessions | None = None, reference: DistrictReference | None = None,
              clock: Callable[[], datetime] | None = None) -> web.Application:
    """The dashboard's aiohttp application over `reader` (read-only queries). `clock` (UTC-aware) picks the default month
    and pins a ranking asked for without an as-of."""
    from whistle.ground.times import utc_now

    dashboard = Dashboard(reader, users, sessions or Sessions(), reference or load_reference(), clock or utc_now)
    app = web.Application(middlewares=[dashboard.require_login, _errors], client_max_size=64 * 1024)
    app.add_routes([web.get(path, dashboard.page) for path in PAGES])
    app.add_routes([
        web.get("/login", dashboard.get_login),
        web.post("/login", dashboard.post_login),
        web.post("/logout", dashboard.post_logout),
        web.get("/static/{name}", dashboard.static),
        web.get("/api/overview", dashboard.api_overview),
        web.get("/api/ranking", dashboard.api_ranking),
        web.get("/api/provenance", dashboard.api_provenance),
        web.get("/api/grids", dashboard.api_grids),
        web.get("/api/map", dashboard.api_map),
        web.get("/api/cases", dashboard.api_cases),
        web.get("/api/case/{case_id}", dashboard.api_case),
        web.get("/api/reference", dashboard.api_reference),
        web.get("/api/trends", dashboard.api_trends),
        web.get("/api/dead_letters", dashboard.api_dead_letters),
        web.get("/api/verify", dashboard.api_verify),
        web.get(r"/api/export/{name:[a-z_]+}.{fmt:csv|xlsx}", dashboard.api_export),
    ])
    app[DASHBOARD] = dashboard

    async def close_reader(_app: web.Application) -> None:
        await asyncio.to_thread(reader.close)

    app.on_cleanup.append(close_reader)
    return app


DASHBOARD = web.AppKey("dashboard", Dashboard)
API_ENDPOINTS = ("/api/overview", "/api/ranking", "/api/provenance", "/api/grids", "/api/map", "/api/cases", "/api/case/C1",
                 "/api/reference", "/api/trends", "/api/dead_letters", "/api/verify", "/api/export/ranking.csv", "/api/export/ranking.xlsx")


def run_dashboard(settings: Settings, host: str, port: int, users_file: Path | str) -> None:
    """Serve until SIGINT/SIGTERM. Refuses a non-loopback host unless the deployment's settings name it
    (WHISTLE_DASHBOARD_HOST, e.g. 0.0.0.0 in a container): the dashboard is for the command centre's own machine."""
    if host not in ("127.0.0.1", "::1", "localhost", settings.dashboard_host):
        raise ConfigError(f"the dashboard listens on loopback only, not {host!r} (set WHISTLE_DASHBOARD_HOST to open it "
                          "deliberately, behind a TLS reverse proxy)", field="host")
    users = load_users(users_file)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = build_app(AuditReader.for_settings(settings), users, reference=load_district(settings.reference_dir))
    web.run_app(app, host=host, port=port, access_log=None, print=_log.info)


# ---------------------------------------------------------------------------------------------- exports


def to_xlsx(results: list[audit.Result]) -> bytes:
    """An Excel workbook, one sheet per result (a ranking's provenance on its own sheet)."""
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for result in results:
        sheet = book.create_sheet(result.name[:31])
        sheet.append(list(result.columns))
        for row in result.rows:
            sheet.append([_cell(value) for value in row])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact, as the CSV and JSON show it
    if isinstance(value, (dict, list, tuple)):
        return orjson.dumps(value, default=_json_default).decode()
    return value


def _result(figure: Mapping[str, Any]) -> audit.Result:
    columns = tuple(figure["columns"])
    return audit.Result(figure["name"], columns, tuple(tuple(row[c] for c in columns) for row in figure["rows"]))


# ---------------------------------------------------------------------------------------------- HTML


def _json(value: Any) -> web.Response:
    return web.Response(body=dumps(value), content_type="application/json")


def _json_error(status: int, message: str, **context: Any) -> web.Response:
    return web.Response(status=status, body=dumps({"error": message, **{k: v for k, v in context.items() if v}}),
                        content_type="application/json")


def _lang(request: web.Request) -> str:
    return "en" if request.query.get("lang") == "en" else "zh-CN"


_LOGIN_TEXT = {
    "zh-CN": {"title": "Whistle 指挥中心 · 登录", "user": "用户名", "password": "密码", "submit": "登录",
              "error": "用户名或密码错误", "other": "English", "other_lang": "en"},
    "en": {"title": "Whistle command centre · Sign in", "user": "User name", "password": "Password", "submit": "Sign in",
           "error": "Wrong user name or password", "other": "中文", "other_lang": "zh-CN"},
}


def _login_page(lang: str, target: str, *, error: bool) -> str:
    t = _LOGIN_TEXT[lang]
    action = "/login?lang=en" if lang == "en" else "/login"
    other = f"/login?lang={t['other_lang']}&next={quote(target, safe='')}"
    message = f'<p class="error" id="login-error">{html.escape(t["error"])}</p>' if error else ""
    return f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{html.escape(t['title'])}</title><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: "WenQuanYi Micro Hei", "Noto Sans CJK SC", "Microsoft YaHei", sans-serif; background: #0b2545; margin: 0; }}
form {{ width: 320px; margin: 12vh auto; background: #fff; padding: 28px 32px; border-radius: 8px; }}
h1 {{ font-size: 20px; color: #0b2545; }} label {{ display: block; margin: 14px 0 4px; color: #333; }}
input {{ width: 100%; box-sizing: border-box; padding: 8px; font-size: 15px; }}
button {{ margin-top: 20px; width: 100%; padding: 10px; background: #c0392b; color: #fff; border: 0; font-size: 16px; border-radius: 4px; }}
.error {{ color: #c0392b; }} a {{ color: #666; font-size: 13px; }}
</style></head>
<body><form method="post" action="{action}" id="login-form">
<h1>{html.escape(t['title'])}</h1>{message}
<input type="hidden" name="next" value="{html.escape(target)}">
<label for="username">{html.escape(t['user'])}</label><input id="username" name="username" autocomplete="username" required>
<label for="password">{html.escape(t['password'])}</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" id="login-submit">{html.escape(t['submit'])}</button>
<p><a href="{html.escape(other)}">{html.escape(t['other'])}</a></p>
</form></body></html>"""


def _app_page(page: str, lang: str, user: str, month: str) -> str:
    return f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><title>Whistle</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/style.css">
<script src="/static/echarts.min.js"></script>
<script src="/static/i18n.js"></script>
<script src="/static/app.js" defer></script>
</head>
<body data-page="{page}" data-lang="{lang}" data-user="{html.escape(user)}" data-month="{month}">
<header><div class="brand" id="brand"></div><nav id="nav"></nav><div class="who"><span id="user"></span>
<a id="lang-switch" href="#"></a><form method="post" action="/logout" id="logout-form"><button id="logout" type="submit"></button></form></div></header>
<main id="main"></main>
</body></html>"""


def main(argv: list[str] | None = None) -> int:
    """`python -m whistle.edges.dashboard hash-password`: read a password (twice, not echoed), print its users-file hash."""
    import getpass
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["hash-password"]:
        print("usage: python -m whistle.edges.dashboard hash-password", file=sys.stderr)
        return 2
    password = getpass.getpass("password: ")
    if getpass.getpass("again: ") != password:
        print("the two passwords differ", file=sys.stderr)
        return 1
    try:
        print(hash_password(password))
    except ValidationError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
