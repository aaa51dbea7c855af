"""The pure pipeline functions (`Ingestor`, `CaseProcessor`) in this process, no Kafka: the domain code's own ceiling,
and the outputs the runs through Kafka are checked against (`whistle.devtools.bench.outputs`)."""
from __future__ import annotations

import time
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


def pipeline_rate(settings: Settings, reference: DistrictReference, messages: list[Message]) -> tuple[dict[str, Any], list[Output]]:
    """Events/s of `Ingestor` then `CaseProcessor` over the messages, in this process: no Kafka, no Faust; and every
    record it would produce (ingest's dead letters, then the case stream's outputs), in case-stream order."""
    topics = Topics()
    serde = Serde.from_settings(settings)
    partitions = partitions_of(topics.inbox)
    ingestor = Ingestor(serde, reference, PersonalDataHasher(settings.pii_hmac_key), topics, Senders.from_settings(settings, reference),
                        SkewBounds.of(settings.time))
    cases = CaseProcessor(serde, reference, load_policies(), load_calendar(), topics, partitions)
    topic_of = {"camera": topics.camera, "hotline": topics.hotline, "app": topics.app}
    now = utc_now()
    began = time.perf_counter()
    routed = [ingestor.process(Position(topic_of[m.source], 0, n), m.key, m.value, now, headers=m.headers) for n, m in enumerate(messages)]
    ingested = time.perf_counter()
    offsets = [0] * partitions
    outputs = [out for out in routed if out.topic != topics.inbox]
    writes: dict[tuple[int, str], StateWrite] = {}
    for n, out in enumerate(routed, 1):
        if out.topic != topics.inbox:
            continue
        partition = partition_for_key(out.key.decode(), partitions)
        produced, written = cases.process(Position(topics.inbox, partition, offsets[partition]), out.key, out.value, now)
        offsets[partition] += 1
        outputs += produced
        writes.update(((write.partition, write.key), write) for write in written)
        if n % BATCH_RECORDS == 0:  # as the worker persists state: a batch's last write per key, encoded once
            _encoded = [write.value for write in writes.values()]
            writes.clear()
    _encoded = [write.value for write in writes.values()]
    done = time.perf_counter()
    count = len(messages)
    figures = {"events": count, "ingest_us_per_event": round((ingested - began) / count * 1e6, 1),
               "cases_us_per_record": round((done - ingested) / max(1, sum(offsets)) * 1e6, 1), "outputs": len(outputs),
               "dead_letters": sum(out.topic == topics.deadletter for out in outputs), "events_per_s": round(count / (done - began))}
    return figures, outputs
