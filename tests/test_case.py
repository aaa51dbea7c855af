"""Case lifecycle: every transition and refusal, idempotent redelivery, and the per-case hash chain."""
from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.domain.case import (
    GENESIS_HASH,
    WAITING_ON_RESIDENT,
    CaseState,
    HandlingRules,
    Kind,
    Link,
    Status,
    close_unrated,
    escalate,
    event_hash,
    evolve,
    fold,
    handle_action,
    merge_report,
    open_case,
    state_from_stored,
    stored_values,
    verify_chain,
)
from streams.domain.model import ActionKind, EnrichedReport, HandlingAction, Location, Report, Source, Tier, Unit, Urgency
from whistle.ground.errors import DomainError, TransitionError, ValidationError
from whistle.ground.times import to_epoch_ms

T0 = datetime(2026, 3, 9, 1, 0, tzinfo=UTC)  # Monday 09:00 China time
CASE = "S01-20260309-0123456789"
GRID, COMMUNITY, STREET = "G-S01-C02-007", "C-S01-02", "S01"
RULES = HandlingRules()


def unit_chain(grid: str = GRID, community: str = COMMUNITY, street: str = STREET, department: str = "DEP-URBAN") -> tuple[Unit, ...]:
    return (Unit(grid, Tier.GRID, grid), Unit(community, Tier.COMMUNITY, community), Unit(street, Tier.STREET, street),
            Unit(department, Tier.DEPARTMENT, department), Unit("SUP", Tier.SUPERVISION, "督查室"), Unit("DIS", Tier.DISCIPLINE, "纪委监委"))


def report(report_id: str = "app:r1", *, category: str = "garbage", urgency: Urgency = Urgency.NORMAL, at: datetime = T0,
           chain: tuple[Unit, ...] | None = None, flags: tuple[str, ...] = ()) -> EnrichedReport:
    chain = chain or unit_chain()
    street = next(u.unit_id for u in chain if u.tier == Tier.STREET)
    community = next(u.unit_id for u in chain if u.tier == Tier.COMMUNITY)
    return EnrichedReport(Report(report_id, Source.APP, at, category, urgency, "垃圾堆积"),
                          Location("D01", street, community, chain[0].unit_id, 28.1, 113.0, "point"), chain, flags)


def action(kind: ActionKind, unit_id: str, minutes: float, case_id: str = CASE, **fields) -> HandlingAction:
    action_id = fields.pop("action_id", f"act:{kind.value}:{unit_id}:{minutes}")
    return HandlingAction(action_id, case_id, kind, unit_id, T0 + timedelta(minutes=minutes), **fields)


def to_ms(minutes: float) -> int:
    return int((T0 + timedelta(minutes=minutes)).timestamp() * 1000)


def apply(state, events):
    for event in events:
        state = evolve(state, event)
    return state


def opened(enriched: EnrichedReport | None = None, case_id: str = CASE):
    events = open_case(enriched or report(), case_id, "policy-v1", T0)
    return apply(None, events), events


def case_at(status: str):
    """A case walked to `status` through the normal path, with all its events."""
    state, log = opened()
    steps = {Status.ACCEPTED: [action(ActionKind.ACCEPT, GRID, 10)],
             Status.RESOLVED: [action(ActionKind.ACCEPT, GRID, 10), action(ActionKind.RESOLVE, GRID, 60)],
             Status.CLOSED: [action(ActionKind.ACCEPT, GRID, 10), action(ActionKind.RESOLVE, GRID, 60), action(ActionKind.RATE, "resident:1", 90, rating=5)]}
    for step in steps.get(status, []):
        events = handle_action(state, step, RULES)
        state, log = apply(state, events), log + events
    assert state.status == status
    return state, log


def test_open_case_records_the_report_and_dispatches_to_the_first_unit():
    state, events = opened(report(flags=("outside_grid",)))
    assert [(e.kind, e.seq, e.event_id) for e in events] == [(Kind.OPENED, 1, f"{CASE}:1"), (Kind.DISPATCHED, 2, f"{CASE}:2")]
    first = events[0]
    assert (first.report_id, first.source, first.reason, first.department_id, first.policy_version) == ("app:r1", "app", "outside_grid", "DEP-URBAN", "policy-v1")
    assert first.note == "G-S01-C02-007@grid>C-S01-02@community>S01@street>DEP-URBAN@department>SUP@supervision>DIS@discipline"
    assert {(e.assignee_unit_id, e.assignee_tier) for e in events} == {(GRID, "grid")}
    assert (state.status, state.assignee, state.seq) == (Status.DISPATCHED, Link(GRID, "grid"), 2)


def test_accept_resolve_and_a_satisfied_rating_close_the_case():
    state, _ = case_at(Status.RESOLVED)
    events = handle_action(state, action(ActionKind.RATE, "resident:1", 90, rating=4), RULES)
    assert [(e.kind, e.rating, e.actor_unit_id) for e in events] == [(Kind.RATED, 4, "resident:1"), (Kind.CLOSED, None, None)]
    assert apply(state, events).status == Status.CLOSED


def test_an_unsatisfied_rating_leaves_the_case_waiting_for_escalation():
    state, _ = case_at(Status.RESOLVED)
    events = handle_action(state, action(ActionKind.RATE, "resident:1", 90, rating=2), RULES)
    assert [e.kind for e in events] == [Kind.RATED]
    assert (apply(state, events).status, apply(state, events).rating) == (Status.RATED, 2)


@pytest.mark.parametrize("status", [Status.RESOLVED, Status.CLOSED])
def test_a_resolved_or_closed_case_can_be_reopened(status):
    state, _ = case_at(status)
    events = handle_action(state, action(ActionKind.REOPEN, "resident:1", 120, reason="still there"), RULES)
    assert [(e.kind, e.reason) for e in events] == [(Kind.REOPENED, "still there")]
    assert apply(state, events).status == Status.REOPENED


def test_a_returned_case_goes_to_the_unit_above_when_no_other_unit_reported_it():
    state, _ = opened()
    events = handle_action(state, action(ActionKind.TRANSFER, GRID, 5, reason="not a grid matter"), RULES)
    assert [(e.kind, e.actor_unit_id, e.reason, e.assignee_unit_id) for e in events] == [(Kind.TRANSFERRED, GRID, "not a grid matter", COMMUNITY)]
    state = apply(state, events)
    assert (state.assignee.unit_id, state.rejected_by, state.status) == (COMMUNITY, (GRID,), Status.DISPATCHED)


def test_a_returned_boundary_case_goes_to_the_other_streets_unit_and_the_second_return_keeps_it_for_escalation():
    state, _ = opened()
    across = report("hotline:r2", chain=unit_chain("G-S02-C01-003", "C-S02-01", "S02"))
    state = apply(state, merge_report(state, across, T0 + timedelta(minutes=1)))
    assert len(state.chains) == 2
    state = apply(state, handle_action(state, action(ActionKind.TRANSFER, GRID, 5, reason="drain belongs to S02"), RULES))
    assert state.assignee == Link("G-S02-C01-003", "grid")
    events = handle_action(state, action(ActionKind.TRANSFER, "G-S02-C01-003", 9, reason="drain belongs to S01"), RULES)
    assert events[0].assignee_unit_id == "G-S02-C01-003"  # the transfer limit is reached: the SLA engine escalates
    assert apply(state, events).rejected_by == (GRID, "G-S02-C01-003")


def test_a_more_urgent_report_raises_the_case_urgency_and_a_report_from_the_same_grid_adds_no_chain():
    state, _ = opened()
    events = merge_report(state, report("camera:r9", urgency=Urgency.EMERGENCY), T0 + timedelta(minutes=3))
    assert [(e.kind, e.report_id, e.source, e.urgency) for e in events] == [(Kind.REPORT_MERGED, "camera:r9", "app", "emergency")]
    state = apply(state, events)
    assert (state.urgency, len(state.chains)) == ("emergency", 1)
    assert apply(state, merge_report(state, report("app:r10", urgency=Urgency.NORMAL), T0)).urgency == "emergency"


def test_an_extension_is_counted_and_waiting_on_the_resident_opens_a_pause_that_the_next_event_closes():
    state, _ = case_at(Status.ACCEPTED)
    events = handle_action(state, action(ActionKind.REQUEST_EXTENSION, GRID, 30, reason="needs a contractor", extension_hours=24), RULES)
    assert [(e.kind, e.reason, e.note) for e in events] == [(Kind.EXTENSION_GRANTED, "needs a contractor", "requested 24 h")]
    state = apply(state, events)
    state = apply(state, handle_action(state, action(ActionKind.REQUEST_EXTENSION, GRID, 40, reason=WAITING_ON_RESIDENT), RULES))
    assert (state.extensions, state.pauses) == (1, ((to_ms(40), None),))
    state = apply(state, handle_action(state, action(ActionKind.RESOLVE, GRID, 100), RULES))
    assert state.pauses == ((to_ms(40), to_ms(100)),)


REFUSALS = [
    (Status.DISPATCHED, ActionKind.RESOLVE, GRID, {}, "not_accepted", "kind"),
    (Status.DISPATCHED, ActionKind.RATE, "resident:1", {"rating": 5}, "not_resolved", "kind"),
    (Status.DISPATCHED, ActionKind.REOPEN, "resident:1", {}, "not_resolved", "kind"),
    (Status.DISPATCHED, ActionKind.REQUEST_EXTENSION, GRID, {}, "not_accepted", "kind"),
    (Status.DISPATCHED, ActionKind.ACCEPT, COMMUNITY, {}, "not_assignee", "unit_id"),
    (Status.DISPATCHED, ActionKind.TRANSFER, GRID, {}, "reason_missing", "reason"),
    (Status.ACCEPTED, ActionKind.ACCEPT, GRID, {}, "not_dispatched", "kind"),
    (Status.ACCEPTED, ActionKind.TRANSFER, GRID, {"reason": "not ours"}, "not_dispatched", "kind"),
    (Status.ACCEPTED, ActionKind.REQUEST_EXTENSION, GRID, {"extension_hours": 0}, "extension_hours_invalid", "extension_hours"),
    (Status.RESOLVED, ActionKind.RATE, "resident:1", {"rating": 6}, "rating_out_of_range", "rating"),
    (Status.RESOLVED, ActionKind.RATE, "resident:1", {"rating": 0}, "rating_out_of_range", "rating"),
    (Status.RESOLVED, ActionKind.RATE, "resident:1", {}, "rating_out_of_range", "rating"),
    (Status.RESOLVED, ActionKind.RATE, GRID, {"rating": 5}, "self_rating", "unit_id"),
    (Status.RESOLVED, ActionKind.RESOLVE, GRID, {}, "not_accepted", "kind"),
    (Status.CLOSED, ActionKind.RATE, "resident:1", {"rating": 5}, "not_resolved", "kind"),
    (Status.CLOSED, ActionKind.ACCEPT, GRID, {}, "not_dispatched", "kind"),
]


@pytest.mark.parametrize("status, kind, unit_id, fields, reason, field", REFUSALS)
def test_invalid_transitions_are_refused_with_reason_and_context(status, kind, unit_id, fields, reason, field):
    state, _ = case_at(status)
    refused = action(kind, unit_id, 500, action_id="act:bad", **fields)
    with pytest.raises(TransitionError) as caught:
        handle_action(state, refused, RULES)
    assert caught.value.context == {"reason": reason, "case_id": CASE, "action_id": "act:bad", "field": field}


def test_an_action_on_an_unknown_case_is_refused():
    with pytest.raises(TransitionError) as caught:
        handle_action(None, action(ActionKind.ACCEPT, GRID, 1, action_id="act:x"), RULES)
    assert caught.value.context == {"reason": "unknown_case", "case_id": CASE, "action_id": "act:x", "field": "kind"}


def test_the_policy_limits_extensions_and_pauses_per_stage():
    state, _ = case_at(Status.ACCEPTED)
    state = apply(state, handle_action(state, action(ActionKind.REQUEST_EXTENSION, GRID, 20), RULES))
    state = apply(state, handle_action(state, action(ActionKind.REQUEST_EXTENSION, GRID, 21, reason=WAITING_ON_RESIDENT), RULES))
    for minutes, reason, expected in ((22, None, "extension_limit"), (23, WAITING_ON_RESIDENT, "pause_limit")):
        with pytest.raises(TransitionError) as caught:
            handle_action(state, action(ActionKind.REQUEST_EXTENSION, GRID, minutes, reason=reason), RULES)
        assert caught.value.context["reason"] == expected


def test_the_arbiter_of_a_boundary_dispute_cannot_return_the_case():
    state, _ = opened()
    state = apply(state, handle_action(state, action(ActionKind.TRANSFER, GRID, 5, reason="not ours"), RULES))
    state = apply(state, handle_action(state, action(ActionKind.TRANSFER, COMMUNITY, 6, reason="not ours either"), RULES))
    state = apply(state, escalate(state, Link(STREET, "street"), T0 + timedelta(minutes=6), "breach:1", "transfer_limit", "boundary"))
    assert (state.assignee.unit_id, state.arbitration, state.rejected_by, state.lost_by_breach) == (STREET, True, (), ())
    with pytest.raises(TransitionError) as caught:
        handle_action(state, action(ActionKind.TRANSFER, STREET, 7, reason="not ours"), RULES)
    assert caught.value.context["reason"] == "arbiter_cannot_return"


def test_at_the_top_of_the_chain_an_unsatisfied_rating_closes_and_a_reopening_redispatches():
    state, _ = opened()
    state = apply(state, escalate(state, Link("DIS", "discipline"), T0, "breach:referral", "final_overdue", "referred"))
    for step in (action(ActionKind.ACCEPT, "DIS", 10), action(ActionKind.RESOLVE, "DIS", 20)):
        state = apply(state, handle_action(state, step, RULES))
    rated = handle_action(state, action(ActionKind.RATE, "resident:1", 30, rating=1), RULES)
    assert [e.kind for e in rated] == [Kind.RATED, Kind.CLOSED]
    reopened = handle_action(apply(state, rated), action(ActionKind.REOPEN, "resident:1", 40), RULES)
    assert [(e.kind, e.assignee_unit_id) for e in reopened] == [(Kind.REOPENED, "DIS"), (Kind.DISPATCHED, "DIS")]
    assert apply(apply(state, rated), reopened).status == Status.DISPATCHED


def test_an_action_by_the_unit_that_lost_the_case_to_a_breach_is_recorded_late_and_changes_nothing():
    state, _ = opened()
    state = apply(state, escalate(state, Link(COMMUNITY, "community"), T0 + timedelta(hours=2), "breach:accept", "accept_overdue", "overdue"))
    events = handle_action(state, action(ActionKind.ACCEPT, GRID, 130), RULES)
    assert [(e.kind, e.actor_unit_id, e.assignee_unit_id) for e in events] == [(Kind.LATE_ACTION, GRID, COMMUNITY)]
    later = apply(state, events)
    assert (later.status, later.assignee, later.seq) == (state.status, state.assignee, state.seq + 1)


def test_redelivered_reports_actions_and_breaches_decide_nothing():
    state, _ = case_at(Status.ACCEPTED)
    assert merge_report(state, report("app:r1"), T0) == []  # the report that opened the case
    assert handle_action(state, action(ActionKind.ACCEPT, GRID, 10), RULES) == []
    resolved = apply(state, handle_action(state, action(ActionKind.RESOLVE, GRID, 60), RULES))
    assert handle_action(resolved, action(ActionKind.RESOLVE, GRID, 60), RULES) == []
    escalated = apply(state, escalate(state, Link(COMMUNITY, "community"), T0, "breach:7", "resolve_overdue", "s"))
    assert escalate(escalated, Link(STREET, "street"), T0, "breach:7", "resolve_overdue", "s") == []
    assert close_unrated(apply(resolved, close_unrated(resolved, T0, "auto:1", "r")), T0, "auto:1", "r") == []
    assert len(escalated.seen) == 8 * 3  # report, accept, breach: 8 bytes per applied cause


def test_the_same_action_id_on_another_kind_is_still_a_duplicate():
    state, _ = case_at(Status.ACCEPTED)
    assert handle_action(state, action(ActionKind.RESOLVE, GRID, 70, action_id=f"act:accept:{GRID}:10"), RULES) == []


def test_naive_times_are_refused():
    state, _ = opened()
    naive = HandlingAction("act:n", CASE, ActionKind.ACCEPT, GRID, datetime(2026, 3, 9, 9, 30))  # noqa: DTZ001 (a naive datetime is the input under test)
    with pytest.raises(ValidationError, match="no time zone"):
        handle_action(state, naive, RULES)


def test_cases_share_one_chain_tuple():
    first, _ = opened(case_id="A")
    second, _ = opened(report("app:r2"), case_id="B")
    assert first.chains[0] is second.chains[0] and first.place is second.place


def test_a_stored_state_comes_back_equal_and_sharing_chains_again():
    state, _ = case_at(Status.ACCEPTED)
    stored = stored_values(state)
    assert isinstance(stored[list(CaseState.__slots__).index("chains")][0], str)  # chains are stored as their text
    revived = state_from_stored(tuple(stored))
    assert revived == state
    assert revived.chains[0] is state.chains[0] and revived.place is state.place and revived.assignee is state.chains[0][0]


def test_stored_states_come_back_sharing_their_chain_tuples_and_equal_times():
    state, _ = opened()
    stored = list(stored_values(state))
    for name in ("stage_start_ms", "holder_since_ms", "status_since_ms", "last_at_ms"):  # as a decoder hands them back: one int each
        stored[list(CaseState.__slots__).index(name)] = int(str(getattr(state, name)))
    first, second = state_from_stored(tuple(stored)), state_from_stored(tuple(stored))
    assert first == state and first.chains is second.chains
    assert first.stage_start_ms is first.holder_since_ms is first.status_since_ms is first.last_at_ms


def test_state_is_the_fold_of_the_log():
    state, log = case_at(Status.CLOSED)
    assert fold(log) == {CASE: state}


# -- hash chain -------------------------------------------------------------------------------------


def test_each_hash_covers_the_canonical_record_and_the_previous_hash():
    _, log = case_at(Status.CLOSED)
    assert log[0].prev_hash == GENESIS_HASH
    for previous, event in zip([None] + log, log):
        record = dataclasses.asdict(event)
        del record["hash"]
        record["at"] = int(event.at.timestamp() * 1000)
        expected = hashlib.sha256(bytes.fromhex(event.prev_hash) + orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()
        assert event.hash == expected
        assert previous is None or event.prev_hash == previous.hash
    assert verify_chain(log) == []


def test_an_altered_event_is_detected():
    _, log = case_at(Status.CLOSED)
    log[2] = dataclasses.replace(log[2], actor_unit_id="G-S01-C02-999")
    assert verify_chain(log) == [f"{CASE}:3: hash does not match the event's content (altered)"]


def test_an_altered_event_with_a_recomputed_hash_breaks_the_next_link():
    _, log = case_at(Status.CLOSED)
    forged = dataclasses.replace(log[2], actor_unit_id="G-S01-C02-999")
    log[2] = dataclasses.replace(forged, hash=event_hash(forged))
    assert verify_chain(log) == [f"{CASE}:4: prev_hash is not the hash of event seq 3"]


def test_a_missing_event_is_detected():
    _, log = case_at(Status.CLOSED)
    del log[3]
    assert verify_chain(log) == [f"{CASE}:5: seq 5 follows seq 3 (missing or reordered events)"]


def test_reordered_events_are_detected_and_refused_by_evolve():
    _, log = case_at(Status.CLOSED)
    log[2], log[3] = log[3], log[2]
    assert verify_chain(log) == [f"{CASE}:4: seq 4 follows seq 2 (missing or reordered events)",
                                 f"{CASE}:3: seq 3 follows seq 4 (missing or reordered events)",
                                 f"{CASE}:5: seq 5 follows seq 3 (missing or reordered events)"]
    with pytest.raises(DomainError, match="does not continue"):
        fold(log)


def test_interleaved_cases_verify_independently():
    _, first = case_at(Status.RESOLVED)
    _, second = opened(report("app:r2"), case_id="S01-20260309-other")
    mixed = [first[0], second[0], first[1], second[1], *first[2:]]
    assert verify_chain(mixed) == []


def test_a_resolution_dated_before_its_acceptance_is_recorded_at_the_acceptance_and_flagged():
    """A case's log never runs backwards: no negative time to resolve, and the claim is kept as evidence."""
    state, log = case_at(Status.ACCEPTED)
    accepted_ms = state.status_since_ms
    [resolved] = handle_action(state, action(ActionKind.RESOLVE, GRID, -30, note="已清理"), RULES)
    assert to_epoch_ms(resolved.at) == accepted_ms
    assert "[backdated:claimed=" in resolved.note and resolved.note.startswith("已清理")
    [later] = handle_action(state, action(ActionKind.RESOLVE, GRID, 90, note="已清理"), RULES)
    assert "backdated" not in later.note  # negative control: an action dated after the last event is taken as dated


def test_an_action_dated_between_dispatch_and_a_later_merged_report_is_recorded_after_the_merge():
    """The log of a case never runs backwards past any of its events, a merged report included."""
    state, _ = opened()
    [merged] = merge_report(state, report("app:r2", at=T0 + timedelta(hours=1)), T0 + timedelta(hours=1))
    state = evolve(state, merged)
    [accepted] = handle_action(state, action(ActionKind.ACCEPT, GRID, 30), RULES)
    assert accepted.at == T0 + timedelta(hours=1) and "[backdated:claimed=" in (accepted.note or "")
