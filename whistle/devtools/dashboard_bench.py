"""The dashboard over a month of 1,000,000 cases: how long each page's data endpoints take, and each page to draw.

WHY: issue 18's target is that a page for a month of a million cases renders in under 2 s. The cases are made on the
ClickHouse server itself (INSERT ... SELECT from numbers(), seconds instead of an hour through the pipeline) into a
scratch database laid out by the migrator, as the sink's tables are; the dashboard reads them as the read-only auditor,
over HTTP, as a browser does. Synthetic rows carry no real hash chain and no contiguous Kafka offsets, so `verify` is
not timed here (its cost is Python hashing every event; the dashboard's browser test states it for a simulated day).

    python -m whistle.devtools.dashboard_bench [--cases 1000000] [--month 2026-11] [--repeat 3] [--no-browser] [--keep]

Uses the stack of the WHISTLE_* settings (`whistle stack up`), its admin user to load and drop the scratch database.
Figures go to README (the auditors' dashboard); this is a dev tool, not a test.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import secrets
import shutil
import socket
import statistics
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.table import Table

from sinks import audit
from sinks.clickhouse import ServerEngine, render_identifiers
from sinks.migrator import migrate
from streams.domain.reference import load_reference
from whistle.edges.dashboard import AuditReader, Users, build_app, hash_password
from whistle.ground.settings import Settings

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHUNK = 250_000  # cases per INSERT ... SELECT: bounds the server's memory on a small machine
DEAD_LETTERS = 20_000
PARTITIONS = 12

# Case number n's id, place, category and opening time: one rule for its events and its breaches (spliced below as
# {case_of_number}), so a breach always lands on its case's street, department and month.
_CASE_OF_NUMBER = """number AS n,
        concat('M', toString(number)) AS case_id,
        %(grids)s[1 + number %% length(%(grids)s)] AS grid_id,
        %(streets)s[1 + number %% length(%(grids)s)] AS street_id,
        %(communities)s[1 + number %% length(%(grids)s)] AS community_id,
        %(categories)s[1 + intDiv(number, 7) %% length(%(categories)s)] AS category,
        %(departments)s[1 + intDiv(number, 7) %% length(%(categories)s)] AS department_id,
        toInt64(%(start_ms)s + intDiv(number * %(span_ms)s, %(cases)s)) AS opened_ms"""

# Each case's story by number % 10 (`%%` in these statements: their parameters are bound with Python's % operator): 0-6 closed and rated; 7 resolved late (resolve_overdue, escalated to the
# community); 8 never accepted (accept_overdue, escalated); 9 accepted, still open. Times spread over the month.
_CASE_EVENTS = """
INSERT INTO {db}.case_events (event_id, case_id, seq, kind, at_ms, cause_id, actor_unit_id, assignee_unit_id, assignee_tier,
    category, urgency, district_id, street_id, community_id, grid_id, department_id, source, report_id, reason, note, rating,
    policy_version, prev_hash, hash, kafka_topic, kafka_partition, kafka_offset, ingest_ms)
SELECT
    concat(case_id, ':', toString(seq)), case_id, toUInt32(seq), kind, at_ms,
    if(kind = 'escalated', concat('BB', case_id), concat('bench:', case_id, ':', toString(seq))),
    if(kind IN ('accepted', 'resolved'), grid_id, NULL),
    if(seq >= escalated_at, community_id, grid_id), if(seq >= escalated_at, 'community', 'grid'),
    category, 'normal', %(district)s, street_id, community_id, grid_id, department_id,
    if(kind = 'opened', 'hotline', NULL), if(kind = 'opened', concat('hotline:', case_id), NULL),
    if(kind = 'escalated', if(story = 8, 'accept_overdue', 'resolve_overdue'), NULL), NULL,
    if(kind = 'rated', toUInt8(3 + n %% 3), NULL),
    'sla-v1', '', '', 'whistle.cases.events', toUInt32(n %% %(partitions)s), toInt64(intDiv(n, %(partitions)s) * 8 + seq), %(start_ms)s
FROM
(
    SELECT
        {case_of_number},
        number %% 10 AS story,
        opened_ms + 1000 * toInt64(300 + cityHash64(number) %% 5400) AS accepted_ms,
        accepted_ms + 1000 * toInt64(3600 + cityHash64(number, 1) %% 144000) AS resolved_ms,
        accepted_ms + 86400000 AS late_ms,
        opened_ms + 7200000 AS overdue_ms,
        multiIf(story < 7, ['opened', 'dispatched', 'accepted', 'resolved', 'rated', 'closed'],
                story = 7, ['opened', 'dispatched', 'accepted', 'escalated', 'accepted', 'resolved', 'rated', 'closed'],
                story = 8, ['opened', 'dispatched', 'escalated'],
                ['opened', 'dispatched', 'accepted']) AS kinds,
        multiIf(story < 7, [opened_ms, opened_ms, accepted_ms, resolved_ms, resolved_ms + 7200000, resolved_ms + 7200000],
                story = 7, [opened_ms, opened_ms, accepted_ms, late_ms, late_ms + 1800000, late_ms + 36000000, late_ms + 43200000,
                            late_ms + 43200000],
                story = 8, [opened_ms, opened_ms, overdue_ms],
                [opened_ms, opened_ms, accepted_ms]) AS times,
        multiIf(story = 7, 4, story = 8, 3, 99) AS escalated_at
    FROM numbers(%(first)s, %(count)s)
)
ARRAY JOIN kinds AS kind, times AS at_ms, arrayEnumerate(kinds) AS seq
""".replace("{case_of_number}", _CASE_OF_NUMBER)

# A warning 30 minutes before, then the breach, for every story 7 and 8 case.
_BREACHES = """
INSERT INTO {db}.breaches (breach_id, case_id, kind, breach_type, tier, deadline_ms, fired_at_ms, overdue_ms, responsible_unit_id,
    escalation_target_unit_id, policy_version, category, urgency, street_id, department_id, summary, kafka_topic, kafka_partition,
    kafka_offset, ingest_ms)
SELECT
    concat(if(kind = 'warning', 'BW', 'BB'), case_id), case_id, kind, breach_type, if(kind = 'warning', 'grid', 'community'),
    deadline_ms, if(kind = 'warning', deadline_ms - 1800000, deadline_ms), if(kind = 'warning', -1800000, 0), grid_id,
    if(kind = 'warning', NULL, community_id), 'sla-v1', category, 'normal', street_id, department_id,
    concat(case_id, ' ', breach_type), 'whistle.sla.breaches', toUInt32(n %% %(partitions)s), toInt64(intDiv(n, %(partitions)s) * 2 + w),
    %(start_ms)s
FROM
(
    SELECT
        {case_of_number},
        if(number %% 10 = 8, 'accept_overdue', 'resolve_overdue') AS breach_type,
        if(number %% 10 = 8, opened_ms + 7200000, opened_ms + 1000 * toInt64(300 + cityHash64(number) %% 5400) + 86400000) AS deadline_ms
    FROM numbers(%(first)s, %(count)s)
    WHERE number %% 10 IN (7, 8)
)
ARRAY JOIN ['warning', 'breach'] AS kind, [0, 1] AS w
""".replace("{case_of_number}", _CASE_OF_NUMBER)

_DEAD_LETTERS = """
INSERT INTO {db}.dead_letters (original_topic, original_partition, original_offset, original_key, original_value_sha256,
    original_value_size, stage, error_class, error_message, field, failed_ms, kafka_topic, kafka_partition, kafka_offset, ingest_ms)
SELECT
    ['whistle.raw.camera', 'whistle.raw.hotline', 'whistle.raw.app', 'whistle.cases.inbox'][1 + number %% 4], toUInt32(number %% 6),
    toInt64(number), toNullable(concat('k', toString(number))), toNullable(lower(hex(cityHash64(number)))), toUInt32(100 + number %% 900),
    ['decode', 'authenticate', 'validate', 'transition'][1 + number %% 4],
    ['DecodeError', 'AuthenticationError', 'ValidationError', 'TransitionError'][1 + number %% 4],
    ['not an Avro single-object record', 'signature does not verify (reason=unsigned)', 'no location',
     'action for an unknown case (reason=unknown_case)'][1 + number %% 4],
    NULL, toInt64(%(start_ms)s + intDiv(number * %(span_ms)s, %(dead_letters)s)), 'whistle.deadletter', toUInt32(0), toInt64(number),
    %(start_ms)s
FROM numbers(%(dead_letters)s)
"""

_LEDGER = """
INSERT INTO {db}.offset_ledger (table_name, kafka_topic, kafka_partition, kafka_offset, record_key, ingest_ms)
SELECT 'case_events', kafka_topic, kafka_partition, kafka_offset, event_id, ingest_ms FROM {db}.case_events
"""


def load_month(admin: ServerEngine, database: str, month: str, cases: int, console: Console) -> dict[str, int]:
    """Migrate `database` and fill it with `cases` cases opened in `month` (city time); returns the rows per table."""
    migrate(admin, database)
    start_ms, end_ms = audit.month_bounds(month)
    ref = load_reference()
    grids = sorted(ref.grids.values(), key=lambda g: g.grid_id)
    categories = sorted(ref.categories.values(), key=lambda c: c.code)
    params: dict[str, Any] = {
        "district": ref.district_id, "start_ms": start_ms, "span_ms": end_ms - start_ms, "cases": cases, "partitions": PARTITIONS,
        "grids": [g.grid_id for g in grids], "streets": [g.street_id for g in grids], "communities": [g.community_id for g in grids],
        "categories": [c.code for c in categories], "departments": [c.owner_department_id for c in categories],
        "dead_letters": DEAD_LETTERS,
    }
    for first in range(0, cases, CHUNK):
        scope = {**params, "first": first, "count": min(CHUNK, cases - first)}
        for name, sql in (("case events", _CASE_EVENTS), ("breaches", _BREACHES)):
            admin.execute(render_identifiers(sql, db=database), scope, name=f"bench {name}")
        console.print(f"[dim]· {first + scope['count']:,} of {cases:,} cases loaded[/dim]")
    admin.execute(render_identifiers(_DEAD_LETTERS, db=database), params, name="bench dead letters")
    admin.execute(render_identifiers(_LEDGER, db=database), name="bench ledger")
    return {table: admin.execute(f"SELECT count() FROM {database}.{table}")[0][0]
            for table in ("case_events", "breaches", "dead_letters")}


class _Server:
    """The dashboard on a loopback port, in a thread of its own (selenium's calls block)."""

    def __init__(self, app: web.Application) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._app, self._loop, self._ready = app, asyncio.new_event_loop(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self._app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> _Server:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the dashboard did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)


def page_endpoints(month: str, case_id: str) -> dict[str, list[str]]:
    """What each page fetches when it opens (app.js), for `month`."""
    end_ms = audit.month_bounds(month)[1]
    last_day = datetime.fromtimestamp(end_ms / 1000 - 1, ZoneInfo(audit.LOCAL_TIMEZONE)).date()
    period = f"from={month}-01&to={last_day.isoformat()}"
    return {
        "overview /": [f"/api/overview?month={month}"],
        "ranking /ranking": [f"/api/ranking?month={month}&by=street&min_cases=5"],
        "ranking /ranking?by=grid (every case a grid's)": [f"/api/ranking?month={month}&by=grid&min_cases=5"],
        "provenance (on its click)": [f"/api/provenance?month={month}&by=street", f"/api/provenance?month={month}&by=grid"],
        "map /map": ["/api/grids", f"/api/map?{period}"],
        "cases /cases (and a timeline)": ["/api/cases", f"/api/case/{case_id}"],
        "trends /trends": [f"/api/trends?month={month}&months=12&bucket=day", f"/api/trends?month={month}&months=12&bucket=week"],
        "dead letters /dead-letters": [f"/api/dead_letters?month={month}"],
    }


async def _time_endpoints(url: str, user: str, password: str, pages: dict[str, list[str]], repeat: int) -> list[tuple[str, str, int, list[float]]]:
    timings = []
    async with aiohttp.ClientSession(url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:  # unsafe: cookies of an IP host
        async with client.post("/login", data={"username": user, "password": password, "next": "/"}, allow_redirects=False) as answer:
            if answer.status != 303:
                raise RuntimeError(f"login refused ({answer.status})")
        for page, paths in pages.items():
            for path in ["/api/reference", *paths] if page.startswith("overview") else paths:
                seconds, size = [], 0
                for _ in range(repeat):
                    started = time.perf_counter()
                    async with client.get(path) as response:
                        body = await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
                    seconds.append(time.perf_counter() - started)
                    size = len(body)
                timings.append((page, path, size, seconds))
    return timings


def _time_pages(url: str, user: str, password: str, month: str, repeat: int) -> dict[str, list[float]]:
    """Each page in headless Chromium from navigation until it says it is drawn (body[data-ready], set after the charts'
    setOption), `repeat` times after one warm-up load."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    profile = tempfile.mkdtemp(prefix="whistle-bench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,900",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-default-browser-check"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    try:
        driver.get(f"{url}/login")
        driver.find_element(By.ID, "username").send_keys(user)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "login-submit").click()
        timings: dict[str, list[float]] = {}
        for path in ("/", "/ranking", "/ranking?by=grid", "/map", "/cases", "/trends", "/dead-letters"):
            seconds = []
            for attempt in range(repeat + 1):
                started = time.perf_counter()
                driver.get(f"{url}{path}{'&' if '?' in path else '?'}month={month}")
                while not driver.execute_script("return document.body && document.body.dataset.ready === 'true'"):
                    if time.perf_counter() - started > 120:
                        raise RuntimeError(f"{path} did not finish drawing in 120 s")
                    time.sleep(0.02)
                if attempt:  # the first load warms the browser's cache of scripts, as an auditor's second visit
                    seconds.append(time.perf_counter() - started)
            timings[path] = seconds
        return timings
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def run(settings: Settings, *, cases: int, month: str, repeat: int, browser: bool, keep: bool, console: Console) -> None:
    ch = settings.clickhouse
    admin = ServerEngine.from_settings(dataclasses.replace(ch, user=ch.admin_user, password=ch.admin_password), database="default",
                                       send_receive_timeout=1800.0)
    database = f"dash_bench_{uuid.uuid4().hex[:8]}"
    try:
        started = time.perf_counter()
        rows = load_month(admin, database, month, cases, console)
        console.print(f"loaded {cases:,} cases of {month} into {database}: "
                      + ", ".join(f"{n:,} {table}" for table, n in rows.items()) + f" in {time.perf_counter() - started:.0f} s")
        user, password = "bench", secrets.token_urlsafe(12)
        reader = AuditReader.for_auditor(dataclasses.replace(ch, database=database))
        with _Server(build_app(reader, Users({user: hash_password(password)}))) as server:
            timings = asyncio.run(_time_endpoints(server.url, user, password, page_endpoints(month, "M7"), repeat))
            table = Table(title=f"Dashboard data endpoints, {cases:,} cases in {month} (median and slowest of {repeat})")
            for column in ("page", "endpoint", "bytes", "median s", "max s"):
                table.add_column(column, justify="left" if column in ("page", "endpoint") else "right")
            for page, path, size, seconds in timings:
                table.add_row(page, path, f"{size:,}", f"{statistics.median(seconds):.2f}", f"{max(seconds):.2f}")
            console.print(table)
            if browser and CHROMIUM.exists() and CHROMEDRIVER.exists():
                pages = _time_pages(server.url, user, password, month, repeat)
                table = Table(title=f"Page drawn in headless Chromium (navigation to charts drawn; median and slowest of {repeat})")
                for column in ("page", "median s", "max s"):
                    table.add_column(column, justify="left" if column == "page" else "right")
                for path, seconds in pages.items():
                    table.add_row(path, f"{statistics.median(seconds):.2f}", f"{max(seconds):.2f}")
                console.print(table)
            elif browser:
                console.print(f"[yellow]no {CHROMIUM} / {CHROMEDRIVER}: pages not drawn (make bootstrap installs them)[/yellow]")
    finally:
        if not keep:
            admin.execute(f"DROP DATABASE IF EXISTS {database}")
            console.print(f"[dim]· dropped {database}[/dim]")
        admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m whistle.devtools.dashboard_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--month", default="2026-11", help="YYYY-MM, city time")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true", help="time the data endpoints only")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    run(Settings.from_env(), cases=args.cases, month=args.month, repeat=args.repeat, browser=not args.no_browser, keep=args.keep,
        console=Console(width=140))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
