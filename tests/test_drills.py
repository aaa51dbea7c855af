"""Fault drills: the whole pipeline (worker and sink processes, real Kafka, real ClickHouse) under load while
something breaks. After each drill `audit verify` passes (every record in ClickHouse exactly once, hash chains
intact) and the breaches equal those of the fault-free run.

The fault-free run is the pure pipeline (Ingestor + CaseProcessor) applied in-process to the same records
and the same clock tick. The load is resident reports at distinct places sharing one event time, so that no
decision depends on how Kafka interleaves partitions; the clock tick comes once every report is a case.
"""
from __future__ import annotations

import dataclasses
import math
import random
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from conftest import PORT_BASE, make_test_settings

from infra.processes import spawn, wait_until
from infra.provision import provision_all
from infra.stack import LocalStack
from schemas.serde import Serde
from sinks import audit
from sinks.clickhouse import ServerEngine
from streams.domain.calendar import load_calendar
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.pipeline import CaseProcessor, Ingestor, Senders, partition_for_key
from whistle.devtools.bench.events import emergency_accept_limit
from whistle.devtools.bench.report import TARGETS
from whistle.devtools.feed import Signers
from whistle.devtools.harness import Pipeline, read_all, sink_caught_up, spawn_worker, wait_for_group
from whistle.devtools.simulate import CHANNEL_INTEGRATORS
from whistle.edges.clock import tick_value, write_ticks
from whistle.edges.sdk import Publisher
from whistle.ground.deadletter import Position
from whistle.ground.errors import StackError
from whistle.ground.names import Groups, Topics
from whistle.ground.times import to_epoch_ms, utc_now

pytestmark = pytest.mark.drill

REPORTED_AT = datetime(2026, 11, 2, 1, 30, tzinfo=UTC)  # Monday 09:30 in the city
JUDGED_AT = REPORTED_AT + timedelta(days=3)
MERGE_CLEARANCE_KM = 0.3  # reports of one category merge within 250 m
REPORTS = 400
TRANSIENT = (KafkaException, StackError)  # while a broker restarts, metadata reads fail for a moment


def drill_reports(count: int = REPORTS) -> list[dict]:
    """Resident reports at grid centres, the same category never within 300 m of another (so none merge)."""
    reference = load_reference()
    categories = sorted(reference.categories)
    rng = random.Random(11)
    grids = sorted(reference.grids.values(), key=lambda g: g.grid_id)
    placed: dict[str, list[tuple[float, float]]] = {c: [] for c in categories}
    records = []
    for _ in range(50):
        for grid in grids:
            corners = grid.ring[:-1]  # (lon, lat), closed
            lon = sum(p[0] for p in corners) / len(corners)
            lat = sum(p[1] for p in corners) / len(corners)
            category = rng.choice(categories)
            if any(math.dist((lat * 111.0, lon * 98.0), (a * 111.0, b * 98.0)) < MERGE_CLEARANCE_KM for a, b in placed[category]):
                continue
            placed[category].append((lat, lon))
            records.append({"event": ("org.whistle.v1.ResidentReport", {
                "report_id": f"drill-{len(records):05d}", "reporter_id": f"u-{len(records)}", "reporter_role": "resident",
                "reported_at": REPORTED_AT, "lat": lat, "lon": lon, "category": category, "description": "drill",
                "photo_refs": []})})
            if len(records) == count:
                return records
    raise AssertionError(f"only {len(records)} non-merging places")


def expected_breaches(settings, records: list[dict]) -> set[str]:
    """The fault-free run: the same records and the same tick through the pure pipeline, in-process."""
    serde, topics = Serde(), Topics.with_prefix(settings.topic_prefix)
    reference = load_reference()
    ingest = Ingestor(serde, reference, PersonalDataHasher(settings.pii_hmac_key), topics, Senders.from_settings(settings, reference))
    signer = Signers(settings)(CHANNEL_INTEGRATORS["app"])
    cases = CaseProcessor(serde, reference, load_policies(), load_calendar(), topics, 6)
    breach_ids = set()
    offsets = [0] * 6

    def apply(partition: int, value: bytes) -> None:
        outputs, _ = cases.process(Position(topics.inbox, partition, offsets[partition]), None, value, JUDGED_AT)
        offsets[partition] += 1
        for out in outputs:
            assert out.topic != topics.deadletter, out
            if out.topic == topics.breaches:
                breach_ids.add(serde.decode(out.value).record["breach_id"])

    for offset, record in enumerate(records):
        value = serde.encode("AppEvent", record)
        routed = ingest.process(Position(topics.app, 0, offset), None, value, REPORTED_AT, headers=signer.headers(Topics().app, None, value))
        apply(partition_for_key(routed.key.decode(), 6), routed.value)
    for partition in range(6):
        apply(partition, tick_value(serde, partition, JUDGED_AT))
    return breach_ids


def run_drill(settings, tmp_path, fault, records: list[dict] | None = None, send_seconds: float = 8.0) -> Pipeline:
    """Start the pipeline, send the load while `fault(pipeline)` runs, judge, and check the outcome."""
    records = records or drill_reports()
    topics = Topics.with_prefix(settings.topic_prefix)
    pipeline = Pipeline(settings, tmp_path / "logs")
    try:
        pipeline.wait_ready()
        sent = threading.Event()

        def send() -> None:
            signer = Signers(settings)(CHANNEL_INTEGRATORS["app"])
            with Publisher(settings, delivery_timeout_s=120) as publisher:
                futures = []
                for record in records:
                    futures.append(publisher.submit("app", record, signer=signer))
                    time.sleep(send_seconds / len(records))
                for future in futures:
                    future.result(timeout=180)
            sent.set()

        sender = threading.Thread(target=send)
        sender.start()
        fault(pipeline)
        sender.join(240)
        assert sent.is_set(), "the load was not acknowledged"

        def all_cases_open() -> bool:
            pipeline.supervise()
            opened = {r.key() for r in read_all(settings, [topics.case_events], timeout_s=60)}
            return len(opened) == len(records)

        wait_until(all_cases_open, 180, "every report to open its case", 2.0, TRANSIENT)
        with Publisher(settings) as publisher:
            write_ticks(publisher, publisher.serde, topics, 6, JUDGED_AT)
        expected = expected_breaches(settings, records)
        serde = Serde()

        def breaches_published() -> bool:
            pipeline.supervise()
            return {serde.decode(r.value()).record["breach_id"] for r in read_all(settings, [topics.breaches], timeout_s=60)} >= expected

        wait_until(breaches_published, 180, f"{len(expected)} breaches", 2.0, TRANSIENT)
        wait_until(lambda: pipeline.supervise() or sink_caught_up(settings), 180, "the sink to store every record", 1.0, TRANSIENT)
        engine = ServerEngine.from_settings(settings.clickhouse)
        try:
            assert audit.verify(engine, settings.clickhouse.database) == []
            stored = {row[0] for row in engine.execute(f"SELECT breach_id FROM {settings.clickhouse.database}.breaches FINAL")}
            raw = engine.execute(f"SELECT count() FROM {settings.clickhouse.database}.raw_events FINAL WHERE decode_error = ''")[0][0]
        finally:
            engine.close()
        published = {serde.decode(r.value()).record["breach_id"] for r in read_all(settings, [topics.breaches])}
        assert published == expected  # the set of breaches equals that of the fault-free run
        assert stored == expected
        assert raw == len(records)
        return pipeline
    finally:
        pipeline.stop()


def after_a_third(action):
    def fault(pipeline):
        time.sleep(2.5)
        action(pipeline)
    return fault


def test_fault_free_run_matches_the_pure_pipeline(isolated, tmp_path):
    run_drill(isolated, tmp_path, lambda pipeline: None)


def test_worker_killed_mid_stream_and_restarted(isolated, tmp_path):
    def kill_worker(pipeline):
        pipeline.worker.kill()
        time.sleep(1)
        pipeline.supervise()

    pipeline = run_drill(isolated, tmp_path, after_a_third(kill_worker))
    assert pipeline.restarts >= 1


def test_broker_restarted_under_load(isolated, tmp_path, local_stack):
    def restart_broker(pipeline):
        local_stack.stop_broker(1)
        time.sleep(3)
        local_stack.start_broker(1)
        local_stack.wait_kafka()

    run_drill(isolated, tmp_path, after_a_third(restart_broker))


def test_clickhouse_stopped_30s_under_load(isolated, tmp_path, local_stack):
    def stop_clickhouse(pipeline):
        local_stack.stop_clickhouse()
        time.sleep(30)
        local_stack.start_clickhouse()
        local_stack.wait_clickhouse()

    run_drill(isolated, tmp_path, after_a_third(stop_clickhouse))


def test_sink_killed_between_insert_and_commit(isolated, tmp_path):
    def kill_sink_after_an_insert(pipeline):
        log = pipeline.sink.log
        wait_until(lambda: "inserted" in log.read_text(errors="replace"), 30, "the sink's first insert", 0.05)
        pipeline.sink.kill()
        pipeline.supervise()

    run_drill(isolated, tmp_path, kill_sink_after_an_insert)


def test_malformed_messages_in_every_input_topic_are_dead_lettered(isolated, tmp_path):
    topics = Topics.with_prefix(isolated.topic_prefix)

    def inject(pipeline):
        sender = Signers(isolated)(CHANNEL_INTEGRATORS["camera"])  # a known sender, sending garbage: refused as undecodable
        with Publisher(isolated) as publisher:
            for topic in topics.sources:
                for poison in (b"", b"not avro at all", b"\xc3\x01" + b"\x00" * 8 + b"body", b"\x00\x00\x00\x00\x07garbage"):
                    headers = sender.headers(topic.removeprefix(isolated.topic_prefix), b"poison", poison)
                    publisher.produce_raw(topic, b"poison", poison, headers).result(timeout=30)

    run_drill(isolated, tmp_path, after_a_third(inject))
    letters = read_all(isolated, [topics.deadletter])
    assert len(letters) == 12
    for letter in letters:
        headers = dict(letter.headers())
        assert headers["whistle.original.topic"].decode() in topics.sources
        assert headers["whistle.error.stage"] == b"decode"


def test_verify_fails_on_a_deliberate_duplicate(isolated, tmp_path):
    """The negative control: the check the drills rely on can fail."""
    run_drill(isolated, tmp_path, lambda pipeline: None, records=drill_reports(40), send_seconds=1.0)
    engine = ServerEngine.from_settings(isolated.clickhouse)
    db = isolated.clickhouse.database
    try:
        engine.execute(f"INSERT INTO {db}.raw_events SELECT * FROM {db}.raw_events LIMIT 1")
        problems = audit.verify(engine, db)
    finally:
        engine.close()
    assert [p.check for p in problems] == ["offsets"]
    assert "duplicate" in problems[0].detail


@pytest.fixture(scope="module")
def cluster():
    """Three KRaft brokers (RF 3, min ISR 2, unclean election off) with their own ClickHouse, for leader drills."""
    base = make_test_settings()
    three = PORT_BASE + 1000
    stack_cfg = dataclasses.replace(base.stack, state_dir=base.stack.state_dir.parent / f"test-{PORT_BASE}-3b",
                                    kafka_port=three + 92, controller_port=three + 93, clickhouse_tcp_port=three,
                                    clickhouse_http_port=three + 123)
    settings = dataclasses.replace(base, stack=stack_cfg)
    stack = LocalStack(settings, brokers=3)
    stack.up()
    yield stack
    for node in (1, 2, 3):
        stack.stop_broker(node, sig=signal.SIGKILL)  # its data is wiped next: no controlled shutdown needed
    stack.down(wipe=True)


def test_partition_leader_killed_five_times_in_a_three_broker_cluster(cluster, tmp_path):
    tag = uuid.uuid4().hex[:8]
    kafka = dataclasses.replace(cluster.settings.kafka, bootstrap_servers=cluster.bootstrap_servers, replication_factor=3,
                                min_insync_replicas=2)
    clickhouse = dataclasses.replace(cluster.settings.clickhouse, port=cluster.cfg.clickhouse_tcp_port, database=f"t_{tag}", user="default")
    settings = dataclasses.replace(cluster.settings, kafka=kafka, clickhouse=clickhouse, topic_prefix=f"t{tag}.")
    provision_all(settings, cluster)
    loaded = Topics.with_prefix(settings.topic_prefix).app

    def kill_leaders(pipeline):
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers})
        for _ in range(5):
            leader = admin.list_topics(loaded, timeout=10).topics[loaded].partitions[0].leader
            cluster.stop_broker(leader, sig=signal.SIGKILL)
            time.sleep(2)
            cluster.start_broker(leader)
            cluster.wait_kafka()
            wait_until(lambda: all(len(p.isrs) == 3 for p in admin.list_topics(loaded, timeout=10).topics[loaded].partitions.values()),
                       60, "every replica back in sync", 0.5, TRANSIENT)

    run_drill(settings, tmp_path, kill_leaders, send_seconds=20.0)


# -- no single clock: two `whistle clock run`, one killed before a deadline ---------------------------

BREACH_BOUND_MS = TARGETS["breach_p99_ms"]  # a breach after its deadline: one tick interval (0.2 s) plus produce → consume → fire
CLOCK_LEAD = timedelta(seconds=20)  # the deadline after the report: time to open its case and start two clock processes
KILL_BEFORE = timedelta(seconds=2)  # the kill, before the deadline


def clock_breaches(settings, topics: Topics, serde: Serde) -> list[tuple[dict, int]]:
    """Every breach published so far, with its Kafka timestamp (epoch ms, stamped when the worker produced it)."""
    return [(serde.decode(r.value()).record, r.timestamp()[1]) for r in read_all(settings, [topics.breaches])]


@pytest.mark.parametrize("killed", [("clock-a",), ("clock-b",), ("clock-a", "clock-b")], ids=["a", "b", "both"])
def test_a_clock_killed_before_a_deadline_delays_no_breach(isolated, tmp_path, killed):
    """Two clocks tick in real time; `killed` are killed with -9 two seconds before an emergency's accept deadline.
    With one left, its ticks fire the breach within the bound after the deadline, in the case stream's time (the
    breach's `overdue_ms`) and on the wall clock (its Kafka timestamp). Negative control: with none left, none fires."""
    settings, topics, serde = isolated, Topics.with_prefix(isolated.topic_prefix), Serde()
    logs = tmp_path / "logs"
    processes = [spawn_worker(settings, "worker-1", logs)]
    try:
        wait_for_group(settings, Groups.with_prefix(settings.topic_prefix).cases, 1)
        now = utc_now().replace(microsecond=0)
        deadline = now + CLOCK_LEAD
        event, report = drill_reports(1)[0]["event"]
        record = {"event": (event, {**report, "category": "fire_smoke", "reported_at": deadline - emergency_accept_limit(now)})}
        with Publisher(settings) as publisher:
            publisher.submit("app", record, signer=Signers(settings)(CHANNEL_INTEGRATORS["app"])).result(timeout=60)
        wait_until(lambda: read_all(settings, [topics.case_events]) != [], 30, "the report to open its case", 0.5)
        clocks = {name: spawn(settings, name, ["clock", "run"], logs) for name in ("clock-a", "clock-b")}
        processes += clocks.values()
        kill_at = deadline - KILL_BEFORE
        wait_until(lambda: any(b["kind"] == "warning" for b, _ in clock_breaches(settings, topics, serde)),
                   (kill_at - utc_now()).total_seconds(), "a clock to tick (its first tick fires the case's warning)", 0.5)
        time.sleep(max(0.0, (kill_at - utc_now()).total_seconds()))
        for name in killed:
            clocks[name].kill()
        alive = [name for name in clocks if name not in killed]
        deadline_ms = int(deadline.timestamp() * 1000)

        def overdue() -> list[tuple[dict, int]]:
            return [(b, ts) for b, ts in clock_breaches(settings, topics, serde) if b["kind"] != "warning" and b["breach_type"] == "accept_overdue"]

        if not alive:  # negative control: wait out the bound (and a margin), then nothing has fired
            time.sleep(max(0.0, deadline_ms / 1000 + BREACH_BOUND_MS / 1000 + 2.0 - time.time()))
            assert overdue() == []
            return
        wait_until(lambda: overdue() != [], BREACH_BOUND_MS / 1000 + 30, "the accept breach", 0.2)
        [(breach, published_ms)] = overdue()
        print(f"\nkilled {killed}: breach {breach['overdue_ms']} ms after its deadline in case-stream time, "
              f"published {published_ms - deadline_ms} ms after it on the wall clock")
        assert to_epoch_ms(breach["deadline"]) == deadline_ms
        assert 0 <= breach["overdue_ms"] <= BREACH_BOUND_MS
        assert published_ms - deadline_ms <= BREACH_BOUND_MS
        assert all(clocks[name].alive() for name in alive)  # the tick that fired it came from a clock still running
    finally:
        for process in processes:
            process.stop()
