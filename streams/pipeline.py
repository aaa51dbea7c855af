"""The stream processors' work, as functions of Kafka records: bytes in, records to send out.

Nothing here touches Kafka or Faust: `streams.app` feeds consumed records in and sends what comes
out. Every failure on the data path becomes a dead-letter record carrying the original bytes and
the source topic/partition/offset, so a poison message never stops a worker and is never lost.

- `Ingestor`: a raw source record -> decode -> normalize -> enrich -> one case-stream record keyed
  by the case's partition key (its street, or the district desk). Handling actions are routed to
  the partition of the case they name.
- `CaseProcessor`: the case stream, one partition at a time -> case events (hash-chained) and
  breaches, through `streams.domain.sla.CaseBook` and the merge index. `process` returns the
  outputs and the state writes separately: the caller must have Kafka acknowledge the outputs
  *before* it persists the state, so that a crash can only make a replay re-emit the same
  deterministic events, never lose one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from heapq import heappop, heappush
from typing import Any

from aiokafka.partitioner import murmur2

from schemas.serde import Serde, from_record, to_record
from streams.changelog import (
    ChangelogError,
    HeldAction,
    case_key,
    clock_key,
    decode_case_state,
    decode_clock,
    decode_held,
    decode_open_case,
    decode_refused,
    decode_report_seen,
    encode_case_state,
    encode_clock,
    encode_held,
    encode_open_case,
    encode_refused,
    encode_report_seen,
    held_key,
    open_key,
    refused_key,
    report_key,
)
from streams.domain.calendar import BusinessCalendar
from streams.domain.case import CaseEvent, CaseState, Kind
from streams.domain.case_id import case_id_for, partition_key_of_case
from streams.domain.credentials import Credential, Credentials, CredentialsFile, action_refusal, may_publish, verify_sender
from streams.domain.enrich import Enricher, case_partition_key, common_parent
from streams.domain.merge import MergeIndex, OpenCase, report_fingerprint
from streams.domain.model import CameraDetection, EnrichedReport, HandlingAction, HotlineTicket, ResidentReport, Source
from streams.domain.normalize import normalize_app_report, normalize_camera, normalize_hotline
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import DistrictReference
from streams.domain.sla import Breach, CaseBook, SlaPolicy, policy_in_force
from streams.domain.trusted_time import DEFAULT_SKEW, SkewBounds, decided_time, flagged_note
from whistle.ground.deadletter import Position, envelope, with_position
from whistle.ground.errors import AuthError, DecodeError, TransitionError
from whistle.ground.names import Topics
from whistle.ground.settings import Settings
from whistle.ground.times import from_epoch_ms

ENRICHED = "org.whistle.v1.EnrichedReport"
ACTION = "org.whistle.v1.HandlingAction"
TICK = "org.whistle.v1.ClockTick"
RESIDENT_REPORT = "org.whistle.v1.ResidentReport"


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None  # None: the default (murmur2) partitioner places it by key


def dead_letter(serde: Serde, topics: Topics, where: Position, key: bytes | None, value: bytes | None,
                error: BaseException, failed_at: datetime) -> Output:
    """The dead-letter record (the ground's envelope, encoded) for the record at `where`."""
    record, headers = envelope(where, key, value, error, failed_at)
    return Output(topics.deadletter, key, serde.encode("DeadLetter", record, validate=False), headers)


class DeadLetterWatch:
    """How many records each stage dead-lettered (counters), and how many in a row since one went through.

    A long run means something upstream broke (a producer writing garbage, a lost key file, a bad deploy):
    `record` returns the run's length each time it reaches 100, 1,000, 10,000, ... so the worker can say
    so at once rather than an auditor a month later. Pure: the worker logs and exports what it returns.
    """

    FIRST_ALARM = 100

    def __init__(self, deadletter_topic: str) -> None:
        self.deadletter_topic = deadletter_topic
        self.totals: dict[str, int] = {}
        self.runs: dict[str, int] = {}
        self._next_alarm: dict[str, int] = {}

    def record(self, stage: str, outputs: Iterable[Output]) -> int | None:
        """Account for one record's outputs; the run length when it just reached an alarm level, else None."""
        dead = passed = 0
        for output in outputs:
            if output.topic == self.deadletter_topic:
                dead += 1
            else:
                passed += 1
        self.totals[stage] = self.totals.get(stage, 0) + dead
        if passed:
            self.runs[stage], self._next_alarm[stage] = 0, self.FIRST_ALARM
            return None
        run = self.runs[stage] = self.runs.get(stage, 0) + dead
        alarm = self._next_alarm.get(stage, self.FIRST_ALARM)
        if run < alarm:
            return None
        while alarm <= run:
            alarm *= 10
        self._next_alarm[stage] = alarm
        return run

    def metrics(self) -> str:
        """The counters in Prometheus's text format (a node_exporter textfile)."""
        lines = ["# HELP whistle_dead_letters_total Records this worker dead-lettered, by stage.", "# TYPE whistle_dead_letters_total counter"]
        lines += [f'whistle_dead_letters_total{{stage="{stage}"}} {count}' for stage, count in sorted(self.totals.items())]
        lines += ["# HELP whistle_dead_letters_in_a_row Records dead-lettered since the last one that went through, by stage.",
                  "# TYPE whistle_dead_letters_in_a_row gauge"]
        lines += [f'whistle_dead_letters_in_a_row{{stage="{stage}"}} {run}' for stage, run in sorted(self.runs.items())]
        return "\n".join(lines) + "\n"


def partition_for_key(key: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives `key`, as aiokafka, Java and our SDK do."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class Senders:
    """How ingest knows who sent a raw record: the key file in force and Whistle's master signing key."""

    credentials: Callable[[], Credentials]  # the key file as it is now (CredentialsFile.current, or a fixed set in tests)
    master: str

    @classmethod
    def from_settings(cls, settings: Settings, reference: DistrictReference) -> Senders:
        """The deployment's key file (re-read when it changes) and master signing key."""
        return cls(CredentialsFile(settings.keys_file, reference).current, settings.record_signing_key.value)

    def verify(self, topic: str, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, Any]]) -> tuple[Credentials, Credential]:
        credentials = self.credentials()
        return credentials, verify_sender(credentials, self.master, topic, key, value, headers)


class Ingestor:
    """Raw source records -> case-stream records (stateless; one per worker).

    Identity: a record is taken only with a valid signature of an integrator the key file knows
    (`streams.domain.credentials`); its report ids are scoped by that integrator, and a handling action
    goes on with that integrator as its actor, once the credential's rules allow it. An unsigned,
    forged or unauthorised record is dead-lettered, nothing of it applied.

    Time: each record is decided at its device's time while that lies within `skew` of the record's
    arrival, else at its arrival, flagged (`streams.domain.trusted_time`); the decided time is what
    the case stream carries.
    """

    def __init__(self, serde: Serde, reference: DistrictReference, hasher: PersonalDataHasher, topics: Topics, senders: Senders,
                 skew: SkewBounds = DEFAULT_SKEW) -> None:
        self.serde, self.reference, self.hasher, self.topics, self.senders, self.skew = serde, reference, hasher, topics, senders, skew
        self.enricher = Enricher(reference)
        specs = topics.source_spec_names()
        self._expected = {topic: (schema, specs[topic]) for topic, schema in
                          ((topics.camera, "CameraDetection"), (topics.hotline, "HotlineTicket"), (topics.app, "AppEvent"))}

    def process(self, where: Position, key: bytes | None, value: bytes | None, now: datetime, arrived: datetime | None = None,
                headers: Iterable[tuple[str, Any]] = ()) -> Output:
        """One raw record. `arrived` is when Kafka appended it (LogAppendTime); None: `now`, Whistle's own clock."""
        try:
            return self._route(where, key, value, arrived or now, headers)
        except Exception as exc:  # any failure dead-letters this record; the worker goes on
            return dead_letter(self.serde, self.topics, where, key, value, with_position(exc, where), now)

    def _route(self, where: Position, key: bytes | None, value: bytes | None, arrived: datetime, headers: Iterable[tuple[str, Any]]) -> Output:
        expected, spec_topic = self._expected.get(where.topic) or (None, "")
        if expected is None:
            raise DecodeError(f"topic {where.topic} is not a source topic")
        credentials, sender = self.senders.verify(spec_topic, key, value, headers)
        decoded = self.serde.decode(value, expect=expected)
        record = decoded.record
        if expected == "CameraDetection":
            _allowed(may_publish(sender, Source.CAMERA.value))
            report = normalize_camera(from_record(CameraDetection, record), self.reference, sender.integrator)
        elif expected == "HotlineTicket":
            _allowed(may_publish(sender, Source.HOTLINE.value))
            report = normalize_hotline(from_record(HotlineTicket, record), self.reference, self.hasher.phone, sender.integrator)
        else:
            branch, inner = record["event"]
            if branch == ACTION:
                action = from_record(HandlingAction, {**inner, "actor": sender.integrator})  # who signed it, whatever it says
                _allowed(action_refusal(credentials, sender, action), action_id=action.action_id, case_id=action.case_id)
                at, skewed = decided_time(action.at, arrived, self.skew)
                if skewed:
                    action = replace(action, at=at, note=flagged_note(action.note, skewed))
                return self._inbox(partition_key_of_case(action.case_id), (ACTION, to_record(action)))
            _allowed(may_publish(sender, Source.APP.value))
            report = normalize_app_report(from_record(ResidentReport, inner), self.reference, self.hasher.reporter, sender.integrator)
        at, skewed = decided_time(report.occurred_at, arrived, self.skew)
        enriched = self.enricher.enrich(replace(report, occurred_at=at) if skewed else report)
        if skewed:
            enriched = replace(enriched, flags=(*enriched.flags, skewed))
        return self._inbox(case_partition_key(enriched), (ENRICHED, to_record(enriched)))

    def _inbox(self, key: str, event: tuple[str, dict[str, Any]]) -> Output:
        return Output(self.topics.inbox, key.encode(), self.serde.encode("CaseInboxEvent", {"event": event}, validate=False))


def _allowed(refusal: AuthError | None, **context: Any) -> None:
    if refusal is not None:
        raise refusal.with_context(**context)


@dataclass(frozen=True, slots=True)
class StateWrite:
    """A state change to persist (after the outputs are acknowledged): key and value, None deletes.

    A case state is encoded only when `value` is read: the worker keeps a batch's last write per key and
    reads that one, so a case changed by many records of a batch is encoded once (states are immutable).
    """

    partition: int
    key: str
    payload: Any  # the value's bytes, or the object `encode` turns into them; None deletes
    encode: Callable[[Any], bytes] | None = None

    @property
    def value(self) -> bytes | None:
        if self.payload is None or self.encode is None:
            return self.payload
        return self.encode(self.payload)


class PartitionCases:
    """One case-stream partition's book, merge index and the actions held for cases not opened yet."""

    __slots__ = ("partition", "book", "merge", "held", "hold_ends", "reports", "refused", "tied")

    def __init__(self, partition: int, book: CaseBook, merge: MergeIndex) -> None:
        self.partition, self.book, self.merge = partition, book, merge
        self.reports: dict[str, tuple[str, bytes]] = {}  # report id -> (case id, content fingerprint): exactly-once per report
        self.refused: set[str] = set()  # action ids refused once: a redelivery is not decided again
        self.tied: dict[str, list[str]] = {}  # case id -> its report and refused-action keys: they leave with the case (archive)
        self.held: dict[str, list[HeldAction]] = {}
        self.hold_ends: list[tuple[int, str]] = []  # heap of (held_until_ms, case id); entries of released cases are skipped

    def remember(self, reports: Mapping[str, tuple[str, bytes]], refusals: Mapping[str, str]) -> None:
        """Record reports (id -> (case id, fingerprint)) and refused actions (id -> case id), each tied to its case."""
        self.reports.update(reports)
        self.refused.update(refusals)
        for report_id, (case_id, _) in reports.items():
            self.tied.setdefault(case_id, []).append(report_key(report_id))
        for action_id, case_id in refusals.items():
            self.tied.setdefault(case_id, []).append(refused_key(action_id))

    def archive(self, case_id: str) -> list[str]:
        """Forget an archived case's report and refused-action entries; their changelog keys, to tombstone."""
        keys = self.tied.pop(case_id, [])
        for key in keys:
            kind, _, name = key.partition(":")
            if kind == "report":
                self.reports.pop(name, None)
            else:
                self.refused.discard(name)
        return keys

    def hold(self, case_id: str, action: HeldAction) -> None:
        self.held.setdefault(case_id, []).append(action)
        heappush(self.hold_ends, (action.held_until_ms, case_id))

    def keep_held(self, case_id: str, actions: list[HeldAction]) -> None:
        """What stays held of a case's actions (their heap entries are there already); none: the case holds nothing."""
        if actions:
            self.held[case_id] = actions
        else:
            self.held.pop(case_id, None)

    def ended_holds(self, now_ms: int) -> list[tuple[str, list[HeldAction], list[HeldAction]]]:
        """(case id, actions whose hold ended, actions still held) for every case with a hold ended by `now_ms`."""
        ended: dict[str, None] = {}
        while self.hold_ends and self.hold_ends[0][0] <= now_ms:
            ended[heappop(self.hold_ends)[1]] = None
        result = []
        for case_id in ended:
            actions = self.held.get(case_id)
            if actions:
                result.append((case_id, [a for a in actions if a.held_until_ms <= now_ms], [a for a in actions if a.held_until_ms > now_ms]))
        return result


class Ownership:
    """Which case-stream partitions a worker may keep in memory across a rebalance.

    Whistle's consumer group rebalances eagerly with the range assignor: librdkafka's incremental
    protocol (KIP-429) comes only with the cooperative-sticky assignor, which balances the count of
    partitions over all topics together and can leave a worker no case-stream partition at all, where
    range splits every topic alike (a worker's raw and case-stream partitions have the same numbers).
    So every rebalance revokes every partition and then hands out the whole new assignment, mostly the
    same. Dropping a partition's cases on revocation would make the worker read back the changelog of
    every partition it kept (about 48 s for a million open cases, README). Instead the worker decides
    once the new assignment is known (`released`), and keeps a partition only if its copy in memory is
    still the changelog's:

    - the partition is in the new assignment, and was held before;
    - the changelog partition ends where this worker's own last write (or its read-back) left it. If
      another member owned the partition in between (this worker's session expired, it was fenced, the
      partition moved away and back) and advanced a case, that member wrote the case's new state, so
      the end moved and the copy in memory is stale: it is released and read back afresh. A lost
      assignment (librdkafka's "lost" rebalance) releases everything at once.

    Between revocation and assignment nothing processes (the worker's loop is inside `consume`), and
    every batch is flushed and committed before the next `consume`, so the state kept is the one the
    changelog holds; records delivered again from the committed offsets meet the same state a read-back
    would build, and the case processor's transitions are idempotent.
    """

    def __init__(self) -> None:
        self.written_through: dict[int, int] = {}  # changelog partition -> its end offset after this worker's last write

    def wrote(self, partition: int, offset: int) -> None:
        """Kafka acknowledged this worker's changelog record at `offset` of `partition`."""
        if offset >= self.written_through.get(partition, -1):
            self.written_through[partition] = offset + 1

    def read_back(self, partition: int, end: int) -> None:
        """The worker rebuilt `partition` from its changelog, which ended at `end`."""
        self.written_through[partition] = end

    def released(self, held: set[int], assigned: set[int], changelog_ends: Mapping[int, int]) -> set[int]:
        """The held partitions to release now that `assigned` is the worker's whole assignment; `changelog_ends`: the end
        offset of each held and assigned partition's changelog, asked of Kafka now."""
        stale = {p for p in held & assigned if changelog_ends.get(p) != self.written_through.get(p)}
        released = (held - assigned) | stale
        for partition in released:
            self.written_through.pop(partition, None)
        return released


class CaseProcessor:
    """The case stream -> case events and breaches, partition by partition, deterministically.

    State that is persisted (as `StateWrite`s, to the changelog of `streams.changelog`): every case's
    `CaseState`, every open case's merge entry (`open:<case id>`), the actions held for cases not opened
    yet (`held:<case id>`) and each partition's clock (`clock:<partition>`). The merge and deadline
    indexes are derived from them on recovery.

    Early actions: Kafka orders nothing across the raw topics' partitions, so an action can reach the case
    stream before the report that opens its case. It is held, not refused: applied in case-stream order
    right after the case opens, or dead-lettered (with its original bytes and position) once the policy's
    `early_action_hold` of the partition's time has passed without the case opening.
    """

    def __init__(self, serde: Serde, reference: DistrictReference, policies: Mapping[str, SlaPolicy],
                 calendar: BusinessCalendar, topics: Topics, partitions: int) -> None:
        self.serde, self.reference, self.policies, self.calendar, self.topics = serde, reference, policies, calendar, topics
        self.partitions = partitions
        self._parts: dict[int, PartitionCases] = {}
        self._recoveries: dict[int, int] = {}
        self._records_read: dict[int, int] = {}

        def arbiter(unit_a: str, unit_b: str, category: str):
            return common_parent(reference, unit_a, unit_b, category)

        self._common_parent = arbiter
        self._unit_tiers = reference.unit_tiers()

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self, partition: int, records: Iterable[tuple[int, str, bytes | None]]) -> list[tuple[int, str, bytes, ChangelogError]]:
        """Rebuild a partition from its changelog records (offset, key, value) in log order: a key's last record
        wins, None deletes it. Returns the records that could not be decoded (offset, key, value, error), to be
        dead-lettered: they are skipped, and every record after them is applied.

        Records are decoded as they stream in (a superseded state is decoded and dropped), so that no
        copy of the partition's bytes is held while the live objects are built.
        """
        states: dict[str, CaseState] = {}
        open_cases: dict[str, OpenCase] = {}
        held: dict[str, list[HeldAction]] = {}
        reports: dict[str, tuple[str, bytes]] = {}
        refused_ids: dict[str, str] = {}  # action id -> its case
        clock_ms = None
        refused: list[tuple[int, str, bytes, ChangelogError]] = []
        read = 0
        for offset, key, value in records:
            read += 1
            kind, _, name = key.partition(":")
            try:
                if kind == "case":
                    if value is None:
                        states.pop(name, None)
                    else:
                        state = decode_case_state(value)
                        states[state.case_id] = state  # keyed by the state's own id string, not a copy
                elif kind == "open":
                    if value is None:
                        open_cases.pop(name, None)
                    else:
                        open_cases[name] = decode_open_case(value)
                elif kind == "report":
                    if value is None:
                        reports.pop(name, None)
                    else:
                        reports[name] = decode_report_seen(value)
                elif kind == "refused":
                    if value is None:
                        refused_ids.pop(name, None)
                    else:
                        refused_ids[name] = decode_refused(value)[0]
                elif kind == "held":
                    if value is None:
                        held.pop(name, None)
                    else:
                        held[name] = decode_held(value)
                elif kind == "clock" and name == str(partition) and value is not None:
                    clock_ms = decode_clock(value)
            except ChangelogError as exc:
                exc.with_context(key=key, partition=partition, offset=offset)
                refused.append((offset, key, value or b"", exc))
        part = self._new_partition(partition, states, clock_ms)
        for case in open_cases.values():
            owner = states.get(case.case_id)  # the entry takes the state's case id string: one copy per case, not two
            part.merge.add(case if owner is None or owner.case_id is case.case_id else replace(case, case_id=owner.case_id))
        for case_id, actions in held.items():
            for action in actions:
                part.hold(case_id, action)
        part.remember(reports, refused_ids)
        self._recoveries[partition] = self._recoveries.get(partition, 0) + 1
        self._records_read[partition] = self._records_read.get(partition, 0) + read
        return refused

    def recovery_metrics(self) -> str:
        """How often each partition was read back from the changelog, and how many records that read, in
        Prometheus's text format: a rebalance that kept a partition adds nothing to its counters."""
        lines = ["# HELP whistle_partitions_recovered_total Times this worker read a case-stream partition back from the changelog.",
                 "# TYPE whistle_partitions_recovered_total counter"]
        lines += [f'whistle_partitions_recovered_total{{partition="{p}"}} {n}' for p, n in sorted(self._recoveries.items())]
        lines += ["# HELP whistle_changelog_records_read_total Changelog records this worker read back, by partition.",
                  "# TYPE whistle_changelog_records_read_total counter"]
        lines += [f'whistle_changelog_records_read_total{{partition="{p}"}} {n}' for p, n in sorted(self._records_read.items())]
        return "\n".join(lines) + "\n"

    def held(self) -> list[PartitionCases]:
        """What this processor holds, partition by partition (the benchmarks measure it)."""
        return list(self._parts.values())

    def owned(self) -> set[int]:
        """The case-stream partitions this processor holds state for."""
        return set(self._parts)

    def release(self, partition: int) -> None:
        self._parts.pop(partition, None)

    def _new_partition(self, partition: int, states: dict[str, CaseState] | None = None, clock_ms: int | None = None) -> PartitionCases:
        book = CaseBook(self.policies, self.calendar, self._common_parent, states=states, clock_ms=clock_ms, units=self._unit_tiers)
        part = PartitionCases(partition, book, MergeIndex(self.reference.gazetteer.normalize))
        self._parts[partition] = part
        return part

    # -- processing -------------------------------------------------------------------------------
    def process(self, where: Position, key: bytes | None, value: bytes | None, now: datetime) -> tuple[list[Output], list[StateWrite]]:
        """Apply one case-stream record. Deadlines due by its time fire first, then the record itself.

        One record, one transaction: if anything fails part-way (a bug, or deadline arithmetic the calendar
        cannot do), the partition's states, deadlines and clock are rolled back to what they were before
        this record, nothing it computed is emitted, and the record is dead-lettered; the next record is
        processed as if this one had never come. A refused action (TransitionError) is not a failure:
        the deadlines its time made due still fire, and the action alone is dead-lettered.
        """
        part = self._parts.get(where.partition) or self._new_partition(where.partition)
        outputs: list[Output] = []
        try:
            branch, record = self._inbox_event(value)
        except Exception as exc:  # undecodable case-stream record: dead-letter it, keep going
            return [dead_letter(self.serde, self.topics, where, key, value, with_position(exc, where), now)], []
        events: list[CaseEvent] = []
        breaches: list[Breach] = []
        merge_changes: list[tuple[OpenCase, datetime | None]] = []  # for the merge index, once the record commits
        recorded: dict[str, tuple[str, bytes]] = {}  # the report this record recorded: id -> (case id, fingerprint)
        refusals: dict[str, tuple[str, str]] = {}  # actions refused by this record: id -> (case id, reason)
        new_hold: tuple[str, HeldAction] | None = None  # the action this record holds
        released: dict[str, list[HeldAction]] = {}  # cases whose held actions this record released -> what stays held
        part.book.begin()
        try:
            if branch == TICK:
                events, breaches = part.book.advance(record["at"])
            elif branch == ENRICHED:
                events, breaches = self._report(part, from_record(EnrichedReport, record), merge_changes, recorded)
                for entry, joined_at in merge_changes:
                    if joined_at is None and entry.case_id in part.held:  # the case just opened: its early actions apply now
                        clock_ms = part.book.index.clock_ms  # actions whose hold ended before the case opened stay for the expiry below
                        live = [a for a in part.held[entry.case_id] if a.held_until_ms > clock_ms]
                        acted, more = self._release(part, live, outputs, refusals, now)
                        events, breaches = events + acted, breaches + more
                        released[entry.case_id] = [a for a in part.held[entry.case_id] if a.held_until_ms <= clock_ms]
            else:
                action = from_record(HandlingAction, record)
                events, breaches = part.book.advance(action.at)
                if action.action_id in part.refused:  # a redelivery of an action refused before: one action, one decision
                    again = TransitionError(f"action {action.action_id} was refused before: its redelivery is not decided again",
                                            reason="already_refused", case_id=action.case_id, action_id=action.action_id, field="action_id")
                    outputs.append(dead_letter(self.serde, self.topics, where, key, value, with_position(again, where), now))
                elif action.case_id not in part.book.states:
                    clock_ms = part.book.index.clock_ms
                    until = self.calendar.edition_at(clock_ms).add(clock_ms, policy_in_force(self.policies, action.at).early_action_hold)
                    new_hold = (action.case_id, HeldAction(where.partition, where.offset, key, value or b"", until))
                else:
                    try:
                        acted, more = part.book.act(action)
                    except TransitionError as exc:
                        outputs.append(dead_letter(self.serde, self.topics, where, key, value, with_position(exc, where), now))
                        refusals[action.action_id] = (action.case_id, str(exc.context.get("reason", "")))
                    else:
                        events, breaches = events + acted, breaches + more
        except Exception as exc:  # a bug or bad data on this record: undo it, dead-letter it, keep the partition going
            part.book.rollback()
            return [dead_letter(self.serde, self.topics, where, key, value, with_position(exc, where), now)], []
        part.book.commit()
        opened: list[OpenCase | None] = []  # merge entries to persist (None: a touch that changed nothing)
        for entry, joined_at in merge_changes:
            if joined_at is None:
                part.merge.add(entry)
                opened.append(entry)
            else:
                opened.append(part.merge.touch(entry.case_id, joined_at))
        # the record succeeded: its changes to the held actions take effect, then the holds its time ended
        held_changed = dict.fromkeys(released)  # ordered: the changelog is written in a deterministic order
        for case_id, still_held in released.items():
            part.keep_held(case_id, still_held)
        if new_hold is not None:
            part.hold(*new_hold)
            held_changed[new_hold[0]] = None
        for case_id, ended, still_held in part.ended_holds(part.book.index.clock_ms):
            for action in ended:
                letter, action_id = self._unknown_case(action, now)
                outputs.append(letter)
                refusals[action_id] = (case_id, "unknown_case")
            part.keep_held(case_id, still_held)
            held_changed[case_id] = None
        part.remember(recorded, {action_id: case_id for action_id, (case_id, _) in refusals.items()})
        return self._emit(part, outputs, events, breaches, opened, held_changed, recorded, refusals)

    def _inbox_event(self, value: bytes | None) -> tuple[str, dict[str, Any]]:
        """A case-stream record's event (branch, record). Its values are not checked again: Whistle's ingest stage
        (or its clock) wrote it from a record validated where it crossed the trust boundary, the raw topics. A
        corrupt or foreign record still fails here (framing, schema, body), and is dead-lettered by the caller."""
        return self.serde.decode(value, expect="CaseInboxEvent", validate=False).record["event"]

    def _release(self, part: PartitionCases, actions: list[HeldAction], outputs: list[Output], refusals: dict[str, tuple[str, str]],
                 now: datetime) -> tuple[list[CaseEvent], list[Breach]]:
        """Apply a newly opened case's held actions in case-stream order, each at no earlier than the partition's time."""
        events: list[CaseEvent] = []
        breaches: list[Breach] = []
        for held in actions:
            where = Position(self.topics.inbox, held.partition, held.offset)
            _, record = self._inbox_event(held.value)
            action = from_record(HandlingAction, record)  # dated before the case opened: recorded at it, flagged (handle_action)
            try:
                acted, more = part.book.act(action)
            except TransitionError as exc:
                outputs.append(dead_letter(self.serde, self.topics, where, held.key, held.value, with_position(exc, where), now))
                refusals[action.action_id] = (action.case_id, str(exc.context.get("reason", "")))
            else:
                events += acted
                breaches += more
        return events, breaches

    def _unknown_case(self, held: HeldAction, now: datetime) -> tuple[Output, str]:
        where = Position(self.topics.inbox, held.partition, held.offset)
        _, record = self._inbox_event(held.value)
        error = TransitionError(f"unknown case {record['case_id']}: no report opened it while the action was held (until "
                                f"{from_epoch_ms(held.held_until_ms).isoformat()})", reason="unknown_case", case_id=record["case_id"],
                                action_id=record["action_id"], field="case_id")
        return dead_letter(self.serde, self.topics, where, held.key, held.value, with_position(error, where), now), record["action_id"]

    def _report(self, part: PartitionCases, enriched: EnrichedReport, merge_changes: list[tuple[OpenCase, datetime | None]],
                recorded: dict[str, tuple[str, bytes]]):
        """A report joins an open case nearby, or opens one. `merge_changes` collects what the merge index is to
        take once the record commits: (a new case's entry, None), or (a joined case's entry, the report's time).

        Exactly once per report: a report id already recorded in any case of the partition (open, resolved
        or closed) is a no-op when it comes again with the same content, whichever case is nearest now,
        and a conflicting duplicate (refused, naming both) when it comes with other content.
        """
        report = enriched.report
        at = report.occurred_at
        events, breaches = part.book.advance(at)
        fingerprint = report_fingerprint(enriched)
        known = part.reports.get(report.report_id)
        if known is not None and known[0] in part.book.states:  # (a case lost with a half-written changelog: decide again)
            if known[1] != fingerprint:
                raise TransitionError(f"report id {report.report_id} was recorded in case {known[0]} with other content: a conflicting "
                                      "duplicate (a reused id, or an altered redelivery)", reason="conflicting_duplicate",
                                      report_id=report.report_id, case_id=known[0], field="report_id")
            return events, breaches  # a redelivery: recorded already
        joined = part.merge.find_case_to_join(enriched, at)
        if joined is not None:
            merged, more = part.book.merge(joined, enriched, at)
            merge_changes.append((part.merge.entry(joined), at))  # the widened time window must survive recovery
            recorded[report.report_id] = (joined, fingerprint)
            return events + merged, breaches + more
        case_id = case_id_for(enriched)
        recorded[report.report_id] = (case_id, fingerprint)
        if case_id in part.book.states:  # this very report opened it already: a replay after a crash
            return events, breaches
        opening, more = part.book.open(enriched, case_id, at)
        merge_changes.append((part.merge.open_case(case_id, enriched), None))
        return events + opening, breaches + more

    def _emit(self, part: PartitionCases, outputs: list[Output], events, breaches: list[Breach],
              opened: list[OpenCase | None], held_changed: dict[str, None],
              recorded: dict[str, tuple[str, bytes]], refusals: dict[str, tuple[str, str]]) -> tuple[list[Output], list[StateWrite]]:
        writes: dict[str, Any] = {open_key(entry.case_id): encode_open_case(entry) for entry in opened if entry is not None}
        for report_id, (case_id, fingerprint) in recorded.items():
            writes[report_key(report_id)] = encode_report_seen(case_id, fingerprint)
        for action_id, (case_id, reason) in refusals.items():
            writes[refused_key(action_id)] = encode_refused(case_id, reason)
        for case_id in held_changed:
            writes[held_key(case_id)] = encode_held(case_id, part.held[case_id]) if case_id in part.held else None
        encode = self.serde.encode
        for event in events:
            outputs.append(Output(self.topics.case_events, event.case_id.encode(), encode("CaseEvent", to_record(event), validate=False)))
            if event.kind in (Kind.RESOLVED, Kind.CLOSED) and event.case_id in part.merge:
                part.merge.remove(event.case_id)
                writes[open_key(event.case_id)] = None
        for breach in breaches:
            outputs.append(Output(self.topics.breaches, breach.case_id.encode(), encode("Breach", to_record(breach), validate=False),
                                  (("whistle.breach.tier", breach.tier.encode()), ("whistle.breach.kind", breach.kind.encode()))))
        for case_id in part.book.archived:  # closed for the policy's archive_after: the case leaves memory and the changelog
            writes[case_key(case_id)] = None
            writes.update(dict.fromkeys(part.archive(case_id)))
        # Case states first: the changelog is written in this order, so a crash part-way never leaves a report
        # recorded, or held actions released, for a case whose state was not stored (they are decided again).
        states = part.book.states
        result = [StateWrite(part.partition, case_key(case_id), states[case_id], encode_case_state)  # encoded when read
                  for case_id in dict.fromkeys(event.case_id for event in events)]
        result += [StateWrite(part.partition, k, v) for k, v in writes.items()]
        result.append(StateWrite(part.partition, clock_key(part.partition), encode_clock(part.book.index.clock_ms)))
        return outputs, result
