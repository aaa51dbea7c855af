"""The pure pipeline functions (`Ingestor`, `CaseProcessor`) in this process, no Kafka: the domain code's own ceiling,
and the outputs the runs through Kafka are checked against (`whistle.devtools.bench.outputs`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infra.topics import partitions_of
from schemas.serde import Serde
from streams.app import BATCH_RECORDS
from streams.domain.calendar import load_calendar
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import DistrictReference
from streams.domain.sla import load_policies
from streams.domain.trusted_time import SkewBounds
from streams.pipeline import CaseProcessor, Ingestor, Output, Senders, StateWrite, partition_for_key
from whistle.devtools.bench.events import Message
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics
from whistle.ground.settings import Settings
from whistle.ground.times import utc_now


@dataclass
class PureRun:
    """What the pure pipeline did with a list of messages, and how long its two stages took (wall and CPU seconds)."""

    routed: list[Output]  # ingest's output per message: a case-stream record or a dead letter
    produced: list[Output] = field(default_factory=list)  # the case stage's outputs, in case-stream order
    written: list[StateWrite] = field(default_factory=list)  # every state write, in order
    inbox_records: int = 0
    ingest_s: float = 0.0
    cases_s: float = 0.0
    ingest_cpu_s: float = 0.0
    cases_cpu_s: float = 0.0


def run_pure(settings: Settings, reference: DistrictReference, messages: list[Message], now: datetime) -> PureRun:
    """`Ingestor` then `CaseProcessor` over the messages in their order, as one worker would (no Kafka): each message at
    its own position of its raw topic's partition 0, each case-stream record at its partition's next offset, a batch's
    last state per key encoded once per `BATCH_RECORDS` records as the worker persists it."""
    topics = Topics()
    serde = Serde.from_settings(settings)
    partitions = partitions_of(topics.inbox)
    ingestor = Ingestor(serde, reference, PersonalDataHasher(settings.pii_hmac_key), topics, Senders.from_settings(settings, reference),
                        SkewBounds.of(settings.time))
    cases = CaseProcessor(serde, reference, load_policies(), load_calendar(), topics, partitions)
    topic_of = {"camera": topics.camera, "hotline": topics.hotline, "app": topics.app}
    began, began_cpu = time.perf_counter(), time.process_time()
    run = PureRun([ingestor.process(Position(topic_of[m.source], 0, n), m.key, m.value, now, headers=m.headers) for n, m in enumerate(messages)])
    ingested, ingested_cpu = time.perf_counter(), time.process_time()
    offsets = [0] * partitions
    latest: dict[tuple[int, str], StateWrite] = {}
    for n, out in enumerate(run.routed, 1):
        if out.topic != topics.inbox:
            continue
        assert out.key is not None  # the ingest stage keys every case-stream record
        partition = partition_for_key(out.key.decode(), partitions)
        produced, written = cases.process(Position(topics.inbox, partition, offsets[partition]), out.key, out.value, now)
        offsets[partition] += 1
        run.produced += produced
        run.written += written
        latest.update(((write.partition, write.key), write) for write in written)
        if n % BATCH_RECORDS == 0:
            _encoded = [write.value for write in latest.values()]
            latest.clear()
    _encoded = [write.value for write in latest.values()]
    done, done_cpu = time.perf_counter(), time.process_time()
    run.inbox_records = sum(offsets)
    run.ingest_s, run.cases_s = ingested - began, done - ingested
    run.ingest_cpu_s, run.cases_cpu_s = ingested_cpu - began_cpu, done_cpu - ingested_cpu
    return run


def pipeline_rate(settings: Settings, reference: DistrictReference, messages: list[Message]) -> tuple[dict[str, Any], list[Output]]:
    """Events/s of the pure pipeline over the messages, in this process: no Kafka, no Faust; and every record it would
    produce (ingest's dead letters, then the case stream's outputs), in case-stream order."""
    run = run_pure(settings, reference, messages, utc_now())
    topics = Topics()
    outputs = [out for out in run.routed if out.topic != topics.inbox] + run.produced
    count = len(messages)
    figures = {"events": count, "ingest_us_per_event": round(run.ingest_s / count * 1e6, 1),
               "cases_us_per_record": round(run.cases_s / max(1, run.inbox_records) * 1e6, 1), "outputs": len(outputs),
               "dead_letters": sum(out.topic == topics.deadletter for out in outputs),
               "events_per_s": round(count / (run.ingest_s + run.cases_s))}
    return figures, outputs
