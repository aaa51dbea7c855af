"""`whistle dashboard` (whistle/edges/dashboard.py): every data endpoint on ClickHouse 18.16 and on chdb over the
hand-built audit store of test_audit_queries.py (same seeding, figures checked by hand there and here), and
the login rule on every page, static file and endpoint (with its negative control: logged in, they answer 200)."""
from __future__ import annotations

import asyncio
import dataclasses
import io
from datetime import UTC, datetime
from decimal import Decimal as D

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_audit_queries import C1, EVENTS_TOPIC, dataset, load, store  # noqa: F401  (store: fixture)

from sinks import audit
from sinks.anchor import GENESIS as DIGEST_START
from sinks.anchor import Anchor, advance
from whistle.edges import dashboard
from whistle.edges.dashboard import AuditReader, Sessions, build_app, hash_password, load_users, verify_password
from whistle.ground.errors import ConfigError, StoreError
from whistle.ground.settings import PROJECT_ROOT

USER, PASSWORD = "auditor-li", "correct horse battery"
MONTH = "2025-03"
PAGES = list(dashboard.PAGES)
STATIC = ["/static/app.js", "/static/i18n.js", "/static/style.css", "/static/echarts.min.js"]
ENDPOINTS = [f"/api/overview?month={MONTH}", f"/api/ranking?month={MONTH}&by=street&min_cases=1", f"/api/provenance?month={MONTH}",
             "/api/grids", "/api/map", "/api/cases?street=S1", "/api/case/C1", "/api/reference",
             f"/api/trends?month={MONTH}&months=2&bucket=week", f"/api/dead_letters?month={MONTH}", "/api/verify",
             *(f"/api/export/{name}.{fmt}?month={MONTH}&case_id=C1" for name in ("overview", "breach_summary", "ranking", "provenance",
                                                                                 "map", "cases", "timeline", "trend_breaches", "trend_on_time",
                                                                                 "trend_durations", "dead_letters") for fmt in ("csv", "xlsx"))]
NEW_ENDPOINTS = [path for path in ENDPOINTS if path.startswith(("/api/trends", "/api/dead_letters", "/api/verify", "/api/export/trend_",
                                                                "/api/export/dead_letters"))]


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    path = tmp_path_factory.mktemp("dashboard") / "users.yaml"
    path.write_text(orjson.dumps({"users": [{"username": USER, "password_scrypt": hash_password(PASSWORD)}]}).decode())
    return load_users(path)


def serve(app, scenario):
    async def main():
        async with TestClient(TestServer(app)) as client:
            return await scenario(client)

    return asyncio.run(main())


async def login(client, username=USER, password=PASSWORD):
    return await client.post("/login", data={"username": username, "password": password, "next": "/"}, allow_redirects=False)


def kafka_as_stored(engine, database, lag=0):
    """Kafka's offsets as they would be with everything stored (the sink caught up), or `lag` records more in each partition."""
    stored = audit.stored_ranges(engine, database)
    ranges = [audit.KafkaRange(s.topic, s.partition, 0, s.last + 1 + lag, s.last + 1) for s in stored if s.last is not None]
    return lambda: (ranges, [])


def app_on(engine, database, users, kafka=None, **kwargs):
    reader = AuditReader(lambda: engine, database, serialize=True, owns_engines=False, kafka=kafka or kafka_as_stored(engine, database))
    return build_app(reader, users, **kwargs)


def get_json(engine, database, users, *paths, kafka=None):
    async def scenario(client):
        assert (await login(client)).status == 303
        answers = []
        for path in paths:
            response = await client.get(path)
            assert response.status == 200, (path, await response.text())
            answers.append(await response.json())
        return answers

    return serve(app_on(engine, database, users, kafka), scenario)


def get_bytes(engine, database, users, path):
    async def scenario(client):
        await login(client)
        response = await client.get(path)
        assert response.status == 200, await response.text()
        return response.headers, await response.read()

    return serve(app_on(engine, database, users), scenario)


# -- data endpoints, both engines --------------------------------------------------------------------


def test_overview(store, users):
    (answer,) = get_json(*store, users, f"/api/overview?month={MONTH}")
    # March 2025 (Beijing): opened C1-C8, C10, C11 (C9 opened in April); resolved events in March: C1 C2 C3 C6 C7 C10 C11;
    # closed: C1 C2 C3. Cohort (those 10): responded = accepted without accept_overdue = all but C2, C5 -> 8;
    # resolved (last resolve after every reopen/escalation) C1 C2 C3 C7 C10 C11 -> 6; on time: not C2 -> 5;
    # rated C1(5) C2(3) C3(latest 4) -> satisfied 2 of 3.
    assert answer["month"] == MONTH and answer["previous_month"] == "2025-02"
    assert answer["current"]["rows"] == [{
        "opened": 10, "resolved": 7, "closed": 3, "cohort": 10, "responded": 8, "cohort_resolved": 6, "on_time": 5, "rated": 3,
        "satisfied": 2, "response_rate_pct": "80.00", "resolution_rate_pct": "60.00", "on_time_rate_pct": "50.00",
        "satisfaction_rate_pct": "66.67"}]
    previous = answer["previous"]["rows"][0]
    assert (previous["opened"], previous["response_rate_pct"], previous["satisfaction_rate_pct"]) == (0, None, None)
    # Deadlines in March: W5 (grid warning); community breaches B2a B3 B4 (its copy once) B5a B6; street B2b B5b.
    assert answer["breaches_current"]["rows"] == [{"tier": "grid", "warnings": 1, "breaches": 0, "urgings": 0, "criticisms": 0, "referrals": 0},
                                                  {"tier": "community", "warnings": 0, "breaches": 5, "urgings": 0, "criticisms": 0, "referrals": 0},
                                                  {"tier": "street", "warnings": 0, "breaches": 2, "urgings": 0, "criticisms": 0, "referrals": 0}]
    assert answer["breaches_previous"]["rows"] == []


AS_OF = "2025-04-02T00:00:00.000+08:00"
AS_OF_QUERY = "as_of=" + AS_OF.replace("+", "%2B")


@pytest.mark.parametrize("by", list(audit.RANKING_UNITS))
def test_ranking_and_provenance_are_the_cli_queries(store, users, by):
    ranking, provenance = get_json(*store, users, f"/api/ranking?month={MONTH}&by={by}&min_cases=2&{AS_OF_QUERY}",
                                   f"/api/provenance?month={MONTH}&by={by}&{AS_OF_QUERY}")
    # What `whistle audit ranking --month 2025-03 --by BY --min-cases 2 --as-of AS_OF --format json` prints (the same functions).
    as_of = audit.as_of_from_text(AS_OF)
    assert ranking["ranking"]["rows"] == orjson.loads(audit.to_json(audit.ranking(*store, MONTH, by, 2, as_of=as_of)))
    assert provenance["rows"] == orjson.loads(audit.to_json(audit.ranking_provenance(*store, MONTH, by, as_of=as_of)))
    assert ranking["min_cases"] == 2 and ranking["as_of"] == AS_OF and ranking["ranking"]["columns"][:3] == ["unit_id", "rank", "received"]
    assert {row["as_of"] for row in provenance["rows"]} == {AS_OF} and {row["score_policy"] for row in provenance["rows"]} == {ranking["score_policy"]}


def test_a_ranking_asked_for_without_as_of_is_pinned_to_now_and_says_so(store, users):
    now = datetime(2025, 4, 2, 1, 2, 3, 456789, tzinfo=UTC)

    async def scenario(client):
        await login(client)
        return [await (await client.get(path)).json() for path in (f"/api/ranking?month={MONTH}&by=grid", f"/api/provenance?month={MONTH}&by=grid")]

    answer, provenance = serve(app_on(*store, users, clock=lambda: now), scenario)
    assert answer["as_of"] == "2025-04-02T09:02:03.456+08:00" and answer["min_cases"] == audit.DEFAULT_MIN_CASES  # no ranking section
    assert answer["score_policy"] == ""
    assert {row["as_of"] for row in provenance["rows"]} == {answer["as_of"]}


def test_map_counts_open_and_overdue_cases_per_grid(store, users):
    (answer,) = get_json(*store, users, "/api/map")
    # G-S1-1: C1, C2 closed, C4 open with resolve_overdue B4; G-S2-1: C5 open, accept_overdue; G-S2-2: C6 open, its breach is
    # `reopened` (not an overdue); G-S3-1: C8, C9 open. C7 (dispatch desk) has no grid.
    assert [tuple(r.values()) for r in answer["rows"]] == [
        ("G-S1-1", 3, 1, 1), ("G-S1-2", 1, 0, 0), ("G-S2-1", 1, 1, 1), ("G-S2-2", 1, 1, 0), ("G-S3-1", 2, 2, 0),
        ("G-S4-1", 1, 1, 0), ("G-S5-1", 1, 1, 0)]
    (march,) = get_json(*store, users, "/api/map?from=2025-03-01&to=2025-03-31")  # C9 opened on April 1st, Beijing time
    assert dict((r["grid_id"], r["total_cases"]) for r in march["rows"])["G-S3-1"] == 1


def test_case_search(store, users):
    open_s1, grid, one, closed, april = get_json(*store, users, "/api/cases?street=S1&status=open", "/api/cases?grid=G-S1-1",
                                                 "/api/cases?case_id=C1", "/api/cases?status=closed&category=drain_blocked",
                                                 "/api/cases?from=2025-04-01")
    assert [(r["case_id"], r["status"], r["overdue"], r["breaches"]) for r in open_s1["rows"]] == [("C4", "accepted", 1, 1)]
    assert [r["case_id"] for r in grid["rows"]] == ["C4", "C2", "C1"]  # newest opened first
    (c1,) = one["rows"]
    assert (c1["status"], c1["rating"], c1["street_id"], c1["grid_id"], c1["opened_ms"]) == ("closed", 5, "S1", "G-S1-1", C1[0]["at"])
    assert [r["case_id"] for r in closed["rows"]] == ["C3", "C2", "C1"]
    assert [r["case_id"] for r in april["rows"]] == ["C9"]


def test_case_timeline_with_its_chain_check(store, users):
    (answer,) = get_json(*store, users, "/api/case/C1")
    expected = orjson.loads(audit.to_json(audit.case_timeline(*store, "C1")))
    assert [{k: v for k, v in row.items() if k != "chain"} for row in answer["rows"]] == expected
    assert answer["chain"] == {"verified": True, "events_checked": 7, "problems": []}
    chains = {row["seq"]: row["chain"] for row in answer["rows"]}
    assert all(chains[seq]["verified"] for seq in range(1, 8))
    assert chains[6]["copies"] == 2 and chains[6]["copies_agree"]  # the rated event was stored twice (a producer retry)


def test_case_timeline_shows_an_altered_event(engine, database, users):
    def alter(tables):
        for row in tables["case_events"]:
            if row["event_id"] == "C1:5":
                row["note"] = "nothing was done"

    load(engine, database, tamper=alter)
    (answer,) = get_json(engine, database, users, "/api/case/C1")
    assert answer["chain"]["verified"] is False
    assert any("C1:5: hash does not match" in line for line in answer["chain"]["problems"])
    chains = {row["seq"]: row["chain"] for row in answer["rows"] if row["chain"]}
    assert [seq for seq, chain in chains.items() if not chain["verified"]] == [5]


def test_exports_are_the_same_tables(store, users):
    as_of = audit.as_of_from_text(AS_OF)
    headers, body = get_bytes(*store, users, f"/api/export/ranking.csv?month={MONTH}&by=grid&min_cases=1&{AS_OF_QUERY}")
    assert headers["Content-Type"].startswith("text/csv") and "attachment" in headers["Content-Disposition"]
    assert body.decode("utf-8") == "\ufeff" + audit.to_csv(audit.ranking(*store, MONTH, "grid", 1, as_of=as_of))
    _, body = get_bytes(*store, users, "/api/export/timeline.csv?case_id=C1")
    assert body.decode("utf-8").splitlines()[0].endswith(",chain") and len(body.decode().splitlines()) == 1 + len(audit.case_timeline(*store, "C1").rows)

    from openpyxl import load_workbook

    _, body = get_bytes(*store, users, f"/api/export/ranking.xlsx?month={MONTH}&by=grid&min_cases=1&{AS_OF_QUERY}")
    book = load_workbook(io.BytesIO(body))
    assert book.sheetnames == ["ranking", "ranking_provenance"]  # provenance on its own sheet
    ranking = audit.ranking(*store, MONTH, "grid", 1, as_of=as_of)
    rows = list(book["ranking"].iter_rows(values_only=True))
    assert rows[0] == ranking.columns
    assert [tuple(D(v) if isinstance(v, str) and v[:1].isdigit() and "." in v else v for v in row) for row in rows[1:]] == list(ranking.rows)
    provenance = audit.ranking_provenance(*store, MONTH, "grid", as_of=as_of)
    assert [tuple("" if v is None else v for v in row) for row in book["ranking_provenance"].iter_rows(values_only=True)][1:] == [
        tuple("" if v is None else v for v in row) for row in provenance.rows]


def test_trends_are_the_cli_queries(store, users):
    (week,) = get_json(*store, users, f"/api/trends?month={MONTH}&months=2&bucket=week")
    # What `whistle audit trends --month 2025-03 --months 2 --bucket week --format json` prints (the same functions).
    assert week["breaches"]["rows"] == orjson.loads(audit.to_json(audit.trend_breaches(*store, MONTH)))
    assert week["on_time"]["rows"] == orjson.loads(audit.to_json(audit.trend_on_time(*store, MONTH, 2)))
    assert week["durations"]["rows"] == orjson.loads(audit.to_json(audit.trend_durations(*store, MONTH, "week")))
    # Breaches and referrals fired in March, by Beijing day: B2a 03-05, B2b 03-06 (street), B3 03-10, B5a + B5b 03-12
    # (community + street), B6 03-16, B4 03-25 (its copy once); not the warning W5. As many as `audit breaches` lists.
    assert [(r["day"], r["tier"], r["breaches"]) for r in week["breaches"]["rows"]] == [
        ("2025-03-05", "community", 1), ("2025-03-06", "street", 1), ("2025-03-10", "community", 1), ("2025-03-12", "community", 1),
        ("2025-03-12", "street", 1), ("2025-03-16", "community", 1), ("2025-03-25", "community", 1)]
    start, end = audit.month_bounds(MONTH)
    listed = audit.breaches(*store, since=datetime.fromtimestamp(start / 1000, UTC), until=datetime.fromtimestamp(end / 1000, UTC))
    assert sum(r["breaches"] + r["referrals"] for r in week["breaches"]["rows"]) == len(listed.rows) == 7
    # On-time rates: no case in February; March equals the month's street ranking, unit by unit (the street-tier units
    # that held cases: ST-S1 resolved C2 on time after it escalated there; ST-S2 never accepted C5).
    ranking = {r["unit_id"]: r["on_time_rate_pct"] for r in orjson.loads(audit.to_json(audit.ranking(*store, MONTH, "street", 1)))}
    assert {r["month"] for r in week["on_time"]["rows"]} == {MONTH}
    assert {r["unit_id"]: r["on_time_rate_pct"] for r in week["on_time"]["rows"]} == ranking == {"ST-S1": "100.00", "ST-S2": "0.00"}
    # Week of 03-03: C1 accepted after 600 s, resolved after 4 h; C2 after 9000 s and 24 h: p50 the 1st, p90 the 2nd of 2.
    first = week["durations"]["rows"][0]
    assert first == {"bucket_start": "2025-03-03", "cases": 2, "accepted": 2, "resolved": 2, "p50_accept_s": 600, "p90_accept_s": 9000,
                     "p50_resolve_h": "4.00", "p90_resolve_h": "24.00"}
    assert [r["bucket_start"] for r in week["durations"]["rows"]] == ["2025-03-03", "2025-03-10", "2025-03-17", "2025-03-24", "2025-03-31"]
    (day,) = get_json(*store, users, f"/api/trends?month={MONTH}&bucket=day")
    c5 = [r for r in day["durations"]["rows"] if r["bucket_start"] == "2025-03-12"]  # C5: never accepted, never resolved
    assert c5 == [{"bucket_start": "2025-03-12", "cases": 1, "accepted": 0, "resolved": 0, "p50_accept_s": None, "p90_accept_s": None,
                   "p50_resolve_h": None, "p90_resolve_h": None}]
    assert day["months"] == dashboard.DEFAULT_TREND_MONTHS and sum(r["cases"] for r in day["durations"]["rows"]) == 10


def test_dead_letters_by_stage_and_latest(store, users):
    engine, database = store
    # The same record dead-lettered again (a redelivery): counted and listed once.
    (again,) = [{**row, "kafka_offset": 1} for row in dataset()["dead_letters"]]
    columns = [c for c in again if c != "later_batch"]
    engine.insert(f"{database}.dead_letters", columns, [tuple(again[c] for c in columns)])
    march, april, validate = get_json(*store, users, f"/api/dead_letters?month={MONTH}", "/api/dead_letters?month=2025-04",
                                      f"/api/dead_letters?month={MONTH}&stage=validate")
    assert march["counts"]["rows"] == [{"original_topic": "whistle.raw.app", "original_partition": 2, "stage": "decode",
                                        "error_class": "DecodeError", "reason": "", "records": 1}]
    (example,) = march["examples"]["rows"]
    assert (example["original_topic"], example["original_partition"], example["original_offset"], example["kafka_topic"],
            example["kafka_partition"], example["kafka_offset"]) == ("whistle.raw.app", 2, 41, "whistle.deadletter", 0, 0)
    assert (example["stage"], example["error_message"], example["original_key"]) == ("decode", "not an Avro single-object record", "R-bad")
    assert april["counts"]["rows"] == april["examples"]["rows"] == [] and validate["examples"]["rows"] == []


def test_verify_states_clean_and_behind(store, users):
    engine, database = store
    (clean,) = get_json(engine, database, users, "/api/verify")
    expected = audit.verify_against_kafka(engine, database, kafka_as_stored(engine, database)()[0])
    assert clean["findings"]["rows"] == orjson.loads(audit.to_json(audit.findings_result(expected)))
    assert (clean["status"], clean["exit_code"], clean["broken"], clean["behind"], clean["dead_letters"]) == ("clean", 0, 0, 0, 1)
    (behind,) = get_json(engine, database, users, "/api/verify", kafka=kafka_as_stored(engine, database, lag=3))
    assert behind["status"] == "behind" and behind["exit_code"] == 2
    assert {(f["kind"], f["records"]) for f in behind["findings"]["rows"] if f["status"] == "behind"} == {("lag", 3)}
    assert behind["behind"] == len(kafka_as_stored(engine, database)()[0])


def test_verify_states_broken_on_an_altered_event(engine, database, users):
    def alter(tables):
        for row in tables["case_events"]:
            if row["event_id"] == "C1:5":
                row["note"] = "nothing was done"

    load(engine, database, tamper=alter)
    (broken,) = get_json(engine, database, users, "/api/verify")
    assert broken["status"] == "broken" and broken["exit_code"] == 1 and broken["broken"] >= 1
    assert any(f["kind"] == "chain" and "case C1" in f["detail"] for f in broken["findings"]["rows"])


def test_verify_holds_the_store_to_the_anchors_as_the_cli_does(store, users):
    """The page's verdict is `whistle audit verify`'s, anchors included: anchors the store gives verify; a forged one breaks."""
    engine, database = store
    entries = [(int(o), e) for o, e in audit.run_query(engine, database, "verify_anchor_entries", {"topic": EVENTS_TOPIC, "partition": 0}).rows]
    digest = DIGEST_START
    for offset, entry in entries:
        digest = advance(digest, offset, bytes.fromhex(entry))
    true = Anchor(EVENTS_TOPIC, 0, 0, entries[-1][0], len(entries), digest.hex(), False, 0)

    def verdict(anchor):
        reader = AuditReader(lambda: engine, database, serialize=True, owns_engines=False, kafka=kafka_as_stored(engine, database),
                             anchors=dashboard.Anchors(lambda: [anchor], None, EVENTS_TOPIC))
        async def scenario(client):
            assert (await login(client)).status == 303
            return await (await client.get("/api/verify")).json()
        return serve(build_app(reader, users), scenario)

    assert verdict(true)["status"] == "clean"
    forged = verdict(dataclasses.replace(true, digest="f" * 64))
    assert forged["status"] == "broken" and any(f["kind"] == "anchor" for f in forged["findings"]["rows"])


def test_verify_without_kafka_is_503_not_a_verdict(store, users):
    async def scenario(client):
        await login(client)
        response = await client.get("/api/verify")
        return response.status, (await response.json())["error"]

    app = build_app(AuditReader(lambda: store[0], store[1], serialize=True, owns_engines=False), users)
    status, message = serve(app, scenario)
    assert status == 503 and "Kafka" in message


def test_with_a_login_the_new_endpoints_answer(store, users):
    async def scenario(client):
        await login(client)
        return {path: (await client.get(path)).status for path in NEW_ENDPOINTS}

    statuses = serve(app_on(*store, users), scenario)
    assert len(statuses) == 11 and set(statuses.values()) == {200}, statuses


def test_bad_inputs_are_400(store, users):
    async def scenario(client):
        await login(client)
        answers = {}
        for path in ("/api/ranking?month=2025-13", "/api/ranking?by=district", "/api/ranking?as_of=2025-03-01T00:00:00", "/api/ranking?min_cases=-1", "/api/cases?status=lost",
                     "/api/cases?from=2025-3-1", "/api/cases?limit=100000", "/api/export/nothing.csv",
                     "/api/trends?month=2025-3", "/api/trends?months=0", "/api/trends?months=x", "/api/trends?bucket=hour",
                     "/api/dead_letters?month=03-2025", "/api/dead_letters?limit=0", "/api/export/trend_nothing.csv"):
            response = await client.get(path)
            answers[path] = (response.status, (await response.json())["error"])
        return answers

    answers = serve(app_on(*store, users), scenario)
    assert {status for status, _ in answers.values()} == {400}, answers


# -- login on everything -----------------------------------------------------------------------------


class _NoStore:
    """A reader that must never be reached: refused requests stop before any query."""

    def __getattr__(self, name):
        raise AssertionError(f"the store was queried ({name}) without a login")


def _anonymous_app(users, **kwargs):
    app = build_app(AuditReader(lambda: _NoStore(), "whistle"), users, **kwargs)  # type: ignore[arg-type, return-value]
    return app


def test_every_page_redirects_and_every_endpoint_refuses_without_login(users):
    async def scenario(client):
        seen = {}
        for path in PAGES:
            response = await client.get(path, allow_redirects=False)
            seen[path] = (response.status, response.headers.get("Location"))
        for path in STATIC + ENDPOINTS:
            response = await client.get(path, allow_redirects=False)
            seen[path] = (response.status, (await response.json())["error"])
        client.session.cookie_jar.update_cookies({dashboard.SESSION_COOKIE: "forged-token"})
        seen["forged"] = (await client.get("/api/ranking", allow_redirects=False)).status
        seen["login page"] = (await client.get("/login")).status
        return seen

    seen = serve(_anonymous_app(users), scenario)
    for path in PAGES:
        assert seen[path][0] == 303 and seen[path][1].startswith("/login?next="), (path, seen[path])
    for path in STATIC + ENDPOINTS:
        assert seen[path] == (401, "login required"), path
    assert seen["forged"] == 401 and seen["login page"] == 200


def test_with_a_login_pages_and_static_files_answer_200(users):
    async def scenario(client):
        refused = await login(client, password="wrong password!")
        unknown = await login(client, username="nobody")
        assert not client.session.cookie_jar.filter_cookies(client.make_url("/"))
        response = await login(client)
        cookie = response.headers["Set-Cookie"]
        statuses = {}
        for path in PAGES + [p + "?lang=en" for p in PAGES] + STATIC:
            answer = await client.get(path, allow_redirects=False)
            statuses[path] = (answer.status, answer.headers.get("Content-Security-Policy", ""))
        logout = await client.post("/logout", allow_redirects=False)
        after = await client.get("/api/reference", allow_redirects=False)
        return refused.status, unknown.status, response.status, cookie, statuses, logout.status, after.status

    refused, unknown, ok, cookie, statuses, logout, after = serve(_anonymous_app(users), scenario)
    assert (refused, unknown, ok) == (401, 401, 303)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and f"Max-Age={dashboard.DEFAULT_SESSION_TTL_S}" in cookie
    assert all(status == 200 and "default-src 'self'" in csp for status, csp in statuses.values()), statuses
    assert (logout, after) == (303, 401)


def test_a_session_expires(users):
    now = [1000.0]
    sessions = Sessions(ttl_s=60, clock=lambda: now[0])

    async def scenario(client):
        await login(client)
        before = (await client.get("/static/app.js")).status
        now[0] += 61
        return before, (await client.get("/static/app.js")).status, (await client.get("/", allow_redirects=False)).status

    assert serve(_anonymous_app(users, sessions=sessions), scenario) == (200, 401, 303)


def test_login_redirect_stays_on_this_site(users):
    async def scenario(client):
        response = await client.post("/login", data={"username": USER, "password": PASSWORD, "next": "//evil.example/x"}, allow_redirects=False)
        return response.headers["Location"]

    assert serve(_anonymous_app(users), scenario) == "/"


def test_password_hashes_and_users_file(tmp_path):
    stored = hash_password("s3cret-passw0rd")
    assert stored.startswith("scrypt$16384$8$1$") and "s3cret" not in stored
    assert verify_password("s3cret-passw0rd", stored) and not verify_password("s3cret-passw0rd!", stored)
    assert hash_password("s3cret-passw0rd") != stored  # salted
    bad = tmp_path / "users.yaml"
    bad.write_text("users:\n  - username: li\n    password: plain-text\n")
    with pytest.raises(ConfigError, match="password_scrypt"):
        load_users(bad)
    example = load_users(PROJECT_ROOT / "infra" / "dashboard-users.example.yaml")
    assert set(example.by_name) == {"zhihui-zhongxin", "auditor-li"} and not example.check("zhihui-zhongxin", "zhihui-zhongxin")


def test_the_dashboard_reads_as_the_read_only_auditor(settings, clickhouse_native):
    host, port = clickhouse_native
    reader = AuditReader.for_auditor(dataclasses.replace(settings.clickhouse, host=host, port=port, database="default"))
    try:
        with pytest.raises(StoreError):
            reader.call(lambda engine, db: engine.execute("CREATE TABLE default.dashboard_write_probe (x UInt8) ENGINE = Memory"))
        assert reader.call(lambda engine, db: engine.execute("SELECT value FROM system.settings WHERE name = 'readonly'")) == [("1",)]
    finally:
        reader.close()
