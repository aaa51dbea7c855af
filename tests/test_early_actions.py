"""Early arrivals are held, not dropped: an action that reaches the case stream before its report.

Kafka orders nothing across the raw topics' partitions, so at full speed an action can be routed to the
case stream before the report that opens its case. It is held in the partition's state (and its
changelog, so a restart keeps it), applied in case-stream order right after the case opens, or
dead-lettered with its original bytes and position once the policy's hold has passed.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from test_case import T0, report
from test_transactions import _inbox

from schemas.serde import Serde
from streams.domain.calendar import load_calendar
from streams.domain.case import Kind
from streams.domain.case_id import case_id_for
from streams.domain.model import ActionKind, HandlingAction
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.pipeline import ACTION, ENRICHED, CaseProcessor
from whistle.edges.clock import tick_value
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics

SERDE, TOPICS = Serde(), Topics()


class Partition:
    """One case-stream partition fed record by record, its outputs decoded and its changelog kept."""

    def __init__(self, cases: CaseProcessor | None = None) -> None:
        self.cases = cases or CaseProcessor(SERDE, load_reference(), load_policies(), load_calendar(), TOPICS, 1)
        self.offset = 0
        self.changelog: dict[str, bytes | None] = {}
        self.outputs: list[tuple[str, dict]] = []

    def feed(self, branch: str, record, at) -> list[tuple[str, dict]]:
        value = tick_value(SERDE, 0, at) if branch == "tick" else _inbox(SERDE, branch, record)
        produced, writes = self.cases.process(Position(TOPICS.inbox, 0, self.offset), b"k", value, at)
        self.offset += 1
        for write in writes:
            self.changelog[write.key] = write.value
        decoded = [(o.topic, SERDE.decode(o.value).record) for o in produced]
        self.outputs += decoded
        return decoded

    def of(self, topic: str) -> list[dict]:
        return [record for t, record in self.outputs if t == topic]


def _case():
    enriched = report("app:early-1")
    return enriched, case_id_for(enriched), enriched.chain[0].unit_id


def test_an_action_before_its_report_is_held_then_applied_when_the_case_opens():
    enriched, case_id, grid = _case()
    partition = Partition()
    accept = HandlingAction("act:early-accept", case_id, ActionKind.ACCEPT, grid, T0 + timedelta(minutes=1))
    assert partition.feed(ACTION, accept, T0 + timedelta(minutes=1)) == []  # held: nothing emitted, nothing refused
    assert partition.changelog[f"held:{case_id}"] is not None
    partition.feed(ENRICHED, enriched, T0)
    kinds = [(e["kind"], e["cause_id"]) for e in partition.of(TOPICS.case_events)]
    assert kinds == [(Kind.OPENED, "app:early-1"), (Kind.DISPATCHED, "app:early-1"), (Kind.ACCEPTED, "act:early-accept")]
    assert partition.of(TOPICS.deadletter) == [] and partition.changelog[f"held:{case_id}"] is None


def test_a_held_action_whose_case_never_opens_is_dead_lettered_with_its_bytes_and_position_after_the_hold():
    _, case_id, grid = _case()
    partition = Partition()
    accept = HandlingAction("act:orphan", case_id, ActionKind.ACCEPT, grid, T0)
    partition.feed(ACTION, accept, T0)
    held_value = _inbox(SERDE, ACTION, accept)
    assert partition.feed("tick", None, T0 + timedelta(minutes=59)) == []  # within the hold: still held
    [(topic, letter)] = partition.feed("tick", None, T0 + timedelta(minutes=61))
    assert topic == TOPICS.deadletter
    assert (letter["original_topic"], letter["original_partition"], letter["original_offset"]) == (TOPICS.inbox, 0, 0)
    assert letter["original_value"] == held_value and "unknown case" in letter["error_message"]
    assert partition.changelog[f"held:{case_id}"] is None


def test_held_actions_survive_a_restart():
    enriched, case_id, grid = _case()
    before = Partition()
    before.feed(ACTION, HandlingAction("act:held-accept", case_id, ActionKind.ACCEPT, grid, T0 + timedelta(minutes=1)), T0 + timedelta(minutes=1))
    restarted = CaseProcessor(SERDE, load_reference(), load_policies(), load_calendar(), TOPICS, 1)
    assert restarted.recover(0, [(n, key, value) for n, (key, value) in enumerate(before.changelog.items())]) == []
    after = Partition(restarted)
    after.offset = before.offset
    after.feed(ENRICHED, enriched, T0)
    assert [e["kind"] for e in after.of(TOPICS.case_events)] == [Kind.OPENED, Kind.DISPATCHED, Kind.ACCEPTED]


def test_negative_control_without_the_report_the_same_action_is_never_applied():
    _, case_id, grid = _case()
    partition = Partition()
    partition.feed(ACTION, HandlingAction("act:never", case_id, ActionKind.ACCEPT, grid, T0), T0)
    partition.feed("tick", None, T0 + timedelta(hours=2))
    assert partition.of(TOPICS.case_events) == [] and len(partition.of(TOPICS.deadletter)) == 1


def test_holding_is_deterministic_from_the_case_stream_order():
    def run():
        enriched, case_id, grid = _case()
        partition = Partition()
        for n, kind in enumerate((ActionKind.ACCEPT, ActionKind.RESOLVE)):
            partition.feed(ACTION, HandlingAction(f"act:{n}", case_id, kind, grid, T0 + timedelta(minutes=2 + n), note="已清理"), T0)
        partition.feed(ENRICHED, enriched, T0)
        partition.feed("tick", None, T0 + timedelta(days=8))
        return partition.outputs

    first, second = run(), run()
    assert first == second
    kinds = [r["kind"] for t, r in first if t == TOPICS.case_events]
    assert kinds[:4] == [Kind.OPENED, Kind.DISPATCHED, Kind.ACCEPTED, Kind.RESOLVED]
    assert [t for t, _ in first].count(TOPICS.deadletter) == 0


def test_a_report_arriving_after_the_hold_ended_does_not_revive_the_held_action():
    """No tick in between: the report's own time ends the hold, so the action is dead-lettered, not applied."""
    enriched, case_id, grid = _case()
    late = replace(enriched, report=replace(enriched.report, occurred_at=T0 + timedelta(hours=2)))
    partition = Partition()
    partition.feed(ACTION, HandlingAction("act:stale", case_id, ActionKind.ACCEPT, grid, T0), T0)
    partition.feed(ENRICHED, late, T0 + timedelta(hours=2))
    assert [e["kind"] for e in partition.of(TOPICS.case_events)] == [Kind.OPENED, Kind.DISPATCHED]
    [letter] = partition.of(TOPICS.deadletter)
    assert "unknown case" in letter["error_message"] and partition.changelog[f"held:{case_id}"] is None
