"""The case status fold exists once in meaning: the Python fold (`streams.domain.case.fold`) and the SQL view
`case_state` (migration 003) agree on every case of a simulated day, on ClickHouse 18.16 and chdb.

A day of the sample district (and the follow-ups of its next morning) runs through Ingestor and CaseProcessor
in-process, its clock ticking as the demo's feed ticks it, then once more a few hours after the last record so
that deadlines fire (escalations) and unrated resolutions close. The emitted case events are decoded and folded
in Python, and the same records become case_events rows through the sink's RowMaker; the view must then say
what the fold says, column by column, for every case, also when every event is stored twice (at-least-once).

What is compared (the header of 003_case_state_view.sql says what each view column means):
  seq, status, category, urgency, policy_version, place (district .. department), assignee unit and tier,
  escalations, last_hash (CaseState.head), dispatched_ms (CaseState.stage_start_ms: first dispatch or last
  escalation), and CaseState.status_since_ms against the view's time of the status's own event when the status
  has one (dispatched -> dispatched_ms, resolved -> resolved_ms, closed -> closed_ms; accepted_ms is the first
  acceptance, the state's the last: not the same meaning).
  rating only where CaseState has one: the view knowingly keeps the latest rating after an escalation or a
  reopen, which CaseState forgets. opened_ms, accepted_ms, transfers, reopens, last_event_ms have no CaseState
  counterpart.
"""
from __future__ import annotations

from collections import Counter
from datetime import timedelta
from types import SimpleNamespace

import pytest
from test_case_state import case_states
from test_recovery import PARTITIONS, SCHEMAS, START
from test_simulate import TICK_EVERY

from schemas.serde import Serde, from_record
from sinks.migrator import migrate
from sinks.sink import CASE_EVENT_COLUMNS, RowMaker
from streams.domain.calendar import load_calendar
from streams.domain.case import CaseEvent, CaseState, Status, fold, verify_chain
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.pipeline import CaseProcessor, Ingestor, Senders, partition_for_key
from whistle.devtools.feed import Signers, ingest_event
from whistle.devtools.simulate import SimConfig, simulate
from whistle.edges.clock import tick_value
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

pytestmark = pytest.mark.clickhouse

FEED_UNTIL = START + timedelta(hours=36)  # the day, and the next morning's handling of it (ratings, late actions)
LAST_TICK = FEED_UNTIL + timedelta(hours=6)  # deadlines due by then fire: escalations, unrated resolutions close
INGEST_MS = 1_780_000_000_000
SIGNERS = Signers(Settings())  # each simulated integrator signs what it sends

# View column -> the same thing read off the Python fold's CaseState.
SAME_MEANING = {
    "seq": lambda s: s.seq,
    "status": lambda s: str(s.status),
    "category": lambda s: s.category,
    "urgency": lambda s: s.urgency,
    "policy_version": lambda s: s.policy_version,
    "district_id": lambda s: s.place.district_id,
    "street_id": lambda s: s.place.street_id,
    "community_id": lambda s: s.place.community_id,
    "grid_id": lambda s: s.place.grid_id,
    "department_id": lambda s: s.place.department_id,
    "assignee_unit_id": lambda s: s.assignee.unit_id,
    "assignee_tier": lambda s: s.assignee.tier,
    "escalations": lambda s: s.escalations,
    "dispatched_ms": lambda s: s.stage_start_ms,
    "last_hash": lambda s: s.head.hex(),
}
# The view's time of the event that put a case into its status, where the view has one with that meaning.
STATUS_TIME = {Status.DISPATCHED: "dispatched_ms", Status.RESOLVED: "resolved_ms", Status.CLOSED: "closed_ms"}
VIEW_COLUMNS = ("case_id", *SAME_MEANING, "resolved_ms", "closed_ms", "rating")


@pytest.fixture(scope="module")
def day():
    """The simulated day through the pure pipeline: its case events (decoded, in log order), their fold, and the
    case_events rows the sink would make of the same records."""
    reference, serde, topics = load_reference(), Serde(), Topics()
    ingest = Ingestor(serde, reference, PersonalDataHasher("test-key"), topics, Senders.from_settings(Settings(), reference))
    cases = CaseProcessor(serde, reference, load_policies(), load_calendar(), topics, PARTITIONS)
    inbox_offsets, emitted = [0] * PARTITIONS, []

    def apply(partition: int, key: bytes | None, value: bytes, now) -> None:
        produced, _ = cases.process(Position(topics.inbox, partition, inbox_offsets[partition]), key, value, now)
        inbox_offsets[partition] += 1
        emitted.extend(o for o in produced if o.topic == topics.case_events)

    def tick(at) -> None:
        for partition in range(PARTITIONS):
            apply(partition, None, tick_value(serde, partition, at), at)

    ticked = None
    for offset, event in enumerate(simulate(reference, SimConfig(seed=5, start=START, incidents_per_day=300))):
        if event.at >= FEED_UNTIL:
            break  # the simulation's events come in time order
        if ticked is None or event.at - ticked >= TICK_EVERY:
            tick(event.at)
            ticked = event.at
        topic, schema = SCHEMAS[event.source]
        routed = ingest_event(ingest, SIGNERS, Position(topic, 0, offset), event, event.at)
        if routed.topic == topics.inbox:
            apply(partition_for_key(routed.key.decode(), PARTITIONS), routed.key, routed.value, event.at)
    tick(LAST_TICK)

    events = [from_record(CaseEvent, serde.decode(o.value, expect="CaseEvent").record) for o in emitted]
    maker = RowMaker(serde, PersonalDataHasher("test-key"), topics, Senders.from_settings(Settings(), reference))
    event_offsets, rows = [0] * PARTITIONS, []
    for o in emitted:
        partition = o.partition if o.partition is not None else partition_for_key(o.key.decode(), PARTITIONS)
        rows.append(maker.row(Position(topics.case_events, partition, event_offsets[partition]), o.key, o.value, INGEST_MS, INGEST_MS).values)
        event_offsets[partition] += 1
    return SimpleNamespace(events=events, states=fold(events), rows=rows)


def store(engine, database, rows, copies=1):
    """Migrate `database` and insert `rows` as case_events, each row `copies` times in separate INSERTs (a
    redelivery lands in a later batch); merges are stopped so the copies stay stored for the view to collapse."""
    migrate(engine, database)
    engine.execute(f"SYSTEM STOP MERGES {database}.case_events")
    for _ in range(copies):
        engine.insert(f"{database}.case_events", CASE_EVENT_COLUMNS, rows)


def view_rows(engine, database) -> dict[str, dict]:
    return {row[0]: dict(zip(VIEW_COLUMNS, row)) for row in case_states(engine, database, ", ".join(VIEW_COLUMNS))}


def disagreements(states: dict[str, CaseState], view: dict[str, dict]) -> dict[str, dict[str, tuple]]:
    """case_id -> {column: (python, sql)} for every case where the fold and the view say different things;
    a case only one side knows is {"case": (in python, in sql)}. {} when they agree on every case."""
    found: dict[str, dict[str, tuple]] = {}
    for case_id in sorted(states.keys() | view.keys()):
        state, row = states.get(case_id), view.get(case_id)
        if state is None or row is None:
            found[case_id] = {"case": (state is not None, row is not None)}
            continue
        pairs = {column: (read(state), row[column]) for column, read in SAME_MEANING.items()}
        if state.status in STATUS_TIME:
            pairs["status_since_ms"] = (state.status_since_ms, row[STATUS_TIME[state.status]])
        if state.rating is not None:  # the view keeps a rating CaseState forgot (see the module docstring)
            pairs["rating"] = (state.rating, row["rating"])
        differ = {column: pair for column, pair in pairs.items() if pair[0] != pair[1]}
        if differ:
            found[case_id] = differ
    return found


@pytest.mark.parametrize("copies", [1, 2], ids=["once", "stored-twice"])
def test_the_view_and_the_python_fold_agree_on_every_case_of_a_day(day, engine, database, copies):
    # The day is not trivial: every interesting status is somebody's final state, and escalations happened.
    assert verify_chain(day.events) == []
    statuses = Counter(str(state.status) for state in day.states.values())
    assert {"dispatched", "accepted", "resolved", "closed"} <= statuses.keys(), statuses
    assert sum(state.escalations > 0 for state in day.states.values()) >= 5
    assert sum(state.status == Status.DISPATCHED and state.escalations > 0 for state in day.states.values()) >= 1
    assert len(day.states) >= 200

    store(engine, database, day.rows, copies)

    stored = engine.execute(f"SELECT count(), uniqExact(case_id, seq) FROM {database}.case_events")
    assert stored == [(copies * len(day.rows), len(day.rows))]
    view = view_rows(engine, database)
    assert len(view) == len(day.states)
    assert disagreements(day.states, view) == {}


def test_the_comparison_sees_a_stored_event_the_fold_did_not_apply(day, engine, database):
    """Negative control: one resolved case gets an extra stored 'accepted' event after its last one. The shared
    comparison must name that case, and only its seq and status."""
    target = min(case_id for case_id, state in day.states.items() if state.status == Status.RESOLVED)
    chosen = {target, *sorted(day.states)[:20]}
    case_id_at, seq_at = CASE_EVENT_COLUMNS.index("case_id"), CASE_EVENT_COLUMNS.index("seq")
    rows = [row for row in day.rows if row[case_id_at] in chosen]
    last = max((row for row in rows if row[case_id_at] == target), key=lambda row: row[seq_at])
    extra = dict(zip(CASE_EVENT_COLUMNS, last))
    seq = extra["seq"] + 1
    extra.update(event_id=f"{target}:{seq}", seq=seq, kind="accepted", kafka_offset=extra["kafka_offset"] + 10_000)
    store(engine, database, [*rows, tuple(extra.values())])

    states = {case_id: day.states[case_id] for case_id in chosen}
    assert disagreements(states, view_rows(engine, database)) == {target: {"seq": (seq - 1, seq), "status": ("resolved", "accepted")}}
