"""Offices as they work (policy-v2): handling tiers take a case, oversight urges its holder; boundary disputes;
extensions decided by the holder's superior; waiting on the resident until resume. Outcomes computed by hand
from policy-v2 and the calendar's office hours (09:00-12:00, 13:30-18:00); Monday 7 December 2026 is a working day."""
from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from test_case import COMMUNITY, GRID, STREET, unit_chain
from test_sla import act, china, open_at

from streams.changelog import decode_case_state, encode_case_state
from streams.domain.calendar import load_calendar
from streams.domain.case import WAITING_ON_RESIDENT, Kind, Status
from streams.domain.enrich import common_parent
from streams.domain.model import ActionKind
from streams.domain.reference import load_reference
from streams.domain.sla import CaseBook, DeadlineKind, load_policies
from whistle.ground.errors import TransitionError
from whistle.ground.times import from_epoch_ms

REFERENCE = load_reference()
CALENDAR = load_calendar()
POLICIES = load_policies()
S02_GRID, S02_COMMUNITY = "G-S02-C01-003", "C-S02-01"
DRAIN_CHAIN = unit_chain(department="DEP-WATER")


def local(value: datetime | int) -> str:
    ms = value if isinstance(value, int) else int(value.timestamp() * 1000)
    return CALENDAR.local_time(ms).strftime("%Y-%m-%d %H:%M")


def book(policies=POLICIES) -> CaseBook:
    return CaseBook(policies, CALENDAR, partial(common_parent, REFERENCE), units=REFERENCE.unit_tiers())


def tick(cases: CaseBook, until: str, every_minutes: int = 10):
    """The clock service's ticks from the book's clock up to `until`: what they fire, at the tick that fired it."""
    events, breaches = [], []
    now, end = from_epoch_ms(cases.index.clock_ms), china(until)
    while now < end:
        now = min(now + timedelta(minutes=every_minutes), end)
        fired = cases.advance(now)
        events, breaches = events + fired[0], breaches + fired[1]
    return events, breaches


def refused(expected: str, cases: CaseBook, *args, **fields) -> str:
    with pytest.raises(TransitionError) as caught:
        act(cases, *args, **fields)
    assert caught.value.context["reason"] == expected
    return str(caught.value)


def resolve_due(cases: CaseBook, case_id: str = "C1") -> str:
    (due,) = [d for d in cases.index.pending(case_id) if d.kind == DeadlineKind.RESOLVE_OVERDUE]
    return local(due.deadline_ms)


def test_cases_opened_from_november_2026_are_judged_by_policy_v2():
    cases = book()
    events, _ = open_at(cases, "2026-12-07T09:00")
    assert {e.policy_version for e in events} == {"policy-v2"}
    assert china("2026-12-07T09:00").weekday() == 0


def test_the_boundary_drain_from_report_to_referral_with_the_arbiter_still_responsible():
    """The seeds' story: a blocked drain between two streets; neither grid takes it; the department both streets
    answer to (by its statutory duties) does not assign it; supervision urges and criticises it; the discipline
    commission is asked to hold it to account; the department still has to resolve it."""
    cases = book()
    open_at(cases, "2026-12-07T09:00", category="drainage_blockage", chain=DRAIN_CHAIN)  # urgent class: accept within 1 working hour
    first, _ = act(cases, ActionKind.TRANSFER, GRID, "2026-12-07T09:20", reason="the drain is on the S02 side", target_unit_id=S02_GRID)
    second, breaches = act(cases, ActionKind.TRANSFER, S02_GRID, "2026-12-07T09:40", reason="the drain is on the S01 side", target_unit_id=GRID)
    assert [(e.kind, e.actor_unit_id, e.assignee_unit_id) for e in first + second] == [
        (Kind.TRANSFERRED, GRID, S02_GRID), (Kind.TRANSFERRED, S02_GRID, S02_GRID), (Kind.ESCALATED, None, "DEP-WATER")]
    assert [(b.kind, b.breach_type, b.escalation_target_unit_id) for b in breaches] == [("breach", "transfer_limit", "DEP-WATER")]
    assert "must assign it" in refused("arbiter_cannot_return", cases, ActionKind.TRANSFER, "DEP-WATER", "2026-12-07T09:50", reason="not ours")

    events, breaches = tick(cases, "2026-12-09T18:00")
    not_warnings = [(b.kind, b.breach_type, b.tier, b.responsible_unit_id, b.escalation_target_unit_id, local(b.fired_at))
                    for b in breaches if b.kind != "warning"]
    assert not_warnings == [  # department accept: 1 working hour from 09:40; then supervision's 2 working hours from each step
        ("urging", "accept_overdue", "supervision", "DEP-WATER", "SUP", "2026-12-07 10:40"),
        ("criticism", "accept_overdue", "supervision", "DEP-WATER", "SUP", "2026-12-07 14:10"),
        ("referral", "final_overdue", "discipline", "DEP-WATER", "DIS", "2026-12-07 16:10")]
    assert [(e.kind, e.actor_unit_id, e.assignee_unit_id) for e in events] == [
        (Kind.URGED, "SUP", "DEP-WATER"), (Kind.CRITICIZED, "SUP", "DEP-WATER"), (Kind.REFERRED, "DIS", "DEP-WATER")]
    assert events[-1].note.startswith("accountable: DEP-WATER;")
    assert cases.index.pending("C1") == []  # after the referral the commission's procedure, not an SLA, follows

    accepted, _ = act(cases, ActionKind.ACCEPT, "DEP-WATER", "2026-12-10T09:00")
    resolved, _ = act(cases, ActionKind.RESOLVE, "DEP-WATER", "2026-12-10T15:00", note="drain cleared")
    rated, _ = act(cases, ActionKind.RATE, "resident:1", "2026-12-10T20:00", rating=5)
    assert [(e.kind, e.actor_unit_id) for e in accepted + resolved + rated] == [
        (Kind.ACCEPTED, "DEP-WATER"), (Kind.RESOLVED, "DEP-WATER"), (Kind.RATED, "resident:1"), (Kind.CLOSED, None)]


def test_the_arbiter_assigns_the_case_and_the_assigned_unit_cannot_return_it():
    cases = book()
    open_at(cases, "2026-12-07T09:00", category="drainage_blockage", chain=DRAIN_CHAIN)
    act(cases, ActionKind.TRANSFER, GRID, "2026-12-07T09:20", reason="S02 side", target_unit_id=S02_GRID)
    act(cases, ActionKind.TRANSFER, S02_GRID, "2026-12-07T09:40", reason="S01 side")
    events, _ = act(cases, ActionKind.TRANSFER, "DEP-WATER", "2026-12-07T10:00", reason="the outfall is S02's", target_unit_id=S02_GRID)
    assert [(e.kind, e.actor_unit_id, e.assignee_unit_id, e.reason) for e in events] == [
        (Kind.TRANSFERRED, "DEP-WATER", S02_GRID, "the outfall is S02's")]
    refused("arbiter_cannot_return", cases, ActionKind.TRANSFER, S02_GRID, "2026-12-07T10:10", reason="still not ours")
    accepted, _ = act(cases, ActionKind.ACCEPT, S02_GRID, "2026-12-07T10:15")
    assert [e.kind for e in accepted] == [Kind.ACCEPTED]


def test_a_return_naming_a_unit_sends_the_case_there_and_an_unknown_unit_is_refused():
    cases = book()
    open_at(cases, "2026-12-07T09:00")
    message = refused("unknown_unit", cases, ActionKind.TRANSFER, GRID, "2026-12-07T09:10", reason="not ours", target_unit_id="G-NOWHERE")
    assert "G-NOWHERE" in message
    refused("target_is_sender", cases, ActionKind.TRANSFER, GRID, "2026-12-07T09:11", reason="not ours", target_unit_id=GRID)
    events, _ = act(cases, ActionKind.TRANSFER, GRID, "2026-12-07T09:12", reason="S02's road", target_unit_id=S02_GRID)
    assert (events[0].assignee_unit_id, events[0].assignee_tier) == (S02_GRID, "grid")


def test_under_the_first_receiver_rule_the_first_unit_cannot_return_the_case(tmp_path: Path):
    text = Path(POLICIES["policy-v2"].file).read_text(encoding="utf-8")
    variant = text.replace("version: policy-v2", "version: policy-v2fr").replace("dispute_rule: arbitration", "dispute_rule: first_receiver")
    assert variant.count("first_receiver") >= 2
    (tmp_path / "policy-v2fr.yaml").write_text(variant.replace("2026-11-01T00:00:00", "2026-12-02T00:00:00"), encoding="utf-8")
    cases = book({**POLICIES, **load_policies(tmp_path)})
    events, _ = open_at(cases, "2026-12-07T09:00")
    assert events[0].policy_version == "policy-v2fr"
    assert "首接负责制" in refused("first_receiver", cases, ActionKind.TRANSFER, GRID, "2026-12-07T09:10", reason="not ours", target_unit_id=S02_GRID)
    control = book()  # the same return under the arbitration rule goes through
    open_at(control, "2026-12-07T09:00")
    assert act(control, ActionKind.TRANSFER, GRID, "2026-12-07T09:10", reason="not ours", target_unit_id=S02_GRID)[0][0].kind == Kind.TRANSFERRED


def test_an_unaccepted_case_moves_up_the_handling_tiers_but_an_unresolved_one_stays_with_its_holder():
    cases = book()
    open_at(cases, "2026-12-07T09:00")  # ordinary: accept within 2 working hours
    events, breaches = tick(cases, "2026-12-07T11:00")
    assert [(b.kind, b.breach_type, b.escalation_target_unit_id) for b in breaches if b.kind != "warning"] == [("breach", "accept_overdue", COMMUNITY)]
    assert events[-1].assignee_unit_id == COMMUNITY
    act(cases, ActionKind.ACCEPT, COMMUNITY, "2026-12-07T11:30")
    assert resolve_due(cases) == "2026-12-10 18:00"  # community: 3 working days
    events, breaches = tick(cases, "2026-12-10T18:00")
    assert [(b.kind, b.responsible_unit_id, b.escalation_target_unit_id) for b in breaches if b.kind != "warning"] == [("urging", COMMUNITY, "SUP")]
    assert [(e.kind, e.assignee_unit_id) for e in events] == [(Kind.URGED, COMMUNITY)]
    assert resolve_due(cases) == "2026-12-17 18:00"  # supervision's table: 5 working days from the urging
    resolved, _ = act(cases, ActionKind.RESOLVE, COMMUNITY, "2026-12-11T10:00", note="cleared")
    assert [e.kind for e in resolved] == [Kind.RESOLVED]  # the urged holder's own action counts: it is not late


def test_an_unsatisfied_rating_urges_the_holder_to_handle_the_case_again():
    cases = book()
    open_at(cases, "2026-12-07T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-12-07T09:10")
    act(cases, ActionKind.RESOLVE, GRID, "2026-12-07T15:00", note="cleared")
    events, breaches = act(cases, ActionKind.RATE, "resident:1", "2026-12-07T20:00", rating=1)
    assert [e.kind for e in events] == [Kind.RATED, Kind.URGED]
    assert [(b.kind, b.breach_type, b.responsible_unit_id) for b in breaches] == [("urging", "unsatisfied_rating", GRID)]
    state = cases.states["C1"]
    assert (state.status, state.assignee.unit_id, state.rating) == (Status.ACCEPTED, GRID, None)
    assert resolve_due(cases) == "2026-12-14 18:00"  # 5 working days counted from the urging (Monday evening)


def test_an_extension_approved_for_less_than_asked_moves_the_deadline_by_what_was_granted():
    cases = book()
    open_at(cases, "2026-12-07T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-12-07T09:10")
    assert resolve_due(cases) == "2026-12-14 18:00"  # 5 working days
    events, _ = act(cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-07T10:00", extension_hours=72, reason="waiting for a pump")
    assert [(e.kind, e.actor_unit_id, e.note, e.reason) for e in events] == [(Kind.EXTENSION_REQUESTED, GRID, "hours=72", "waiting for a pump")]
    assert resolve_due(cases) == "2026-12-14 18:00"  # asking moves nothing
    assert "C-S01-02" in refused("not_superior", cases, ActionKind.APPROVE_EXTENSION, STREET, "2026-12-07T10:30", extension_hours=48)
    refused("more_than_requested", cases, ActionKind.APPROVE_EXTENSION, COMMUNITY, "2026-12-07T10:40", extension_hours=96)
    refused("request_pending", cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-07T10:45", extension_hours=24, reason="again")
    events, _ = act(cases, ActionKind.APPROVE_EXTENSION, COMMUNITY, "2026-12-07T11:00", extension_hours=48, reason="two days are enough")
    assert [(e.kind, e.actor_unit_id, e.assignee_unit_id, e.note) for e in events] == [(Kind.EXTENSION_GRANTED, COMMUNITY, GRID, "hours=48")]
    assert resolve_due(cases) == "2026-12-16 18:00"
    refused("extension_limit", cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-08T10:00", extension_hours=24, reason="more")


def test_a_denied_extension_leaves_the_deadline_and_one_past_the_maximum_is_refused():
    cases = book()
    open_at(cases, "2026-12-07T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-12-07T09:10")
    message = refused("extension_past_maximum", cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-07T09:30", extension_hours=200, reason="long")
    assert "at most 120 h" in message
    act(cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-07T10:00", extension_hours=24, reason="rain")
    events, _ = act(cases, ActionKind.DENY_EXTENSION, COMMUNITY, "2026-12-07T11:00", reason="rain is forecast to stop")
    assert [(e.kind, e.actor_unit_id) for e in events] == [(Kind.EXTENSION_DENIED, COMMUNITY)]
    assert resolve_due(cases) == "2026-12-14 18:00"
    refused("no_pending_request", cases, ActionKind.APPROVE_EXTENSION, COMMUNITY, "2026-12-07T11:10", extension_hours=24)


def test_a_request_nobody_decides_lapses_when_the_deadline_passes():
    cases = book()
    open_at(cases, "2026-12-07T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-12-07T09:10")
    act(cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-07T10:00", extension_hours=24, reason="rain")
    with pytest.raises(TransitionError) as caught:
        act(cases, ActionKind.APPROVE_EXTENSION, COMMUNITY, "2026-12-15T09:00", extension_hours=24)
    assert caught.value.context["reason"] == "no_pending_request"
    assert cases.states["C1"].oversight == (Kind.URGED,)  # the deadline passed on the 14th: the grid was urged, the request ended


def test_waiting_on_the_resident_pauses_the_resolve_clock_until_resume_and_never_the_accept_clock():
    cases = book()
    open_at(cases, "2026-12-07T09:00")
    refused("not_accepted", cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-07T09:05", reason=WAITING_ON_RESIDENT)
    act(cases, ActionKind.ACCEPT, GRID, "2026-12-07T09:10")
    refused("not_paused", cases, ActionKind.RESUME, GRID, "2026-12-07T09:20")
    act(cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-08T09:00", reason=WAITING_ON_RESIDENT)
    act(cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-08T09:30", extension_hours=24, reason="parts")  # a request does not end the pause
    assert cases.states["C1"].pauses[-1][1] is None
    events, _ = act(cases, ActionKind.RESUME, GRID, "2026-12-09T09:00", reason="the resident is back")
    assert [(e.kind, e.actor_unit_id) for e in events] == [(Kind.RESUMED, GRID)]
    assert resolve_due(cases) == "2026-12-15 18:00"  # paused for one working day


def test_new_state_fields_survive_the_changelog_codec():
    cases = book()
    open_at(cases, "2026-12-07T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-12-07T09:10")
    act(cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-12-07T10:00", extension_hours=24, reason="rain")
    tick(cases, "2026-12-15T10:00")
    state = cases.states["C1"]
    assert state.oversight == (Kind.URGED,) and state.oversight_since_ms > 0
    assert decode_case_state(encode_case_state(state)) == state
    assert local(from_epoch_ms(state.oversight_since_ms)) == "2026-12-14 18:00"
