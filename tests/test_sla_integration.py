"""The SLA engine end to end: real Kafka, real `whistle worker` processes, time driven by clock ticks.

Every case opens at T0 (Wednesday 09:30 in Beijing) as an ordinary garbage pile: its grid team has
2 working hours to accept it, and is warned at 75 % of that. The expected deadlines are computed with
the same policy and calendar files the workers load.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta

import pytest
from confluent_kafka import ConsumerGroupState
from test_streams_integration import T0, Pipeline, chain_problems, inbox_partition_of, pipeline, resident_report, spread_spots  # noqa: F401  (pipeline: fixture)

from streams.domain.calendar import load_calendar
from streams.domain.case import Kind
from streams.domain.sla import DeadlineKind, breach_id, load_policies, policy_in_force
from whistle.ground.times import from_epoch_ms, to_epoch_ms

MINUTE = timedelta(minutes=1)


def accept_deadline(category: str = "garbage", urgency: str = "normal") -> tuple[datetime, datetime]:
    """(warning time, deadline) for accepting a case dispatched at T0, by the policy in force then."""
    policy, calendar = policy_in_force(load_policies(), T0), load_calendar()
    limit = policy.limits["initial"][policy.class_of(category, urgency)].accept
    start = to_epoch_ms(T0)
    due = calendar.add(start, limit)
    return from_epoch_ms(calendar.fraction_point(start, due, policy.warning_fraction, limit.on_working_time)), from_epoch_ms(due)


WARN, DUE = accept_deadline()


def open_cases(pipeline: Pipeline, count: int):
    cases = [pipeline.report("app", resident_report(f"rep-{n}", spot)) for n, spot in enumerate(spread_spots(pipeline.reference, count))]
    pipeline.wait_for_events(2 * count)
    return cases


def accept_in_time(pipeline: Pipeline, cases) -> None:
    """Accept `cases` 20 minutes after T0, and wait until they are: a tick must not overtake an accept."""
    already = pipeline.count(pipeline.topics.case_events)
    for case in cases:
        pipeline.act(case.case_id, "accept", case.holder, T0 + 20 * MINUTE)
    pipeline.wait_for_events(already + len(cases))


def overdue_breach_id(case) -> str:
    """The id of the breach that escalates an unaccepted case from its grid team to its community."""
    return breach_id(case.case_id, DeadlineKind.ACCEPT_OVERDUE, "community", to_epoch_ms(DUE))


@pytest.mark.kafka
def test_an_unaccepted_case_breaches_once_and_escalates_while_an_accepted_case_does_not(pipeline: Pipeline):
    pipeline.start("worker-1")
    late, punctual = open_cases(pipeline, 2)
    accept_in_time(pipeline, [punctual])
    pipeline.tick(T0 + 60 * MINUTE, WARN + MINUTE, DUE + MINUTE, DUE + 20 * MINUTE)
    pipeline.wait_for_events(2 + 2 + 1 + 1)
    pipeline.settle()

    breaches = [b for _, b in pipeline.breaches()]
    assert [(b.case_id, b.kind, b.breach_type, b.tier) for b in breaches] == [
        (late.case_id, "warning", DeadlineKind.ACCEPT_OVERDUE, "grid"), (late.case_id, "breach", DeadlineKind.ACCEPT_OVERDUE, "community")]
    overdue = breaches[1]
    assert (overdue.breach_id, overdue.deadline, overdue.fired_at) == (overdue_breach_id(late), DUE, DUE + MINUTE)
    assert (overdue.responsible_unit_id, overdue.escalation_target_unit_id) == (late.holder, late.chain[1])
    events = pipeline.case_events()
    assert [(e.kind, e.cause_id, e.assignee_unit_id) for _, e in events[late.case_id]][2:] == [
        (Kind.ESCALATED, overdue.breach_id, late.chain[1])]
    assert [e.kind for _, e in events[punctual.case_id]] == [Kind.OPENED, Kind.DISPATCHED, Kind.ACCEPTED]


@pytest.mark.kafka
def test_two_workers_sharing_the_case_stream_never_both_fire_a_breach(pipeline: Pipeline):
    pipeline.start("worker-1")
    pipeline.start("worker-2")
    owners = pipeline.wait_until_shared({"worker-1", "worker-2"})
    cases = open_cases(pipeline, 18)
    punctual, late = cases[::3], [case for n, case in enumerate(cases) if n % 3]
    accept_in_time(pipeline, punctual)
    pipeline.tick(WARN + MINUTE, DUE + MINUTE, T0 + timedelta(days=1))
    pipeline.wait_for_events(2 * len(cases) + len(punctual) + 2 * len(late))
    pipeline.quiesce()

    assert pipeline.inbox_owners() == owners  # one owner per partition throughout: no replays
    fired = pipeline.breaches()
    copies = Counter(b.breach_id for _, b in fired)
    assert [breach for breach, n in copies.items() if n > 1] == []
    per_case = defaultdict(list)
    for _, b in fired:
        per_case[b.case_id].append((b.kind, b.breach_type, b.tier))
    assert set(per_case) == {case.case_id for case in late}
    for case in late:  # warned, escalated to the community, which did not accept either: escalated to the street
        assert per_case[case.case_id] == [("warning", DeadlineKind.ACCEPT_OVERDUE, "grid"), ("breach", DeadlineKind.ACCEPT_OVERDUE, "community"),
                                          ("breach", DeadlineKind.ACCEPT_OVERDUE, "street")]
    firing_partitions = {inbox_partition_of(case_id, pipeline.inbox_partitions) for case_id in per_case}
    assert all(firing_partitions & mine for mine in owners.values())  # both workers fired breaches
    events = pipeline.case_events()
    assert all(chain_problems(events[case.case_id]) == [] for case in cases)


def joining(pipeline: Pipeline, worker_id: str) -> bool:
    group = pipeline.describe_group()
    rebalancing = group.state in (ConsumerGroupState.PREPARING_REBALANCING, ConsumerGroupState.COMPLETING_REBALANCING)
    return rebalancing or worker_id in {member.group_instance_id for member in group.members}


@pytest.mark.kafka
def test_a_worker_killed_during_a_rebalance_misses_no_breach(pipeline: Pipeline):
    """worker-1 owns every case; worker-2 joins and worker-1 is killed (-9) as soon as the group is seen
    rebalancing for it (or, if that state is too short to be seen, as soon as worker-2 is a member: then
    worker-1 is still recovering its new assignment). The clock passes the accept deadline while it is
    down; restarted (same id, as an orchestrator would: with static membership its partitions wait for
    it), every expected breach appears exactly once."""
    first = pipeline.start("worker-1")
    cases = open_cases(pipeline, 12)
    punctual, late = cases[:4], cases[4:]
    accept_in_time(pipeline, punctual)
    pipeline.start("worker-2")
    pipeline.wait(lambda: joining(pipeline, "worker-2"), "worker-2 to join the group", timeout_s=30, interval_s=0.02)
    first.kill()

    pipeline.tick(DUE + MINUTE)
    pipeline.start("worker-1")
    pipeline.wait(lambda: pipeline.count(pipeline.topics.breaches) >= len(late), f"{len(late)} breaches")
    pipeline.wait_for_events(2 * len(cases) + len(punctual) + len(late))
    pipeline.quiesce()

    fired = Counter(b.breach_id for _, b in pipeline.breaches())
    assert fired == Counter({overdue_breach_id(case): 1 for case in late})
    events = pipeline.case_events()
    for case in late:
        escalations = {e.event_id for _, e in events[case.case_id] if e.kind == Kind.ESCALATED}
        assert len(escalations) == 1
        assert chain_problems(events[case.case_id]) == []
