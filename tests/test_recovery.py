"""A case processor rebuilt from its changelog decides exactly as the one that wrote it.

A simulated day runs through the pipeline in-process; at noon a second processor is recovered from
every state write so far (in log order, deletions included, as `streams.changelog` reads them back),
and both take the afternoon: their case events and breaches must be identical.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from schemas.serde import Serde
from streams.domain.calendar import load_calendar
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.pipeline import CaseProcessor, Ingestor, partition_for_key
from whistle.devtools.feed import source_record
from whistle.devtools.simulate import SimConfig, simulate
from whistle.edges.clock import tick_value
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics

START = datetime(2026, 6, 7, 16, 0, tzinfo=UTC)  # Monday 2026-06-08 00:00 Beijing time
NOON = START + timedelta(hours=12)
PARTITIONS = 6
SCHEMAS = {"camera": ("whistle.raw.camera", "CameraDetection"), "hotline": ("whistle.raw.hotline", "HotlineTicket"),
           "app": ("whistle.raw.app", "AppEvent")}


def test_a_processor_recovered_from_the_changelog_decides_as_the_one_that_wrote_it():
    reference, serde, topics = load_reference(), Serde(), Topics()
    ingest = Ingestor(serde, reference, PersonalDataHasher("test-key"), topics)
    inbox: list[tuple[int, bytes, bytes, datetime]] = []
    for offset, event in enumerate(simulate(reference, SimConfig(seed=5, start=START, incidents_per_day=1200))):
        topic, schema = SCHEMAS[event.source]
        routed = ingest.process(Position(topic, 0, offset), event.key.encode(), serde.encode(schema, source_record(event)), event.at)
        if routed.topic == topics.inbox:
            inbox.append((partition_for_key(routed.key.decode(), PARTITIONS), routed.key, routed.value, event.at))
    ticks = [(p, b"", tick_value(serde, p, START + timedelta(days=2)), START + timedelta(days=2)) for p in range(PARTITIONS)]
    morning = [record for record in inbox if record[3] < NOON]
    afternoon = [record for record in inbox if record[3] >= NOON] + ticks

    def processor() -> CaseProcessor:
        return CaseProcessor(serde, reference, load_policies(), load_calendar(), topics, PARTITIONS)

    def run(cases: CaseProcessor, records, changelog=None) -> list[tuple[str, bytes]]:
        outputs = []
        for offset, (partition, key, value, at) in enumerate(records):
            produced, writes = cases.process(Position(topics.inbox, partition, offset), key, value, at)
            outputs += [(o.topic, o.value) for o in produced]
            for write in writes if changelog is not None else ():
                changelog[write.partition].append((write.key, write.value))
        return outputs

    original, changelog = processor(), defaultdict(list)
    run(original, morning, changelog)
    assert any(value is None for records in changelog.values() for _, value in records)  # deletions are part of the test
    recovered = processor()
    for partition, records in changelog.items():
        recovered.recover(partition, records)

    expected = run(original, afternoon)
    assert {topic for topic, _ in expected} >= {topics.case_events, topics.breaches}
    assert run(recovered, afternoon) == expected
