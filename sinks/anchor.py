"""The anchored chain: a running digest over every record of each case-events partition, in Kafka's offset order.

WHY: each case's hash chain proves that its events belong together, but whoever can write ClickHouse can
re-seal a whole case consistently, or delete its last event, and every per-case chain still verifies. This
digest runs across all cases of a partition in offset order, is computed from Kafka's records (never from
the audit store) and is published to a topic of its own (`whistle.audit.anchors`, stored by the sink in
`chain_anchors`). `audit verify` recomputes it from the store (`anchor_findings`); `audit anchors` exports
the latest digests and their root for an outside party to keep. Keyed with WHISTLE_ANCHOR_KEY (HMAC), the
digests cannot be recomputed by anyone without the key, so not forged by a writer of the store either.

The digest of a partition starts at 32 zero bytes; each record at offset n moves it to
H(previous + n as 8 bytes big-endian + entry), H being SHA-256 or HMAC-SHA256 with the key, and the entry
the 32 bytes of the case event's `hash` (SHA-256 of the record's bytes when the record is not a case event;
the sink dead-letters such a record and keeps that hash of it).

The anchorer's order: fold the case events it consumes into each partition's digest; every interval (and on
stop), publish one anchor per partition that moved and wait until Kafka acknowledged them. It commits
nothing: at start it reads the anchors topic for where each digest stands and consumes the case events
after that, so after a crash it publishes the same anchors again (same ids), never a gap.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import astuple, dataclass, fields
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from schemas.serde import Serde
from sinks.audit import BROKEN, NOTED, DeadLetterPolicy, Finding, KafkaRange, run_query, verify_against_kafka
from sinks.clickhouse import Engine
from streams.changelog import read_log
from whistle.ground.errors import ConfigError, DeliveryError, StackError, WhistleError
from whistle.ground.names import Topics
from whistle.ground.settings import Settings
from whistle.ground.times import from_epoch_ms, to_epoch_ms

GENESIS = bytes(32)
log = logging.getLogger("whistle.anchor")


def entry_of(serde: Serde, value: bytes | None) -> bytes:
    """What a case-events record contributes: its event's hash, or the SHA-256 of its bytes when it is not a case event."""
    try:
        return bytes.fromhex(serde.decode(value, expect="CaseEvent", validate=False).record["hash"])
    except (WhistleError, ValueError, KeyError, TypeError):
        return hashlib.sha256(value or b"").digest()


def advance(digest: bytes, offset: int, entry: bytes, key: bytes | None = None) -> bytes:
    """The digest after the record at `offset` with `entry`."""
    message = digest + struct.pack(">q", offset) + entry
    return hmac.new(key, message, hashlib.sha256).digest() if key else hashlib.sha256(message).digest()


@dataclass(frozen=True, slots=True)
class Anchor:
    """One published digest (schemas/avro/ChainAnchor.avsc)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: int
    digest: str
    keyed: bool
    anchored_at_ms: int

    @property
    def anchor_id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.last_offset}"

    def as_record(self) -> dict:
        return {"anchor_id": self.anchor_id, "topic": self.topic, "partition": self.partition, "first_offset": self.first_offset,
                "last_offset": self.last_offset, "records": self.records, "digest": self.digest, "keyed": self.keyed,
                "anchored_at": from_epoch_ms(self.anchored_at_ms)}

    @classmethod
    def from_record(cls, record: Mapping) -> Anchor:
        return cls(record["topic"], record["partition"], record["first_offset"], record["last_offset"], record["records"], record["digest"],
                   record["keyed"], to_epoch_ms(record["anchored_at"]))


@dataclass(slots=True)
class _Running:
    first_offset: int
    last_offset: int  # -1 before the first record
    records: int
    digest: bytes
    moved: bool = False


def read_anchors(settings: Settings, serde: Serde, *, timeout_s: float = 30.0) -> list[Anchor]:
    """Every anchor published, in the order they were (the anchors topic has one partition)."""
    topic = Topics.with_prefix(settings.topic_prefix).anchors
    anchors = []
    for offset, _key, value in read_log(settings, topic, 0, timeout_s):
        try:
            anchors.append(Anchor.from_record(serde.decode(value, expect="ChainAnchor").record))
        except WhistleError as exc:
            raise ConfigError(f"{topic}[0]@{offset} is not an anchor record: {exc}", topic=topic, offset=offset) from exc
    return anchors


def latest_anchors(anchors: Iterable[Anchor], before_ms: int | None = None) -> list[Anchor]:
    """The furthest anchor of each partition (published before `before_ms`, if given), by topic and partition."""
    latest: dict[tuple[str, int], Anchor] = {}
    for anchor in anchors:
        if before_ms is not None and anchor.anchored_at_ms >= before_ms:
            continue
        held = latest.get((anchor.topic, anchor.partition))
        if held is None or anchor.last_offset > held.last_offset:
            latest[anchor.topic, anchor.partition] = anchor
    return [latest[k] for k in sorted(latest)]


EXPORT_COLUMNS = tuple(f.name for f in fields(Anchor))  # an export's anchors: these fields, as `audit anchors --format json` writes them


def export(anchors: list[Anchor], month: str | None) -> dict:
    """What `audit anchors --format json` writes for an outside party to keep: the anchors and their root."""
    return {"month": month, "root": anchors_root(anchors), "anchors": [dict(zip(EXPORT_COLUMNS, astuple(a))) for a in anchors]}


def from_export(document: Any, where: str) -> list[Anchor]:
    """The anchors of an `export`, once its root is found to be theirs; ConfigError naming `where` otherwise."""
    try:
        anchors = [Anchor(str(a["topic"]), int(a["partition"]), int(a["first_offset"]), int(a["last_offset"]), int(a["records"]),
                          str(a["digest"]), bool(a["keyed"]), int(a["anchored_at_ms"])) for a in document["anchors"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: not an anchors export (`whistle audit anchors --format json`): {exc}", file=where) from exc
    if anchors_root(anchors) != document.get("root"):
        raise ConfigError(f"{where}: root {document.get('root')} is not the root of the anchors it lists ({anchors_root(anchors)})",
                          file=where, field="root")
    return anchors


def anchors_root(anchors: Iterable[Anchor]) -> str:
    """One hash over the latest digest of every partition: SHA-256 of the lines `<topic> <partition> <last_offset> <digest>`."""
    lines = "".join(f"{a.topic} {a.partition} {a.last_offset} {a.digest}\n" for a in sorted(anchors, key=lambda a: (a.topic, a.partition)))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


class Anchorer:
    """Consumes the case-events topic and publishes anchors (see the module docstring for the order)."""

    def __init__(self, settings: Settings, serde: Serde, *, clock: Callable[[], float] = time.time, timeout_s: float = 30.0) -> None:
        self.settings, self.serde, self.clock, self.timeout_s = settings, serde, clock, timeout_s
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.key = settings.anchor_key.value.encode("utf-8") or None
        self.running: dict[int, _Running] = {}
        self.published = 0

    def run(self, should_stop: Callable[[], bool], max_idle_s: float | None = None) -> None:
        """Anchor until `should_stop()` (or `max_idle_s` without a record, for tests and backfills), then anchor what moved."""
        consumer = Consumer({**self.settings.kafka.librdkafka(), "group.id": f"{self.topics.anchors}-anchorer", "enable.auto.commit": False,
                             "enable.partition.eof": False, "log_level": 0})
        producer = Producer({**self.settings.kafka.librdkafka(), "enable.idempotence": True, "acks": "all", "log_level": 0})
        try:
            consumer.assign(self._start(consumer))
            last_publish = idle_since = time.monotonic()
            while not should_stop():
                messages = consumer.consume(10_000, timeout=0.2)
                for message in messages:
                    error, partition, offset = message.error(), message.partition(), message.offset()
                    if error is not None:
                        if error.fatal():
                            raise StackError(f"reading {self.topics.case_events} failed: {error}", topic=self.topics.case_events)
                        continue
                    assert partition is not None and offset is not None  # a consumed record without error has its position
                    self._fold(partition, offset, message.value())
                if messages:
                    idle_since = time.monotonic()
                if time.monotonic() - last_publish >= self.settings.anchor_interval_s:
                    self._publish(producer)
                    last_publish = time.monotonic()
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
            self._publish(producer)
        except KafkaException as exc:
            raise StackError(f"the anchorer lost Kafka: {exc}", topic=self.topics.case_events) from exc
        finally:
            consumer.close()

    def _start(self, consumer: Consumer) -> list[TopicPartition]:
        """Where each partition's digest stands (its latest anchor), and the offsets to consume from."""
        topic = self.topics.case_events
        metadata = consumer.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise StackError(f"Kafka has no topic {topic} to anchor", topic=topic)
        for anchor in latest_anchors(a for a in read_anchors(self.settings, self.serde, timeout_s=self.timeout_s) if a.topic == topic):
            if anchor.keyed != bool(self.key):
                raise ConfigError(f"the anchors of {topic} are {'keyed' if anchor.keyed else 'not keyed'}, but WHISTLE_ANCHOR_KEY is "
                                  f"{'empty' if anchor.keyed else 'set'}: a digest cannot change its key half-way", field="anchor_key")
            self.running[anchor.partition] = _Running(anchor.first_offset, anchor.last_offset, anchor.records, bytes.fromhex(anchor.digest))
        assignment = []
        for partition in sorted(metadata.partitions):
            held = self.running.get(partition)
            if held is None:
                low, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout_s)
                held = self.running[partition] = _Running(low, -1, 0, GENESIS)
            assignment.append(TopicPartition(topic, partition, held.last_offset + 1 if held.last_offset >= 0 else held.first_offset))
        return assignment

    def _fold(self, partition: int, offset: int, value: bytes | None) -> None:
        held = self.running[partition]
        if offset <= held.last_offset:
            return
        held.digest = advance(held.digest, offset, entry_of(self.serde, value), self.key)
        held.last_offset, held.records, held.moved = offset, held.records + 1, True

    def _publish(self, producer: Producer) -> None:
        now_ms = int(self.clock() * 1000)
        failures: list[str] = []

        def delivered(error, message) -> None:
            if error is not None:
                failures.append(str(error))

        moved = [(p, r) for p, r in sorted(self.running.items()) if r.moved]
        if not moved:
            return
        for partition, held in moved:
            anchor = Anchor(self.topics.case_events, partition, held.first_offset, held.last_offset, held.records, held.digest.hex(),
                            self.key is not None, now_ms)
            producer.produce(self.topics.anchors, self.serde.encode("ChainAnchor", anchor.as_record()), anchor.anchor_id.encode("utf-8"),
                             partition=0, on_delivery=delivered)
        left = producer.flush(self.timeout_s)
        if left or failures:
            raise DeliveryError(f"Kafka did not acknowledge {left or len(failures)} anchors: {'; '.join(failures)}", topic=self.topics.anchors)
        for _, held in moved:
            held.moved = False
        self.published += len(moved)


def anchor_findings(anchors: Iterable[Anchor], entries: Callable[[int], Iterable[tuple[int, str]]], committed: Mapping[int, int],
                    key: bytes | None) -> list[Finding]:
    """The anchors of one case-events topic against what the store holds (pure but for `entries`).

    `entries(partition)` gives the stored (offset, entry hex) of the partition in offset order; `committed` the
    sink's committed offset per partition (the next it reads: everything below it is stored or dead-lettered).
    An anchor below `committed` must be recomputed exactly from the store: otherwise it is broken (`anchor`),
    naming the first offset missing or the offsets between the last matching anchor and this one. Anchors at or
    past `committed` wait for the sink (noted). Keyed anchors without the key cannot be recomputed (noted).
    """
    by_partition: dict[tuple[str, int], dict[int, Anchor]] = {}
    findings: list[Finding] = []
    for anchor in anchors:
        held = by_partition.setdefault((anchor.topic, anchor.partition), {}).setdefault(anchor.last_offset, anchor)
        if held.digest != anchor.digest or held.first_offset != anchor.first_offset:
            findings.append(Finding("anchor", BROKEN, anchor.topic, anchor.partition, anchor.first_offset, anchor.last_offset, anchor.records,
                                    f"two anchors through offset {anchor.last_offset} disagree: {held.digest} and {anchor.digest}"))
    for (topic, partition), through in sorted(by_partition.items()):
        ordered = [through[k] for k in sorted(through)]
        if any(a.keyed for a in ordered) and key is None:
            findings.append(Finding("anchor", NOTED, topic, partition, None, None, len(ordered),
                                    "anchors are keyed and WHISTLE_ANCHOR_KEY was not given: not recomputed"))
            continue
        checkable = [a for a in ordered if a.last_offset < committed.get(partition, 0)]
        if len(checkable) < len(ordered):
            findings.append(Finding("anchor", NOTED, topic, partition, None, None, len(ordered) - len(checkable),
                                    "anchors past the sink's committed offset: checked once it has stored them"))
        if checkable:
            findings.extend(_partition_anchor_findings(topic, partition, checkable, entries(partition), key))
    return findings


def _partition_anchor_findings(topic: str, partition: int, anchors: list[Anchor], entries: Iterable[tuple[int, str]],
                               key: bytes | None) -> list[Finding]:
    digest, records, expected = GENESIS, 0, anchors[0].first_offset
    stored = iter(entries)
    matched = anchors[0].first_offset - 1

    def broken(anchor: Anchor, detail: str) -> list[Finding]:
        return [Finding("anchor", BROKEN, topic, partition, matched + 1, anchor.last_offset, anchor.last_offset - matched, detail)]

    for anchor in anchors:
        while expected <= anchor.last_offset:
            item = next(stored, None)
            while item is not None and item[0] < expected:  # before the anchored range, or a second copy of an offset
                item = next(stored, None)
            if item is None or item[0] != expected:
                return broken(anchor, f"offset {expected} is anchored (digest through {anchor.last_offset}) but not in the store")
            try:
                entry = bytes.fromhex(item[1])
            except ValueError:
                entry = b""
            digest, records, expected = advance(digest, expected, entry, key), records + 1, expected + 1
        if digest.hex() != anchor.digest or records != anchor.records:
            return broken(anchor, f"the store's digest through offset {anchor.last_offset} is {digest.hex()}, the anchor's {anchor.digest}: "
                                  f"a record between offsets {matched + 1} and {anchor.last_offset} was changed")
        matched = anchor.last_offset
    return []


def verify_anchors(engine: Engine, database: str, anchors: Iterable[Anchor], kafka: Iterable[KafkaRange], key: bytes | None,
                   case_events: str) -> list[Finding]:
    """`anchor_findings` for the `case_events` topic, the store read through sinks/queries/verify_anchor_entries.sql and the
    sink's committed offsets taken from Kafka's ranges (`read_kafka_ranges`); a partition with records and no anchor is noted."""
    ranges = [k for k in kafka if k.topic == case_events]
    listed = [a for a in anchors if a.topic == case_events]

    def entries(partition: int) -> list[tuple[int, str]]:
        return [(int(offset), entry) for offset, entry in
                run_query(engine, database, "verify_anchor_entries", {"topic": case_events, "partition": partition}).rows]

    anchored = {a.partition for a in listed}
    unanchored = [Finding("anchor", NOTED, k.topic, k.partition, k.low, k.high - 1, k.high - k.low,
                          "no anchor yet: is the anchorer (`whistle anchor`) running?") for k in ranges if k.high > k.low and k.partition not in anchored]
    return unanchored + anchor_findings(listed, entries, {k.partition: k.committed or 0 for k in ranges}, key)


def verify_all(engine: Engine, database: str, kafka: list[KafkaRange], case_stream: list[KafkaRange], dead_letters: DeadLetterPolicy,
               anchors: list[Anchor] | None, key: bytes | None, case_events: str) -> list[Finding]:
    """Everything `whistle audit verify` reports, in one place for the CLI and the dashboard: `verify_against_kafka`, then
    the anchors (None: not checked, for a reader that has no anchors to hold the store to)."""
    findings = verify_against_kafka(engine, database, kafka, case_stream=case_stream, dead_letters=dead_letters)
    return findings if anchors is None else findings + verify_anchors(engine, database, anchors, kafka, key, case_events)
