"""`whistle audit replay`: re-derive the case log from the case stream alone, and diff it against the audit store.

The case stream (`whistle.cases.inbox`, kept forever) is the input of every decision: enriched reports,
handling actions and clock ticks with the times they were decided at. Replay reads it from Kafka, partition
by partition in offset order, through the same `CaseProcessor` the workers run (in this process, in memory;
nothing is written anywhere), and compares the case events and breaches it derives with those ClickHouse
holds for the period: each one the store lacks, each one the store has that replay does not, and each one
that differs (any stored copy that is not the derived record, field by field). Identical means the store
is what the log and the rules give; a difference names the case.

Replay starts at the beginning of the case stream whatever the period (a case's state is the fold of all
its history) and compares what falls in the period: case events by their time, breaches by when they fired.
It reads ClickHouse as the auditor (read-only) and Kafka as a consumer without a group: it commits nothing.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from schemas.serde import Serde, from_record, to_record
from sinks.audit import Result, run_query, stored_case_event
from sinks.clickhouse import Engine
from sinks.sink import BREACH_COLUMNS
from streams.domain.calendar import load_calendar
from streams.domain.case import CaseEvent
from streams.domain.reference import load_reference
from streams.domain.sla import Breach, load_policies
from streams.pipeline import CaseProcessor
from whistle.ground.deadletter import Position
from whistle.ground.errors import StackError
from whistle.ground.names import Topics
from whistle.ground.settings import Settings
from whistle.ground.times import from_epoch_ms, to_epoch_ms

LISTED_PER_TABLE = 20  # differences listed per table (all are counted)
_BREACH_FIELDS = tuple(c for c in BREACH_COLUMNS if not c.startswith("kafka_") and c != "ingest_ms")


@dataclass(frozen=True, slots=True)
class Difference:
    """One record replay and the store disagree on. kind: missing (in replay, not stored) | extra (stored, not
    derived) | differs (a stored copy is not the derived record; `detail` names the first field)."""

    table: str
    kind: str
    key: str
    case_id: str
    detail: str


@dataclass
class ReplayReport:
    inbox_records: int = 0
    derived: dict[str, int] = field(default_factory=dict)  # table -> records derived in the period
    stored: dict[str, int] = field(default_factory=dict)  # table -> distinct records stored in the period
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> kind -> differences
    listed: list[Difference] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        return not any(sum(kinds.values()) for kinds in self.counts.values())

    def differences(self) -> Result:
        return Result("replay", ("table", "kind", "key", "case_id", "detail"),
                      tuple((d.table, d.kind, d.key, d.case_id, d.detail) for d in self.listed))


def read_case_stream(settings: Settings, *, timeout_s: float = 30.0) -> tuple[int, Iterator[tuple[int, int, bytes | None, bytes, int]]]:
    """The case stream's partition count, and its records (partition, offset, key, value, timestamp ms) up to the
    high watermarks read now, partition by partition in offset order. Every wait is bounded by `timeout_s`."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    topic = Topics.with_prefix(settings.topic_prefix).inbox
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": "whistle-audit-replay", "enable.auto.commit": False,
                         "enable.partition.eof": False, "log_level": 0})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise StackError(f"Kafka has no case stream {topic}", topic=topic)
        partitions = sorted(metadata.partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s) for p in partitions}
    except KafkaException as exc:
        consumer.close()
        raise StackError(f"Kafka did not answer replay's requests within {timeout_s:.0f}s: {exc}") from exc

    def records() -> Iterator[tuple[int, int, bytes | None, bytes, int]]:
        try:
            for partition in partitions:
                low, high = ends[partition]
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, partition, low)])
                next_offset, deadline = low, time.monotonic() + timeout_s
                while next_offset < high:
                    message = consumer.poll(1.0)
                    if message is None:
                        if time.monotonic() > deadline:
                            raise StackError(f"{topic}[{partition}] stopped at offset {next_offset} of {high} for {timeout_s:.0f}s")
                        continue
                    if message.error() is not None:
                        raise StackError(f"reading {topic}[{partition}]: {message.error()}")
                    deadline = time.monotonic() + timeout_s
                    offset = message.offset()
                    assert offset is not None  # a consumed message has its offset
                    next_offset = offset + 1
                    yield partition, offset, message.key(), message.value() or b"", message.timestamp()[1]
        finally:
            consumer.close()

    return len(partitions), records()


def rederive(serde: Serde, topics: Topics, partitions: int, records: Iterable[tuple[int, int, bytes | None, bytes, int]],
             progress: Callable[[int], None] = lambda n: None) -> tuple[int, list[CaseEvent], list[Breach]]:
    """The case stream through a fresh CaseProcessor: (records read, case events, breaches) in emission order."""
    processor = CaseProcessor(serde, load_reference(), load_policies(), load_calendar(), topics, partitions)
    events: list[CaseEvent] = []
    breaches: list[Breach] = []
    count = 0
    for partition, offset, key, value, timestamp_ms in records:
        outputs, _ = processor.process(Position(topics.inbox, partition, offset), key, value, from_epoch_ms(max(0, timestamp_ms)))
        for output in outputs:
            if output.topic == topics.case_events:
                events.append(from_record(CaseEvent, serde.decode(output.value, expect="CaseEvent").record))
            elif output.topic == topics.breaches:
                breaches.append(from_record(Breach, serde.decode(output.value, expect="Breach").record))
        count += 1
        if count % 10_000 == 0:
            progress(count)
    return count, events, breaches


def compare(events: list[CaseEvent], breaches: list[Breach], engine: Engine, database: str, from_ms: int, to_ms: int,
            report: ReplayReport) -> ReplayReport:
    """Diff the derived records of the period against every stored copy of the period's records."""
    derived_events = {e.event_id: e for e in events if from_ms <= to_epoch_ms(e.at) < to_ms}
    stored_events: dict[str, list[CaseEvent]] = defaultdict(list)
    for row in run_query(engine, database, "replay_case_events", {"from_ms": from_ms, "to_ms": to_ms}).rows:
        event, _ = stored_case_event(row)
        stored_events[event.event_id].append(event)
    _diff(report, "case_events", derived_events, stored_events, lambda e: e.case_id, lambda e: tuple(to_record(e).items()))
    derived_breaches = {b.breach_id: b for b in breaches if from_ms <= to_epoch_ms(b.fired_at) < to_ms}
    stored_breaches: dict[str, list[tuple]] = defaultdict(list)
    for row in run_query(engine, database, "replay_breaches", {"from_ms": from_ms, "to_ms": to_ms}).rows:
        stored_breaches[row[0]].append(tuple(zip(_BREACH_FIELDS, row)))
    _diff(report, "breaches", {k: _breach_row(b) for k, b in derived_breaches.items()}, stored_breaches, lambda r: dict(r)["case_id"],
          lambda r: r)
    return report


def _breach_row(breach: Breach) -> tuple:
    record = to_record(breach)
    values = {name: record[name[:-3]] if name in ("deadline_ms", "fired_at_ms") else record[name] for name in _BREACH_FIELDS}
    for name in ("deadline_ms", "fired_at_ms"):
        values[name] = to_epoch_ms(values[name])
    return tuple((name, values[name]) for name in _BREACH_FIELDS)


def _diff(report: ReplayReport, table: str, derived: dict[str, Any], stored: dict[str, list[Any]], case_of: Callable[[Any], str],
          fields_of: Callable[[Any], tuple]) -> None:
    counts = report.counts.setdefault(table, {"missing": 0, "extra": 0, "differs": 0})
    report.derived[table], report.stored[table] = len(derived), len(stored)
    listed = 0

    def note(kind: str, key: str, case_id: str, detail: str) -> None:
        nonlocal listed
        counts[kind] += 1
        if listed < LISTED_PER_TABLE:
            report.listed.append(Difference(table, kind, key, case_id, detail))
            listed += 1

    for key in sorted(derived.keys() | stored.keys()):
        mine, theirs = derived.get(key), stored.get(key, [])
        if mine is None:
            note("extra", key, case_of(theirs[0]), "stored, but the case stream does not give it")
            continue
        if not theirs:
            note("missing", key, case_of(mine), "the case stream gives it, the store does not hold it")
            continue
        expected = fields_of(mine)
        for copy in theirs:
            got = fields_of(copy)
            if got != expected:
                name, want, have = next((n, v, dict(got).get(n)) for n, v in expected if dict(got).get(n) != v)
                note("differs", key, case_of(mine), f"{name}: stored {have!r}, the case stream gives {want!r}")
                break


def replay(settings: Settings, engine: Engine, database: str, from_ms: int, to_ms: int, *, timeout_s: float = 30.0,
           progress: Callable[[int], None] = lambda n: None) -> ReplayReport:
    """Re-derive everything from the case stream and diff the period [from_ms, to_ms) against the audit store."""
    started = time.monotonic()
    serde, topics = Serde.from_settings(settings), Topics.with_prefix(settings.topic_prefix)
    partitions, records = read_case_stream(settings, timeout_s=timeout_s)
    count, events, breaches = rederive(serde, topics, partitions, records, progress)
    report = compare(events, breaches, engine, database, from_ms, to_ms, ReplayReport(inbox_records=count))
    report.seconds = round(time.monotonic() - started, 2)
    return report
