"""`verify` against Kafka: the sink's lag (behind), records gone from Kafka before they were stored (broken),
and partitions never stored, each with its negative control.

The comparison itself (`compare_ranges`) is pure and tested on hand-built ranges; the stored ranges query on
the hand-built audit store on ClickHouse 18.16 and chdb; the whole path on the real Kafka broker and ClickHouse
server, fed and sunk as tests/test_sink.py does.
"""
from __future__ import annotations

import dataclasses
import time

import pytest
import test_sink
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions
from test_audit_queries import load
from test_sink import district_day, log_ends, run_sink

from sinks.audit import (
    AUDITED_TABLES,
    BEHIND,
    BROKEN,
    CLEAN,
    EXIT_CODES,
    LEDGERED,
    NOTED,
    DeadLetterPolicy,
    Finding,
    KafkaRange,
    StoredRange,
    compare_ranges,
    dead_letter_findings,
    read_kafka_ranges,
    run_query,
    status_of,
    stored_ranges,
    verify_against_kafka,
)
from streams.pipeline import DeadLetterWatch, Output
from whistle.ground.settings import Settings

district, store = test_sink.district, test_sink.store  # the sink tests' fixtures (a simulated district, a reading connection)
T = "t.whistle.raw.camera"


def stored(partition, first, last, dead_first=None, topic=T):
    return StoredRange(topic, partition, last - first + 1, first, last, dead_first)


def kinds(findings):
    return [(f.kind, f.status, f.topic, f.partition, f.first, f.last, f.records) for f in findings]


# -- the pure comparison -----------------------------------------------------------------------------

def test_a_partition_stored_through_kafkas_end_is_clean():
    assert compare_ranges([KafkaRange(T, 0, 0, 10, 10)], [stored(0, 0, 9)]) == []
    assert compare_ranges([KafkaRange(T, 0, 0, 0, None)], []) == []  # empty partition
    # retention after the records were stored is no loss; nor is a commit the sink has not made yet
    assert compare_ranges([KafkaRange(T, 0, 6, 10, None)], [stored(0, 0, 9)]) == []
    # records after the last stored one dead-lettered by the sink: it committed past them
    assert compare_ranges([KafkaRange(T, 0, 0, 10, 10)], [stored(0, 0, 7)]) == []


def test_records_after_the_sinks_position_are_lag_not_an_error():
    findings = compare_ranges([KafkaRange(T, 0, 0, 10, 6), KafkaRange(T, 1, 0, 4, 4)], [stored(0, 0, 5), stored(1, 0, 3)])
    assert kinds(findings) == [("lag", BEHIND, T, 0, 6, 9, 4)]
    assert status_of(findings) == BEHIND and EXIT_CODES[BEHIND] == 2
    # a crash between insert and commit: ClickHouse is ahead of the commit; the sink resumes after what it stored
    assert kinds(compare_ranges([KafkaRange(T, 0, 0, 10, 2)], [stored(0, 0, 7)])) == [("lag", BEHIND, T, 0, 8, 9, 2)]


def test_a_partition_never_stored_is_reported_as_such():
    findings = compare_ranges([KafkaRange(T, 0, 0, 3, 3), KafkaRange(T, 1, 0, 5, None)], [stored(0, 0, 2)])
    assert kinds(findings) == [("unstored", BEHIND, T, 1, 0, 4, 5)]
    # negative control: the same partition once stored
    assert compare_ranges([KafkaRange(T, 0, 0, 3, 3), KafkaRange(T, 1, 0, 5, 5)], [stored(0, 0, 2), stored(1, 0, 4)]) == []


def test_records_gone_from_kafka_before_they_were_stored_are_broken():
    # the head deleted before the sink's first read: it stored from the low watermark on
    assert kinds(compare_ranges([KafkaRange(T, 0, 4, 10, 10)], [stored(0, 4, 9)])) == [("lost", BROKEN, T, 0, 0, 3, 4)]
    # a tail deleted while the sink was stopped at 6: 6-7 are gone, 8-9 still to come
    findings = compare_ranges([KafkaRange(T, 0, 8, 10, 6)], [stored(0, 0, 5)])
    assert kinds(findings) == [("lost", BROKEN, T, 0, 6, 7, 2), ("lag", BEHIND, T, 0, 8, 9, 2)]
    assert status_of(findings) == BROKEN and EXIT_CODES[BROKEN] == 1  # broken wins over behind
    # never stored, and its head deleted
    assert kinds(compare_ranges([KafkaRange(T, 0, 3, 5, None)], [])) == [("lost", BROKEN, T, 0, 0, 2, 3),
                                                                         ("unstored", BEHIND, T, 0, 3, 4, 2)]
    # a dead letter of the partition's first record accounts for it
    assert compare_ranges([KafkaRange(T, 0, 1, 10, 10)], [stored(0, 1, 9, dead_first=0)]) == []


def test_records_below_the_first_stored_offset_still_in_kafka_are_missing():
    assert kinds(compare_ranges([KafkaRange(T, 0, 0, 10, 10)], [stored(0, 3, 9)])) == [("missing", BROKEN, T, 0, 0, 2, 3)]
    assert kinds(compare_ranges([KafkaRange(T, 0, 1, 10, 10)], [stored(0, 3, 9)])) == [
        ("lost", BROKEN, T, 0, 0, 0, 1), ("missing", BROKEN, T, 0, 1, 2, 2)]
    # committed by the sink, nothing stored, no dead letter
    assert kinds(compare_ranges([KafkaRange(T, 0, 0, 4, 4)], [])) == [("missing", BROKEN, T, 0, 0, 3, 4)]


def test_offsets_kafka_never_had_are_broken():
    assert kinds(compare_ranges([KafkaRange(T, 0, 0, 5, 5)], [stored(0, 0, 7)])) == [("beyond", BROKEN, T, 0, 5, 7, 3)]
    assert kinds(compare_ranges([], [stored(2, 0, 1)])) == [("beyond", BROKEN, T, 2, 0, 1, 2)]
    assert compare_ranges([], [StoredRange("t.whistle.cases.inbox", 0, 0, None, None, 4)]) == []  # a dead letter of an unaudited topic
    assert status_of([]) == CLEAN and EXIT_CODES[CLEAN] == 0


# -- the stored ranges query, on both engines ----------------------------------------------------------

def test_stored_ranges_cover_every_audited_table(engine, database):
    load(engine, database)

    ranges = {(r.topic, r.partition): r for r in stored_ranges(engine, database)}
    # events p1 hold offsets 0-27 (the ledger; test_audit_queries.py's data set), no dead letter of them
    assert ranges["whistle.cases.events", 1] == StoredRange("whistle.cases.events", 1, 28, 0, 27, None)
    # the same figures as verify_offsets, table by table (case events and breaches: their ledgers)
    expected = {(topic, partition): StoredRange(topic, partition, offsets, low, high)
                for table in AUDITED_TABLES
                for topic, partition, _, offsets, low, high in run_query(engine, database, "verify_offsets", {},
                                                                         table=LEDGERED.get(table, (table,))[0]).rows}
    assert {tp: dataclasses.replace(r, dead_first=None) for tp, r in ranges.items() if r.offsets} == expected


def test_stored_ranges_count_dead_letters_by_their_original_offset(engine, database):
    load(engine, database)
    engine.insert(f"{database}.dead_letters", ("original_topic", "original_partition", "original_offset", "stage", "error_class",
                                                "error_message", "failed_ms", "kafka_topic", "kafka_partition", "kafka_offset", "ingest_ms"),
                  [("whistle.cases.events", 2, 7, "sink", "DecodeError", "unreadable", 1_743_552_000_000, "whistle.deadletter", 0, 0, 0)])

    ranges = {(r.topic, r.partition): r for r in stored_ranges(engine, database)}
    assert ranges["whistle.cases.events", 2] == StoredRange("whistle.cases.events", 2, 0, None, None, 7)
    assert ranges["whistle.deadletter", 0] == StoredRange("whistle.deadletter", 0, 1, 0, 0, None)


# -- dead letters as a signal ------------------------------------------------------------------------------

DEAD_COLUMNS = ("original_topic", "original_partition", "original_offset", "stage", "error_class", "error_message", "failed_ms",
                "kafka_topic", "kafka_partition", "kafka_offset", "ingest_ms")
RAW = "whistle.raw.app"


def test_dead_letters_are_reported_by_stage_and_reason_and_a_partition_over_the_share_fails():
    rows = [(RAW, 0, "authenticate", "AuthError", "unsigned", 30), (RAW, 0, "decode", "DecodeError", "", 5),
            (RAW, 1, "authenticate", "AuthError", "unsigned", 2), ("whistle.cases.inbox", 3, "transition", "TransitionError", "unknown_case", 40)]
    sizes = {(RAW, 0): 100, (RAW, 1): 100, ("whistle.cases.inbox", 3): 10_000}
    findings = dead_letter_findings(rows, sizes, DeadLetterPolicy(share_max=0.05, min_records=20))
    noted = {(f.topic, f.detail): f.records for f in findings if f.status == NOTED}
    assert noted == {(RAW, "stage authenticate: unsigned"): 32, (RAW, "stage decode: DecodeError"): 5,
                     ("whistle.cases.inbox", "stage transition: unknown_case"): 40}
    broken = [(f.kind, f.topic, f.partition, f.records) for f in findings if f.status == BROKEN]
    assert broken == [("dead_letter_share", RAW, 0, 35)]  # 35 %; partition 1 has 2 (under the minimum), the inbox 0.4 %
    assert status_of(findings) == BROKEN
    assert status_of([f for f in findings if f.status == NOTED]) == CLEAN  # the negative control: noted alone changes nothing


def test_the_worker_raises_the_alarm_at_100_1000_in_a_row_and_a_record_that_goes_through_ends_the_run():
    watch = DeadLetterWatch("dlq")
    letter, passed = [Output("dlq", None, b"")], [Output("inbox", None, b"")]
    alarms = [run for run in (watch.record("ingest", letter) for _ in range(1_500)) if run is not None]
    assert alarms == [100, 1_000]
    assert watch.record("ingest", passed) is None and watch.runs["ingest"] == 0
    assert [watch.record("ingest", letter) for _ in range(99)].count(None) == 99  # the negative control: 99 in a row is quiet
    watch.record("cases", [])  # a tick: neither
    assert 'whistle_dead_letters_total{stage="ingest"} 1599' in watch.metrics()
    assert 'whistle_dead_letters_in_a_row{stage="ingest"} 99' in watch.metrics() and 'stage="cases"} 0' in watch.metrics()


def test_the_dead_letter_query_counts_each_original_offset_once_in_the_period(engine, database):
    load(engine, database)
    day = 1_743_552_000_000
    letters = [(RAW, 0, offset, "authenticate", "AuthError", "the record is not signed (reason=unsigned, field=whistle-integrator)",
                day + offset, "whistle.deadletter", 0, offset, 0) for offset in range(25)]
    engine.insert(f"{database}.dead_letters", DEAD_COLUMNS, letters + letters[:5])  # the sink redelivered five of them
    engine.insert(f"{database}.dead_letters", DEAD_COLUMNS, [(RAW, 0, 99, "decode", "DecodeError", "unreadable", day - 86_400_000,
                                                              "whistle.deadletter", 0, 99, 0)])
    rows = run_query(engine, database, "verify_dead_letters", {"from_ms": day, "to_ms": day + 86_400_000}).rows
    assert [tuple(row) for row in rows] == [(RAW, 0, "authenticate", "AuthError", "unsigned", 25)]


# -- on the real Kafka and ClickHouse -------------------------------------------------------------------

def check(settings: Settings, store) -> list[Finding]:
    """verify's verdicts on offsets (the day's dead letters are noted too: not what these tests are about)."""
    return [f for f in verify_against_kafka(store, settings.clickhouse.database, read_kafka_ranges(settings)) if f.status != NOTED]


def delete_head(settings: Settings, topic: str, partition: int, before: int) -> None:
    """Move the partition's low watermark to `before`, as retention would."""
    admin = AdminClient(settings.kafka.librdkafka())
    [future] = admin.delete_records([TopicPartition(topic, partition, before)], request_timeout=10).values()
    assert future.result(timeout=15).low_watermark == before


def busiest(settings: Settings, topic: str) -> tuple[int, int]:
    """The partition of `topic` holding most records, and its end offset."""
    return max(((p, end) for (t, p), end in log_ends(settings).items() if t == topic), key=lambda pe: pe[1])


def test_lag_while_the_sink_is_stopped_then_clean_once_it_caught_up(isolated, district, store):
    day = district_day(150)
    district.send(day[:200])
    run_sink(isolated)
    assert check(isolated, store) == []  # negative control: nothing produced since the sink ran
    before = log_ends(isolated)

    district.send(day[200:])  # the sink is stopped
    findings = check(isolated, store)

    after = log_ends(isolated)
    grown = {tp: end - before.get(tp, 0) for tp, end in after.items() if end > before.get(tp, 0)}
    assert {f.status for f in findings} == {BEHIND} and status_of(findings) == BEHIND
    assert {(f.topic, f.partition): f.records for f in findings} == grown
    assert all(f.first == before.get((f.topic, f.partition), 0) and f.last == after[f.topic, f.partition] - 1 for f in findings)
    assert all(f.kind == ("lag" if (f.topic, f.partition) in before else "unstored") for f in findings)

    run_sink(isolated)
    assert check(isolated, store) == []


@pytest.mark.parametrize("deleted", [False, True], ids=["control", "head-deleted"])
def test_records_deleted_from_kafka_before_the_sink_stored_them_are_lost(isolated, district, store, deleted):
    district.send(district_day(100))
    topic = district.topics.camera
    partition, end = busiest(isolated, topic)
    if deleted:
        delete_head(isolated, topic, partition, 5)  # retention, before the sink read them
    run_sink(isolated)

    findings = check(isolated, store)
    if deleted:
        assert kinds(findings) == [("lost", BROKEN, topic, partition, 0, 4, 5)]
        assert status_of(findings) == BROKEN
    else:
        assert findings == []
    assert end > 5


def test_records_deleted_after_the_sink_stored_them_are_no_loss(isolated, district, store):
    district.send(district_day(100))
    run_sink(isolated)
    topic = district.topics.camera
    partition, end = busiest(isolated, topic)
    delete_head(isolated, topic, partition, end)  # every record of it, all already stored

    assert check(isolated, store) == []


@pytest.mark.parametrize("fault", [False, True], ids=["control", "new-partition"])
def test_a_partition_never_stored_is_reported(isolated, district, store, fault):
    district.send(district_day(60))
    run_sink(isolated)
    topic = district.topics.hotline
    partitions = len([p for (t, p) in read_ranges_keys(isolated) if t == topic])
    if fault:  # a partition added to the topic after the sink ran, records on it
        admin = AdminClient(isolated.kafka.librdkafka())
        [future] = admin.create_partitions([NewPartitions(topic, partitions + 1)], request_timeout=10).values()
        future.result(timeout=15)
        wait_for_partitions(isolated, topic, partitions + 1)
        producer = Producer(isolated.kafka.librdkafka())  # a fresh client: the district's producer has the old metadata
        for n in range(3):
            producer.produce(topic, key=f"T-NEW-{n}", value=b"not read by anyone yet", partition=partitions)
        assert producer.flush(30) == 0

    findings = check(isolated, store)
    if fault:
        assert kinds(findings) == [("unstored", BEHIND, topic, partitions, 0, 2, 3)]
        assert status_of(findings) == BEHIND
    else:
        assert findings == []


def read_ranges_keys(settings: Settings) -> set[tuple[str, int]]:
    return {(k.topic, k.partition) for k in read_kafka_ranges(settings)}


def wait_for_partitions(settings: Settings, topic: str, count: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len([p for t, p in read_ranges_keys(settings) if t == topic]) < count:
        assert time.monotonic() < deadline, f"{topic} never showed {count} partitions"
        time.sleep(0.2)
