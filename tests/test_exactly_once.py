"""Exactly one effect per report: a report id recorded in any case of its partition is a no-op when it
comes again, whatever case is nearest now; the same id with other content is a conflicting duplicate.

At-least-once delivery redelivers records, sometimes long after they were first applied: a report
merged into a case that has since been resolved, delivered again, used to open a second case for the
same incident (and breach the grid team a day later).
"""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from test_case import T0, report
from test_early_actions import SERDE, TOPICS, Partition

from streams.domain.calendar import load_calendar
from streams.domain.case import Kind
from streams.domain.case_id import case_id_for
from streams.domain.model import ActionKind, HandlingAction
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.pipeline import ACTION, ENRICHED, CaseProcessor


def _resolve(partition: Partition, case_id: str, unit: str, minutes: int) -> None:
    for n, kind in enumerate((ActionKind.ACCEPT, ActionKind.RESOLVE)):
        at = T0 + timedelta(minutes=minutes + n)
        partition.feed(ACTION, HandlingAction(f"act:{case_id}:{kind.value}", case_id, kind, unit, at, note="已处理"), at)


def _opened(partition: Partition) -> list[str]:
    return [e["case_id"] for e in partition.of(TOPICS.case_events) if e["kind"] == Kind.OPENED]


def test_a_merged_report_redelivered_after_its_case_was_resolved_opens_no_second_case():
    first, second = report("app:x-1"), report("app:x-2", at=T0 + timedelta(minutes=5))
    partition = Partition()
    partition.feed(ENRICHED, first, T0)
    partition.feed(ENRICHED, second, second.report.occurred_at)
    case_id = case_id_for(first)
    assert _opened(partition) == [case_id]
    _resolve(partition, case_id, first.chain[0].unit_id, 10)
    before = list(partition.outputs)
    assert partition.feed(ENRICHED, second, T0 + timedelta(minutes=20)) == []  # the redelivery: nothing at all
    assert partition.outputs == before and _opened(partition) == [case_id]


def test_the_report_that_opened_a_case_redelivered_later_does_not_merge_into_a_neighbour():
    first = report("app:y-1")
    partition = Partition()
    partition.feed(ENRICHED, first, T0)
    _resolve(partition, case_id_for(first), first.chain[0].unit_id, 5)
    neighbour = report("app:y-2", at=T0 + timedelta(minutes=30))
    partition.feed(ENRICHED, neighbour, neighbour.report.occurred_at)
    assert partition.feed(ENRICHED, first, T0 + timedelta(minutes=40)) == []
    merged = [e for e in partition.of(TOPICS.case_events) if e["kind"] == Kind.REPORT_MERGED]
    assert merged == []


def test_a_different_report_under_a_reused_id_is_a_conflicting_duplicate_naming_both():
    garbage = report("app:z-1")
    fire = replace(garbage, report=replace(garbage.report, category="fire_smoke", description="着火了"))
    partition = Partition()
    partition.feed(ENRICHED, garbage, T0)
    [(topic, letter)] = partition.feed(ENRICHED, fire, T0 + timedelta(minutes=1))
    assert topic == TOPICS.deadletter
    assert "app:z-1" in letter["error_message"] and case_id_for(garbage) in letter["error_message"]
    assert "conflicting duplicate" in letter["error_message"]


def test_negative_control_the_same_report_under_its_own_id_is_recorded():
    garbage = report("app:w-1")
    fire = replace(garbage, report=replace(garbage.report, report_id="app:w-2", category="fire_smoke", description="着火了"))
    partition = Partition()
    partition.feed(ENRICHED, garbage, T0)
    assert [t for t, _ in partition.feed(ENRICHED, fire, T0 + timedelta(minutes=1))] == [TOPICS.case_events] * 2  # opened, dispatched
    assert len(_opened(partition)) == 2


def test_the_recorded_reports_survive_a_restart():
    first, second = report("app:v-1"), report("app:v-2", at=T0 + timedelta(minutes=5))
    partition = Partition()
    partition.feed(ENRICHED, first, T0)
    partition.feed(ENRICHED, second, second.report.occurred_at)
    _resolve(partition, case_id_for(first), first.chain[0].unit_id, 10)
    restarted = CaseProcessor(SERDE, load_reference(), load_policies(), load_calendar(), TOPICS, 1)
    assert restarted.recover(0, [(n, key, value) for n, (key, value) in enumerate(partition.changelog.items())]) == []
    after = Partition(restarted)
    assert after.feed(ENRICHED, second, T0 + timedelta(minutes=20)) == []


def test_negative_control_without_the_report_index_the_redelivery_opens_a_ghost_case():
    """What the release before this one did: forget which reports were recorded, and the redelivered merged
    report opens a second case for the same incident."""
    first, second = report("app:u-1"), report("app:u-2", at=T0 + timedelta(minutes=5))
    partition = Partition()
    partition.feed(ENRICHED, first, T0)
    partition.feed(ENRICHED, second, second.report.occurred_at)
    _resolve(partition, case_id_for(first), first.chain[0].unit_id, 10)
    partition.cases._parts[0].reports.clear()
    partition.feed(ENRICHED, second, T0 + timedelta(minutes=20))
    assert len(_opened(partition)) == 2


def test_a_refused_action_redelivered_later_is_not_decided_again():
    """A resolve refused (the case was not accepted) and delivered again after the case was accepted: one action,
    one decision. The redelivery is dead-lettered as already refused, not applied as a new resolve."""
    enriched = report("app:t-1")
    case_id, grid = case_id_for(enriched), enriched.chain[0].unit_id
    partition = Partition()
    partition.feed(ENRICHED, enriched, T0)
    resolve = HandlingAction("act:early-resolve", case_id, ActionKind.RESOLVE, grid, T0 + timedelta(minutes=1), note="已处理")
    [(topic, first)] = partition.feed(ACTION, resolve, T0 + timedelta(minutes=1))
    assert topic == TOPICS.deadletter and "not_accepted" in str(first) or "accept it first" in first["error_message"]
    partition.feed(ACTION, HandlingAction("act:accept", case_id, ActionKind.ACCEPT, grid, T0 + timedelta(minutes=2)), T0 + timedelta(minutes=2))
    [(topic, again)] = partition.feed(ACTION, resolve, T0 + timedelta(minutes=3))
    assert topic == TOPICS.deadletter and "refused before" in again["error_message"]
    assert [e["kind"] for e in partition.of(TOPICS.case_events)] == [Kind.OPENED, Kind.DISPATCHED, Kind.ACCEPTED]


# -- bounded memory: a closed case leaves after the policy's archive_after -----------------------------------

def _closed(partition: Partition, enriched, minutes: int = 10) -> str:
    case_id = case_id_for(enriched)
    _resolve(partition, case_id, enriched.chain[0].unit_id, minutes)
    rate = HandlingAction(f"act:{case_id}:rate", case_id, ActionKind.RATE, "return_visit", T0 + timedelta(minutes=minutes + 5), rating=5)
    partition.feed(ACTION, rate, rate.at)
    assert partition.cases._parts[0].book.states[case_id].status == "closed"
    return case_id


def test_a_case_closed_longer_than_archive_after_leaves_memory_and_its_changelog_keys_are_tombstoned():
    policy = next(iter(load_policies().values()))
    assert policy.archive_after is not None
    partition = Partition()
    kept, archived = report("app:keep-1"), report("app:gone-1", at=T0 + timedelta(minutes=1))
    archived = replace(archived, location=replace(archived.location, lat=archived.location.lat + 0.01))  # not merged into `kept`
    partition.feed(ENRICHED, kept, T0)
    partition.feed(ENRICHED, archived, archived.report.occurred_at)
    case_id = _closed(partition, archived)
    part = partition.cases._parts[0]
    assert {f"case:{case_id}", "report:app:gone-1"} <= {k for k, v in partition.changelog.items() if v is not None}

    partition.feed("tick", None, T0 + timedelta(days=179))  # still reopenable: kept
    assert case_id in part.book.states and "app:gone-1" in part.reports
    partition.feed("tick", None, T0 + timedelta(days=181))
    assert case_id not in part.book.states and "app:gone-1" not in part.reports and case_id not in part.tied
    assert partition.changelog[f"case:{case_id}"] is None and partition.changelog["report:app:gone-1"] is None
    assert case_id_for(kept) in part.book.states  # the negative control: an open case stays, however old
    recovered = CaseProcessor(SERDE, load_reference(), load_policies(), load_calendar(), TOPICS, 1)
    recovered.recover(0, [(n, k, v) for n, (k, v) in enumerate(partition.changelog.items())])
    assert set(recovered._parts[0].book.states) == {case_id_for(kept)}


def test_a_changelog_holding_long_closed_cases_sheds_them_once_recovered():
    """A worker recovered from a changelog written before archiving existed drops what is past its window at the first tick."""
    partition = Partition()
    enriched = report("app:old-1")
    partition.feed(ENRICHED, enriched, T0)
    case_id = _closed(partition, enriched)
    recovered = CaseProcessor(SERDE, load_reference(), load_policies(), load_calendar(), TOPICS, 1)
    recovered.recover(0, [(n, k, v) for n, (k, v) in enumerate(partition.changelog.items())])
    again = Partition(recovered)
    again.offset = partition.offset
    again.feed("tick", None, T0 + timedelta(days=400))
    assert case_id not in recovered._parts[0].book.states and again.changelog == {f"case:{case_id}": None, "report:app:old-1": None,
                                                                                  "clock:0": again.changelog["clock:0"]}
