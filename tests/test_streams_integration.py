"""The stream processors end to end: real Kafka, real `whistle worker` processes, records fed with the SDK.

Time is driven by clock ticks written into the case stream (`whistle.edges.clock.write_ticks`), never by
waiting: every case opens at T0 (a working morning) and deadlines pass when a tick says so.
Case ids are computed the way producers of handling actions compute them: normalize, enrich, `case_id_for`.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from infra.processes import WhistleProcess, wait_until
from infra.provision import provision_all
from infra.topics import partitions_of
from schemas.serde import SINGLE_OBJECT_MARKER, Serde, from_record
from streams.app import EXIT_TO_BE_RESTARTED
from streams.domain.case import CaseEvent, Kind, verify_chain
from streams.domain.case_id import case_id_for, partition_key_of_case
from streams.domain.credentials import RETURN_VISIT, RecordSigner
from streams.domain.enrich import Enricher, haversine_m
from streams.domain.model import CameraDetection, HotlineTicket, ResidentReport
from streams.domain.normalize import normalize_app_report, normalize_camera, normalize_hotline
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import DistrictReference, Grid, load_reference
from streams.domain.sla import Breach
from streams.pipeline import partition_for_key
from whistle.devtools.feed import Signers
from whistle.devtools.harness import committed_offsets, end_offsets, metrics_path, partitions_recovered, read_all, spawn_worker
from whistle.devtools.simulate import CHANNEL_INTEGRATORS, HANDLING_SYSTEM, RETURN_VISITS
from whistle.edges.clock import write_ticks
from whistle.edges.sdk import Delivery, Publisher
from whistle.ground.errors import StackError
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings
from whistle.ground.times import utc_now

T0 = datetime(2025, 6, 4, 1, 30, tzinfo=UTC)  # Wednesday 09:30 in Beijing: a working day, office hours
REPORT = "org.whistle.v1.ResidentReport"
ACTION = "org.whistle.v1.HandlingAction"
SPOT_SPACING_M = 400.0  # farther apart than the merge distance (250 m): no two test reports merge


# -- places and records ---------------------------------------------------------------------------


class Spot(NamedTuple):
    """A point inside one grid of the reference district."""

    grid: Grid
    lat: float
    lon: float


def spread_spots(reference: DistrictReference, count: int) -> list[Spot]:
    """`count` points in distinct grids, SPOT_SPACING_M apart, taking the streets in turn so every case-stream partition gets cases."""
    by_street: dict[str, list[Grid]] = defaultdict(list)
    for grid in sorted(reference.grids.values(), key=lambda g: g.grid_id):
        by_street[grid.street_id].append(grid)
    chosen: list[Spot] = []
    for grid in itertools.chain.from_iterable(itertools.zip_longest(*by_street.values())):
        if grid is None:
            continue
        vertices = grid.ring[:-1]
        lon = round(sum(x for x, _ in vertices) / len(vertices), 6)
        lat = round(sum(y for _, y in vertices) / len(vertices), 6)
        if reference.locate(lat, lon) != grid or any(haversine_m(lat, lon, s.lat, s.lon) < SPOT_SPACING_M for s in chosen):
            continue
        chosen.append(Spot(grid, lat, lon))
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"the reference district has no {count} grids {SPOT_SPACING_M:.0f} m apart")


def resident_report(report_id: str, spot: Spot, category: str = "garbage", at: datetime = T0) -> dict[str, Any]:
    return {"report_id": report_id, "reporter_id": f"resident-{report_id}", "reporter_role": "resident", "reported_at": at,
            "lat": spot.lat, "lon": spot.lon, "category": category, "description": "路边垃圾堆积多日无人清运。", "photo_refs": [],
            "address_text": None}


def hotline_ticket(ticket_id: str, address: str, category: str = "noise", at: datetime = T0) -> dict[str, Any]:
    return {"ticket_id": ticket_id, "received_at": at, "caller_phone": "+86 138 0013 8000", "address_text": address,
            "description": "夜间施工噪音扰民。", "operator_category": category, "urgency": "normal"}


def camera_detection(detection_id: str, camera_id: str, category: str = "illegal_parking", at: datetime = T0,
                     confidence: float = 0.93) -> dict[str, Any]:
    return {"detection_id": detection_id, "camera_id": camera_id, "detected_at": at, "category": category,
            "confidence": confidence, "lat": None, "lon": None, "snapshot_ref": f"s3://whistle-evidence/camera/{detection_id}.jpg",
            "model_version": "gridvision-3.2.1", "bbox": None}


def handling_action(action_id: str, case_id: str, kind: str, unit_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {"action_id": action_id, "case_id": case_id, "kind": kind, "unit_id": unit_id, "at": at,
            "reason": None, "note": None, "rating": None, "extension_hours": None, **fields}


class Case(NamedTuple):
    """A case a test report opens: its id and escalation chain (unit ids, first responsible unit first)."""

    case_id: str
    chain: tuple[str, ...]

    @property
    def holder(self) -> str:
        return self.chain[0]


# -- one deployment under test --------------------------------------------------------------------


class Pipeline:
    """One isolated deployment (its own topic prefix): its worker processes, a publisher, and readers of its topics."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings, self.log_dir = settings, log_dir
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.group = Groups.with_prefix(settings.topic_prefix).cases  # the Faust app id (streams.app.create_app)
        self.inbox_partitions = partitions_of(self.topics.inbox, settings.topic_prefix)
        self.serde = Serde.from_settings(settings)
        self.publisher = Publisher(settings, serde=self.serde)
        self.signers = Signers(settings)
        self.reference = load_reference()
        self.enricher = Enricher(self.reference)
        self.hasher = PersonalDataHasher(settings.pii_hmac_key)
        self.workers: list[WhistleProcess] = []
        self._action_ids = itertools.count(1)
        self._admin: AdminClient | None = None

    def start(self, worker_id: str) -> WhistleProcess:
        worker = spawn_worker(self.settings, worker_id, self.log_dir)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(timeout_s=10)
        self.publisher.close()

    # -- input --------------------------------------------------------------------------------------
    def report(self, source: str, record: dict[str, Any]) -> Case:
        """Publish a camera/hotline/app report; the case it opens, named by the pipeline's own rules."""
        sender = CHANNEL_INTEGRATORS[source]
        if source == "camera":
            report = normalize_camera(from_record(CameraDetection, record), self.reference, sender)
        elif source == "hotline":
            report = normalize_hotline(from_record(HotlineTicket, record), self.reference, self.hasher.phone, sender)
        else:
            report = normalize_app_report(from_record(ResidentReport, record), self.reference, self.hasher.reporter, sender)
        self.publisher.publish(source, {"event": (REPORT, record)} if source == "app" else record, signer=self.signers(sender))
        enriched = self.enricher.enrich(report)
        return Case(case_id_for(enriched), tuple(unit.unit_id for unit in enriched.chain))

    def act(self, case_id: str, kind: str, unit_id: str, at: datetime, sender: str | None = None, **fields: Any) -> str:
        """Publish a handling action (app topic, keyed by case id), signed as `sender` (default: the hotline's return
        visit for ratings and reopenings, the district's handling system for the rest); returns its action id."""
        action_id = f"act-{next(self._action_ids):04d}"
        sender = sender or (RETURN_VISITS if kind in ("rate", "reopen") else HANDLING_SYSTEM)
        self.publisher.publish("app", {"event": (ACTION, handling_action(action_id, case_id, kind, unit_id, at, **fields))},
                               signer=self.signers(sender))
        return action_id

    def tick(self, *moments: datetime) -> None:
        for moment in moments:
            write_ticks(self.publisher, self.serde, self.topics, self.inbox_partitions, moment)

    def signed(self, topic: str, key: bytes, value: bytes, sender: str) -> list[tuple[str, bytes]]:
        """The headers `sender` puts on a record of `topic` (a prefixed topic: it signs the spec's name)."""
        return self.signers(sender).headers(topic.removeprefix(self.settings.topic_prefix), key, value)

    def produce_raw(self, topic: str, key: bytes | None, value: bytes | None, headers=None, partition: int | None = None) -> Delivery:
        return self.publisher.produce_raw(topic, key, value, headers, partition=partition).result(timeout=30)

    # -- output -------------------------------------------------------------------------------------
    def records(self, topic: str) -> list:
        """Every record of `topic`, partition by partition in offset order."""
        return sorted(read_all(self.settings, [topic]), key=lambda m: (m.partition(), m.offset()))

    def case_events(self) -> dict[str, list[tuple[bytes, CaseEvent]]]:
        """Each case's events in log order (the case id is the key: one partition per case), with their bytes."""
        cases: dict[str, list[tuple[bytes, CaseEvent]]] = defaultdict(list)
        for message in self.records(self.topics.case_events):
            event = from_record(CaseEvent, self.serde.decode(message.value(), expect="CaseEvent").record)
            cases[event.case_id].append((message.value(), event))
        return dict(cases)

    def breaches(self) -> list[tuple[bytes, Breach]]:
        return [(m.value(), from_record(Breach, self.serde.decode(m.value(), expect="Breach").record))
                for m in self.records(self.topics.breaches)]

    def count(self, topic: str) -> int:
        return sum(end_offsets(self.settings, topic).values())

    # -- waiting ------------------------------------------------------------------------------------
    def wait(self, check: Callable[[], bool], what: str, timeout_s: float = 40.0, interval_s: float = 0.25) -> None:
        """wait_until, failing with the workers' last log lines. A retriable Kafka error (e.g. a new topic's
        leader not elected yet) counts as "not yet"."""
        def checked() -> bool:
            try:
                return check()
            except KafkaException as exc:
                if exc.args[0].retriable():
                    return False
                raise

        try:
            wait_until(checked, timeout_s, what, interval_s=interval_s)
        except StackError as exc:
            logs = "\n".join(f"--- {w.name} (alive={w.alive()}):\n{w.tail(15)}" for w in self.workers)
            raise AssertionError(f"{exc}\n{logs}") from exc

    def wait_for_events(self, count: int, timeout_s: float = 40.0) -> None:
        self.wait(lambda: self.count(self.topics.case_events) >= count, f"{count} case events", timeout_s)

    def settle(self, timeout_s: float = 40.0) -> None:
        """Wait until the workers committed every source and case-stream record: all their outputs are in Kafka.

        Faust flushes the producer before it commits, and the case agent waits for its outputs'
        acknowledgements before it moves on, so committed == end offsets means nothing is in flight.
        """
        def consumed(topic: str) -> bool:
            committed = committed_offsets(self.settings, self.group, topic)
            return all(end == 0 or committed.get(p, -1) >= end for p, end in end_offsets(self.settings, topic).items())

        self.wait(lambda: all(consumed(t) for t in (*self.topics.sources, self.topics.inbox)), "workers to commit every input", timeout_s)

    def quiesce(self, quiet_s: float = 4.0, timeout_s: float = 40.0) -> None:
        """Wait until no output topic has grown for `quiet_s` (longer than Faust's 2.8 s commit interval).

        For several workers, where `settle` does not fit: after a rebalance Faust may never commit the
        offsets of records processed just before it (they are redelivered on the next restart, harmlessly),
        so committed offsets can stay below the end offsets although nothing is in flight.
        """
        outputs = (self.topics.case_events, self.topics.breaches, self.topics.deadletter)
        seen: dict[str, object] = {"counts": None, "since": 0.0}

        def quiet() -> bool:
            counts, now = tuple(self.count(t) for t in outputs), time.monotonic()
            if counts != seen["counts"]:
                seen.update(counts=counts, since=now)
            return now - seen["since"] >= quiet_s

        self.wait(quiet, f"{quiet_s:.0f} s without new outputs", timeout_s)

    # -- the consumer group -------------------------------------------------------------------------
    def describe_group(self):
        if self._admin is None:
            self._admin = AdminClient(self.settings.kafka.librdkafka())
        return self._admin.describe_consumer_groups([self.group], request_timeout=10)[self.group].result(timeout=15)

    def inbox_owners(self) -> dict[str, set[int]]:
        """Worker id (static group instance id) -> the case-stream partitions it is assigned, while the group is stable."""
        group = self.describe_group()
        if group.state != ConsumerGroupState.STABLE:
            return {}
        return {m.group_instance_id: {tp.partition for tp in m.assignment.topic_partitions if tp.topic == self.topics.inbox}
                for m in group.members}

    def wait_until_shared(self, worker_ids: set[str], timeout_s: float = 40.0) -> dict[str, set[int]]:
        """Wait for a stable group in which each of `worker_ids` owns case-stream partitions; returns the ownership."""
        owners: dict[str, set[int]] = {}

        def shared() -> bool:
            owners.clear()
            owners.update(self.inbox_owners())
            return set(owners) == worker_ids and all(owners.values())

        self.wait(shared, f"workers {sorted(worker_ids)} to share the case stream", timeout_s)
        return dict(owners)


def inbox_partition_of(case_id: str, partitions: int) -> int:
    return partition_for_key(partition_key_of_case(case_id), partitions)


def chain_problems(events: list[tuple[bytes, CaseEvent]]) -> list[str]:
    """What is wrong with one case's log: conflicting copies of an event id, or a broken chain 1..n once identical copies are dropped."""
    first: dict[str, bytes] = {}
    problems, distinct = [], []
    for value, event in events:
        if event.event_id not in first:
            first[event.event_id] = value
            distinct.append(event)
        elif first[event.event_id] != value:
            problems.append(f"{event.event_id}: two different records")
    return problems + verify_chain(distinct)


@pytest.fixture
def pipeline(isolated: Settings, tmp_path: Path):
    deployment = Pipeline(isolated, tmp_path / "logs")
    yield deployment
    deployment.close()


# -- who may act ----------------------------------------------------------------------------------


@pytest.mark.kafka
def test_an_action_counts_only_as_far_as_its_senders_credential_allows(pipeline: Pipeline):
    """A real worker: a street office's key acting on another street's case, and the handling units' key rating
    a case, are dead-lettered at ingest with the rule they break, nothing of them applied; the same accept from a
    key that may act for the holder is applied."""
    worker = pipeline.start("worker-1")
    reference = pipeline.reference
    camera = next(c for c in reference.cameras.values() if c.grid_id is not None and reference.grids[c.grid_id].street_id != "S01")
    case = pipeline.report("camera", camera_detection("det-far", camera.camera_id))
    pipeline.wait_for_events(2)
    refused = {pipeline.act(case.case_id, "accept", case.holder, T0 + timedelta(minutes=1), sender="office-s01"): "unit_not_in_credential",
               pipeline.act(case.case_id, "rate", case.holder, T0 + timedelta(minutes=2), sender=HANDLING_SYSTEM, rating=5): "unit_cannot_rate"}
    accepted = pipeline.act(case.case_id, "accept", case.holder, T0 + timedelta(minutes=3))
    pipeline.wait_for_events(3)
    pipeline.settle()
    letters = [dict((name, value.decode()) for name, value in letter.headers()) for letter in pipeline.records(pipeline.topics.deadletter)]
    assert {h["whistle.error.action_id"]: (h["whistle.error.stage"], h["whistle.error.reason"]) for h in letters} == {
        action_id: ("authenticate", reason) for action_id, reason in refused.items()}
    events = pipeline.case_events()[case.case_id]
    assert [(e.kind, e.cause_id, e.actor_unit_id) for _, e in events] == [
        (Kind.OPENED, "camera:camera-platform:det-far", None), (Kind.DISPATCHED, "camera:camera-platform:det-far", None),
        (Kind.ACCEPTED, accepted, case.holder)]
    assert worker.alive()


# -- trusted time and early actions, on a real worker ------------------------------------------------


@pytest.mark.kafka
def test_a_device_clock_years_ahead_moves_no_clock_and_an_early_action_waits_for_its_case(pipeline: Pipeline):
    """A camera whose clock is three years ahead: its report is decided at its arrival (the broker's LogAppendTime),
    flagged with the claimed time, and the street's later, correctly dated reports are handled with no breach before
    its deadline. An accept sent before the report that opens its case is held and applied once the case opens."""
    worker = pipeline.start("worker-1")
    reference = pipeline.reference
    now = utc_now()
    spots = [spot for spot in spread_spots(reference, 40) if spot.grid.street_id == "S01"][:2]
    assert len(spots) == 2
    camera = next(c for c in reference.cameras.values() if c.grid_id is not None and reference.grids[c.grid_id].street_id == "S01")
    skewed = camera_detection("det-ahead", camera.camera_id, at=now.replace(year=now.year + 3))
    pipeline.report("camera", skewed)
    later = pipeline.report("app", resident_report("rep-after-skew", spots[0], at=now))
    early_case = Case(*_predicted(pipeline, resident_report("rep-late", spots[1], at=now + timedelta(seconds=1))))
    assert early_case.case_id.startswith("S01-") and later.case_id.startswith("S01-")  # the skewed report's street
    early_accept = pipeline.act(early_case.case_id, "accept", early_case.holder, now)  # before its report
    pipeline.report("app", resident_report("rep-late", spots[1], at=now + timedelta(seconds=1)))
    pipeline.wait_for_events(2 + 2 + 3)
    pipeline.tick(now + timedelta(minutes=5))
    pipeline.settle()
    events = pipeline.case_events()
    flagged = [e for cases in events.values() for _, e in cases if e.kind == Kind.OPENED and e.cause_id.endswith("det-ahead")]
    assert len(flagged) == 1 and f"clock_skew:device={now.year + 3}" in (flagged[0].reason or "")
    assert abs((flagged[0].at - now).total_seconds()) < 120  # decided at its arrival, not in the future
    assert [e.kind for _, e in events[later.case_id]] == [Kind.OPENED, Kind.DISPATCHED]
    assert [(e.kind, e.cause_id) for _, e in events[early_case.case_id]][2:] == [(Kind.ACCEPTED, early_accept)]
    assert [b for _, b in pipeline.breaches() if b.kind != "warning"] == []  # nothing is overdue five minutes in
    assert all(b.fired_at < b.deadline for _, b in pipeline.breaches())  # warnings only, before their deadlines
    assert pipeline.records(pipeline.topics.deadletter) == []
    assert worker.alive()


def _predicted(pipeline: Pipeline, record: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The case an app report will open, as an integrator's app names it from the report alone."""
    report = normalize_app_report(from_record(ResidentReport, record), pipeline.reference, pipeline.hasher.reporter, CHANNEL_INTEGRATORS["app"])
    enriched = pipeline.enricher.enrich(report)
    return case_id_for(enriched), tuple(unit.unit_id for unit in enriched.chain)


# -- dead letters ---------------------------------------------------------------------------------


class Poison(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    stage: str
    error_class: str
    detail: tuple[str, str]  # an error header that must be there: (name, value)


@pytest.mark.kafka
def test_every_kind_of_poison_is_dead_lettered_with_its_bytes_and_position_and_the_worker_goes_on(pipeline: Pipeline):
    worker = pipeline.start("worker-1")
    grid_spot, far_spot = spread_spots(pipeline.reference, 2)
    case = pipeline.report("app", resident_report("rep-1", grid_spot))
    pipeline.wait_for_events(2)
    topics, serde = pipeline.topics, pipeline.serde
    camera = next(c for c in pipeline.reference.cameras.values() if c.grid_id is not None)
    good_detection = serde.encode("CameraDetection", camera_detection("det-ok", camera.camera_id))
    raw_poisons = [  # (topic, value, stage, error class, a header naming the problem)
        (topics.camera, b"GIF89a\x01\x00 definitely not a Whistle record", "decode", "DecodeError", ("whistle.error.message", "unknown framing")),
        (topics.camera, SINGLE_OBJECT_MARKER + bytes.fromhex("0badc0ffee15bad0") + good_detection[10:], "decode", "DecodeError",
         ("whistle.error.fingerprint", "0badc0ffee15bad0")),
        (topics.camera, good_detection[:-12], "decode", "DecodeError", ("whistle.error.schema", "CameraDetection")),
        (topics.camera, serde.encode("HotlineTicket", hotline_ticket("t-1", "建设路19号")), "decode", "DecodeError",
         ("whistle.error.message", "expected a CameraDetection record, got HotlineTicket")),
        (topics.hotline, serde.encode("HotlineTicket", hotline_ticket("", "建设路19号"), validate=False), "validate", "ValidationError",
         ("whistle.error.field", "ticket_id")),
        (topics.camera, serde.encode("CameraDetection", camera_detection("det-1.7", camera.camera_id, confidence=1.7), validate=False),
         "validate", "ValidationError", ("whistle.error.field", "confidence")),
    ]
    poisons = []
    for topic, value, stage, error_class, detail in raw_poisons:  # sent by a known integrator: refused for what they hold
        delivery = pipeline.produce_raw(topic, b"poison-key", value, pipeline.signed(topic, b"poison-key", value, "camera-platform"))
        poisons.append(Poison(topic, b"poison-key", value, delivery.partition, delivery.offset, stage, error_class, detail))
    for headers, reason in (((), "unsigned"), (RecordSigner("camera-platform", 1, b"guessed").headers("whistle.raw.camera", b"k", good_detection),
                                                "bad_signature")):  # a valid record, but nobody's: refused before it is read
        delivery = pipeline.produce_raw(topics.camera, b"k", good_detection, headers)
        poisons.append(Poison(topics.camera, b"k", good_detection, delivery.partition, delivery.offset, "authenticate", "AuthError",
                              ("whistle.error.reason", reason)))
    refused = {  # action id -> the refusal reason; all on the dispatched (unaccepted) case, in this order
        pipeline.act(case.case_id, "resolve", case.holder, T0 + timedelta(minutes=5), note="已处理"): "not_accepted",
        pipeline.act(case.case_id, "accept", case.chain[1], T0 + timedelta(minutes=6)): "not_assignee",
        pipeline.act(case.case_id, "rate", RETURN_VISIT, T0 + timedelta(minutes=7), rating=5): "not_resolved",
        pipeline.act(f"{case.case_id[:-10]}0000000000", "accept", case.holder, T0 + timedelta(minutes=8)): "unknown_case",
    }
    accepted = pipeline.act(case.case_id, "accept", case.holder, T0 + timedelta(minutes=10))
    later_case = pipeline.report("camera", camera_detection("det-ok", camera.camera_id))
    pipeline.wait_for_events(2 + 1 + 2)  # the accept after the poison, and the camera report's case
    # The action on a case no report opened is held for the policy's hold (1 h of the partition's time),
    # then dead-lettered as unknown: move the clock past it, short of the next warning.
    pipeline.tick(T0 + timedelta(minutes=75))
    pipeline.settle()

    letters = pipeline.records(topics.deadletter)
    assert len(letters) == len(poisons) + len(refused)
    by_position = {}
    for letter in letters:
        record = serde.decode(letter.value(), expect="DeadLetter").record
        headers = {name: value.decode() for name, value in letter.headers()}
        assert headers["whistle.original.topic"] == record["original_topic"]
        assert headers["whistle.original.partition"] == str(record["original_partition"])
        assert headers["whistle.original.offset"] == str(record["original_offset"])
        assert (headers["whistle.error.stage"], headers["whistle.error.class"]) == (record["stage"], record["error_class"])
        by_position[(record["original_topic"], record["original_partition"], record["original_offset"])] = (record, headers)
    for poison in poisons:
        record, headers = by_position.pop((poison.topic, poison.partition, poison.offset))
        assert (record["original_key"], record["original_value"]) == (poison.key, poison.value)
        assert (record["stage"], record["error_class"]) == (poison.stage, poison.error_class)
        name, expected = poison.detail
        assert expected in headers[name]
    inbox = {(m.partition(), m.offset()): m.value() for m in pipeline.records(topics.inbox)}
    for (topic, partition, offset), (record, headers) in by_position.items():
        assert topic == topics.inbox
        assert record["original_value"] == inbox[(partition, offset)]
        _, action = serde.decode(record["original_value"], expect="CaseInboxEvent").record["event"]
        assert (record["stage"], record["error_class"]) == ("transition", "TransitionError")
        assert headers["whistle.error.action_id"] == action["action_id"]
        assert headers["whistle.error.reason"] == refused.pop(action["action_id"])
    assert refused == {}

    events = pipeline.case_events()
    assert [(e.kind, e.cause_id) for _, e in events[case.case_id]] == [
        (Kind.OPENED, "app:resident-app:rep-1"), (Kind.DISPATCHED, "app:resident-app:rep-1"), (Kind.ACCEPTED, accepted)]
    assert [e.kind for _, e in events[later_case.case_id]] == [Kind.OPENED, Kind.DISPATCHED]
    assert worker.alive()


# -- replay ---------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_replaying_the_same_input_reproduces_every_case_event_and_breach_byte_for_byte(pipeline: Pipeline, tmp_path: Path):
    """The raw topics of one run, copied record for record (same partitions, same order) into a fresh
    deployment, give the same case events (ids, sequence numbers, hashes) and the same breaches, byte for byte.

    What is and is not deterministic: a worker interleaves the partitions of the three source topics
    in whatever order their fetches return, so the order in which *different* raw partitions reach the
    case stream can differ between runs. The scenario is therefore fed in phases that the original
    run completes before the next begins (reports; then handling actions; then clock ticks), and the
    replay copies each phase's records only after the previous phase is fully processed, exactly as the
    original saw them. Within a phase the outcome does not depend on that interleaving: the reports all
    occur at T0 and are too far apart to merge; each case's actions share one raw partition (keyed by
    case id), so they stay in order; and every action time falls before the first deadline. Ticks are
    not source records: the replay writes the same ticks at the same point.
    """
    original = pipeline
    replay_settings = dataclasses.replace(original.settings, topic_prefix=f"{original.settings.topic_prefix}replay.")
    provision_all(replay_settings)
    replay = Pipeline(replay_settings, tmp_path / "replay-logs")
    try:
        original.start("original-1")
        replay.start("replay-1")  # idle until its input arrives; starting now overlaps the two start-ups
        spots = spread_spots(original.reference, 9)
        address = next(e.address for e in original.reference.gazetteer.entries() if e.kind == "house" and e.grid_id is not None)
        camera = next(c for c in original.reference.cameras.values() if c.grid_id is not None)
        cases = [original.report("app", resident_report(f"rep-{n}", spot)) for n, spot in enumerate(spots)]
        cases.append(original.report("hotline", hotline_ticket("12345-0001", address)))
        cases.append(original.report("camera", camera_detection("det-0001", camera.camera_id)))
        original.settle()
        phase_ends = [_raw_end_offsets(original)]

        soon = T0 + timedelta(minutes=20)
        for case in cases[:3]:
            original.act(case.case_id, "accept", case.holder, soon)
        original.act(cases[3].case_id, "accept", cases[3].holder, soon)
        original.act(cases[3].case_id, "resolve", cases[3].holder, soon + timedelta(minutes=10), note="已清运")
        original.act(cases[3].case_id, "rate", RETURN_VISIT, soon + timedelta(minutes=20), rating=2)
        original.act(cases[4].case_id, "transfer", cases[4].holder, soon, reason="outside_jurisdiction", note="非本网格辖区")
        original.settle()
        phase_ends.append(_raw_end_offsets(original))

        ticks = [T0 + timedelta(hours=1, minutes=45), T0 + timedelta(hours=2, minutes=30), T0 + timedelta(days=1), T0 + timedelta(days=2)]
        original.tick(*ticks)
        original.settle()

        raw = defaultdict(list)
        for topic in original.topics.sources:
            for message in original.records(topic):
                raw[(topic, message.partition())].append(message)
        phase_starts = defaultdict(int)
        for ends in phase_ends:
            for (topic, partition), messages in raw.items():
                for message in messages:
                    if phase_starts[(topic, partition)] <= message.offset() < ends.get((topic, partition), 0):
                        replay.produce_raw(replay.settings.topic_prefix + topic.removeprefix(original.settings.topic_prefix),
                                           message.key(), message.value(), message.headers(), partition=partition)
            phase_starts.update(ends)
            replay.settle()
        replay.tick(*ticks)
        replay.settle()

        expected_events = original.case_events()
        expected_breaches = sorted(value for value, _ in original.breaches())
        assert set(expected_events) == {case.case_id for case in cases}
        assert {e.kind for log in expected_events.values() for _, e in log} >= {
            Kind.ACCEPTED, Kind.RESOLVED, Kind.RATED, Kind.TRANSFERRED, Kind.ESCALATED}
        assert {b.kind for _, b in original.breaches()} >= {"warning", "breach", "referral"}
        assert original.count(original.topics.deadletter) == 0
        assert _bytes_by_case(replay.case_events()) == _bytes_by_case(expected_events)
        assert sorted(value for value, _ in replay.breaches()) == expected_breaches
    finally:
        replay.close()


def _raw_end_offsets(pipeline: Pipeline) -> dict[tuple[str, int], int]:
    return {(topic, p): end for topic in pipeline.topics.sources for p, end in end_offsets(pipeline.settings, topic).items()}


def _bytes_by_case(cases: dict[str, list[tuple[bytes, CaseEvent]]]) -> dict[str, list[bytes]]:
    return {case_id: [value for value, _ in log] for case_id, log in cases.items()}


# -- several workers, crashes ---------------------------------------------------------------------


@pytest.mark.kafka
def test_two_workers_share_the_partitions_and_every_case_stays_one_chain(pipeline: Pipeline):
    pipeline.start("worker-1")
    cases = [pipeline.report("app", resident_report(f"rep-{n}", spot)) for n, spot in enumerate(spread_spots(pipeline.reference, 18))]
    pipeline.wait_for_events(2 * len(cases))
    pipeline.start("worker-2")
    owners = pipeline.wait_until_shared({"worker-1", "worker-2"})

    soon = T0 + timedelta(minutes=20)
    for n, case in enumerate(cases):
        pipeline.act(case.case_id, "accept", case.holder, soon)
        if n % 2:
            pipeline.act(case.case_id, "resolve", case.holder, soon + timedelta(minutes=30), note="已清运")
    pipeline.wait_for_events(2 * len(cases) + len(cases) + len(cases) // 2)
    pipeline.quiesce()

    assert sorted(itertools.chain.from_iterable(owners.values())) == list(range(pipeline.inbox_partitions))
    assert {inbox_partition_of(c.case_id, pipeline.inbox_partitions) for c in cases} & owners["worker-2"]  # it took over open cases
    events = pipeline.case_events()
    assert set(events) == {case.case_id for case in cases}
    for n, case in enumerate(cases):
        assert chain_problems(events[case.case_id]) == []
        kinds = [e.kind for _, e in events[case.case_id]]
        assert kinds == [Kind.OPENED, Kind.DISPATCHED, Kind.ACCEPTED] + ([Kind.RESOLVED] if n % 2 else [])
    assert pipeline.inbox_owners() == owners  # no rebalance since: both kept their partitions


@pytest.mark.kafka
def test_a_rebalance_reads_back_only_the_partitions_a_worker_gains_and_one_that_came_back_afresh(pipeline: Pipeline):
    """worker-1 holds open cases on every partition; worker-2 joins: worker-1 reads nothing back (it only lost
    partitions), worker-2 reads back those it took. worker-2 accepts their cases and leaves (a static member:
    noticed after the session timeout); worker-1 reads exactly those partitions back afresh, as it must: its
    old copy does not know the acceptances, and resolving the cases shows it decides on the new state."""
    every = set(range(pipeline.inbox_partitions))
    for worker_id in ("worker-1", "worker-2"):
        metrics_path(pipeline.settings, worker_id).unlink(missing_ok=True)  # another test's worker of the same id
    pipeline.start("worker-1")
    cases = [pipeline.report("app", resident_report(f"rep-{n}", spot)) for n, spot in enumerate(spread_spots(pipeline.reference, 18))]
    assert {inbox_partition_of(c.case_id, pipeline.inbox_partitions) for c in cases} == every
    pipeline.wait_for_events(2 * len(cases))
    pipeline.wait(lambda: partitions_recovered(pipeline.settings, "worker-1") == dict.fromkeys(every, 1), "worker-1 to read back every partition")

    second = pipeline.start("worker-2")
    owners = pipeline.wait_until_shared({"worker-1", "worker-2"})
    moved = owners["worker-2"]
    soon = T0 + timedelta(minutes=20)
    for case in cases:
        pipeline.act(case.case_id, "accept", case.holder, soon)
    pipeline.wait_for_events(3 * len(cases))
    pipeline.quiesce()
    assert partitions_recovered(pipeline.settings, "worker-1") == dict.fromkeys(every, 1)  # kept in memory, nothing re-read
    assert partitions_recovered(pipeline.settings, "worker-2") == dict.fromkeys(moved, 1)

    second.stop(timeout_s=10)
    pipeline.wait(lambda: pipeline.inbox_owners() == {"worker-1": every}, "worker-1 to own every partition again", timeout_s=120)
    for case in cases:
        pipeline.act(case.case_id, "resolve", case.holder, soon + timedelta(minutes=30), note="已清运")
    pipeline.wait_for_events(4 * len(cases))
    pipeline.quiesce()
    assert partitions_recovered(pipeline.settings, "worker-1") == {p: 2 if p in moved else 1 for p in every}

    events = pipeline.case_events()
    assert set(events) == {case.case_id for case in cases}
    for case in cases:
        assert chain_problems(events[case.case_id]) == []
        assert [e.kind for _, e in events[case.case_id]] == [Kind.OPENED, Kind.DISPATCHED, Kind.ACCEPTED, Kind.RESOLVED]
    assert pipeline.count(pipeline.topics.deadletter) == 0


@pytest.mark.kafka
def test_a_worker_killed_and_restarted_recovers_its_cases_and_their_deadlines(pipeline: Pipeline):
    worker = pipeline.start("worker-1")
    cases = [pipeline.report("app", resident_report(f"rep-{n}", spot)) for n, spot in enumerate(spread_spots(pipeline.reference, 8))]
    pipeline.wait_for_events(2 * len(cases))
    pipeline.settle()  # offsets committed: after the restart nothing is replayed, the cases live only in the recovered state
    worker.kill()

    pipeline.start("worker-1")
    accepted, left = cases[:-2], cases[-2:]
    actions = {case.case_id: pipeline.act(case.case_id, "accept", case.holder, T0 + timedelta(minutes=20)) for case in accepted}
    pipeline.wait_for_events(2 * len(cases) + len(accepted))
    pipeline.tick(T0 + timedelta(hours=2, minutes=30))  # past the accept deadline of the two cases nobody accepted
    pipeline.wait_for_events(3 * len(cases))
    pipeline.settle()

    events = pipeline.case_events()
    for case in cases:
        log = events[case.case_id]
        assert verify_chain([e for _, e in log]) == []
        assert len({e.event_id for _, e in log}) == len(log)  # each event once: nothing was replayed
    for case in accepted:
        assert [(e.kind, e.cause_id) for _, e in events[case.case_id]][2:] == [(Kind.ACCEPTED, actions[case.case_id])]
    for case in left:
        escalated = events[case.case_id][2][1]
        assert (escalated.kind, escalated.assignee_unit_id) == (Kind.ESCALATED, case.chain[1])
    assert sorted((b.case_id, b.breach_type, b.kind) for _, b in pipeline.breaches()) == sorted(
        (case.case_id, "accept_overdue", "breach") for case in left)


def set_topic_config(settings: Settings, topic: str, name: str, value: str | None) -> None:
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[ConfigEntry(name, value or "", incremental_operation=op)])
    admin = AdminClient(settings.kafka.librdkafka())
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


@pytest.mark.kafka
def test_a_case_event_kafka_refuses_stops_the_worker_before_the_record_is_committed(pipeline: Pipeline):
    """The case-events topic refuses the worker's records (max.message.bytes too small): the worker must exit
    rather than commit past a record whose events were never written; restarted once the topic accepts them,
    it writes them."""
    worker = pipeline.start("worker-1")
    first, second = spread_spots(pipeline.reference, 2)
    opened = pipeline.report("app", resident_report("rep-1", first))
    pipeline.wait_for_events(2)
    pipeline.settle()
    set_topic_config(pipeline.settings, pipeline.topics.case_events, "max.message.bytes", "64")

    refused = pipeline.report("app", resident_report("rep-2", second))
    pipeline.wait(lambda: not worker.alive(), "the worker to exit", timeout_s=60)
    assert worker.popen.returncode == EXIT_TO_BE_RESTARTED
    assert "exiting without committing" in worker.tail(40)
    committed = committed_offsets(pipeline.settings, pipeline.group, pipeline.topics.inbox)
    assert sum(max(offset, 0) for offset in committed.values()) < pipeline.count(pipeline.topics.inbox)
    assert pipeline.count(pipeline.topics.case_events) == 2

    set_topic_config(pipeline.settings, pipeline.topics.case_events, "max.message.bytes", None)
    pipeline.start("worker-1")
    pipeline.wait_for_events(4)
    pipeline.settle()
    events = pipeline.case_events()
    assert [e.kind for _, e in events[refused.case_id]] == [Kind.OPENED, Kind.DISPATCHED]
    assert [e.kind for _, e in events[opened.case_id]] == [Kind.OPENED, Kind.DISPATCHED]
