"""The HTTP ingest gateway over real HTTP, against the real local Kafka broker and ClickHouse server."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import logging
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.topics import load_topics, provision_topics
from schemas.catalog import default_catalog
from schemas.serde import Serde
from sinks.clickhouse import ServerEngine
from sinks.migrator import migrate
from sinks.sink import CASE_EVENT_COLUMNS, RAW_COLUMNS, RowMaker
from streams.domain.credentials import RecordSigner, load_credentials, verify_sender
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from streams.pipeline import Ingestor, Senders
from whistle.devtools.feed import Signers
from whistle.edges import open311
from whistle.edges.gateway import build_app, find_requests, gateway_publisher
from whistle.edges.sdk import Publisher
from whistle.ground.deadletter import Position
from whistle.ground.errors import AuthError, ConfigError
from whistle.ground.names import Topics
from whistle.ground.settings import PROJECT_ROOT, Settings
from whistle.ground.times import utc_now

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

NOW = datetime(2025, 6, 12, 8, 0, tzinfo=UTC)
CAMERA_KEY, HOTLINE_KEY, APP_KEY, SLOW_KEY, OFFICE_KEY, GRID_KEY, OTHER_APP_KEY = (
    f"key-{name}-{uuid.uuid4().hex}" for name in ("camera", "hotline", "app", "slow", "office", "grid", "other-app"))
GRID = "G-S01-C01-001"  # a grid of street S01
PHONE = "+86 138 1234 5678"


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def gw_settings(settings: Settings, kafka_bootstrap: str, clickhouse_native):
    """Settings with fresh raw topics (unique prefix) and a fresh audit database; both removed afterwards."""
    prefix = f"tgw{uuid.uuid4().hex[:8]}-"
    host, port = clickhouse_native
    database = f"test_gateway_{uuid.uuid4().hex[:8]}"
    kafka = dataclasses.replace(settings.kafka, bootstrap_servers=kafka_bootstrap)
    raw_topics = [spec for spec in load_topics(prefix=prefix) if ".raw." in spec.name]
    provision_topics(kafka, raw_topics)
    admin_engine = ServerEngine(host, port, user=settings.clickhouse.admin_user, password=settings.clickhouse.admin_password.value)
    migrate(admin_engine, database)
    yield dataclasses.replace(settings, topic_prefix=prefix, kafka=kafka,
                              clickhouse=dataclasses.replace(settings.clickhouse, host=host, port=port, database=database))
    admin_engine.execute(f"DROP DATABASE IF EXISTS {database}")
    admin_engine.close()
    admin = AdminClient(kafka.librdkafka())
    for future in admin.delete_topics([spec.name for spec in raw_topics]).values():
        future.result(timeout=15)


@pytest.fixture(scope="module")
def publisher(gw_settings: Settings):
    with Publisher(gw_settings, delivery_timeout_s=10.0) as live:
        yield live


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("gateway") / "keys.yaml"
    entries = [("camera-platform", CAMERA_KEY, ["camera"], 1000, 1000, {}),
               ("hotline-12345", HOTLINE_KEY, ["hotline"], 1000, 1000, {"return_visit": True}),
               ("resident-app", APP_KEY, ["app"], 1000, 1000, {}), ("slow-camera", SLOW_KEY, ["camera"], 1, 2, {}),
               ("office-s01", OFFICE_KEY, [], 1000, 1000, {"units": ["S01"], "below": True}),
               ("grid-team", GRID_KEY, [], 1000, 1000, {"units": [GRID]}), ("other-app", OTHER_APP_KEY, ["app"], 1000, 1000, {})]
    path.write_text(orjson.dumps({"keys": [
        {"integrator": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "sources": sources, "rate_per_second": rate, "burst": burst,
         **more} for name, key, sources, rate, burst, more in entries]}).decode())
    return load_credentials(path, load_reference())


def serve(app, scenario):
    """Run `scenario(client)` against `app` on a real local HTTP server."""
    async def main():
        async with TestClient(TestServer(app)) as client:
            return await scenario(client)

    return asyncio.run(main())


def detection(**changes):
    record = {"detection_id": f"det-{uuid.uuid4().hex}", "camera_id": "cam-0042", "detected_at": "2025-06-12T08:15:02.117+08:00",
              "category": "garbage", "confidence": 0.91, "lat": 27.8251, "lon": 113.1336,
              "snapshot_ref": "s3://whistle-evidence/cam-0042/1.jpg", "model_version": "yolo-grid-2.3.1"}
    return {**record, **changes}


def ticket(**changes):
    record = {"ticket_id": f"12345-{uuid.uuid4().hex}", "received_at": "2025-06-12T09:03:41+08:00", "caller_phone": PHONE,
              "address_text": "建设北路17号", "description": "楼道里有人给电动车充电", "operator_category": "ebike_charging_hazard",
              "urgency": "urgent"}
    return {**record, **changes}


def topic_records(settings: Settings, publisher: Publisher, source: str) -> list[dict]:
    """Every record on the source's topic so far, decoded."""
    return [publisher.serde.decode(message.value()).record for message in topic_messages(settings, publisher, source)]


def topic_messages(settings: Settings, publisher: Publisher, source: str) -> list:
    """Every message on the source's topic so far (reads each partition up to its high watermark)."""
    topic = publisher.topic(publisher.serde.catalog.topic_for_source(source).name)
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        messages, deadline = [], time.monotonic() + 20
        while len(messages) < sum(ends.values()) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None and message.offset() < ends[message.partition()]:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def test_a_detection_is_acknowledged_with_its_id_once_kafka_has_it(gw_settings, publisher, keys):
    sent = detection()

    async def scenario(client):
        response = await client.post("/v1/camera/detections", json=sent, headers={"X-API-Key": CAMERA_KEY})
        return response.status, await response.json()

    status, body = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    assert status == 202 and body["event_id"] == sent["detection_id"]
    stored = [r for r in topic_records(gw_settings, publisher, "camera") if r["detection_id"] == sent["detection_id"]]
    assert len(stored) == 1 and stored[0]["confidence"] == 0.91
    assert body["topic"] == f"{gw_settings.topic_prefix}whistle.raw.camera"


def test_a_retried_post_creates_one_event_and_gets_the_same_answer(gw_settings, publisher, keys):
    sent, call = detection(), ticket()

    async def scenario(client):
        camera = {"X-API-Key": CAMERA_KEY}
        first = await client.post("/v1/camera/detections", json=sent, headers=camera)
        retries = await asyncio.gather(*(client.post("/v1/camera/detections", json=sent, headers=camera) for _ in range(3)))
        changed = await client.post("/v1/camera/detections", json={**sent, "confidence": 0.5}, headers=camera)
        hotline = {"X-API-Key": HOTLINE_KEY, "Idempotency-Key": "call-77"}
        concurrent = await asyncio.gather(*(client.post("/v1/hotline/tickets", json=call, headers=hotline) for _ in range(3)))
        return ([await first.json()] + [await r.json() for r in retries], [r.status for r in retries], changed.status,
                [(r.status, await r.json()) for r in concurrent])

    answers, retry_statuses, changed_status, hotline_answers = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    assert retry_statuses == [202, 202, 202] and all(answer == answers[0] for answer in answers)
    assert changed_status == 409
    assert all(answer == hotline_answers[0] for answer in hotline_answers) and hotline_answers[0][0] == 202
    assert sum(r["detection_id"] == sent["detection_id"] for r in topic_records(gw_settings, publisher, "camera")) == 1
    assert sum(r["ticket_id"] == call["ticket_id"] for r in topic_records(gw_settings, publisher, "hotline")) == 1


def test_every_invalid_field_is_named_and_nothing_is_published(gw_settings, publisher, keys):
    sent = {name: value for name, value in detection(confidence=1.7, category="ufo").items() if name != "camera_id"}

    async def scenario(client):
        response = await client.post("/v1/camera/detections", json=sent, headers={"X-API-Key": CAMERA_KEY})
        not_json = await client.post("/v1/camera/detections", data=b"{oops", headers={"X-API-Key": CAMERA_KEY})
        return response.status, await response.json(), not_json.status

    status, body, not_json_status = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    assert status == 400 and not_json_status == 400
    assert {"field": "confidence", "message": "1.7 is above 1.0"} in body["errors"]
    assert {error["field"] for error in body["errors"]} == {"confidence", "category", "camera_id"}
    assert not [r for r in topic_records(gw_settings, publisher, "camera") if r["detection_id"] == sent["detection_id"]]


def test_a_key_must_be_known_and_allowed_for_the_source(gw_settings, publisher, keys):
    async def scenario(client):
        statuses = []
        for headers in ({}, {"X-API-Key": "guessed"}, {"X-API-Key": CAMERA_KEY}):
            response = await client.post("/v1/hotline/tickets", json=ticket(), headers=headers)
            statuses.append((response.status, (await response.json())["errors"][0]["field"]))
        return statuses

    assert serve(build_app(gw_settings, publisher, keys, Clock()), scenario) == [(401, "X-API-Key"), (401, "X-API-Key"), (403, "X-API-Key")]


def test_a_body_over_the_size_limit_is_refused(gw_settings, publisher, keys):
    big = detection(model_version="v" * 70_000)

    async def scenario(client):
        default = await client.post("/v1/camera/detections", json=big, headers={"X-API-Key": CAMERA_KEY})
        return default.status, await default.json()

    status, body = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    assert status == 413 and "65536" in body["errors"][0]["message"]

    async def small_limit(client):
        response = await client.post("/v1/camera/detections", json=detection(), headers={"X-API-Key": CAMERA_KEY})
        return response.status

    assert serve(build_app(gw_settings, publisher, keys, Clock(), max_body_bytes=100), small_limit) == 413


def test_a_key_over_its_rate_gets_429_until_its_bucket_refills(gw_settings, publisher, keys):
    clock = Clock()

    async def scenario(client):
        async def attempt():
            response = await client.post("/v1/camera/detections", json={}, headers={"X-API-Key": SLOW_KEY})
            return response.status, response.headers.get("Retry-After")

        burst = [await attempt() for _ in range(3)]
        clock.now += timedelta(seconds=1)
        return burst, await attempt(), await attempt()

    burst, refilled, empty_again = serve(build_app(gw_settings, publisher, keys, clock), scenario)
    assert burst == [(400, None), (400, None), (429, "1")]  # a token is spent before the body is even read
    assert refilled == (400, None) and empty_again == (429, "1")


def test_when_kafka_cannot_take_the_write_nothing_is_acknowledged(gw_settings, publisher, keys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = dataclasses.replace(gw_settings, kafka=dataclasses.replace(gw_settings.kafka, bootstrap_servers=f"127.0.0.1:{closed_port}"))
    sent = detection()

    async def post(client):
        started = time.monotonic()
        responses = [await client.post("/v1/camera/detections", json=sent, headers={"X-API-Key": CAMERA_KEY}) for _ in range(2)]
        return [(r.status, r.headers.get("Retry-After")) for r in responses], time.monotonic() - started

    with Publisher(unreachable, delivery_timeout_s=2.0) as dead:
        refused, elapsed = serve(build_app(unreachable, dead, keys, Clock()), post)
    assert refused == [(503, "1"), (503, "1")] and elapsed < 10
    assert not [r for r in topic_records(gw_settings, publisher, "camera") if r["detection_id"] == sent["detection_id"]]

    accepted, _ = serve(build_app(gw_settings, publisher, keys, Clock()), post)
    assert [status for status, _ in accepted] == [202, 202]
    assert sum(r["detection_id"] == sent["detection_id"] for r in topic_records(gw_settings, publisher, "camera")) == 1


def test_open311_services_list_every_category(gw_settings, publisher, keys):
    async def scenario(client):
        response = await client.get("/open311/v2/services.json")
        return response.status, await response.json()

    status, services = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    assert status == 200 and [s["service_code"] for s in services] == list(default_catalog().categories)
    assert all(s["metadata"] is True and s["type"] == "realtime" and s["group"] for s in services)


def test_an_open311_request_lands_on_kafka_with_its_category_and_a_hashed_reporter(gw_settings, publisher, keys):
    form = {"api_key": APP_KEY, "service_code": "drainage_blockage", "lat": "27.8307", "long": "113.1402",
            "email": "li.wei@example.cn", "description": "下水道堵了，路口积水。", "media_url": "https://img.example.cn/1.jpg"}

    async def scenario(client):
        created = await client.post("/open311/v2/requests.json", data=form, headers={"Idempotency-Key": "app-42"})
        answer = await created.json()
        request_id = answer[0]["service_request_id"]
        retried = await client.post("/open311/v2/requests.json", data=form, headers={"Idempotency-Key": "app-42"})
        status = await client.get(f"/open311/v2/requests/{request_id}.json", headers={"X-API-Key": APP_KEY})
        invalid = await client.post("/open311/v2/requests.json", data={**form, "lat": "north", "lon": "1"})
        return created.status, answer, await retried.json(), status.status, await status.json(), invalid.status, await invalid.json()

    status, answer, retried, get_status, progress, invalid_status, problems = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    request_id = answer[0]["service_request_id"]
    assert status == 202 and retried == answer
    reports = [r["event"][1] for r in topic_records(gw_settings, publisher, "app") if r["event"][1]["report_id"] == request_id]
    assert len(reports) == 1 and reports[0]["category"] == "drainage_blockage" and reports[0]["reported_at"] == NOW
    assert reports[0]["reporter_id"].startswith("o311-email-") and "li.wei" not in reports[0]["reporter_id"]
    assert get_status == 200 and (progress[0]["status"], progress[0]["status_notes"]) == ("open", "received")
    assert invalid_status == 400 and {p["field"] for p in problems} == {"lat", "lon"} and problems[0]["code"] == 400


def test_open311_status_comes_from_the_audit_store(gw_settings, publisher, keys):
    """POST two requests, store their Kafka records as the sink does, close one's case; GET reads it all back."""
    form = {"service_code": "drainage_blockage", "lat": "27.8307", "long": "113.1402", "account_id": "u-7"}

    async def post(client):
        ids = []
        for code in ("drainage_blockage", "garbage"):
            response = await client.post("/open311/v2/requests.json", data={**form, "service_code": code}, headers={"X-API-Key": APP_KEY})
            ids.append((await response.json())[0]["service_request_id"])
        return ids

    done, new = serve(build_app(gw_settings, publisher, keys, Clock()), post)
    ch = gw_settings.clickhouse
    admin = ServerEngine(ch.host, ch.port, user=ch.admin_user, password=ch.admin_password.value)
    rows = RowMaker(publisher.serde, PersonalDataHasher(gw_settings.pii_hmac_key), Topics.with_prefix(gw_settings.topic_prefix),
                    Senders(lambda: keys, gw_settings.record_signing_key.value))
    stored = [rows.row(Position(m.topic(), m.partition(), m.offset()), m.key(), m.value(), m.timestamp()[1], 0, m.headers()).values
              for m in topic_messages(gw_settings, publisher, "app") if publisher.serde.decode(m.value()).record["event"][1]["report_id"] in (done, new)]
    admin.insert(f"{ch.database}.raw_events", RAW_COLUMNS, stored * 2)  # a redelivered batch: every row twice
    admin.insert(f"{ch.database}.case_events", CASE_EVENT_COLUMNS, case_events("C-1", [("opened", f"app:resident-app:{done}", "G-1"),
                 ("dispatched", None, "DEP-WATER"), ("resolved", None, "DEP-WATER"), ("closed", None, "DEP-WATER")]))
    admin.close()

    async def scenario(client):
        answers = []
        for path in (f"/open311/v2/requests.json?service_request_id={done},{new}", "/open311/v2/requests.json?status=closed",
                     "/open311/v2/requests.json?service_code=garbage", "/open311/v2/requests/o311-unknown.json",
                     "/open311/v2/requests.json?start_date=2025-01-01T00:00:00Z"):
            response = await client.get(path, headers={"X-API-Key": APP_KEY})
            answers.append((response.status, await response.json()))
        return answers

    by_ids, closed, garbage, unknown, too_long = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    statuses = {r["service_request_id"]: (r["status"], r["status_notes"], r["agency_responsible"]) for r in by_ids[1]}
    assert by_ids[0] == 200 and statuses == {done: ("closed", "closed", "清河区水务局"), new: ("open", "received", None)}
    closed_request = next(r for r in by_ids[1] if r["service_request_id"] == done)
    assert (closed_request["requested_datetime"], closed_request["updated_datetime"]) == ("2025-06-12T08:00:00Z", "2025-06-12T12:00:00Z")
    assert [r["service_request_id"] for r in closed[1]] == [done]
    assert [r["service_request_id"] for r in garbage[1]] == [new]
    assert unknown[0] == 404 and too_long[0] == 400 and too_long[1][0]["field"] == "end_date"


def case_events(case_id: str, events: list[tuple[str, str | None, str]]) -> list[tuple]:
    """case_events rows (CASE_EVENT_COLUMNS) of one case: (kind, report id, assignee) each, an hour apart from NOW."""
    start_ms = int(NOW.timestamp() * 1000)
    return [(f"{case_id}:{seq}", case_id, seq, kind, start_ms + seq * 3_600_000, "cause", None, unit, "department", "garbage", "urgent",
             "D01", None, None, None, None, "app", report, None, None, None, "v1", "", "", "whistle.cases.events", 0, seq, 0)
            for seq, (kind, report, unit) in enumerate(events, start=1)]


def test_the_status_query_gives_the_same_answers_on_clickhouse_18_and_modern(engine, database):
    migrate(engine, database)
    serde, topics, hasher = Serde(default_catalog()), Topics(), PersonalDataHasher("test-key")
    rows = RowMaker(serde, hasher, topics, Senders.from_settings(Settings(), load_reference()))
    signers = Signers(Settings())

    def stored(report_id, code, offset, sender="resident-app", signer=None):
        record = open311.app_event({"service_code": code, "lat": "27.83", "long": "113.14", "device_id": "d-1", "address_string": "建设北路"},
                                   report_id=report_id, received_at=NOW, hasher=hasher, jurisdiction_id="D01",
                                   gazetteer=load_reference().gazetteer, validate=lambda r: serde.validate("AppEvent", r))
        value = serde.encode("AppEvent", record)
        headers = (signer or signers(sender)).headers(topics.app, report_id.encode(), value)
        return rows.row(Position(topics.app, 0, offset), report_id.encode(), value, 0, 0, headers).values

    forged = RecordSigner("resident-app", 1, b"not-its-secret")
    engine.insert(f"{database}.raw_events", RAW_COLUMNS, [stored("o311-a", "garbage", 0), stored("o311-a", "garbage", 0),
                                                          stored("o311-b", "garbage", 1), stored("o311-c", "noise", 2),
                                                          stored("o311-a", "garbage", 3, sender="hotline-12345"),  # another sender's own id
                                                          stored("o311-f", "garbage", 4, signer=forged)])
    engine.insert(f"{database}.case_events", CASE_EVENT_COLUMNS, case_events("C-1", [
        ("opened", "app:resident-app:o311-a", "G-1"), ("report_merged", "app:resident-app:o311-b", "G-1"), ("accepted", None, "G-1"),
        ("closed", None, "G-1")]))

    def found(**params):
        query = open311.request_query(params, now=NOW + timedelta(days=1), service_codes=default_catalog().categories)
        return [(p.report_id, p.sender, p.case_id, p.own_kind, p.last_kind, p.address_text) for p in find_requests(engine, database, query)]

    assert found(status="closed") == [("o311-a", "resident-app", "C-1", "opened", "closed", "建设北路"),
                                      ("o311-b", "resident-app", "C-1", "report_merged", "closed", "建设北路")]
    # the same id sent by another integrator is another report: not in resident-app's case; a forged record is nobody's
    assert found(status="open") == [("o311-a", "hotline-12345", None, None, None, "建设北路"), ("o311-c", "resident-app", None, None, None, "建设北路")]
    assert found(service_request_id="o311-b,o311-x") == [("o311-b", "resident-app", "C-1", "report_merged", "closed", "建设北路")]
    assert found(service_request_id="o311-f") == []
    assert found(service_code="noise", end_date="2025-06-11T00:00:00Z") == []
    assert {p.reporter_hash for p in find_requests(engine, database, open311.request_query(
        {"service_request_id": "o311-a"}, now=NOW, service_codes=default_catalog().categories))} == {hasher.reporter(
        open311.feedback({"rating": "1", "device_id": "d-1"}, hasher).pseudonym)}  # the stored hash is the feedback check's


def test_the_access_log_names_the_integrator_but_never_keys_or_phone_numbers(gw_settings, publisher, keys, caplog):
    call = ticket()

    async def scenario(client):
        await client.post("/v1/hotline/tickets", json=call, headers={"X-API-Key": HOTLINE_KEY})
        await client.post("/v1/hotline/tickets", json={**call, "caller_phone": "call me"}, headers={"X-API-Key": HOTLINE_KEY})

    with caplog.at_level(logging.INFO, logger="whistle.edges.gateway.access"):
        serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    lines = [orjson.loads(record.getMessage()) for record in caplog.records if record.name == "whistle.edges.gateway.access"]
    assert [(line["status"], line["integrator"], line.get("event_id")) for line in lines] == [
        (202, "hotline-12345", call["ticket_id"]), (400, "hotline-12345", None)]
    assert lines[1]["invalid"] == ["caller_phone"]
    assert not any(secret in caplog.text for secret in (HOTLINE_KEY, "13812345678", "1234 5678", "call me"))


def test_the_example_key_file_loads_and_a_bad_entry_is_named(tmp_path):
    example = load_credentials(PROJECT_ROOT / "infra" / "gateway-keys.example.yaml", load_reference())
    assert {key.integrator: sorted(key.sources) for key in example.by_sha256.values()} == {
        "camera-platform": ["camera"], "hotline-12345": ["hotline"], "resident-app": ["app"], "district-command": [],
        "oversight-offices": [], "office-s01": []}
    bad = tmp_path / "keys.yaml"
    bad.write_text("keys:\n  - {integrator: cams, sha256: abc, sources: [camera], rate_per_second: 1, burst: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_credentials(bad, load_reference())
    assert caught.value.context["field"] == "keys[0].sha256"


# ---------------------------------------------------------------------------------------------- hostile integrators

HOSTILE_IDS = {"60,000 characters": "x" * 60_000, "NUL": "det\x00-1", "ANSI escape": "det-\x1b[31mred", "RTL override": "det-\u202egnp.exe",
               "space": "det 1", "non-ASCII": "det-é"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_hostile_camera_and_hotline_records_get_400_naming_the_field(gw_settings, publisher, keys):
    camera = [(detection(detected_at="0001-01-01T00:00:00+08:00"), "detected_at"), (detection(detected_at="0001-01-01T00:00:00Z"), "detected_at"),
              (detection(detected_at="9999-12-31T23:59:59-08:00"), "detected_at"), (detection(detected_at="9999-12-31T23:59:59Z"), "detected_at"),
              ({k: v for k, v in detection().items() if k != "lon"}, "lon"), (detection(lon=None), "lon"), (detection(lat=None), "lat")]
    camera += [(detection(detection_id=bad), "detection_id") for bad in HOSTILE_IDS.values()]
    hotline = [(ticket(ticket_id=bad), "ticket_id") for bad in HOSTILE_IDS.values()] + [(ticket(received_at="0001-01-01T00:00:00+14:00"), "received_at")]

    async def scenario(client):
        answers = []
        for path, key, cases in (("/v1/camera/detections", CAMERA_KEY, camera), ("/v1/hotline/tickets", HOTLINE_KEY, hotline)):
            for body, _ in cases:
                response = await client.post(path, json=body, headers={"X-API-Key": key})
                answers.append((response.status, [e["field"] for e in (await response.json())["errors"]]))
        return answers

    answers = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    assert answers == [(400, [field]) for _, field in camera + hotline]
    stored = {r["detection_id"] for r in topic_records(gw_settings, publisher, "camera")}
    assert not stored & {body["detection_id"] for body, _ in camera}


def test_a_camera_record_with_lat_and_no_lon_is_refused_by_the_serializer_the_worker_uses_too(gw_settings, publisher):
    """The pairing rule is in the schema (x-paired-with): the worker's decode dead-letters such a record (written by an
    old producer, around the serializer) before normalize sees it, naming the field the gateway names."""
    serde = publisher.serde
    lone = serde.validate("CameraDetection", detection())
    lone["lon"] = None
    value = serde.encode("CameraDetection", lone, validate=False)
    topics = Topics.with_prefix(gw_settings.topic_prefix)
    ingestor = Ingestor(serde, load_reference(), PersonalDataHasher(gw_settings.pii_hmac_key), topics,
                        Senders.from_settings(gw_settings, load_reference()))
    signed = Signers(gw_settings)("camera-platform").headers("whistle.raw.camera", b"k", value)
    output = ingestor.process(Position(topics.camera, 0, 7), b"k", value, utc_now(), headers=signed)
    letter = serde.decode(output.value).record
    assert output.topic == topics.deadletter and (letter["stage"], letter["field"]) == ("validate", "lon")
    assert "lon: is required when lat is given" in letter["error_message"]


def test_hostile_open311_requests_get_400_naming_the_field(gw_settings, publisher, keys):
    form = "service_code=garbage&lat=27.83&long=113.14&account_id=u-1"
    posts = [(b"description=%ff%fe&" + form.encode(), "application/x-www-form-urlencoded", "description"),
             (b"description=\xff\xfe&" + form.encode(), "application/x-www-form-urlencoded", "body"),
             (form.encode(), "application/x-www-form-urlencoded; charset=klingon", "body"),
             (b"description=\xff&" + form.encode(), "application/x-www-form-urlencoded; charset=ascii", "body"),
             (b"lat=27.83&service_code=garbage&account_id=u-1", "application/x-www-form-urlencoded", "long")]
    gets = [("/open311/v2/requests.json?start_date=0001-01-01T00:00:00%2B14:00", "start_date"),
            ("/open311/v2/requests.json?end_date=0001-01-01T00:00:00Z", "end_date"),
            ("/open311/v2/requests.json?end_date=9999-12-31T23:59:59-12:00", "end_date"),
            ("/open311/v2/requests.json?start_date=9999-12-31T23:59:59Z", "start_date"),
            ("/open311/v2/requests.json?service_request_id=o311-a,%00%1b[31m", "service_request_id"),
            ("/open311/v2/requests/%E2%80%AEo311.json", "service_request_id"),
            (f"/open311/v2/requests/{'x' * 200}.json", "service_request_id")]

    async def scenario(client):
        answers = []
        for body, content_type, _ in posts:
            response = await client.post("/open311/v2/requests.json", data=body, headers={"X-API-Key": APP_KEY, "Content-Type": content_type})
            body = await response.json()
            answers.append((response.status, [p.get("field", p) for p in body] if isinstance(body, list) else body))
        for path, _ in gets:
            response = await client.get(path, headers={"X-API-Key": APP_KEY})
            body = await response.json()
            answers.append((response.status, [p.get("field", p) for p in body] if isinstance(body, list) else body))
        upload = await client.post("/open311/v2/requests.json", headers={"X-API-Key": APP_KEY},
                                   data={"service_code": "garbage", "lat": "27.83", "long": "113.14", "account_id": "u-1",
                                         "first_name": io.BytesIO(b"\x00\x01")})
        answers.append((upload.status, [p["field"] for p in await upload.json()]))
        return answers

    answers = serve(build_app(gw_settings, publisher, keys, Clock()), scenario)
    assert answers == [(400, [field]) for *_, field in posts] + [(400, [field]) for _, field in gets] + [(400, ["first_name"])]


def test_while_kafka_is_unreachable_every_request_is_answered_503_within_the_configured_bound(gw_settings, keys):
    unreachable = dataclasses.replace(gw_settings, kafka=dataclasses.replace(gw_settings.kafka, bootstrap_servers=f"127.0.0.1:{closed_port()}"))
    assert unreachable.gateway_kafka_timeout_s == 2.0  # the default

    async def scenario(client):
        async def one(n):
            started = time.monotonic()
            response = await client.post("/v1/camera/detections", json=detection(), headers={"X-API-Key": CAMERA_KEY})
            return response.status, response.headers.get("Retry-After"), time.monotonic() - started

        single = await one(0)
        crowd = await asyncio.gather(*(one(n) for n in range(50)))
        return single, crowd

    with gateway_publisher(unreachable) as dead:
        assert dead.delivery_timeout_s == 2.0
        started = time.monotonic()
        single, crowd = serve(build_app(unreachable, dead, keys, Clock()), scenario)
        total = time.monotonic() - started
    print(f"time to 503 with Kafka down: {single[2]:.2f} s; 50 concurrent: max {max(c[2] for c in crowd):.2f} s; total {total:.2f} s")
    assert single[:2] == (503, "1") and 1.5 <= single[2] < 3.0
    assert {(status, retry) for status, retry, _ in crowd} == {(503, "1")} and max(elapsed for *_, elapsed in crowd) < 3.0

    shorter = dataclasses.replace(unreachable, gateway_kafka_timeout_s=0.5)
    with gateway_publisher(shorter) as dead:
        (status, _, elapsed), _ = serve(build_app(shorter, dead, keys, Clock()), scenario)
    assert status == 503 and elapsed < 1.5


# ---------------------------------------------------------------------------------------------- identity from the key

CHAIN = "G-S01-C01-001@grid>C-S01-01@community>S01@street>DEP-URBAN@department>SUP@supervision>DIS@discipline"


def post_actions(gw_settings, publisher, keys, case_id: str, calls: list[tuple[str, dict]]) -> list[tuple[int, object]]:
    async def scenario(client):
        answers = []
        for key, body in calls:
            response = await client.post(f"/v1/cases/{case_id}/actions", json=body, headers={"X-API-Key": key})
            answers.append((response.status, await response.json()))
        return answers

    return serve(build_app(gw_settings, publisher, keys, Clock()), scenario)


def action(**fields):
    return {"action_id": f"act-{uuid.uuid4().hex[:12]}", "kind": "accept", **fields}


def published_actions(gw_settings, publisher, action_ids) -> dict[str, tuple[dict, dict]]:
    """action id -> (the HandlingAction on the app topic, its headers)."""
    found = {}
    for message in topic_messages(gw_settings, publisher, "app"):
        branch, record = publisher.serde.decode(message.value()).record["event"]
        if branch.endswith("HandlingAction") and record["action_id"] in action_ids:
            found[record["action_id"]] = (record, dict(message.headers() or ()))
    return found


def test_a_handling_action_acts_as_the_keys_unit_at_the_gateways_time(gw_settings, publisher, keys):
    """The unit comes from the key (its unit, or one under it), the time from the gateway's clock, the sender from the
    key's integrator, signed as the worker will verify it; a body naming who or when is refused, not believed."""
    case_id = "S01-20250612-a0a0a0a0a0"
    by_grid, for_grid, by_return_visit = action(), action(unit_id=GRID), action(kind="rate", rating=4)
    answers = post_actions(gw_settings, publisher, keys, case_id, [
        (GRID_KEY, by_grid), (OFFICE_KEY, for_grid), (HOTLINE_KEY, by_return_visit),
        (GRID_KEY, action(at="2020-01-01T00:00:00Z")), (GRID_KEY, action(actor="office-s01")),
        (OFFICE_KEY, action(unit_id="S02")), (GRID_KEY, action(unit_id="S01")), (OFFICE_KEY, action()),
        (OFFICE_KEY, action(kind="rate", rating=5, unit_id=GRID)), (CAMERA_KEY, action()), (APP_KEY, action(kind="rate", rating=5)),
        ("guessed", action())])
    statuses = [(status, body["errors"][0]["field"] if status != 202 else None) for status, body in answers]
    assert statuses == [(202, None), (202, None), (202, None), (400, "at"), (400, "actor"), (403, "unit_id"), (403, "unit_id"),
                        (400, "unit_id"), (403, "kind"), (403, "kind"), (403, "report_id"), (401, "X-API-Key")]
    assert "a unit never rates or reopens" in answers[8][1]["errors"][0]["message"]
    found = published_actions(gw_settings, publisher, {by_grid["action_id"], for_grid["action_id"], by_return_visit["action_id"]})
    assert {a: (r["unit_id"], r["case_id"], r["at"]) for a, (r, _) in found.items()} == {
        by_grid["action_id"]: (GRID, case_id, NOW), for_grid["action_id"]: (GRID, case_id, NOW),
        by_return_visit["action_id"]: ("return_visit", case_id, NOW)}
    assert [found[a][1]["whistle-integrator"] for a in (by_grid["action_id"], by_return_visit["action_id"])] == [b"grid-team", b"hotline-12345"]
    for message in topic_messages(gw_settings, publisher, "app"):
        if dict(message.headers() or ()).get("whistle-integrator") == b"grid-team":
            assert verify_sender(keys, gw_settings.record_signing_key.value, "whistle.raw.app", message.key(), message.value(),
                                 message.headers()).integrator == "grid-team"
            with pytest.raises(AuthError):  # the negative control: the same signature on other bytes
                verify_sender(keys, gw_settings.record_signing_key.value, "whistle.raw.app", message.key(), message.value() + b"x",
                              message.headers())


def test_the_return_visits_result_is_rated_as_the_reference_data_says(gw_settings, publisher, keys):
    """回访 as 12345 records it (满意 / 基本满意 / 不满意) becomes the rating of hotline.yaml; an unknown result, a result with a
    rating, or a result from a key that is not the return visit is refused naming the field."""
    case_id = "S01-20250612-c2c2c2c2c2"
    visit = action(kind="rate", return_visit_result="基本满意")
    answers = post_actions(gw_settings, publisher, keys, case_id, [
        (HOTLINE_KEY, visit), (HOTLINE_KEY, action(kind="rate", return_visit_result="还行")),
        (HOTLINE_KEY, action(kind="rate", rating=5, return_visit_result="满意")), (APP_KEY, action(kind="rate", return_visit_result="满意"))])
    statuses = [(status, body["errors"][0]["field"] if status != 202 else None) for status, body in answers]
    assert statuses == [(202, None), (400, "return_visit_result"), (400, "return_visit_result"), (403, "return_visit_result")]
    assert "'还行'" in answers[1][1]["errors"][0]["message"]
    record, _ = published_actions(gw_settings, publisher, {visit["action_id"]})[visit["action_id"]]
    assert (record["rating"], record["note"], record["unit_id"]) == (4, "回访: 基本满意", "return_visit")


def test_superiors_decide_extensions_and_returns_name_a_unit_through_the_same_endpoint(gw_settings, publisher, keys):
    """The offices' kinds: a community (acting through its street office's key) approves or denies its grid's
    extension, the grid resumes after waiting on the resident and returns a case naming the unit it believes
    responsible; a grid's key cannot approve as the community above it."""
    case_id = "S01-20250612-d3d3d3d3d3"
    community = "C-S01-01"
    approve = action(kind="approve_extension", unit_id=community, extension_hours=48, reason="two days are enough")
    deny, resume = action(kind="deny_extension", unit_id=community, reason="no"), action(kind="resume")
    transfer = action(kind="transfer", reason="the drain is on the S02 side", target_unit_id="G-S02-C01-003")
    answers = post_actions(gw_settings, publisher, keys, case_id, [
        (OFFICE_KEY, approve), (OFFICE_KEY, deny), (GRID_KEY, resume), (GRID_KEY, transfer),
        (GRID_KEY, action(kind="approve_extension", unit_id=community, extension_hours=48)), (OFFICE_KEY, action(kind="approve_extension", unit_id=community))])
    assert [(status, None if status == 202 else body["errors"][0]["field"]) for status, body in answers] == [
        (202, None), (202, None), (202, None), (202, None), (403, "unit_id"), (400, "extension_hours")]
    found = published_actions(gw_settings, publisher, {a["action_id"] for a in (approve, deny, resume, transfer)})
    assert {record["kind"]: (record["unit_id"], record["extension_hours"], record["target_unit_id"]) for record, _ in found.values()} == {
        "approve_extension": (community, 48, None), "deny_extension": (community, None, None), "resume": (GRID, None, None),
        "transfer": (GRID, None, "G-S02-C01-003")}


def test_a_case_the_store_knows_refuses_a_unit_on_none_of_its_chains(gw_settings, publisher, keys):
    case_id = "S01-20250612-b1b1b1b1b1"
    rows = case_events(case_id, [("opened", "camera:camera-platform:d-1", GRID), ("dispatched", None, GRID)])
    note = CASE_EVENT_COLUMNS.index("note")
    rows[0] = rows[0][:note] + (CHAIN,) + rows[0][note + 1:]
    ch = gw_settings.clickhouse
    admin = ServerEngine(ch.host, ch.port, user=ch.admin_user, password=ch.admin_password.value)
    admin.insert(f"{ch.database}.case_events", CASE_EVENT_COLUMNS, rows)
    admin.close()
    answers = post_actions(gw_settings, publisher, keys, case_id, [
        (OFFICE_KEY, action(unit_id="G-S01-C01-002")), (OFFICE_KEY, action(unit_id=GRID)), (OFFICE_KEY, action(unit_id="S01"))])
    assert [status for status, _ in answers] == [403, 202, 202]
    assert "G-S01-C01-002 is on none of case" in answers[0][1]["errors"][0]["message"]


def _stored_request(gw_settings, publisher, keys, report_id: str, case_id: str | None) -> None:
    """The sink's rows for an Open311 request already on Kafka, and (when given) the case it opened."""
    ch = gw_settings.clickhouse
    admin = ServerEngine(ch.host, ch.port, user=ch.admin_user, password=ch.admin_password.value)
    rows = RowMaker(publisher.serde, PersonalDataHasher(gw_settings.pii_hmac_key), Topics.with_prefix(gw_settings.topic_prefix),
                    Senders(lambda: keys, gw_settings.record_signing_key.value))
    stored = [rows.row(Position(m.topic(), m.partition(), m.offset()), m.key(), m.value(), m.timestamp()[1], 0, m.headers()).values
              for m in topic_messages(gw_settings, publisher, "app")
              if publisher.serde.decode(m.value()).record["event"][1].get("report_id") == report_id]
    admin.insert(f"{ch.database}.raw_events", RAW_COLUMNS, stored)
    if case_id:
        admin.insert(f"{ch.database}.case_events", CASE_EVENT_COLUMNS, case_events(case_id, [
            ("opened", f"app:resident-app:{report_id}", GRID), ("accepted", None, GRID), ("resolved", None, GRID)]))
    admin.close()


def test_the_reporter_rates_through_their_own_request_and_nobody_else_can(gw_settings, publisher, keys):
    form = {"service_code": "garbage", "lat": "28.2105", "long": "113.0860", "email": "zhang.san@example.cn", "description": "垃圾没清"}

    async def file(client, **more):
        response = await client.post("/open311/v2/requests.json", data={**form, **more}, headers={"X-API-Key": APP_KEY})
        return (await response.json())[0]["service_request_id"]

    async def filed(client):
        return await file(client), await file(client, description="还有一堆")

    rated_id, not_yet_a_case = serve(build_app(gw_settings, publisher, keys, Clock()), filed)
    case_id = "S01-20250612-c2c2c2c2c2"
    _stored_request(gw_settings, publisher, keys, rated_id, case_id)
    _stored_request(gw_settings, publisher, keys, not_yet_a_case, None)

    async def feedback(client):
        answers = []
        for key, request_id, fields in ((APP_KEY, rated_id, {"rating": "2", "email": "ZHANG.SAN@example.cn", "description": "又脏了"}),
                                        (APP_KEY, rated_id, {"rating": "5", "email": "someone.else@example.cn"}),
                                        (OTHER_APP_KEY, rated_id, {"rating": "5", "email": "zhang.san@example.cn"}),
                                        (APP_KEY, not_yet_a_case, {"rating": "4", "email": "zhang.san@example.cn"}),
                                        (APP_KEY, rated_id, {"rating": "9", "email": "zhang.san@example.cn"})):
            response = await client.post(f"/open311/v2/requests/{request_id}/feedback.json", data=fields,
                                         headers={"X-API-Key": key, "Idempotency-Key": f"fb-{uuid.uuid4().hex[:8]}"})
            answers.append((response.status, await response.json()))
        return answers

    answers = serve(build_app(gw_settings, publisher, keys, Clock()), feedback)
    assert [status for status, _ in answers] == [202, 403, 404, 409, 400]
    rating = published_actions(gw_settings, publisher, {answers[0][1]["action_id"]})[answers[0][1]["action_id"]][0]
    assert (rating["kind"], rating["case_id"], rating["rating"], rating["unit_id"], rating["report_id"], rating["note"]) == (
        "rate", case_id, 2, "reporter", f"app:resident-app:{rated_id}", "又脏了")


def test_open311_get_shows_its_filer_everything_and_anyone_else_the_public_fields(gw_settings, publisher, keys):
    form = {"service_code": "garbage", "lat": "28.210512", "long": "113.086034", "phone": "13812345678",
            "description": "请回电 138 1234 5678 张三", "address_string": "建设路19号3栋401"}

    async def file(client):
        response = await client.post("/open311/v2/requests.json", data=form, headers={"X-API-Key": APP_KEY})
        return (await response.json())[0]["service_request_id"]

    request_id = serve(build_app(gw_settings, publisher, keys, Clock()), file)
    _stored_request(gw_settings, publisher, keys, request_id, None)

    async def read(client):
        answers = []
        for headers in ({"X-API-Key": APP_KEY}, {"X-API-Key": OTHER_APP_KEY}, {}, {"X-API-Key": "guessed"}):
            response = await client.get(f"/open311/v2/requests/{request_id}.json", headers=headers)
            answers.append((response.status, await response.json()))
        listed = await client.get(f"/open311/v2/requests.json?service_request_id={request_id}")
        answers.append((listed.status, await listed.json()))
        return answers

    own, other, public, guessed, listed = serve(build_app(gw_settings, publisher, keys, Clock()), read)
    assert own[0] == 200 and own[1][0]["description"] == "请回电 138 1234 5678 张三" and own[1][0]["address"] == "建设路19号3栋401"
    for status, body in (other, public, listed):
        assert status == 200 and set(body[0]) == set(open311.PUBLIC_FIELDS)
        assert (body[0]["service_request_id"], body[0]["lat"], body[0]["long"]) == (request_id, 28.211, 113.086)
        assert "1234" not in orjson.dumps(body).decode() and "3栋" not in orjson.dumps(body).decode()
    assert guessed[0] == 401  # a wrong key is refused, not taken for the public
