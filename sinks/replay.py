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

Rankings too: a ranking is a query over the case events and breaches, so replay puts what it derived into a
scratch ClickHouse (chdb, embedded, in a temporary directory deleted afterwards), migrated by the project's one
migrator and laid out by the sink's own row rule, and runs the same named ranking query (sinks/queries/ranking.sql)
there and on the audit store: every month the period touches, each dimension, the same as_of (the period's end).
A figure that differs names the month, dimension and unit. WHY in a store and not in Python: a second copy of the
ranking's formulas would prove only that two copies agree; this proves the published query, run on what the log
gives, yields what the store yields. Without chdb replay says that rankings were not recomputed, and why.
"""
from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from schemas.serde import Serde, from_record, to_record
from sinks.audit import LOCAL_TIMEZONE, RANKING_UNITS, Result, ranking, run_query, stored_case_event
from sinks.clickhouse import ChdbEngine, Engine
from sinks.migrator import migrate
from sinks.sink import BREACH_COLUMNS, CASE_EVENT_COLUMNS, breach_values, case_event_values
from streams.domain.case import CaseEvent
from streams.domain.rules import Rules
from streams.domain.sla import Breach
from streams.pipeline import CaseProcessor
from streams.rules import check_rules
from whistle.ground.deadletter import Position
from whistle.ground.errors import StackError
from whistle.ground.names import Topics
from whistle.ground.settings import Settings
from whistle.ground.times import from_epoch_ms, to_epoch_ms

LISTED_PER_TABLE = 20  # differences listed per table (all are counted)
_BREACH_FIELDS = BREACH_COLUMNS[:-4]  # without the Kafka position and ingest time, as `breach_values` gives them
_END_OF_TIME_MS = 2**63 - 1
SCRATCH_DATABASE = "replay"
# The scratch rows' Kafka position: they never were Kafka records, so topic "replay" and offset = emission order.
_SCRATCH_TOPIC = "replay"


@dataclass(frozen=True, slots=True)
class Difference:
    """One record replay and the store disagree on. kind: missing (in replay, not stored) | extra (stored, not
    derived) | differs (a stored copy is not the derived record; `detail` names the first field). A rankings
    difference is keyed 'month dimension unit' (one ranking row), its case_id empty."""

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
    months: tuple[str, ...] = ()  # the months ranked (city time), each in every dimension of RANKING_UNITS
    rankings_not_recomputed: str = ""  # why, when the rankings could not be recomputed ('' when they were)
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


def rederive(serde: Serde, topics: Topics, partitions: int, records: Iterable[tuple[int, int, bytes | None, bytes, int]], rules: Rules,
             progress: Callable[[int], None] = lambda n: None) -> tuple[int, list[CaseEvent], list[Breach]]:
    """The case stream through a fresh CaseProcessor: (records read, case events, breaches) in emission order."""
    processor = CaseProcessor(serde, rules.reference, rules.policies, rules.calendar, topics, partitions)
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


def stored_case_events(engine: Engine, database: str, from_ms: int, to_ms: int) -> dict[str, list[CaseEvent]]:
    """Every stored copy of the case events of the period, by event id."""
    stored: dict[str, list[CaseEvent]] = defaultdict(list)
    for row in run_query(engine, database, "replay_case_events", {"from_ms": from_ms, "to_ms": to_ms}).rows:
        event, _ = stored_case_event(row)
        stored[event.event_id].append(event)
    return stored


def compare(events: list[CaseEvent], breaches: list[Breach], stored_events: dict[str, list[CaseEvent]], engine: Engine, database: str,
            from_ms: int, to_ms: int, report: ReplayReport) -> ReplayReport:
    """Diff the derived records of the period against every stored copy of the period's records (`stored_events`:
    `stored_case_events` of the period)."""
    derived_events = {e.event_id: e for e in events if from_ms <= to_epoch_ms(e.at) < to_ms}
    _diff(report, "case_events", derived_events, stored_events, lambda e: e.case_id, lambda e: tuple(to_record(e).items()))
    derived_breaches = {b.breach_id: b for b in breaches if from_ms <= to_epoch_ms(b.fired_at) < to_ms}
    stored_breaches: dict[str, list[tuple]] = defaultdict(list)
    for row in run_query(engine, database, "replay_breaches", {"from_ms": from_ms, "to_ms": to_ms}).rows:
        stored_breaches[row[0]].append(tuple(zip(_BREACH_FIELDS, row)))
    _diff(report, "breaches", {k: _breach_row(b) for k, b in derived_breaches.items()}, stored_breaches, lambda r: dict(r)["case_id"],
          lambda r: r)
    return report


def _breach_row(breach: Breach) -> tuple:
    return tuple(zip(_BREACH_FIELDS, breach_values(to_record(breach))))


def period_months(from_ms: int, to_ms: int, times_ms: Iterable[int], tz: str = LOCAL_TIMEZONE) -> tuple[str, ...]:
    """The months ('YYYY-MM' in `tz`) that the period [from_ms, to_ms), clipped to the span of `times_ms`, touches.

    WHY clipped: the default period is all time; the case log's own event times bound the months worth ranking.
    """
    times = list(times_ms)
    low, high = max(from_ms, min(times, default=_END_OF_TIME_MS)), min(to_ms - 1, max(times, default=-1))
    if low > high:
        return ()
    zone = ZoneInfo(tz)
    first, last = from_epoch_ms(low).astimezone(zone), from_epoch_ms(high).astimezone(zone)
    months, (year, month) = [], (first.year, first.month)
    while (year, month) <= (last.year, last.month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return tuple(months)


def compare_rankings(events: list[CaseEvent], breaches: list[Breach], engine: Engine, database: str, months: tuple[str, ...],
                     as_of: datetime | None, report: ReplayReport, *, ingest_ms: int = 0) -> ReplayReport:
    """Rank `months` in every dimension from the derived records (a scratch chdb store) and from the audit store, with
    the same query and `as_of`, and diff the ranking rows. Without chdb, says so in `report.rankings_not_recomputed`.

    Order: the scratch store is created in a temporary directory, migrated, filled with every derived record (a
    ranking counts a case's events before the period too), ranked, closed and deleted; only then is the audit
    store ranked (read-only).
    """
    report.months = months
    with tempfile.TemporaryDirectory(prefix="whistle-replay-") as directory:
        try:
            scratch = ChdbEngine(directory)
        except ImportError as exc:
            report.rankings_not_recomputed = (f"chdb (the scratch ClickHouse) is not importable: {exc}; "
                                              f"install it with pip install -c infra/constraints.txt 'whistle[audit]'")
            return report
        try:
            migrate(scratch, SCRATCH_DATABASE)
            scratch.insert(f"{SCRATCH_DATABASE}.case_events", CASE_EVENT_COLUMNS,
                           [case_event_values(to_record(e)) + (_SCRATCH_TOPIC, 0, n, ingest_ms) for n, e in enumerate(events)])
            scratch.insert(f"{SCRATCH_DATABASE}.breaches", BREACH_COLUMNS,
                           [breach_values(to_record(b)) + (_SCRATCH_TOPIC, 1, n, ingest_ms) for n, b in enumerate(breaches)])
            derived = _rankings(scratch, SCRATCH_DATABASE, months, as_of)
        finally:
            scratch.close()
    stored = {key: [row] for key, row in _rankings(engine, database, months, as_of).items()}
    _diff(report, "rankings", derived, stored, lambda row: "", lambda row: row)
    return report


def _rankings(engine: Engine, database: str, months: tuple[str, ...], as_of: datetime | None) -> dict[str, tuple]:
    """Every ranking row of `months` x RANKING_UNITS by 'month dimension unit', as (column, value) pairs."""
    rows = {}
    for month in months:
        for by in RANKING_UNITS:
            for row in ranking(engine, database, month, by, as_of=as_of).as_dicts():
                rows[f"{month} {by} {row['unit_id']}"] = tuple(row.items())
    return rows


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
    """Re-derive everything from the case stream and diff the period [from_ms, to_ms) against the audit store: case
    events, breaches, then the rankings of the period's months as of its end (of everything when unbounded)."""
    started, started_ms = time.monotonic(), time.time_ns() // 1_000_000
    serde, topics = Serde.from_settings(settings), Topics.with_prefix(settings.topic_prefix)
    rules = Rules.load(settings.reference_dir)
    # as a worker does before it decides: a replay with an edited policy would report every decision it changed as the store's fault
    check_rules(settings, serde, rules.files(), started_ms, timeout_s=timeout_s)
    partitions, records = read_case_stream(settings, timeout_s=timeout_s)
    count, events, breaches = rederive(serde, topics, partitions, records, rules, progress)
    stored = stored_case_events(engine, database, from_ms, to_ms)
    report = compare(events, breaches, stored, engine, database, from_ms, to_ms, ReplayReport(inbox_records=count))
    times = [to_epoch_ms(e.at) for e in events] + [to_epoch_ms(c.at) for copies in stored.values() for c in copies]
    months = period_months(from_ms, to_ms, times)
    as_of = None if to_ms >= _END_OF_TIME_MS else from_epoch_ms(to_ms)
    compare_rankings(events, breaches, engine, database, months, as_of, report, ingest_ms=started_ms)
    report.seconds = round(time.monotonic() - started, 2)
    return report
