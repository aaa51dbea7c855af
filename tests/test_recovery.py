"""A case processor rebuilt from its changelog decides exactly as the one that wrote it.

A simulated day runs through the pipeline in-process; at noon a second processor is recovered from
every state write so far (in log order, deletions included, as `streams.changelog` reads them back),
and both take the afternoon: their case events and breaches must be identical.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import tempfile
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.serde import Serde, from_record, to_record
from streams.changelog import ChangelogError, decode_case_state
from streams.domain.calendar import load_calendar
from streams.domain.case_id import case_id_for
from streams.domain.model import EnrichedReport
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.pipeline import ACTION, ENRICHED, CaseProcessor, Ingestor, Senders, partition_for_key
from whistle.devtools.feed import Signers, ingest_event
from whistle.devtools.simulate import SimConfig, simulate
from whistle.edges.clock import tick_value
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

START = datetime(2026, 6, 7, 16, 0, tzinfo=UTC)  # Monday 2026-06-08 00:00 Beijing time
NOON = START + timedelta(hours=12)
PARTITIONS = 6
SIGNERS = Signers(Settings())  # each simulated integrator signs what it sends
SCHEMAS = {"camera": ("whistle.raw.camera", "CameraDetection"), "hotline": ("whistle.raw.hotline", "HotlineTicket"),
           "app": ("whistle.raw.app", "AppEvent")}


def test_a_processor_recovered_from_the_changelog_decides_as_the_one_that_wrote_it():
    reference, serde, topics = load_reference(), Serde(), Topics()
    ingest = Ingestor(serde, reference, PersonalDataHasher("test-key"), topics, Senders.from_settings(Settings(), reference))
    inbox: list[tuple[int, bytes, bytes, datetime]] = []
    for offset, event in enumerate(simulate(reference, SimConfig(seed=5, start=START, incidents_per_day=1200))):
        topic, schema = SCHEMAS[event.source]
        routed = ingest_event(ingest, SIGNERS, Position(topic, 0, offset), event, event.at)
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
        assert recovered.recover(partition, [(offset, key, value) for offset, (key, value) in enumerate(records)]) == []
    entries = [(entry, part.book.states[entry.case_id]) for part in recovered.held() for entry in part.merge]
    assert entries and all(entry.case_id is state.case_id for entry, state in entries)  # one id string per case
    assert all(entry.last_reported_at is entry.opened_at for entry, _ in entries if entry.last_reported_at == entry.opened_at)

    expected = run(original, afternoon)
    assert {topic for topic, _ in expected} >= {topics.case_events, topics.breaches}
    assert run(recovered, afternoon) == expected


# -- the changelog's encoding ------------------------------------------------------------------------

V0_FIXTURE = Path(__file__).parent / "data" / "changelog" / "v0-pickle.jsonl"
V0_START = datetime(2026, 6, 7, 16, 0, tzinfo=UTC)
V0_PARTITIONS = 3


def _v0_inbox(until: datetime | None = None, since: datetime | None = None):
    """The case-stream records of the simulation the fixture was written from (seed 11, 240 incidents, 3 partitions),
    as that release wrote them: report ids were not yet scoped by their sender (camera:<id>), and so neither
    were the case ids derived from them; the actions name those case ids."""
    reference, serde, topics = load_reference(), Serde(), Topics()
    ingest = Ingestor(serde, reference, PersonalDataHasher("test-key"), topics, Senders.from_settings(Settings(), reference))
    old_case_ids: dict[str, str] = {}
    for offset, event in enumerate(simulate(reference, SimConfig(seed=11, start=V0_START, incidents_per_day=240, returns_name_the_unit=False))):
        if (until is not None and event.at >= until) or (since is not None and event.at < since):
            continue
        topic, schema = SCHEMAS[event.source]
        routed = ingest_event(ingest, SIGNERS, Position(topic, 0, offset), event, event.at)
        if routed.topic != topics.inbox:
            continue
        branch, record = serde.decode(routed.value, expect="CaseInboxEvent").record["event"]
        if branch == ENRICHED:
            enriched = from_record(EnrichedReport, record)
            source, _integrator, own_id = enriched.report.report_id.split(":", 2)
            unscoped = dataclasses.replace(enriched, report=dataclasses.replace(enriched.report, report_id=f"{source}:{own_id}"))
            old_case_ids[case_id_for(enriched)] = case_id_for(unscoped)
            record = to_record(unscoped)
        elif branch == ACTION:
            record = {**record, "case_id": old_case_ids.get(record["case_id"], record["case_id"]), "actor": None}
        value = serde.encode("CaseInboxEvent", {"event": (branch, record)}, validate=False)
        yield Position(topics.inbox, partition_for_key(routed.key.decode(), V0_PARTITIONS), offset), routed.key, value, event.at


def test_a_changelog_written_by_the_pickle_release_recovers_and_decides_as_before():
    """The fixture is the changelog the release before this encoding wrote (pickles, version 0) for the
    morning of a simulated day. Recovered from it, a processor holds exactly the states and open cases
    a processor that ran the morning itself holds, and decides the afternoon identically."""
    noon = V0_START + timedelta(hours=12)
    serde, topics = Serde(), Topics()

    def processor() -> CaseProcessor:
        return CaseProcessor(serde, load_reference(), load_policies(), load_calendar(), topics, V0_PARTITIONS)

    ran = processor()
    for where, key, value, at in _v0_inbox(until=noon):
        ran.process(where, key, value, at)
    changelog: dict[int, list] = defaultdict(list)
    for line in V0_FIXTURE.read_text().splitlines():
        record = json.loads(line)
        value = None if record["value"] is None else base64.b64decode(record["value"])
        changelog[record["partition"]].append((len(changelog[record["partition"]]), record["key"], value))
    assert any(value is not None and value[0] == 0x80 for records in changelog.values() for _, _, value in records)
    recovered = processor()
    for partition, records in changelog.items():
        assert recovered.recover(partition, records) == []
    assert recovered.owned() == ran.owned()
    def without_last_at(states):  # a pickle-release state has no last_at_ms: recovered from its lifecycle times
        return {case_id: dataclasses.replace(state, last_at_ms=0) for case_id, state in states.items()}

    for partition in ran.owned():
        assert without_last_at(recovered._parts[partition].book.states) == without_last_at(ran._parts[partition].book.states)
        assert recovered._parts[partition].book.index.clock_ms == ran._parts[partition].book.index.clock_ms
    afternoon = list(_v0_inbox(since=noon))
    assert afternoon
    outputs = [[(o.topic, o.value) for where, key, value, at in afternoon for o in cases.process(where, key, value, at)[0]] for cases in (ran, recovered)]
    assert outputs[0] == outputs[1]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch " + str(_CANARY),))


_CANARY = Path(tempfile.gettempdir()) / f"whistle-changelog-canary-{os.getpid()}"


def test_a_changelog_record_crafted_to_run_code_is_refused_and_the_records_after_it_apply():
    """A pickle that would run a shell command if unpickled: decoding refuses it (naming what it refers to),
    runs nothing, and the valid records after it still recover. Negative control: pickle itself would run it."""
    import pickle  # only to craft the hostile bytes and to show what unpickling them would do

    hostile = pickle.dumps(_RunsCode(), protocol=5)
    cases = CaseProcessor(Serde(), load_reference(), load_policies(), load_calendar(), Topics(), 1)
    refused = cases.recover(0, [(0, "case:S01-20260608-0000000000", hostile), (1, "clock:0", b"1780000000000")])
    assert not _CANARY.exists()
    [(offset, key, value, error)] = refused
    assert (offset, key, value) == (0, "case:S01-20260608-0000000000", hostile)
    assert "posix.system" in str(error) or "os.system" in str(error)
    assert cases._parts[0].book.index.clock_ms == 1780000000000  # the record after the bad one was applied
    try:
        pickle.loads(hostile)  # the negative control: what the previous release's decoder would have done
        assert _CANARY.exists()
    finally:
        _CANARY.unlink(missing_ok=True)


def test_garbage_and_unknown_versions_are_refused_with_the_reason():
    for value, reason in ((b"\x07abc", "unknown changelog value version 7"), (b"\x01\xff\xff", "undecodable version-1"),
                          (b"\x80\x05\x95", "ends early"), (b"", "empty")):
        with pytest.raises(ChangelogError, match=reason):
            decode_case_state(value)
