"""`whistle dashboard` in a real headless Chromium (Debian's chromium + chromium-driver, selenium), over a month of
generated cases on the reference district's real grids, stored in the real ClickHouse 18.16 and read by the
dashboard as the read-only auditor. Checks: login; the ranking's table and chart equal what
`whistle audit ranking --format json` prints (the same function); the map draws every grid of the reference
data and a click lists a grid's cases; a search finds a known case and its timeline shows every event with a
verified hash chain; the trends page's breaches per day sum to what `whistle audit breaches` lists for the month and
its on-time and duration lines are the trend queries' rows; the dead-letters page counts the seeded dead letters by stage
and reason, lists them with their Kafka positions and states verify's verdict; no request leaves 127.0.0.1; no console
errors. Saves tests/screenshots/*.png."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import shutil
import socket
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from shapely.geometry import Polygon
from test_audit_queries import BEIJING, breach, case, event_row, kafka_log, place, step

from sinks import audit
from sinks.clickhouse import ServerEngine
from sinks.migrator import migrate
from streams.domain.reference import load_reference
from whistle.edges.dashboard import AuditReader, build_app, hash_password, load_users
from whistle.ground.settings import PROJECT_ROOT

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = PROJECT_ROOT / "tests" / "screenshots"
MONTH, PREVIOUS = "2026-11", "2026-10"
USER, PASSWORD = "zhihui-zhongxin", "dashboard-test-pw"

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (make bootstrap installs them)")


def _local(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def district_cases(seed: int = 11):
    """Cases in October and November 2026 on the reference grids: closed and satisfied, resolved late, open and
    overdue (escalated to the community), open. Returns (event rows, breach rows, {story: first case id})."""
    rng = random.Random(seed)
    ref = load_reference()
    grids = sorted(ref.grids.values(), key=lambda g: g.grid_id)
    categories = sorted(ref.categories.values(), key=lambda c: c.code)
    streets = sorted(ref.streets)
    partitions: list[list[dict]] = [[], []]
    breach_rows: list[dict] = []
    known: dict[str, str] = {}
    plan = [(PREVIOUS, 70), (MONTH, 170)]
    for month, count in plan:
        year, number = int(month[:4]), int(month[5:])
        for index in range(count):
            grid = grids[rng.randrange(len(grids))] if index % 7 else grids[(index * 13) % len(grids)]
            category = categories[rng.randrange(len(categories))]
            street_weight = streets.index(grid.street_id)
            story = rng.choices(["closed", "late", "overdue", "open"], weights=[6 + street_weight % 3, 2, 1 + street_weight % 4, 2])[0]
            case_id = f"K{year}{number:02d}-{index:04d}"
            opened = datetime(year, number, 1 + rng.randrange(27), 8 + rng.randrange(10), rng.randrange(60), tzinfo=BEIJING)
            where = place(grid.street_id, category.owner_department_id, grid.grid_id, grid.community_id, district=ref.district_id,
                          category=category.code, urgency=str(category.default_urgency))
            me, community = (grid.grid_id, "grid"), (grid.community_id, "community")
            steps = [step("opened", _local(opened), cause=f"hotline:{case_id}", source="hotline", report_id=f"hotline:{case_id}"),
                     step("dispatched", _local(opened), cause=f"hotline:{case_id}")]
            accepted = opened + timedelta(minutes=5 + rng.randrange(90))
            resolved = accepted + timedelta(hours=1 + rng.randrange(40))
            breach_id = f"B-{case_id}"
            if story in ("closed", "late"):
                steps.append(step("accepted", _local(accepted), actor=grid.grid_id))
                if story == "late":
                    overdue_at = accepted + timedelta(hours=24)
                    resolved = overdue_at + timedelta(hours=2 + rng.randrange(20))
                    steps.append(step("escalated", _local(overdue_at), cause=breach_id, assignee=community, reason="resolve_overdue"))
                    steps.append(step("accepted", _local(overdue_at + timedelta(minutes=30)), actor=grid.community_id))
                steps.append(step("resolved", _local(resolved), actor=me[0] if story == "closed" else grid.community_id, note="已处理"))
                rating = 4 + rng.randrange(2) if story == "closed" else 2 + rng.randrange(3)
                steps.append(step("rated", _local(resolved + timedelta(hours=2)), actor="reporter", rating=rating))
                steps.append(step("closed", _local(resolved + timedelta(hours=2)), reason="rated"))
            elif story == "overdue":
                overdue_at = opened + timedelta(hours=2)
                steps.append(step("escalated", _local(overdue_at), cause=breach_id, assignee=community, reason="accept_overdue"))
            else:
                steps.append(step("accepted", _local(accepted), actor=grid.grid_id))
            events = case(case_id, where, me, steps)
            partitions[streets.index(grid.street_id) % 2].extend(events)
            if story in ("late", "overdue"):
                kind_type = "resolve_overdue" if story == "late" else "accept_overdue"
                fired = _local(overdue_at)
                breach_rows.append(breach(breach_id, events, "breach", kind_type, "community", fired, fired, grid.grid_id, grid.community_id))
                warned = _local(overdue_at - timedelta(minutes=30))
                breach_rows.append(breach(f"W-{case_id}", events, "warning", kind_type, "grid", fired, warned, grid.grid_id, None))
            if month == MONTH:
                known.setdefault(story, case_id)
    return kafka_log("whistle.cases.events", partitions), kafka_log("whistle.sla.breaches", [breach_rows]), known


# What the pipeline could not process in November: (stage, error class, message, original topic, partition, offset).
DEAD_LETTERS = [
    *(("decode", "DecodeError", "not an Avro single-object record", "whistle.raw.camera", p, 100 + i) for i, p in enumerate([0, 1, 0, 2, 1])),
    *(("authenticate", "AuthenticationError", "record signature does not verify (integrator=acme-cams, reason=unsigned)",
       "whistle.raw.camera", 0, 200 + i) for i in range(3)),
    *(("transition", "TransitionError", "action for an unknown case (reason=unknown_case)", "whistle.cases.inbox", i % 4, 300 + i) for i in range(4)),
    ("validate", "ValidationError", "hotline ticket without a location", "whistle.raw.hotline", 0, 400),
]


def dead_letter_rows():
    """DEAD_LETTERS as dead_letters rows, a day apart in November, and the first one dead-lettered again (a redelivery)."""
    rows = []
    for index, (stage, error_class, message, topic, partition, offset) in enumerate([*DEAD_LETTERS, DEAD_LETTERS[0]]):
        failed = datetime(2026, 11, 2 + min(index, len(DEAD_LETTERS) - 1), 9, 30, tzinfo=BEIJING)
        rows.append({"original_topic": topic, "original_partition": partition, "original_offset": offset, "original_key": f"key-{offset}",
                     "original_value_sha256": f"{offset:064x}", "original_value_size": 64 + offset, "stage": stage, "error_class": error_class,
                     "error_message": message, "field": "location" if stage == "validate" else None,
                     "failed_ms": int(failed.timestamp() * 1000)})
    return kafka_log("whistle.deadletter", [rows])


@pytest.fixture(scope="module")
def district_store(settings, clickhouse_native):
    """A database of generated cases on the real server, loaded as the admin user; dropped afterwards."""
    host, port = clickhouse_native
    database = f"dash_{uuid.uuid4().hex[:8]}"
    admin = ServerEngine(host, port)
    migrate(admin, database)
    events, breaches, known = district_cases()
    for table, rows in (("case_events", [event_row(r) for r in events]), ("breaches", breaches), ("dead_letters", dead_letter_rows())):
        columns = [c for c in rows[0] if c != "later_batch"]
        admin.insert(f"{database}.{table}", columns, [tuple(r[c] for c in columns) for r in rows])
    for table, key, rows in (("case_events", "event_id", events), ("breaches", "breach_id", breaches)):  # the sink's offset ledger
        admin.insert(f"{database}.offset_ledger", ("table_name", "kafka_topic", "kafka_partition", "kafka_offset", "record_key", "ingest_ms"),
                     [(table, r["kafka_topic"], r["kafka_partition"], r["kafka_offset"], r[key], r["ingest_ms"]) for r in rows])
    yield dataclasses.replace(settings.clickhouse, host=host, port=port, database=database), known, events
    admin.execute(f"DROP DATABASE IF EXISTS {database}")
    admin.close()


class LiveDashboard:
    """The dashboard app on a real loopback port, in a thread of its own."""

    def __init__(self, app: web.Application) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self._app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())

    def __enter__(self) -> LiveDashboard:
        self._thread.start()
        assert self._ready.wait(15), "the dashboard did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)


@pytest.fixture(scope="module")
def live(district_store, tmp_path_factory):
    clickhouse, _, _ = district_store
    users_file = tmp_path_factory.mktemp("dash") / "users.yaml"
    users_file.write_text(orjson.dumps({"users": [{"username": USER, "password_scrypt": hash_password(PASSWORD)}]}).decode())
    reader = AuditReader.for_auditor(clickhouse)
    stored = reader.call(audit.stored_ranges)
    reader.close()
    # Kafka as it is once the sink has caught up: every partition ends where the store does, all of it committed.
    kafka = [audit.KafkaRange(s.topic, s.partition, 0, s.last + 1, s.last + 1) for s in stored if s.last is not None]
    app = build_app(AuditReader.for_auditor(clickhouse, kafka=lambda: (kafka, [])), load_users(users_file),
                    clock=lambda: datetime(2026, 11, 28, 12, 0, tzinfo=BEIJING))
    with LiveDashboard(app) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="whistle-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1400,900", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-default-browser-check", "--lang=zh-CN"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    options.add_experimental_option("prefs", {"intl.accept_languages": "zh-CN,zh"})
    locale = {**os.environ, "LANG": "zh_CN.UTF-8", "LANGUAGE": "zh_CN:zh"}  # date pickers in Chinese, as at the command centre
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), env=locale), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_ready(driver, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script("return document.body && document.body.dataset.ready === 'true'"):
            return
        time.sleep(0.1)
    raise AssertionError(f"page {driver.current_url} did not finish loading: {driver.get_log('browser')}")


def wait_for(driver, css, timeout=20.0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def test_dashboard_in_chromium(live, browser, district_store):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    clickhouse, known, events = district_store
    started = time.monotonic()
    driver = browser
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # Not logged in: the page redirects to the login form.
    driver.get(f"{live.url}/ranking?month={MONTH}&by=grid&min_cases=1")
    assert "/login" in driver.current_url
    driver.find_element(By.ID, "username").send_keys(USER)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-submit").click()
    wait_ready(driver)
    assert driver.current_url.endswith(f"/ranking?month={MONTH}&by=grid&min_cases=1")

    # Ranking: table and chart are exactly `whistle audit ranking --month M --by grid --min-cases 1 --as-of <the page's>
    # --format json`: the grids that held the month's cases.
    as_of = audit.as_of_from_text(driver.execute_script("return window.whistle.ranking.as_of"))
    reader = AuditReader.for_auditor(clickhouse)
    try:
        expected = orjson.loads(reader.call(lambda engine, db: audit.to_json(audit.ranking(engine, db, MONTH, "grid", 1, as_of=as_of))))
        by_community = orjson.loads(reader.call(lambda engine, db: audit.to_json(audit.ranking(engine, db, MONTH, "community", 1, as_of=as_of))))
        provenance = orjson.loads(reader.call(lambda engine, db: audit.to_json(audit.ranking_provenance(engine, db, MONTH, "grid", as_of=as_of))))
        timeline = reader.call(lambda engine, db: audit.case_timeline(engine, db, known["overdue"])).as_dicts()
        grid_of_known = reader.call(lambda engine, db: audit.run_query(engine, db, "dashboard_case_search", {
            "case_id": known["overdue"], "street": "", "grid": "", "category": "", "status": "", "start_ms": 0, "end_ms": 2**63 - 1, "as_of_ms": 2**63 - 1,
            "limit": 1})).as_dicts()[0]["grid_id"]
    finally:
        reader.close()
    assert len(expected) > 3 and any(row["rank"] is not None for row in expected)
    columns = driver.execute_script("return [...document.querySelectorAll('#ranking-table thead th')].map(th => th.dataset.column)")
    table = driver.execute_script(
        "return [...document.querySelectorAll('#ranking-table tbody tr')].map(tr => [...tr.cells].map(td => td.dataset.value))")
    shown = lambda value: "" if value is None else str(value)  # noqa: E731
    assert table == [[shown(row[c]) for c in columns] for row in expected]
    option = driver.execute_script("""const c = echarts.getInstanceByDom(document.getElementById('ranking-chart')).getOption();
        return {x: c.xAxis[0].data, series: c.series.map(s => [s.id, s.data]), units: echarts.getInstanceByDom(document.getElementById('ranking-chart')).__unitIds}""")
    ranked = [row for row in expected if row["rank"] is not None]
    names = load_reference().units
    assert option["units"] == [row["unit_id"] for row in ranked]
    assert option["x"] == [names[row["unit_id"]].name for row in ranked]
    for series_id, data in option["series"]:
        assert data == [None if row[series_id] is None else float(row[series_id]) for row in ranked], series_id
    assert "1" in driver.find_element(By.ID, "min-rule").text and str(as_of.year) in driver.find_element(By.ID, "as-of-rule").text
    # Provenance one click away (fetched on the click, for the ranking's own as-of); sorting by a column.
    assert driver.find_elements(By.ID, "provenance-table") == []
    driver.find_element(By.ID, "show-provenance").click()
    wait_for(driver, "#provenance[data-loaded=true] #provenance-table")
    assert driver.find_element(By.ID, "provenance").is_displayed()
    prov_rows = driver.execute_script("return [...document.querySelectorAll('#provenance-table tbody tr')].map(tr => [...tr.cells].map(td => td.dataset.value))")
    assert prov_rows == [[shown(v) for v in row.values()] for row in provenance]
    driver.find_element(By.ID, "show-provenance").click()
    driver.find_element(By.CSS_SELECTOR, "#ranking-table th[data-column=received]").click()
    received = driver.execute_script("return [...document.querySelectorAll('#ranking-table tbody tr')].map(tr => Number(tr.cells[arguments[0]].dataset.value))",
                                     columns.index("received"))
    assert received == sorted(received)
    driver.find_element(By.CSS_SELECTOR, "#ranking-table th[data-column=rank]").click()
    time.sleep(0.6)
    driver.save_screenshot(str(SCREENSHOTS / "ranking.png"))
    # Communities: the same comparison after switching the form to another of the four tiers, as of the same time.
    assert driver.execute_script("return [...document.querySelectorAll('#by option')].map(o => o.value)") == list(audit.RANKING_UNITS)
    driver.find_element(By.CSS_SELECTOR, "#by option[value=community]").click()
    driver.find_element(By.ID, "as-of").send_keys(audit.as_of_text(as_of))
    driver.find_element(By.ID, "load").click()
    deadline = time.monotonic() + 20
    while driver.execute_script("return window.whistle.ranking.by") != "community" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert driver.execute_script("return window.whistle.ranking.as_of") == audit.as_of_text(as_of)
    table = driver.execute_script(
        "return [...document.querySelectorAll('#ranking-table tbody tr')].map(tr => [...tr.cells].map(td => td.dataset.value))")
    assert table == [[shown(row[c]) for c in columns] for row in by_community] and len(by_community) > 0

    # Overview of the month.
    driver.get(f"{live.url}/?month={MONTH}")
    wait_ready(driver)
    opened = driver.find_element(By.ID, "card-opened").get_attribute("data-value")
    assert opened == str(len({e["case_id"] for e in events if e["case_id"].startswith("K202611")}))
    assert driver.execute_script("return document.querySelectorAll('#breach-table tbody tr').length") >= 2
    time.sleep(0.6)
    driver.save_screenshot(str(SCREENSHOTS / "overview.png"))

    # Grid map: every grid of the reference data is drawn; a click on a grid lists its cases.
    driver.get(f"{live.url}/map")
    wait_ready(driver)
    reference = load_reference()
    drawn = driver.execute_script("""const chart = echarts.getInstanceByDom(document.getElementById('grid-map'));
        const data = chart.getModel().getSeriesByIndex(0).getData();
        return {regions: [...Array(data.count()).keys()].map(i => data.getName(i)),
                geo: window.whistle.geo.features.filter(f => f.properties.kind === 'grid').map(f => f.properties.grid_id),
                series: chart.getOption().series[0].data.map(d => d.grid).filter(Boolean)}""")
    assert sorted(drawn["geo"]) == sorted(reference.grids) and len(reference.grids) == 232
    assert set(reference.grids) <= set(drawn["regions"])
    assert sorted(drawn["series"]) == sorted(reference.grids)
    time.sleep(0.8)
    driver.save_screenshot(str(SCREENSHOTS / "grid-map.png"))
    inside = Polygon(reference.grids[grid_of_known].ring).representative_point()  # a point well inside the grid
    lon, lat = inside.x, inside.y
    x, y = driver.execute_script("""const node = document.getElementById('grid-map'); node.scrollIntoView();
        const [x, y] = echarts.getInstanceByDom(node).convertToPixel({seriesIndex: 0}, arguments[0]);
        const box = node.getBoundingClientRect(); return [box.left + x, box.top + y]""", [lon, lat])  # viewport coordinates
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(round(x)), int(round(y))).click()
    actions.perform()
    wait_for(driver, "#grid-title")
    assert grid_of_known in driver.find_element(By.ID, "grid-title").text
    assert driver.find_elements(By.CSS_SELECTOR, f"#grid-case-list tr[data-case='{known['overdue']}']")

    # Case search finds the known case; its timeline shows every event, and the hash chain verifies.
    driver.get(f"{live.url}/cases")
    wait_ready(driver)
    driver.find_element(By.ID, "q-case").send_keys(known["overdue"])
    driver.find_element(By.ID, "search").click()
    wait_for(driver, "#timeline-table")
    assert [tr.get_attribute("data-case") for tr in driver.find_elements(By.CSS_SELECTOR, "#case-table tbody tr")] == [known["overdue"]]
    kinds = driver.execute_script("return [...document.querySelectorAll('#timeline-table tbody tr')].map(tr => tr.dataset.kind)")
    assert kinds == [row["kind"] for row in timeline]
    assert kinds[:3] == ["opened", "dispatched", "breach:accept_overdue"] or "escalated" in kinds
    assert driver.find_element(By.ID, "chain-verdict").get_attribute("data-verified") == "true"
    chain_cells = driver.execute_script("return [...document.querySelectorAll('#timeline-table tbody tr[data-record=case_event] td.ok')].length")
    assert chain_cells == sum(1 for row in timeline if row["record"] == "case_event")
    driver.save_screenshot(str(SCREENSHOTS / "case-timeline.png"))

    # Trends: the breaches per day sum to what `whistle audit breaches --from <Nov 1> --to <Dec 1> --format json` lists; each
    # day and tier is the query's count; the on-time and duration lines are the trend queries' rows.
    start_ms, end_ms = audit.month_bounds(MONTH)
    reader = AuditReader.for_auditor(clickhouse)
    try:
        listed = orjson.loads(reader.call(lambda engine, db: audit.to_json(audit.breaches(
            engine, db, since=datetime.fromtimestamp(start_ms / 1000, BEIJING), until=datetime.fromtimestamp(end_ms / 1000, BEIJING)))))
        per_day = reader.call(lambda engine, db: audit.trend_breaches(engine, db, MONTH)).as_dicts()
        on_time = orjson.loads(reader.call(lambda engine, db: audit.to_json(audit.trend_on_time(engine, db, MONTH, 12))))
        durations = orjson.loads(reader.call(lambda engine, db: audit.to_json(audit.trend_durations(engine, db, MONTH, "day"))))
        partitions = sum(s.last is not None for s in reader.call(audit.stored_ranges))
    finally:
        reader.close()
    driver.get(f"{live.url}/trends?month={MONTH}")
    wait_ready(driver)
    assert driver.find_element(By.ID, "nav-trends").text == "趋势分析"
    bars = driver.execute_script("""const c = echarts.getInstanceByDom(document.getElementById('trend-breaches')).getOption();
        return {days: c.xAxis[0].data, series: c.series.map(s => [s.id, s.name, s.data])}""")
    assert len(bars["days"]) == 30 and bars["days"][0] == "11-01"
    assert sum(sum(data) for _, _, data in bars["series"]) == len(listed) > 20
    shown_per_day = {(f"2026-{day}", tier): n for tier, _, data in bars["series"] for day, n in zip(bars["days"], data) if n}
    assert shown_per_day == {(r["day"], r["tier"]): r["breaches"] + r["urgings"] + r["criticisms"] + r["referrals"] for r in per_day}
    assert {name for _, name, _ in bars["series"]} == {"社区"}  # every generated breach escalates to the community, labelled in Chinese
    lines = driver.execute_script("""const c = echarts.getInstanceByDom(document.getElementById('trend-on-time')).getOption();
        return {months: c.xAxis[0].data, series: c.series.map(s => [s.id, s.data])}""")
    assert lines["months"][-2:] == [PREVIOUS, MONTH] and len(lines["months"]) == 12
    expected_lines = {street: [next((float(r["on_time_rate_pct"]) for r in on_time if r["unit_id"] == street and r["month"] == m), None)
                               for m in lines["months"]] for street in {r["unit_id"] for r in on_time}}
    # Street-tier units that held cases (the ranking's holders): none here, since every generated breach escalates only
    # to the community; the line chart draws what the query gives.
    assert dict(lines["series"]) == expected_lines and len(expected_lines) == len({r["unit_id"] for r in on_time})
    accept = driver.execute_script("""const c = echarts.getInstanceByDom(document.getElementById('trend-accept')).getOption();
        return {x: c.xAxis[0].data, series: c.series.map(s => [s.id, s.data])}""")
    assert accept["x"] == [r["bucket_start"][5:] for r in durations]
    assert dict(accept["series"])["p90_accept_min"] == [None if r["p90_accept_s"] is None else round(r["p90_accept_s"] / 60, 2) for r in durations]
    resolve = driver.execute_script("return echarts.getInstanceByDom(document.getElementById('trend-resolve')).getOption().series.map(s => [s.id, s.data])")
    assert dict(resolve)["p50_resolve_h"] == [None if r["p50_resolve_h"] is None else float(r["p50_resolve_h"]) for r in durations]
    time.sleep(0.6)
    driver.save_screenshot(str(SCREENSHOTS / "dashboard-trends.png"))

    # Dead letters and verify: the seeded dead letters counted once each (the redelivered one too), by stage and reason,
    # the latest listed with their original and dead-letter positions; verify's verdict stated.
    driver.get(f"{live.url}/dead-letters?month={MONTH}")
    wait_ready(driver)
    assert driver.find_element(By.ID, "card-dead-letters").get_attribute("data-value") == str(len(DEAD_LETTERS))
    counts = driver.execute_script("""return [...document.querySelectorAll('#dead-letter-counts tbody tr')].map(
        tr => [tr.dataset.stage, tr.dataset.reason, Number(tr.cells[2].dataset.value)])""")
    # Most first; the reason a message names (reason=...), else the error's class.
    assert counts == [["decode", "DecodeError", 5], ["transition", "unknown_case", 4], ["authenticate", "unsigned", 3],
                      ["validate", "ValidationError", 1]]
    positions = driver.execute_script("return [...document.querySelectorAll('#dead-letter-examples tbody tr')].map(tr => tr.dataset.offset)")
    assert sorted(positions) == sorted(f"{topic}[{partition}]@{offset}" for *_, topic, partition, offset in DEAD_LETTERS)
    assert positions[0] == "whistle.raw.hotline[0]@400"  # newest first
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.body.dataset.verify || ''") in ("", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
    verdict = driver.find_element(By.ID, "verify-verdict")
    assert verdict.get_attribute("data-status") == "clean" and verdict.text.startswith("✔ 校验通过")
    assert driver.find_elements(By.ID, "verify-findings") == [] and "null" not in driver.find_element(By.ID, "verify").text
    assert f"{partitions} 个分区" in driver.find_element(By.ID, "verify-summary").text
    time.sleep(0.6)
    driver.save_screenshot(str(SCREENSHOTS / "dashboard-dead-letters.png"))

    # English on request.
    driver.get(f"{live.url}/ranking?month={MONTH}&lang=en")
    wait_ready(driver)
    assert driver.find_element(By.ID, "nav-ranking").text == "Rankings"
    driver.get(f"{live.url}/trends?month={MONTH}&lang=en")
    wait_ready(driver)
    assert driver.find_element(By.ID, "nav-trends").text == "Trends"
    assert driver.execute_script("return echarts.getInstanceByDom(document.getElementById('trend-breaches')).getOption().series[0].name") == "Community"

    # Nothing but the dashboard itself was requested, and the console stayed clean.
    urls = []
    for entry in driver.get_log("performance"):
        message = orjson.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    network = [url for url in urls if url.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
    assert len(network) > 20 and all(url.startswith(f"{live.url}/") for url in network), [u for u in network if not u.startswith(live.url)]
    # Anything else is the browser's own (its new-tab page at start, chrome://) or inline (data:, blob:): nothing leaves the machine.
    assert {url.split(":", 1)[0] for url in urls} <= {"http", "data", "blob", "chrome", "about"}
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    print(f"browser scenario: {time.monotonic() - started:.1f} s")
