"""The Faust worker: two thin agents around `streams.pipeline`.

Faust settings that matter (see REFERENCE.md, faust-streaming pitfalls):
- agents run with concurrency=1 (higher values can commit past in-flight messages, faust #606);
- processing_guarantee at_least_once: exactly-once mode is unreliable on aiokafka; instead outputs
  are deterministic (event ids, breach ids) and state transitions idempotent;
- static group membership (consumer_group_instance_id = WHISTLE_WORKER_ID) to avoid needless
  rebalances;
- case state lives in `CaseProcessor` only, persisted to our own compacted changelog
  (`streams.changelog`, replicated per settings) rather than a Faust table: a partition given to this
  worker is read back from it on its first batch, ~5x faster than Faust's table recovery and
  without a second copy of every case in memory;
- rebalances are eager (every partition revoked), but a partition this worker owned without a break
  stays in memory: nothing is released on revocation; once the new assignment (and its generation)
  is known, `Ownership` names the partitions to release, and only partitions gained are read back
  (the rule and why it is safe: `streams.pipeline.Ownership`);
- topics are read as raw bytes and decoded inside the pipeline, so an undecodable record is
  dead-lettered instead of being acked and thrown into the agent by Faust (faust #315, #527).

Delivery order of the cases agent, per batch of case-stream records:
  1. compute outputs and state writes (pure, in memory; a key written several times keeps its last value);
  2. send the outputs (case events, breaches, dead letters) and wait until Kafka acknowledged them;
  3. write the state to the changelog (not awaited: Faust flushes the producer before it commits);
  4. Faust acks the batch and later commits its offsets, after flushing the producer.
A crash between 2 and 3 replays the batch against the old state, which re-emits the same
deterministic events (duplicates that consumers drop by id); a crash can never persist a state
whose events were not published. A record Kafka refuses, or any failure that is not a bad record,
ends the process before another commit (`exit_at_once`).
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

from infra.topics import partitions_of
from schemas.serde import Serde
from streams.changelog import ensure_changelog, read_partition
from streams.domain.pii import PersonalDataHasher
from streams.domain.rules import Rules
from streams.domain.trusted_time import SkewBounds
from streams.pipeline import CaseProcessor, DeadLetterWatch, Ingestor, Output, Ownership, Senders, StateWrite, dead_letter
from streams.rules import register_rules
from whistle.ground.deadletter import Position
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings
from whistle.ground.times import from_epoch_ms, utc_now

BATCH_RECORDS = 1000  # records an agent takes at once (or what 50 ms brings)
LOG_APPEND_TIME = 1  # Kafka's timestamp type of a record stamped by the broker on append
EXIT_TO_BE_RESTARTED = 75  # EX_TEMPFAIL: restart me
logger = logging.getLogger("whistle.worker")
METRICS_FILE = "metrics.prom"  # in the worker's directory (Settings.stack.state_dir / workers / WHISTLE_WORKER_ID)
RECOVERY_TIMEOUT_S = 600.0  # reading one changelog partition back; a million open cases take well under this (README)



def create_app(settings: Settings, clock: Callable[[], datetime] = utc_now) -> faust.App:
    """Build the worker app: reference data, policies and schemas are loaded (and validated) here, once, and checked
    against the rules registry (streams.rules) before anything is decided with them."""
    topics = Topics.with_prefix(settings.topic_prefix)
    inbox_partitions = partitions_of(topics.inbox, settings.topic_prefix)
    serde = Serde.from_settings(settings)
    rules = Rules.load(settings.reference_dir)
    reference, policies, calendar = rules.reference, rules.policies, rules.calendar
    register_rules(settings, serde, rules.files(), clock=clock)
    ingestor = Ingestor(serde, reference, PersonalDataHasher(settings.pii_hmac_key), topics, Senders.from_settings(settings, reference),
                        SkewBounds.of(settings.time))
    cases = CaseProcessor(serde, reference, policies, calendar, topics, inbox_partitions)
    worker_dir = settings.stack.state_dir / "workers" / settings.worker_id
    worker_dir.mkdir(parents=True, exist_ok=True)

    app = faust.App(
        Groups.with_prefix(settings.topic_prefix).cases,
        broker=[f"kafka://{server}" for server in settings.kafka.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",
        processing_guarantee="at_least_once",
        topic_replication_factor=settings.kafka.replication_factor,
        topic_partitions=inbox_partitions,
        topic_allow_declare=True,
        consumer_group_instance_id=settings.worker_id,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=True,
        table_standby_replicas=0,
        producer_acks=-1,
        producer_linger_ms=5,
        web_enabled=False,
        datadir=str(worker_dir),
        TableManager=SeekingTableManager,
    )
    raw_in = app.topic(*topics.sources, key_serializer="raw", value_serializer="raw")
    inbox_in = app.topic(topics.inbox, key_serializer="raw", value_serializer="raw", partitions=inbox_partitions)
    changelog = ensure_changelog(settings, inbox_partitions)

    async def send(outputs: list[Output]) -> list[asyncio.Future]:
        """Hand `outputs` to the app's producer; returns their delivery futures.

        Straight to the producer, not through Faust's Topic/Channel layers: those wrap each record in
        future-message objects, a buffer and a sensor round, and add nothing here, where keys and values
        are bytes already and every topic is provisioned (what skipping them saves: `whistle bench`
        backlog phase, README). Faust still flushes this producer before it commits
        offsets, so at-least-once holds.
        """
        producer, futures = app.producer, []
        for o in outputs:
            # faust types send() as returning Awaitable[RecordMetadata]; its aiokafka producer returns aiokafka's asyncio Future
            future: asyncio.Future = await producer.send(o.topic, o.key, o.value, o.partition, None, list(o.headers) or None)  # type: ignore[assignment]
            future.add_done_callback(_exit_unless_delivered)
            futures.append(future)
        return futures

    watch = DeadLetterWatch(topics.deadletter)
    metrics = MetricsFile(worker_dir / METRICS_FILE)

    def watched(stage: str, where: Position, outputs: list[Output]) -> list[Output]:
        run = watch.record(stage, outputs)
        if run is not None:
            logger.error("%s dead-lettered %d records in a row (the latest %s[%d]@%d): a producer, the key file or a deploy is broken",
                         stage, run, where.topic, where.partition, where.offset)
        return outputs

    @app.agent(raw_in, concurrency=1)
    async def ingest(stream):
        try:
            async for batch in stream.take_events(BATCH_RECORDS, within=0.05):
                now = clock()
                outputs = []
                for e in in_produce_order(batch):
                    where = _position(e)
                    outputs += watched("ingest", where, [ingestor.process(where, e.message.key, e.message.value, now, _arrival(e.message),
                                                                          e.message.headers or ())])
                await send(outputs)
                metrics.write(watch.metrics() + cases.recovery_metrics())
        except Exception as exc:  # not a bad record (those are dead-lettered): Kafka or a bug
            exit_at_once("the ingest agent failed", exc)

    @app.agent(inbox_in, concurrency=1)
    async def case_stream(stream):
        try:
            async for batch in stream.take_events(BATCH_RECORDS, within=0.05):
                for partition in sorted({e.message.partition for e in batch} - cases.owned()):
                    # in a thread, so that the producer and the consumer's fetches go on meanwhile; a rebalance
                    # waits for this batch (Faust's wait_empty), so no partition is released under the reader
                    refused = await asyncio.to_thread(cases.recover, partition, read_partition(settings, partition, RECOVERY_TIMEOUT_S))
                    await asyncio.gather(*await send([dead_letter(serde, topics, Position(changelog, partition, offset), key.encode(), value, error, clock())
                                                      for offset, key, value, error in refused]))
                now = clock()
                outputs: list[Output] = []
                writes: dict[tuple[int, str], StateWrite] = {}
                for event in batch:
                    where = _position(event)
                    produced, written = cases.process(where, event.message.key, event.message.value, now)
                    outputs += watched("cases", where, produced)
                    writes.update(((write.partition, write.key), write) for write in written)  # only a key's last state is persisted
                await asyncio.gather(*await send(outputs))  # 2. Kafka acknowledged every output ...
                # 3. ... before the state that follows from them is persisted
                await send([Output(changelog, w.key.encode(), w.value, partition=w.partition) for w in writes.values()])
                metrics.write(watch.metrics() + cases.recovery_metrics())
        except Exception as exc:  # not a bad record (those are dead-lettered): Kafka, the changelog or a bug
            exit_at_once("the cases agent failed", exc)

    ownership = Ownership()

    # mode types every receiver as (sender, *args, signal=..., **kwargs); this signal sends exactly one argument, the assigned set
    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def keep_continuously_owned(app_: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        # Faust's aiokafka driver sets the group generation on the app before it sends this signal
        released = ownership.rebalanced(cases.owned(), {tp.partition for tp in assigned if tp.topic == topics.inbox}, app_.consumer_generation_id)
        for partition in released:
            cases.release(partition)
        logger.info("generation %d: kept case-stream partitions %s in memory, released %s",
                    app_.consumer_generation_id, sorted(cases.owned()), sorted(released))

    return app


def exit_at_once(what: str, error: BaseException) -> NoReturn:
    """End the worker process now, committing nothing more.

    Faust would restart a crashed agent and ack the batch it dropped, and it commits offsets after a
    flush even if a record failed to deliver: either way a record's effects would be lost while its
    offset is committed. Exiting leaves the committed offsets where every output is acknowledged; the
    orchestrator restarts the worker (same WHISTLE_WORKER_ID) and it resumes from there.
    """
    logger.critical("%s: %s: exiting without committing, to be restarted", what, error, exc_info=error)
    logging.shutdown()
    os._exit(EXIT_TO_BE_RESTARTED)


def _exit_unless_delivered(future: asyncio.Future) -> None:
    if not future.cancelled() and (error := future.exception()) is not None:
        exit_at_once("Kafka did not acknowledge a record", error)


def in_produce_order(batch: list) -> list:
    """A batch from several topics/partitions interleaved by Kafka timestamp, each partition kept in its own order.

    Kafka defines no order across partitions, and a fetch returns them in chunks; merging by timestamp lets
    records produced in order on different channels (a report, then another channel's report of the same
    incident) reach the case stream in that order when they arrive in one batch.
    """
    runs: dict[tuple[str, int], list] = {}
    for event in batch:
        runs.setdefault((event.message.topic, event.message.partition), []).append(event)
    return list(heapq.merge(*runs.values(), key=lambda event: event.message.timestamp))


class SeekBeforeResumingRecovery(Recovery):
    """Faust's recovery, with the consumer's flow stopped while the stream partitions are sought back.

    At the end of a rebalance faust-streaming 0.15.x resumes the stream partitions and only then
    seeks them to their committed offsets, while the consumer flow is already running (it was resumed
    to read the changelogs). Records fetched from the old position in between are processed, then
    fetched again; and a record can fall into the hole between the two reads and be committed past
    without ever reaching an agent (tests/test_streams_integration.py, two workers sharing the case
    stream, lost a handling action this way in about one run in four). Stopping the flow first makes
    the seek happen before any record of the new assignment is handed out; Faust resumes the flow
    itself once the seek is done.
    """

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super().on_recovery_completed(generation_id)


class SeekingTableManager(TableManager):
    """Faust's table manager, with `SeekBeforeResumingRecovery` (Faust has no setting for the Recovery class)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekBeforeResumingRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


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


def _arrival(message: Any) -> datetime | None:
    """When Kafka appended the record, if the topic stamps LogAppendTime (as infra/topics.yaml sets the raw
    topics); None otherwise: a CreateTime stamp is the sender's claim, and the worker's clock stands in."""
    if message.timestamp_type != LOG_APPEND_TIME:
        return None
    return from_epoch_ms(round(message.timestamp * 1000))


def _position(event) -> Position:
    message = event.message
    return Position(message.topic, message.partition, message.offset)


def _credentials(settings: Settings):
    kafka = settings.kafka
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_password.value,
                                     mechanism=kafka.sasl_mechanism,
                                     ssl_context=_ssl_context(settings) if "SSL" in kafka.security_protocol else None)
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    return None


def _ssl_context(settings: Settings):
    import ssl

    return ssl.create_default_context(cafile=settings.kafka.ssl_ca_location)


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run one worker process until it is stopped (SIGTERM/SIGINT)."""
    from faust.worker import Worker

    app = create_app(settings)
    worker = Worker(app, loglevel=loglevel, quiet=True)
    # Faust's start-up spinner sets the root logger to DEBUG (whatever the log level), so every send
    # built a debug record in aiokafka and Faust (seen in py-spy profiles of a busy worker).
    worker.spinner = None
    worker.execute_from_commandline()
