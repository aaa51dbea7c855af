"""The worker: a Faust app whose one service moves records through `streams.pipeline` in batches.

Faust runs the process (its worker, services, signals, logging); the records go through librdkafka
(confluent-kafka), thousands per call, not through Faust's agents: Faust's consumer wraps every record
in a few asyncio tasks and its aiokafka producer sends each through coroutines and a pure-Python murmur2,
which cost more per event than Whistle's own work (the bench's passthrough phases, README). What this
worker keeps of the REFERENCE.md pitfalls:
- one consumer, one loop, no concurrency (faust #606 cannot arise); at-least-once with deterministic
  outputs (event ids, breach ids) and idempotent transitions, no exactly-once mode;
- static group membership (group.instance.id = WHISTLE_WORKER_ID), so a restart within the session
  timeout moves nothing;
- rebalances are eager, with the range assignor, but a case-stream partition whose changelog nobody else
  advanced stays in memory (the rule and why: `streams.pipeline.Ownership`); one gained is read back from
  the changelog (`streams.changelog`) when its first record comes;
- topics are read as raw bytes and decoded inside the pipeline, so an undecodable record is dead-lettered;
- raw records go to ingest in Kafka's append order across every raw partition (`streams.ordering`).

Delivery order, per batch (the raw and case-stream records one `consume` returned):
  1. compute outputs and state writes (pure, in memory; a key written several times keeps its last value);
  2. produce the outputs (case-stream records, case events, breaches, dead letters) and flush: Kafka
     acknowledged every one;
  3. produce the state writes to the changelog (a producer of their own, whose delivery reports tell
     `Ownership` where the changelog ends) and flush;
  4. commit the offsets of the records processed (synchronously).
A crash between 2 and 3 replays the batch against the old state, which re-emits the same deterministic
events (duplicates that consumers drop by id); a crash can never persist a state whose events were not
published, nor commit an offset whose effects were not. A record Kafka refuses, or any failure that
is not a bad record, ends the process before another commit (`exit_at_once`).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, cast

import faust
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from faust.app.base import BootStrategy

from infra.topics import partitions_of
from schemas.serde import Serde
from streams.changelog import ensure_changelog, read_partition, watermarks
from streams.domain.pii import PersonalDataHasher
from streams.domain.rules import Rules
from streams.domain.trusted_time import SkewBounds
from streams.ordering import AppendOrder
from streams.pipeline import CaseProcessor, DeadLetterWatch, Ingestor, Output, Ownership, Senders, StateWrite, dead_letter
from streams.rules import register_rules
from whistle.ground.deadletter import Position
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings
from whistle.ground.times import from_epoch_ms, utc_now

BATCH_RECORDS = 5000  # records one consume returns at most (or what POLL_S brings)
POLL_S = 0.05
GC_THRESHOLDS = (50_000, 20, 100)  # Python's defaults: (700, 10, 10)
ARRIVAL_WAIT_S = 1.0  # how long a raw partition with records in flight may hold the others back, the consumer drained (streams.ordering)
# librdkafka queues each fetched partition's records whole, one partition after another: small fetches interleave the raw
# partitions finely, so the append order finds every partition's next records within a few thousand consumed
FETCH_BYTES_PER_PARTITION = 65_536
ARRIVAL_QUEUE_MAX = 50_000  # raw records queued for the append order at most, before the head goes anyway
ARRIVAL_GRACE_MS = 100  # a caught-up partition holds back a record appended less than this ago (streams.ordering)
# A raw partition with this many records queued for the append order is paused, and resumed when it is down to RESUME_AT
# (streams.ordering's flow control): well below ARRIVAL_QUEUE_MAX over the 18 raw partitions, and enough left queued to
# bridge the fetch after a resume (librdkafka drops a paused partition's prefetched records and fetches them again)
ARRIVAL_PAUSE_AT, ARRIVAL_RESUME_AT = 1_000, 250
FLUSH_TIMEOUT_S = 120.0  # longer than the producer's message.timeout.ms: every record is reported first
DELIVERY_TIMEOUT_MS = 60_000
EXIT_TO_BE_RESTARTED = 75  # EX_TEMPFAIL: restart me
SESSION_TIMEOUT_MS = 60_000  # a static member that stops is noticed after this; a restart within it moves nothing
MAX_POLL_INTERVAL_MS = 900_000  # above RECOVERY_TIMEOUT_S: reading a partition back happens between two consumes
logger = logging.getLogger("whistle.worker")
METRICS_FILE = "metrics.prom"  # in the worker's directory (Settings.stack.state_dir / workers / WHISTLE_WORKER_ID)
WATERMARK_TIMEOUT_S = 30.0  # a changelog partition's end: a broker electing a leader answers within it
RECOVERY_TIMEOUT_S = 600.0  # reading one changelog partition back; a million open cases take well under this (README)


class BatchLoop:
    """The worker's consume -> process -> produce -> commit loop (delivery order: the module docstring).

    Runs in one thread of its own (librdkafka's calls block); everything it touches is touched only there,
    the rebalance callbacks included (librdkafka calls them from within `consume`, between two batches).
    """

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utc_now) -> None:
        """Reference data, policies and schemas are loaded (and validated) here, once, and checked against the rules
        registry (streams.rules) before anything is decided with them."""
        self.settings, self.clock = settings, clock
        self.topics = topics = Topics.with_prefix(settings.topic_prefix)
        inbox_partitions = partitions_of(topics.inbox, settings.topic_prefix)
        self.serde = serde = Serde.from_settings(settings)
        rules = Rules.load(settings.reference_dir)
        register_rules(settings, serde, rules.files(), clock=clock)
        self.ingestor = Ingestor(serde, rules.reference, PersonalDataHasher(settings.pii_hmac_key), topics,
                                 Senders.from_settings(settings, rules.reference), SkewBounds.of(settings.time))
        self.cases = CaseProcessor(serde, rules.reference, rules.policies, rules.calendar, topics, inbox_partitions)
        self.changelog = ensure_changelog(settings, inbox_partitions)
        self.raw_topics = frozenset(topics.sources)
        self.order: AppendOrder[Message] = AppendOrder(ARRIVAL_WAIT_S, ARRIVAL_QUEUE_MAX, ARRIVAL_GRACE_MS, ARRIVAL_PAUSE_AT,
                                                     ARRIVAL_RESUME_AT)
        self.raw_through: dict[tuple[str, int], int] = {}  # raw partition -> the offset after the last record (or end) consumed
        self.watch = DeadLetterWatch(topics.deadletter)
        worker_dir = settings.stack.state_dir / "workers" / settings.worker_id
        worker_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsFile(worker_dir / METRICS_FILE)
        kafka = settings.kafka
        self.consumer = Consumer({
            **kafka.librdkafka(), "group.id": Groups.with_prefix(settings.topic_prefix).cases, "group.instance.id": settings.worker_id,
            "client.id": f"whistle-{settings.worker_id}", "partition.assignment.strategy": "range",
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": True,
            "max.partition.fetch.bytes": FETCH_BYTES_PER_PARTITION, "session.timeout.ms": SESSION_TIMEOUT_MS, "max.poll.interval.ms": MAX_POLL_INTERVAL_MS, "logger": logger})
        self.producer = Producer({**kafka.producer(), "client.id": f"whistle-{settings.worker_id}", "message.timeout.ms": DELIVERY_TIMEOUT_MS,
                                  "delivery.report.only.error": True, "on_delivery": _exit_unless_delivered, "logger": logger})
        self.state_producer = Producer({**kafka.producer(), "client.id": f"whistle-{settings.worker_id}-state",
                                        "message.timeout.ms": DELIVERY_TIMEOUT_MS, "on_delivery": self._state_delivered, "logger": logger})
        self.ownership = Ownership()

    def run(self, stopping: threading.Event) -> None:
        """Process batches until `stopping` is set; the batch in hand is finished (flushed and committed) first."""
        self.consumer.subscribe([*self.topics.sources, self.topics.inbox], on_assign=self._assigned, on_revoke=self._revoked,
                                on_lost=self._lost)
        # Python's collector walks every live object of the older generations; the cases held are long-lived and acyclic,
        # so they are moved out of its reach (frozen) after each read-back, and young collections are made rarer
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            while not stopping.is_set():
                self.step(self.consumer.consume(BATCH_RECORDS, timeout=POLL_S))
        finally:
            self.consumer.close()  # a static member: the group keeps its partitions for it until the session timeout

    def step(self, messages: list[Message]) -> None:
        now_s = time.monotonic()
        inbox: list[tuple[Position, Message]] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:  # its offset: the partition's end when it was fetched
                    eof = _position(message)
                    self._consumed((eof.topic, eof.partition), eof.offset)
                elif error.fatal():
                    raise KafkaException(error)
                else:
                    logger.warning("consumer: %s", error)
                continue
            where = _position(message)
            if where.topic in self.raw_topics:
                self.order.add((where.topic, where.partition), where.offset, message.timestamp()[1], message)
                self._consumed((where.topic, where.partition), where.offset + 1)
            else:
                inbox.append((where, message))
        raw = self.order.ready(now_s, round(self.clock().timestamp() * 1000), self._caught_up, drained=len(messages) < BATCH_RECORDS)
        pause, resume = self.order.flow()
        if pause:
            self.consumer.pause([TopicPartition(*p) for p in pause])
        if resume:
            self.consumer.resume([TopicPartition(*p) for p in resume])
        if not raw and not inbox:
            return
        processed: dict[tuple[str, int], int] = {}
        outputs = self._ingest(raw, processed) + self._recover({where.partition for where, _ in inbox} - self.cases.owned())
        writes = self._cases(inbox, outputs, processed)
        _send(self.producer, outputs)  # 2. Kafka acknowledged every output ...
        _send(self.state_producer, [Output(self.changelog, w.key.encode(), w.value, partition=w.partition) for w in writes])  # 3. ... then the state
        # 4. ... then the offsets
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in processed.items()], asynchronous=False)
        self.metrics.write(self.watch.metrics() + self.cases.recovery_metrics() + self.order.metrics())

    def _consumed(self, partition: tuple[str, int], through: int) -> None:
        if partition[0] in self.raw_topics and through > self.raw_through.get(partition, -1):
            self.raw_through[partition] = through

    def _caught_up(self, partition: tuple[str, int]) -> bool:
        """Whether this worker has been handed every record of a raw partition that the broker's latest fetch response
        reported (librdkafka's cached high watermark, no request)."""
        through = self.raw_through.get(partition)
        if through is None:
            return False
        _, high = self.consumer.get_watermark_offsets(TopicPartition(*partition), cached=True)
        return 0 <= high <= through

    def _ingest(self, raw: list[tuple[tuple[str, int], int, Message]], processed: dict[tuple[str, int], int]) -> list[Output]:
        now, outputs = self.clock(), []
        for partition, offset, message in raw:
            where = Position(partition[0], partition[1], offset)
            outputs.append(self._watched("ingest", where, self.ingestor.process(where, message.key(), message.value(), now,
                                                                                 _arrival(message), _headers(message))))
            processed[partition] = offset + 1
        return outputs

    def _recover(self, partitions: set[int]) -> list[Output]:
        """Read back the case-stream partitions this batch needs and the worker does not hold; the changelog records it
        cannot decode become dead letters."""
        outputs = []
        for partition in sorted(partitions):
            _, end = watermarks(self.consumer, TopicPartition(self.changelog, partition), WATERMARK_TIMEOUT_S)
            for offset, key, value, error in self.cases.recover(partition, read_partition(self.settings, partition, RECOVERY_TIMEOUT_S)):
                outputs.append(dead_letter(self.serde, self.topics, Position(self.changelog, partition, offset), key.encode(), value,
                                           error, self.clock()))
            self.ownership.read_back(partition, end)
        if partitions:
            gc.freeze()
        return outputs

    def _cases(self, inbox: list[tuple[Position, Message]], outputs: list[Output], processed: dict[tuple[str, int], int]) -> Iterable[StateWrite]:
        now = self.clock()
        writes: dict[tuple[int, str], StateWrite] = {}
        for where, message in inbox:
            produced, written = self.cases.process(where, message.key(), message.value(), now)
            outputs += self._watched_all("cases", where, produced)
            writes.update(((write.partition, write.key), write) for write in written)  # only a key's last state is persisted
            processed[(where.topic, where.partition)] = where.offset + 1
        return writes.values()

    def _watched(self, stage: str, where: Position, output: Output) -> Output:
        self._watched_all(stage, where, [output])
        return output

    def _watched_all(self, stage: str, where: Position, outputs: list[Output]) -> list[Output]:
        run = self.watch.record(stage, outputs)
        if run is not None:
            logger.error("%s dead-lettered %d records in a row (the latest %s[%d]@%d): a producer, the key file or a deploy is broken",
                         stage, run, where.topic, where.partition, where.offset)
        return outputs

    def _state_delivered(self, error: KafkaError | None, message: Message) -> None:
        _exit_unless_delivered(error, message)
        where = _position(message)
        self.ownership.wrote(where.partition, where.offset)

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The worker's whole new assignment (eager rebalancing): release the cases `Ownership` says may be stale."""
        assigned = [(tp.topic, tp.partition) for tp in partitions]
        self.order.assign(p for p in assigned if p[0] in self.raw_topics)
        inbox = {partition for topic, partition in assigned if topic == self.topics.inbox}
        held = self.cases.owned()
        ends = {p: watermarks(consumer, TopicPartition(self.changelog, p), WATERMARK_TIMEOUT_S)[1] for p in held & inbox}
        released = self.ownership.released(held, inbox, ends)
        for partition in released:
            self.cases.release(partition)
        logger.info("assigned %s; kept case-stream partitions %s in memory, released %s", sorted(assigned),
                    sorted(self.cases.owned()), sorted(released))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Every partition is revoked at a rebalance: everything processed of them is committed (each batch is) and what
        is queued of them dropped; the cases wait for the new assignment (`_assigned`)."""
        paused = self.order.revoke((tp.topic, tp.partition) for tp in partitions)
        if paused:
            consumer.resume([TopicPartition(*p) for p in paused])
        for tp in partitions:
            self.raw_through.pop((tp.topic, tp.partition), None)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group went on without this worker (its session expired): another member may advance any of its cases."""
        self._revoked(consumer, partitions)
        for partition in self.cases.owned():
            self.cases.release(partition)
        logger.warning("lost the assignment %s: released every case", sorted((tp.topic, tp.partition) for tp in partitions))


class WithoutFaustKafka(BootStrategy):
    """Faust starts its services, not its own Kafka clients: `BatchService` consumes and produces."""

    enable_kafka = False


class WorkerApp(faust.App):
    BootStrategy = WithoutFaustKafka


class BatchService(faust.Service):
    """Runs `BatchLoop` in its own thread for the Faust worker; stopping the worker lets the batch in hand finish."""

    def __init__(self, loop_: BatchLoop, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches, self.stopping = loop_, threading.Event()

    @faust.Service.task
    async def _run(self) -> None:
        try:
            await asyncio.to_thread(self.batches.run, self.stopping)
        except Exception as exc:  # not a bad record (those are dead-lettered): Kafka, the changelog or a bug
            exit_at_once("the worker's batch loop failed", exc)

    async def on_stop(self) -> None:
        self.stopping.set()


def create_app(settings: Settings, clock: Callable[[], datetime] = utc_now) -> tuple[faust.App, BatchService]:
    """The worker's Faust app and the service that does its work."""
    app = WorkerApp(Groups.with_prefix(settings.topic_prefix).cases, web_enabled=False,
                    datadir=str(settings.stack.state_dir / "workers" / settings.worker_id))
    return app, BatchService(BatchLoop(settings, clock))


def _send(producer: Producer, outputs: list[Output]) -> None:
    """Produce `outputs` and wait until Kafka acknowledged them all; a refused record ends the process (`_exit_unless_delivered`)."""
    produce, poll = producer.produce, producer.poll
    for o in outputs:
        while True:
            try:
                produce(o.topic, o.value, o.key, o.partition if o.partition is not None else -1, headers=list(o.headers) or None)
                break
            except BufferError:  # the local queue is full: let librdkafka send some
                poll(0.01)
    if producer.flush(FLUSH_TIMEOUT_S):
        exit_at_once("Kafka did not acknowledge records in time", TimeoutError(f"{len(producer)} records unacknowledged"))


def exit_at_once(what: str, error: BaseException) -> NoReturn:
    """End the worker process now, committing nothing more.

    A record whose delivery failed must not have its input's offset committed, and nothing in the process
    may go on as if it had been written. Exiting leaves the committed offsets where every output is
    acknowledged; the orchestrator restarts the worker (same WHISTLE_WORKER_ID) and it resumes from there.
    """
    logger.critical("%s: %s: exiting without committing, to be restarted", what, error, exc_info=error)
    logging.shutdown()
    os._exit(EXIT_TO_BE_RESTARTED)


def _exit_unless_delivered(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        exit_at_once(f"Kafka did not acknowledge a record for {message.topic()}[{message.partition()}]", KafkaException(error))


class MetricsFile:
    """The worker's counters as a Prometheus textfile (point node_exporter's textfile collector at the worker's directory)."""

    def __init__(self, path: Path) -> None:
        self.path, self._written = path, ""

    def write(self, text: str) -> None:
        if text == self._written:
            return
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(self.path)  # atomic: a scrape never reads half a file
        self._written = text


def _position(message: Message) -> Position:
    """Where a consumed record (or a partition event) sits; librdkafka's types leave every field optional."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None
    return Position(topic, partition, -1 if offset is None else offset)


def _headers(message: Message) -> list[tuple[str, Any]]:
    return cast(list[tuple[str, Any]], message.headers() or [])


def _arrival(message: Message) -> datetime | None:
    """When Kafka appended the record, if the topic stamps LogAppendTime (as infra/topics.yaml sets the raw
    topics); None otherwise: a CreateTime stamp is the sender's claim, and the worker's clock stands in."""
    kind, timestamp_ms = message.timestamp()
    if kind != TIMESTAMP_LOG_APPEND_TIME:
        return None
    return from_epoch_ms(timestamp_ms)


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run one worker process until it is stopped (SIGTERM/SIGINT)."""
    from faust.worker import Worker

    app, batches = create_app(settings)
    worker = Worker(app, batches, loglevel=loglevel, quiet=True)
    # Faust's start-up spinner sets the root logger to DEBUG (whatever the log level), so every send
    # built a debug record in aiokafka and Faust (seen in py-spy profiles of a busy worker).
    worker.spinner = None
    worker.execute_from_commandline()
