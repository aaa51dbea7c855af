"""The Kafka -> ClickHouse sink against the real Kafka broker and the real ClickHouse 18.16 server.

Every audited topic is fed as production feeds it: raw camera/hotline/app records through the SDK,
and the case events, breaches and dead letters that Whistle's workers derive from them (the pure
pipeline runs here, as a worker would, over a simulated district day). Each test has its own topic
prefix and database (`isolated`); stopping ClickHouse touches only this test run's own stack.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from infra.processes import wait_until
from schemas.serde import Serde
from sinks.audit import AUDITED_TABLES, Problem, verify
from sinks.clickhouse import ServerEngine
from sinks.migrator import migrate
from sinks.sink import build_sink
from streams.domain.calendar import load_calendar
from streams.domain.pii import PersonalDataHasher, normalize_phone
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.pipeline import CaseProcessor, Ingestor, Output, Senders, partition_for_key
from whistle.devtools.feed import Signers
from whistle.devtools.harness import committed_offsets, end_offsets, read_all
from whistle.devtools.simulate import SimConfig, SimEvent, simulate
from whistle.edges.clock import tick_value
from whistle.edges.sdk import Delivery, Publisher
from whistle.ground.deadletter import Position
from whistle.ground.errors import StoreError
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings

START = datetime(2025, 6, 8, 16, 0, tzinfo=UTC)  # Monday 2025-06-09 00:00 Beijing time, under SLA policy-v1
RAW_SCHEMAS = {"camera": "CameraDetection", "hotline": "HotlineTicket", "app": "AppEvent"}
CRASHING_SINK = Path(__file__).with_name("sink_crash.py")


class District:
    """A simulated district's traffic on the audited topics of `settings`.

    Raw records go through the SDK; the records Whistle's workers would derive from them (case
    events, breaches, dead letters) come from running the pure pipeline here on the real positions.
    """

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self.publisher, self.serde, self.topics = publisher, publisher.serde, Topics.with_prefix(settings.topic_prefix)
        reference = load_reference()
        self.ingestor = Ingestor(self.serde, reference, PersonalDataHasher(settings.pii_hmac_key), self.topics,
                                 Senders.from_settings(settings, reference))
        self.signers, self.prefix = Signers(settings), settings.topic_prefix
        self.cases = CaseProcessor(self.serde, reference, load_policies(), load_calendar(), self.topics, 6)
        self.inbox_offsets: Counter[int] = Counter()

    def publish_raw(self, events: list[SimEvent]) -> list[Output]:
        """Publish the raw records (acknowledged); return the case events, breaches and dead letters they lead to."""
        futures = [self.publisher.submit(event.source, self._raw_record(event), signer=self.signers(event.integrator)) for event in events]
        derived = []
        for event, future in zip(events, futures):
            where = future.result(timeout=30)
            value = self.serde.encode(RAW_SCHEMAS[event.source], self._raw_record(event))
            headers = self.signers(event.integrator).headers(where.topic.removeprefix(self.prefix), event.key.encode(), value)
            derived += self._derive(where, event.key.encode(), value, event.at, headers)
        return derived

    def publish_raw_bytes(self, source: str, key: str, value: bytes, at: datetime) -> list[Output]:
        """Bytes a faulty producer wrote to a raw topic, and what the workers make of them."""
        where = self.publisher.produce_raw(getattr(self.topics, source), key, value).result(timeout=30)
        return self._derive(where, key.encode(), value, at, ())

    def tick(self, at: datetime) -> list[Output]:
        """Clock ticks on every case-stream partition: deadlines due by `at` fire."""
        return [out for p in range(6) for out in self._case_stream(p, None, tick_value(self.serde, p, at), at)]

    def produce(self, outputs: list[Output], partition: int | None = None) -> list[Delivery]:
        futures = [self.publisher.produce_raw(o.topic, o.key, o.value, list(o.headers), partition=partition) for o in outputs]
        return [future.result(timeout=30) for future in futures]

    def send(self, events: list[SimEvent]) -> list[Delivery]:
        return self.produce(self.publish_raw(events))

    def _raw_record(self, event: SimEvent) -> dict:
        return event.record if event.source != "app" else {"event": (f"org.whistle.v1.{event.record_type}", event.record)}

    def _derive(self, where: Delivery, key: bytes, value: bytes, at: datetime, headers) -> list[Output]:
        routed = self.ingestor.process(Position(*where), key, value, at, headers=headers)
        if routed.topic != self.topics.inbox:
            return [routed]
        return self._case_stream(partition_for_key(routed.key.decode(), 6), routed.key, routed.value, at)

    def _case_stream(self, partition: int, key: bytes | None, value: bytes, at: datetime) -> list[Output]:
        outputs, _ = self.cases.process(Position(self.topics.inbox, partition, self.inbox_offsets[partition]), key, value, at)
        self.inbox_offsets[partition] += 1
        return outputs


class AnswerCuttingProxy:
    """A TCP relay to ClickHouse that lets one INSERT whose query text holds `marker` reach the server, then cuts
    the connection instead of passing the server's answer on: the rows are stored, the client sees the network fail."""

    def __init__(self, target_port: int, marker: bytes) -> None:
        self.target_port, self.marker, self.cuts = target_port, marker, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, server]
            insert = {"phase": "idle"}  # idle -> query sent -> sample block answered -> data sent -> (answer cut)
            threading.Thread(target=self._relay, args=(client, server, insert, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, insert, False), daemon=True).start()

    def _relay(self, source: socket.socket, target: socket.socket, insert: dict, upstream: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if upstream and not self.cuts and self.marker in chunk:
                    insert["phase"] = "query sent"
                elif upstream and insert["phase"] == "answered":
                    insert["phase"] = "data sent"
                elif not upstream and insert["phase"] == "query sent":
                    insert["phase"] = "answered"
                elif not upstream and insert["phase"] == "data sent":  # the server stored the block and answers: drop it
                    self.cuts += 1
                    insert["phase"] = "idle"
                    for sock in (source, target):
                        sock.shutdown(socket.SHUT_RDWR)
                    return
                target.sendall(chunk)
        except OSError:  # the other side went away
            pass


def district_day(incidents: int, seed: int = 5) -> list[SimEvent]:
    return list(simulate(load_reference(), SimConfig(seed=seed, start=START, days=1, incidents_per_day=incidents)))


@pytest.fixture
def district(isolated: Settings):
    with Publisher(isolated, serde=Serde.from_settings(isolated), delivery_timeout_s=20) as publisher:
        yield District(isolated, publisher)


@pytest.fixture
def store(isolated: Settings):
    """A reading connection to the test's database."""
    engine = ServerEngine.from_settings(isolated.clickhouse)
    yield engine
    engine.close()


def log_ends(settings: Settings) -> dict[tuple[str, int], int]:
    """Records on every non-empty partition of every audited topic."""
    return {(topic, p): end for topic in Topics.with_prefix(settings.topic_prefix).audited
            for p, end in end_offsets(settings, topic).items() if end}


def stored_rows(engine: ServerEngine, database: str) -> dict[tuple[str, int], int]:
    """Rows per Kafka topic/partition over the audit tables (duplicates counted)."""
    return {(topic, partition): rows for table in AUDITED_TABLES for topic, partition, rows in engine.execute(
        f"SELECT kafka_topic, kafka_partition, count() FROM {database}.{table} GROUP BY kafka_topic, kafka_partition")}


def committed(settings: Settings) -> dict[tuple[str, int], int]:
    group = Groups.with_prefix(settings.topic_prefix).sink
    return {(topic, p): offset for topic in Topics.with_prefix(settings.topic_prefix).audited
            for p, offset in committed_offsets(settings, group, topic).items() if offset >= 0}


def run_sink(settings: Settings) -> None:
    """A sink run over everything on the topics, in batches of 1,000 rows; it ends 4 s after the last record."""
    build_sink(settings, batch_rows=1000, batch_seconds=0.3).run(max_idle_s=4)


def sink_dead_letters(settings: Settings, serde: Serde) -> list[dict]:
    """Dead letters the sink wrote: of records on the derived topics, or of rows ClickHouse refused."""
    topics = Topics.with_prefix(settings.topic_prefix)
    records = [serde.decode(m.value()).record for m in read_all(settings, [topics.deadletter])]
    return [r for r in records if r["original_topic"] in (topics.case_events, topics.breaches) or r["error_class"] == "StoreError"]


# -- every record, exactly once ----------------------------------------------------------------------

def test_every_audited_record_lands_exactly_once_and_its_offset_is_committed(isolated, district, store):
    day = district_day(300)
    district.send(day[:600])
    district.produce(district.publish_raw_bytes("camera", "cam-firmware-7", b"\x00\x00\x00\x07{broken", START))
    run_sink(isolated)
    district.send(day[600:])
    district.produce(district.tick(START + timedelta(days=4)))  # overdue cases breach
    run_sink(isolated)

    ends = log_ends(isolated)
    # every audited topic this test writes (no worker registers rules here, no anchorer runs)
    assert {topic for topic, _ in ends} == set(district.topics.audited) - {district.topics.rules, district.topics.anchors}
    assert stored_rows(store, isolated.clickhouse.database) == ends
    assert verify(store, isolated.clickhouse.database) == []
    assert committed(isolated) == ends


# -- personal data -----------------------------------------------------------------------------------

def test_personal_data_lands_only_as_keyed_hashes(isolated, district, store):
    hasher = PersonalDataHasher(isolated.pii_hmac_key)
    day = district_day(150)
    tickets = [e.record for e in day if e.record_type == "HotlineTicket" and e.record["caller_phone"]]
    reports = [e.record for e in day if e.record_type == "ResidentReport"]
    district.send(day)
    garbled = {**tickets[0], "ticket_id": "T-GARBLED-1", "caller_phone": "139 0731 2288 转 6"}  # an extension: the format refuses it
    district.produce(district.publish_raw_bytes("hotline", garbled["ticket_id"],
                                                 district.serde.encode("HotlineTicket", garbled, validate=False), START))
    run_sink(isolated)

    db = isolated.clickhouse.database
    stored = {event_id: orjson.loads(payload) for event_id, payload in store.execute(
        f"SELECT event_id, payload FROM {db}.raw_events WHERE record_type IN ('HotlineTicket', 'ResidentReport')")}
    assert {t["ticket_id"]: hasher.phone(t["caller_phone"]) for t in tickets} == {
        t["ticket_id"]: stored[t["ticket_id"]]["caller_phone"] for t in tickets}
    assert {r["report_id"]: hasher.reporter(r["reporter_id"]) for r in reports} == {
        r["report_id"]: stored[r["report_id"]]["reporter_id"] for r in reports}
    everything = "\n".join(str(value) for table in AUDITED_TABLES for row in store.execute(f"SELECT * FROM {db}.{table}") for value in row)
    phones = [t["caller_phone"] for t in tickets]
    in_clear = phones + [normalize_phone(phone) for phone in phones] + [garbled["caller_phone"], "13907312288"] + [r["reporter_id"] for r in reports]
    assert [value for value in in_clear if value in everything] == []
    assert store.execute(f"SELECT decode_error != '' FROM {db}.raw_events WHERE kafka_key = 'T-GARBLED-1'") == [(1,)]


# -- faults ------------------------------------------------------------------------------------------

def test_a_sink_killed_between_insert_and_commit_leaves_no_duplicate_after_restart(isolated, district, store):
    district.send(district_day(200))
    district.produce(district.tick(START + timedelta(days=4)))

    crashed = subprocess.run([sys.executable, str(CRASHING_SINK)], env={**os.environ, **isolated.to_env()}, capture_output=True, timeout=60)

    db = isolated.clickhouse.database
    assert crashed.returncode == 137, crashed.stderr.decode(errors="replace")[-2000:]
    assert sum(stored_rows(store, db).values()) > 0  # the first batch's insert landed ...
    assert store.execute(f"SELECT count() FROM {db}.sink_batches") == [(0,)]  # ... but was neither recorded ...
    assert committed(isolated) == {}  # ... nor committed
    run_sink(isolated)
    ends = log_ends(isolated)
    assert stored_rows(store, db) == ends
    assert verify(store, db) == []
    assert committed(isolated) == ends


def test_clickhouse_away_mid_stream_loses_nothing_and_dead_letters_nothing(isolated, district, store, local_stack):
    day = district_day(200)
    db = isolated.clickhouse.database
    sink = build_sink(isolated, batch_rows=500, batch_seconds=0.2)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            sink.run()
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    runner = threading.Thread(target=run, name="sink")
    runner.start()
    try:
        district.send(day[:300])
        wait_until(lambda: sum(stored_rows(store, db).values()) > 0, 30, "the sink's first rows")
        local_stack.stop_clickhouse()
        try:
            district.send(day[300:])
            district.produce(district.tick(START + timedelta(days=4)))
            time.sleep(10)
        finally:
            local_stack.start_clickhouse()
            time.sleep(1)  # until exec has set up the server's command line, infra/stack.py's liveness check reads it as exited
            local_stack.wait_clickhouse()
        ends = log_ends(isolated)
        wait_until(lambda: stored_rows(store, db) == ends, 60, "every record stored after ClickHouse came back")
    finally:
        sink.stop()
        runner.join(60)
    assert failures == []
    assert verify(store, db) == []
    assert sink_dead_letters(isolated, district.serde) == []
    assert committed(isolated) == ends


def test_an_insert_whose_answer_is_lost_is_not_stored_twice(isolated, district, store):
    district.send(district_day(100))
    db = isolated.clickhouse.database
    proxy = AnswerCuttingProxy(isolated.clickhouse.port, f"INSERT INTO {db}.case_events (".encode())
    try:
        run_sink(dataclasses.replace(isolated, clickhouse=dataclasses.replace(isolated.clickhouse, port=proxy.port)))
    finally:
        proxy.close()

    assert proxy.cuts == 1
    assert stored_rows(store, db) == log_ends(isolated)
    assert verify(store, db) == []


def test_a_row_clickhouse_refuses_is_dead_lettered_and_the_rows_after_it_are_stored(isolated, district, store):
    derived = district.publish_raw(district_day(150))
    derived += district.tick(START + timedelta(days=4))
    index, rated = next((i, record) for i, record in ((i, district.serde.decode(o.value).record) for i, o in enumerate(derived)
                                                       if o.topic == district.topics.case_events) if record["kind"] == "rated")
    refused = district.serde.encode("CaseEvent", {**rated, "rating": 300}, validate=False)  # decodes; no UInt8 holds it
    index += 1  # a faulty copy right after the real event, with that case's later events behind it
    derived.insert(index, dataclasses.replace(derived[index - 1], value=refused))
    where = district.produce(derived)[index]
    run_sink(isolated)

    db = isolated.clickhouse.database
    ends = log_ends(isolated)
    subject = f"case_events {where.topic}[{where.partition}]"
    assert verify(store, db) == [Problem("offsets", subject, f"1 offset(s) missing between 0 and {ends[where.topic, where.partition] - 1}: "
                                                             f"{where.offset}")]
    assert stored_rows(store, db)[where.topic, where.partition] == ends[where.topic, where.partition] - 1  # the rows after it too
    [dead] = sink_dead_letters(isolated, district.serde)
    assert (dead["original_topic"], dead["original_partition"], dead["original_offset"], dead["original_value"], dead["error_class"]) == (
        where.topic, where.partition, where.offset, refused, "StoreError")
    assert store.execute(f"SELECT original_offset, original_value_sha256 FROM {db}.dead_letters WHERE original_topic = %(topic)s",
                         {"topic": where.topic}) == [(where.offset, hashlib.sha256(refused).hexdigest())]
    assert committed(isolated) == ends


def test_a_derived_record_that_does_not_decode_is_dead_lettered_and_its_offset_committed(isolated, district, store):
    district.send(district_day(100))
    unreadable = Output(district.topics.case_events, b"ST01-20250609-0000000000", b"\xc3\x01" + b"\x00" * 12)
    [where] = district.produce([unreadable])  # the last record of its partition
    run_sink(isolated)

    [dead] = sink_dead_letters(isolated, district.serde)
    assert (dead["original_topic"], dead["original_partition"], dead["original_offset"], dead["original_value"], dead["error_class"]) == (
        where.topic, where.partition, where.offset, unreadable.value, "DecodeError")
    assert committed(isolated) == log_ends(isolated)
    assert verify(store, isolated.clickhouse.database) == []


# -- the auditors' access ----------------------------------------------------------------------------

def audit_database(settings: Settings) -> str:
    """The deployment's own database (the only one the auditor user may use: infra/clickhouse/users.xml), migrated."""
    clickhouse = settings.clickhouse
    admin = ServerEngine.from_settings(dataclasses.replace(clickhouse, user=clickhouse.admin_user, password=clickhouse.admin_password),
                                       database="default")
    try:
        migrate(admin, clickhouse.database)
    finally:
        admin.close()
    return clickhouse.database


def test_the_auditor_user_reads_but_cannot_insert_or_alter(settings, local_stack):
    db = audit_database(settings)
    clickhouse = settings.clickhouse
    auditor = ServerEngine(clickhouse.host, clickhouse.port, user=clickhouse.auditor_user, password=clickhouse.auditor_password.value,
                           database=db)
    try:
        before = auditor.execute(f"SELECT count() FROM {db}.dead_letters")
        refusals = []
        for attempt in (lambda: auditor.insert(f"{db}.dead_letters", ("original_topic", "stage"), [("forged", "store")]),
                        lambda: auditor.execute(f"ALTER TABLE {db}.case_events DELETE WHERE 1"),
                        lambda: auditor.execute(f"ALTER TABLE {db}.breaches ADD COLUMN forged String")):
            with pytest.raises(StoreError) as refused:
                attempt()
            refusals.append(refused.value.context["code"])
        assert refusals == [164, 164, 164]  # READONLY
        assert auditor.execute(f"SELECT count() FROM {db}.dead_letters") == before
    finally:
        auditor.close()


def test_a_sink_that_may_not_write_stops_instead_of_dead_lettering_everything(settings, isolated, district):
    district.send(district_day(50))
    clickhouse = isolated.clickhouse
    read_only = dataclasses.replace(isolated, clickhouse=dataclasses.replace(
        clickhouse, user=clickhouse.auditor_user, password=clickhouse.auditor_password, database=audit_database(settings)))

    with pytest.raises(StoreError) as stopped:
        run_sink(read_only)

    assert stopped.value.context["code"] == 164  # READONLY
    assert sink_dead_letters(isolated, district.serde) == []
    assert committed(isolated) == {}
