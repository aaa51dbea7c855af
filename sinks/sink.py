"""The sink: audited Kafka topics -> ClickHouse, each offset exactly once.

Delivery order, per batch:
  1. insert the rows into their audit table (one INSERT per run of rows that fall into one month
     partition, in offset order, so every INSERT is a single atomic part);
  2. record the batch in `sink_batches`;
  3. commit the Kafka offsets (manual commits only) of every record consumed, dead-lettered ones too.
A dead letter is acknowledged by Kafka before any later offset of its partition is inserted.
On (re)assignment a partition resumes after the highest offset ClickHouse already holds for it
(sink_batches, then the table itself, since a crash can fall between 1 and 2), so redelivery after a
crash never inserts a row twice; Kafka's committed offset wins only when it is further on (the
records after the last stored row were dead-lettered), and is moved up to ClickHouse's position
when it lags behind it, so consumer lag stays true.

ClickHouse unreachable: the batch is held, partitions are paused, and the insert is retried with
backoff until it succeeds; valid rows are never dead-lettered because the server was away. Before
each retry the sink asks whether the failed INSERT landed after all (its answer can be lost after
the part was written): inserting it again would store every row twice. On a replicated cluster the
retry is also harmless where that check cannot see (a row's values, ingest_ms included, are fixed when it is
consumed, so a retry sends the identical block, which a replicated table drops: insert_deduplicate).
ClickHouse refusing rows (a data error): the batch is split until the refused row is alone; that row
goes to the dead-letter topic with its original bytes and position, and the rest is inserted.
ClickHouse refusing the statement (no such table, no permission): the sink stops, dead-lettering
nothing; restarted once the setup is fixed, it resumes where it stopped.

`RowMaker.row` is pure (Kafka record -> table row); `Sink` is the one writer that talks to ClickHouse.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from schemas.catalog import RecordFacts
from schemas.serde import Serde
from sinks.audit import LEDGERED, run_query
from sinks.clickhouse import Engine
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_district
from streams.pipeline import Senders, dead_letter
from whistle.ground.deadletter import Position
from whistle.ground.errors import AuthError, DeliveryError, StoreError, WhistleError
from whistle.ground.names import Groups, Topics
from whistle.ground.times import utc_now

log = logging.getLogger("whistle.sink")

RAW_COLUMNS = ("source", "record_type", "event_id", "event_ms", "kafka_key", "payload", "raw_sha256", "raw_size", "decode_error",
               "sender", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp_ms", "ingest_ms")
CASE_EVENT_COLUMNS = ("event_id", "case_id", "seq", "kind", "at_ms", "cause_id", "actor_unit_id", "assignee_unit_id", "assignee_tier",
                      "category", "urgency", "district_id", "street_id", "community_id", "grid_id", "department_id", "source",
                      "report_id", "reason", "note", "rating", "policy_version", "prev_hash", "hash",
                      "kafka_topic", "kafka_partition", "kafka_offset", "ingest_ms")
BREACH_COLUMNS = ("breach_id", "case_id", "kind", "breach_type", "tier", "deadline_ms", "fired_at_ms", "overdue_ms",
                  "responsible_unit_id", "escalation_target_unit_id", "policy_version", "category", "urgency", "street_id",
                  "department_id", "summary", "policy_sha256", "calendar_sha256", "kafka_topic", "kafka_partition", "kafka_offset", "ingest_ms")
DEAD_LETTER_COLUMNS = ("original_topic", "original_partition", "original_offset", "original_key", "original_value_sha256",
                       "original_value_size", "stage", "error_class", "error_message", "field", "failed_ms",
                       "kafka_topic", "kafka_partition", "kafka_offset", "ingest_ms")
RULE_FILE_COLUMNS = ("rule_id", "kind", "name", "file", "sha256", "content", "in_force_from_ms", "registered_at_ms", "registered_by",
                     "kafka_topic", "kafka_partition", "kafka_offset", "ingest_ms")
ANCHOR_COLUMNS = ("anchor_id", "anchored_topic", "anchored_partition", "first_offset", "last_offset", "records", "digest", "keyed",
                  "anchored_at_ms", "kafka_topic", "kafka_partition", "kafka_offset", "ingest_ms")
COLUMNS = {"raw_events": RAW_COLUMNS, "case_events": CASE_EVENT_COLUMNS, "breaches": BREACH_COLUMNS, "dead_letters": DEAD_LETTER_COLUMNS,
           "rule_files": RULE_FILE_COLUMNS, "chain_anchors": ANCHOR_COLUMNS}
# The column each table is partitioned by (month of an epoch-ms value): one INSERT must stay in one month.
MONTH_COLUMN = {"raw_events": "kafka_timestamp_ms", "case_events": "at_ms", "breaches": "deadline_ms", "dead_letters": "failed_ms",
                "rule_files": "registered_at_ms", "chain_anchors": "anchored_at_ms"}


@dataclass(frozen=True, slots=True)
class Row:
    table: str
    values: tuple
    position: Position
    key: bytes | None
    value: bytes | None


class RowMaker:
    """Kafka records of the audited topics -> audit-table rows. Pure; personal data leaves as keyed hashes."""

    def __init__(self, serde: Serde, hasher: PersonalDataHasher, topics: Topics, senders: Senders) -> None:
        self.serde, self.hasher, self.topics, self.senders = serde, hasher, topics, senders
        self._sources = {topics.camera: "camera", topics.hotline: "hotline", topics.app: "app"}
        self._spec_topics = topics.source_spec_names()

    def row(self, where: Position, key: bytes | None, value: bytes | None, timestamp_ms: int, ingest_ms: int,
            headers: Iterable[tuple[str, Any]] = ()) -> Row:
        kafka = (where.topic, where.partition, where.offset)
        if where.topic in self._sources:
            raw = self._raw(where, key, value, timestamp_ms) + (self._sender(where.topic, key, value, headers),)
            return Row("raw_events", raw + kafka + (timestamp_ms, ingest_ms), where, key, value)
        record = self.serde.decode(value, validate=False).record  # derived topics: written by Whistle itself
        if where.topic == self.topics.case_events:
            return Row("case_events", case_event_values(record) + kafka + (ingest_ms,), where, key, value)
        if where.topic == self.topics.breaches:
            return Row("breaches", breach_values(record) + kafka + (ingest_ms,), where, key, value)
        if where.topic == self.topics.deadletter:
            original = record["original_value"]
            values = (record["original_topic"], record["original_partition"], record["original_offset"],
                      None if record["original_key"] is None else record["original_key"].decode("utf-8", "replace"),
                      None if original is None else hashlib.sha256(original).hexdigest(), len(original or b""),
                      record["stage"], record["error_class"], record["error_message"], record["field"], _ms(record["failed_at"]))
            values = values[:8] + (self._without_personal_values(values[8], original),) + values[9:]
            return Row("dead_letters", values + kafka + (ingest_ms,), where, key, value)
        if where.topic == self.topics.rules:
            rule = (record["rule_id"], record["kind"], record["name"], record["file"], record["sha256"],
                    record["content"].decode("utf-8", "replace"), _ms(record["in_force_from"]), _ms(record["registered_at"]), record["registered_by"])
            return Row("rule_files", rule + kafka + (ingest_ms,), where, key, value)
        if where.topic == self.topics.anchors:
            anchor = (record["anchor_id"], record["topic"], record["partition"], record["first_offset"], record["last_offset"], record["records"],
                      record["digest"], int(record["keyed"]), _ms(record["anchored_at"]))
            return Row("chain_anchors", anchor + kafka + (ingest_ms,), where, key, value)
        raise StoreError(f"topic {where.topic} is not audited", topic=where.topic)

    def _raw(self, where: Position, key: bytes | None, value: bytes | None, timestamp_ms: int) -> tuple:
        source = self._sources[where.topic]
        digest, size = hashlib.sha256(value or b"").hexdigest(), len(value or b"")
        kafka_key = "" if key is None else key.decode("utf-8", "replace")
        try:
            decoded = self.serde.decode(value)
        except WhistleError as exc:  # still one row per offset: the worker dead-letters it, the audit shows it
            return (source, "", "", 0, kafka_key, "", digest, size, self._without_personal_values(str(exc), value))
        record_type, record = decoded.schema, decoded.record
        if record_type == "AppEvent":
            branch, record = record["event"]
            record_type = branch.rsplit(".", 1)[-1]
        facts = self.serde.catalog.facts.get(record_type)  # None: a record type no source topic carries (a producer's mistake)
        if facts is None:
            event_ms, event_id = 0, ""
        else:
            record = self._without_personal_data(facts, record)
            event_ms, event_id = _ms(record.get(facts.event_time_field)) or 0, str(record.get(facts.id_field, ""))
        payload = orjson.dumps(record, default=_json_default, option=orjson.OPT_SORT_KEYS).decode()
        return (source, record_type, event_id, event_ms, kafka_key, payload, digest, size, "")

    def _sender(self, topic: str, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, Any]]) -> str:
        """The integrator whose signature on the record verifies, '' if none does (the worker dead-letters it)."""
        try:
            return self.senders.verify(self._spec_topics[topic], key, value, headers)[1].integrator
        except AuthError:
            return ""

    def _without_personal_data(self, facts: RecordFacts, record: dict[str, Any]) -> dict[str, Any]:
        """The record, each `x-personal` field as its keyed hash: phone numbers (`x-format: phone`) as phones, others as ids."""
        hashed = {name: (self.hasher.phone if name in facts.phone_fields else self.hasher.reporter)(record[name])
                  for name in facts.personal_fields if record.get(name)}
        return {**record, **hashed} if hashed else record

    def _without_personal_values(self, message: str, value: bytes | None) -> str:
        """An error message about raw record `value`, its personal values blanked out.

        WHY: validation errors quote the value they refuse ("caller_phone: '139 0731 2288 转 6' is not a phone
        number"); such a value cannot be hashed (it does not normalize), so it must not reach ClickHouse at all.
        """
        try:
            decoded = self.serde.decode(value, validate=False)
        except WhistleError:  # not readable: the message cannot quote a value of it
            return message
        record_type, record = decoded.schema, decoded.record
        if record_type == "AppEvent":
            branch, record = record["event"]
            record_type = branch.rsplit(".", 1)[-1]
        facts = self.serde.catalog.facts.get(record_type)
        for name in facts.personal_fields if facts else ():
            personal = record.get(name)
            if personal:
                for form in (personal, repr(personal)[1:-1]):
                    message = message.replace(form, "<personal data>")
        return message


def case_event_values(record: Mapping[str, Any]) -> tuple:
    """A CaseEvent record's values in CASE_EVENT_COLUMNS order, without the Kafka position and ingest time (the last four).

    WHY a function of its own: `whistle audit replay` builds its scratch store's rows from the case events it
    re-derives, which never were Kafka records; both must lay a row out by this one rule.
    """
    return tuple(_ms(record[c[:-3]]) if c == "at_ms" else record.get(c) for c in CASE_EVENT_COLUMNS[:-4])


def breach_values(record: Mapping[str, Any]) -> tuple:
    """A Breach record's values in BREACH_COLUMNS order, without the Kafka position and ingest time (as `case_event_values`)."""
    return tuple(_ms(record[c[:-3]]) if c in ("deadline_ms", "fired_at_ms") else record.get(c) for c in BREACH_COLUMNS[:-4])


def _ms(value: Any) -> Any:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


@dataclass
class _Batch:
    rows: list[Row] = field(default_factory=list)
    started: float = 0.0
    consumed: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset per topic/partition, dead-lettered records too


# ClickHouse error codes that refuse the values of a row: parse and conversion errors, type mismatch, out of range. A
# refusal without a code is the driver's own (a value that does not fit its column type). Only these dead-letter a row;
# any other refusal (unknown table or column, no permission, read-only user) is the setup's, not the data's: the sink
# stops instead of dead-lettering every record, and resumes where it stopped once the setup is fixed.
_DATA_ERROR_CODES = frozenset({6, 27, 38, 41, 53, 69, 70, 72, 117, 131, 248, 321, 407})


class Sink:
    """One writer: consume the audited topics, insert batches, then commit. See the module docstring for the order."""

    def __init__(self, consumer_conf: dict[str, str], producer_conf: dict[str, str], engine: Engine, database: str,
                 maker: RowMaker, serde: Serde, topics: Topics, *, sink_id: str = "sink-1", batch_rows: int = 20_000,
                 batch_seconds: float = 0.5, clock: Callable[[], float] = time.time,
                 on_inserted: Callable[[str, int], None] | None = None) -> None:
        self.engine, self.database, self.maker, self.serde, self.topics = engine, database, maker, serde, topics
        self.sink_id, self.batch_rows, self.batch_seconds, self.clock = sink_id, batch_rows, batch_seconds, clock
        self.on_inserted = on_inserted or (lambda table, rows: None)  # observers (progress, benchmarks, fault drills)
        self.consumer = Consumer({**consumer_conf, "enable.auto.commit": False, "enable.auto.offset.store": False,
                                  "auto.offset.reset": "earliest", "partition.assignment.strategy": "cooperative-sticky"})
        self.producer = Producer({**producer_conf, "enable.idempotence": True, "acks": "all"})
        self._batch = _Batch()
        self._catch_up: dict[tuple[str, int], int] = {}  # resume positions ClickHouse is ahead of Kafka's commit with
        self._dead_letters_pending = 0
        self._dead_letter_failures: list[str] = []
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    def run(self, max_idle_s: float | None = None) -> None:
        """Consume until `stop()` (or `max_idle_s` without records, for tests and backfills)."""
        self.consumer.subscribe(list(self.topics.audited), on_assign=self._on_assign, on_revoke=self._on_revoke)
        idle_since = time.monotonic()
        try:
            while not self._stopping:
                messages = self.consumer.consume(num_messages=5000, timeout=0.1)
                if self._catch_up:
                    self._commit({})
                if messages:
                    idle_since = time.monotonic()
                now_ms = int(self.clock() * 1000)
                for message in messages:
                    self._add(message, now_ms)
                if self._batch.consumed and (len(self._batch.rows) >= self.batch_rows or time.monotonic() - self._batch.started >= self.batch_seconds):
                    self.flush()
                if max_idle_s is not None and not self._batch.consumed and time.monotonic() - idle_since > max_idle_s:
                    break
        finally:
            if self._batch.consumed:
                self.flush()
            self.producer.flush(30)
            self.consumer.close()

    def _add(self, message, now_ms: int) -> None:
        if message.error() is not None:
            if message.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", message.error())
            return
        where = Position(message.topic(), message.partition(), message.offset())
        if not self._batch.consumed:
            self._batch.started = time.monotonic()
        self._batch.consumed[(where.topic, where.partition)] = where.offset + 1
        try:
            row = self.maker.row(where, message.key(), message.value(), message.timestamp()[1], now_ms, message.headers() or ())
        except Exception as exc:  # a derived record that does not decode: keep its bytes in the dead-letter topic
            self._dead_letter(where, message.key(), message.value(), exc)
            return
        self._batch.rows.append(row)

    def flush(self) -> None:
        """Insert the held batch (retrying while ClickHouse is away), record it, then commit its offsets."""
        batch, self._batch = self._batch, _Batch()
        self._deliver_dead_letters()  # records dead-lettered while batching precede the rows inserted after them
        by_table: dict[str, list[Row]] = {}
        for row in batch.rows:
            by_table.setdefault(row.table, []).append(row)
        for table, table_rows in by_table.items():
            inserted = self._insert_resilient(table, table_rows)
            log.info("inserted %d rows into %s", len(inserted), table)
            self.on_inserted(table, len(inserted))
            self._record_batches(table, inserted)
        self._deliver_dead_letters()
        self._commit(batch.consumed)

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit `offsets` (next offset per topic/partition) and any resume position Kafka has not caught up with."""
        offsets, self._catch_up = {**self._catch_up, **offsets}, {}
        if offsets:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)

    def _insert_resilient(self, table: str, rows: list[Row]) -> list[Row]:
        """Insert rows in single-month runs; returns the rows inserted (refused rows are dead-lettered)."""
        inserted: list[Row] = []
        month_at = COLUMNS[table].index(MONTH_COLUMN[table])
        run: list[Row] = []
        run_month = None
        for row in rows:
            month = _month_of(row.values[month_at])
            if run and month != run_month:
                inserted += self._ledger(table, self._insert_run(table, run))
                run = []
            run.append(row)
            run_month = month
        if run:
            inserted += self._ledger(table, self._insert_run(table, run))
        return inserted

    def _insert_run(self, table: str, rows: list[Row]) -> list[Row]:
        delay = 0.25
        while True:
            try:
                self.engine.insert(f"{self.database}.{table}", COLUMNS[table], [r.values for r in rows])
                return rows
            except StoreError as exc:
                if not exc.context.get("transient"):
                    if exc.context.get("code") is not None and exc.context["code"] not in _DATA_ERROR_CODES:
                        raise
                    return self._split_refused(table, rows, exc)
                log.warning("ClickHouse unavailable (%s); holding %d rows, retrying in %.1fs", exc, len(rows), delay)
                self._hold(delay)
                delay = min(delay * 2, 10.0)
                if self._landed(rows[-1]):  # the insert succeeded but its answer was lost: inserting again would duplicate it
                    return rows

    def _ledger(self, table: str, rows: list[Row]) -> list[Row]:
        """Account the stored offsets of a table keyed by business id in the offset ledger (after the data insert).

        A merge may later collapse a re-emitted copy into its twin; the ledger keeps its offset (sinks/audit.py).
        """
        if table in LEDGERED and rows:
            key = COLUMNS[table].index(LEDGERED[table][1])
            now_ms = int(self.clock() * 1000)
            last = rows[-1].position
            self._insert_run_plain("offset_ledger", ("table_name", "kafka_topic", "kafka_partition", "kafka_offset", "record_key", "ingest_ms"),
                                   [(table, r.position.topic, r.position.partition, r.position.offset, r.values[key], now_ms) for r in rows],
                                   landed=lambda: (self._stored_through(last.topic, last.partition, wait=self._hold) or -1) >= last.offset)
        return rows

    def _landed(self, row: Row) -> bool:
        """Whether ClickHouse holds `row`. A run is one INSERT of one block into one month partition: one part,
        stored entirely or not at all, so its last row answers for the whole run."""
        stored = self._stored_through(row.position.topic, row.position.partition, wait=self._hold, source=row.table)
        return stored is not None and stored >= row.position.offset

    def _split_refused(self, table: str, rows: list[Row], error: StoreError) -> list[Row]:
        if len(rows) == 1:
            row = rows[0]
            self._dead_letter(row.position, row.key, row.value, error.with_context(table=table))
            self._deliver_dead_letters()  # before any later offset of its partition is stored
            return []
        middle = len(rows) // 2
        return self._insert_run(table, rows[:middle]) + self._insert_run(table, rows[middle:])

    def _hold(self, seconds: float) -> None:
        """Wait while keeping the group membership alive: pause the partitions and keep polling."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self.consumer.poll(0.1)  # paused partitions return nothing; serves rebalance callbacks
            if message is not None:  # a partition assigned meanwhile: its records join the next batch
                self._add(message, int(self.clock() * 1000))
        self.consumer.resume(assignment)

    def _dead_letter(self, where: Position, key: bytes | None, value: bytes | None, error: BaseException) -> None:
        if where.topic == self.topics.deadletter:  # never loop a dead letter back into its own topic
            log.error("dead letter at %s/%d/%d cannot be stored: %s", where.topic, where.partition, where.offset, error)
            return
        out = dead_letter(self.serde, self.topics, where, key, value, error, utc_now())
        self.producer.produce(out.topic, key=out.key, value=out.value, headers=list(out.headers), on_delivery=self._on_dead_letter_delivery)
        self._dead_letters_pending += 1

    def _on_dead_letter_delivery(self, error, message) -> None:
        if error is not None:
            self._dead_letter_failures.append(error.str())

    def _deliver_dead_letters(self) -> None:
        """Wait until Kafka acknowledged every dead letter produced; DeliveryError if one was not written.

        WHY before storing later offsets: the sink resumes after the highest offset ClickHouse holds, so a
        dead letter lost in a crash after a later row was stored would never be written again.
        """
        if not self._dead_letters_pending:
            return
        still_queued = self.producer.flush(30)
        failures, self._dead_letter_failures = self._dead_letter_failures, []
        if still_queued or failures:
            raise DeliveryError(f"{still_queued + len(failures)} dead letter(s) not acknowledged by Kafka"
                                + (f": {failures[0]}" if failures else " within 30s"), topic=self.topics.deadletter)
        self._dead_letters_pending = 0

    def _record_batches(self, table: str, rows: list[Row]) -> None:
        ranges: dict[tuple[str, int], list[int]] = {}
        for row in rows:
            span = ranges.setdefault((row.position.topic, row.position.partition), [row.position.offset, row.position.offset, 0])
            span[0], span[1], span[2] = min(span[0], row.position.offset), max(span[1], row.position.offset), span[2] + 1
        now_ms = int(self.clock() * 1000)
        records = [(table, t, p, lo, hi, n, self.sink_id, now_ms) for (t, p), (lo, hi, n) in ranges.items()]
        if records:
            self._insert_run_plain("sink_batches", ("table_name", "kafka_topic", "kafka_partition", "min_offset", "max_offset", "rows",
                                                    "sink_id", "inserted_ms"), records)

    def _insert_run_plain(self, table: str, columns: tuple[str, ...], rows: list[tuple],
                          landed: Callable[[], bool] = lambda: False) -> None:
        """Insert bookkeeping rows, retrying while ClickHouse is away; `landed` tells whether a failed attempt was stored."""
        delay = 0.25
        while True:
            try:
                self.engine.insert(f"{self.database}.{table}", columns, rows)
                return
            except StoreError as exc:
                if not exc.context.get("transient"):
                    raise
                self._hold(delay)
                delay = min(delay * 2, 10.0)
                if landed():
                    return

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition after the highest offset ClickHouse already holds for it, unless Kafka's committed
        offset is further on (records after the last stored row were dead-lettered). A position ClickHouse is
        ahead with (a crash between insert and commit) is committed at the next poll, so Kafka's lag stays true."""
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=30)}
        for tp in partitions:
            stored = self._stored_through(tp.topic, tp.partition)
            if stored is not None and stored + 1 > committed[(tp.topic, tp.partition)]:
                tp.offset = stored + 1
                self._catch_up[(tp.topic, tp.partition)] = stored + 1
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        if self._batch.consumed:
            self.flush()
        consumer.incremental_unassign(partitions)

    def _stored_through(self, topic: str, partition: int, wait: Callable[[float], None] = time.sleep,
                        source: str | None = None) -> int | None:
        """The highest offset of the partition ClickHouse holds: in `source`, by default where its offsets are
        accounted (the table, or its offset ledger for tables keyed by business id)."""
        table = self._table_of(topic)
        delay = 0.25
        while True:
            try:
                result = run_query(self.engine, self.database, "sink_resume", {"table_name": table, "topic": topic, "partition": partition},
                                   table=source or (LEDGERED[table][0] if table in LEDGERED else table))
                break
            except StoreError as exc:
                if not exc.context.get("transient"):
                    raise
                log.warning("ClickHouse unavailable while reading what it holds of %s/%d: %s", topic, partition, exc)
                wait(delay)
                delay = min(delay * 2, 10.0)
        through = result.rows[0][0] if result.rows else None
        return None if through is None or through < 0 else int(through)

    def _table_of(self, topic: str) -> str:
        if topic in self.topics.sources:
            return "raw_events"
        return {self.topics.case_events: "case_events", self.topics.breaches: "breaches", self.topics.deadletter: "dead_letters",
                self.topics.rules: "rule_files", self.topics.anchors: "chain_anchors"}[topic]


def _month_of(epoch_ms: int) -> tuple[int, int]:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.year, moment.month


def build_sink(settings, **options) -> Sink:
    """The sink for `settings`: the ingest user's ClickHouse connection, and the serializer and hasher of the pipeline."""
    from sinks.clickhouse import ServerEngine

    serde = Serde.from_settings(settings)
    topics = Topics.with_prefix(settings.topic_prefix)
    kafka = settings.kafka.librdkafka()
    return Sink({**kafka, "group.id": Groups.with_prefix(settings.topic_prefix).sink, "group.instance.id": f"sink-{settings.worker_id}"},
                kafka, ServerEngine.from_settings(settings.clickhouse), settings.clickhouse.database,
                RowMaker(serde, PersonalDataHasher(settings.pii_hmac_key), topics, Senders.from_settings(settings, load_district(settings.reference_dir))), serde, topics,
                sink_id=settings.worker_id, **options)
