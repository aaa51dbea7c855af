"""SLA engine: policies as data, deadlines, every breach type, escalation, the deadline index, replay determinism."""
from __future__ import annotations

import hashlib
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from test_case import COMMUNITY, GRID, STREET, report, unit_chain

from streams.domain.calendar import load_calendar
from streams.domain.case import WAITING_ON_RESIDENT, Kind, Status, fold, verify_chain
from streams.domain.case_id import case_id_for
from streams.domain.model import ActionKind, HandlingAction, Tier, Unit, Urgency
from streams.domain.sla import CaseBook, Deadline, DeadlineIndex, breach_id, load_policies, policy_in_force, rebuild_index
from whistle.ground.errors import ConfigError, TransitionError
from whistle.ground.times import to_epoch_ms

CALENDAR = load_calendar()
POLICIES = {**load_policies(), **load_policies(Path(__file__).parent / "data" / "sla")}  # v1 + a later v2 for version tests
V1 = POLICIES["policy-v1"]
S02_GRID = "G-S02-C01-003"
UNITS = {u.unit_id: u for u in unit_chain() + unit_chain(S02_GRID, "C-S02-01", "S02", "DEP-WATER") + unit_chain(department="DEP-WATER")}


def common_parent(unit_a: str, unit_b: str, category: str) -> Unit:
    """Two streets' units meet at the category's owning department (as streams.domain.enrich.common_parent does)."""
    owner = "DEP-WATER" if category == "drainage_blockage" else "DEP-URBAN"
    return UNITS[owner]


def china(text: str) -> datetime:
    return datetime.fromisoformat(text + "+08:00")


def local(value: datetime) -> str:
    return CALENDAR.local_time(to_epoch_ms(value)).strftime("%Y-%m-%d %H:%M")


def book() -> CaseBook:
    return CaseBook(POLICIES, CALENDAR, common_parent)


def act(cases: CaseBook, kind: ActionKind, unit_id: str, at: str, case_id: str = "C1", **fields):
    """Advance to the action's time, then decide it: the order a processor follows."""
    when = china(at)
    early_events, early_breaches = cases.advance(when)
    events, breaches = cases.act(HandlingAction(f"act:{kind.value}:{unit_id}:{at}", case_id, kind, unit_id, when, **fields))
    return early_events + events, early_breaches + breaches


def open_at(cases: CaseBook, at: str, case_id: str = "C1", **report_fields):
    when = china(at)
    cases.advance(when)
    return cases.open(report(f"app:{case_id}", at=when, **report_fields), case_id, when)


# -- policy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("category, urgency, expected", [
    ("garbage", "normal", "ordinary"), ("garbage", "emergency", "emergency"), ("fire_smoke", "normal", "emergency"),
    ("illegal_construction", "urgent", "urgent"), ("gas_leak", "urgent", "emergency"), ("a_new_category", "normal", "ordinary"),
])
def test_a_case_is_judged_by_the_stricter_of_its_category_and_urgency_classes(category, urgency, expected):
    assert V1.class_of(category, urgency) == expected


def test_the_policy_in_force_is_the_latest_effective_one():
    assert policy_in_force(POLICIES, china("2026-06-14T23:59")).version == "policy-v1"
    assert policy_in_force(POLICIES, china("2026-06-15T00:00")).version == "policy-v2"
    with pytest.raises(ConfigError, match="no SLA policy is in force"):
        policy_in_force(POLICIES, china("2024-12-31T12:00"))


POLICY_TEXT = Path(V1.file).read_text(encoding="utf-8")


@pytest.mark.parametrize("old, new, field", [
    ("accept: 2 working_hours, resolve: 5 working_days", "accept: 2 fortnights, resolve: 5 working_days", "limits.initial.ordinary.accept"),
    ("    complex:   {accept: 2 working_hours, resolve: 15 working_days}\n", "", "limits.initial.complex"),
    ("transfer_clock: keep", "transfer_clock: pause", "transfer_clock"),
    ("version: policy-v1", "version: policy-v9", "version"),
    ("warning_fraction: 0.75", "warning_fraction: 1.5", "warning_fraction"),
    ("  garbage: ordinary", "  garbage: trivial", "categories.garbage"),
    ("effective_from: 2025-01-01T00:00:00+08:00", "effective_from: 2025-01-01T00:00:00", "effective_from"),
    ("unsatisfied_rating_max: 2", "unsatisfied_rating_max: 5", "unsatisfied_rating_max"),
    ("version: policy-v1", "version: policy-v1\nescalate_faster: true", "escalate_faster"),
    ("  max_per_stage: 1\nwaiting", "  max_per_stage: 1\n  bonus: 2\nwaiting", "extension"),
])
def test_policy_errors_name_the_file_and_the_field(tmp_path, old, new, field):
    assert old in POLICY_TEXT
    (tmp_path / "policy-v1.yaml").write_text(POLICY_TEXT.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policies(tmp_path)
    assert caught.value.context == {"file": str(tmp_path / "policy-v1.yaml"), "field": field}


RANKED_TEXT = (Path(__file__).parent / "data" / "ranking" / "policy-ranked.yaml").read_text(encoding="utf-8")
RANKED_WEIGHTS = "weights: {response: 0.2, resolution: 0.3, satisfaction: 0.35, on_time: 0.15}"


def test_a_policy_may_weight_the_rankings_rates_in_whole_basis_points():
    (ranked,) = load_policies(Path(__file__).parent / "data" / "ranking").values()
    assert ranked.ranking is not None and ranked.ranking.min_cases == 2
    assert dict(ranked.ranking.weights_bp) == {"response": 2000, "resolution": 3000, "satisfaction": 3500, "on_time": 1500}
    assert POLICIES["policy-v1"].ranking is None  # no section: no composite score


@pytest.mark.parametrize("old, new, field, message", [
    (RANKED_WEIGHTS, "weights: {response: 0.2, resolution: 0.3, satisfaction: 0.35, on_time: 0.1}", "ranking.weights", "must sum to 1, got 0.95"),
    (RANKED_WEIGHTS, "weights: {response: -0.2, resolution: 0.7, satisfaction: 0.35, on_time: 0.15}", "ranking.weights.response", "must be a number >= 0"),
    (RANKED_WEIGHTS, "weights: {response: 0.00005, resolution: 0.99995}", "ranking.weights.response", "at most 4 decimals"),
    (RANKED_WEIGHTS, "weights: {response: high, resolution: 1}", "ranking.weights.response", "must be a number"),
    (RANKED_WEIGHTS, "weights: {response: 0.5, speed: 0.5}", "ranking.weights.speed", "unknown rate"),
    (RANKED_WEIGHTS, "weights: {}", "ranking.weights", "must map rates"),
    ("  min_cases: 2", "  min_cases: -1", "ranking.min_cases", "whole number"),
    ("  min_cases: 2\n", "", "ranking", "exactly ['min_cases', 'weights']"),
])
def test_ranking_section_errors_name_the_file_and_the_field(tmp_path, old, new, field, message):
    assert old in RANKED_TEXT
    (tmp_path / "policy-ranked.yaml").write_text(RANKED_TEXT.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_policies(tmp_path)
    assert caught.value.context == {"file": str(tmp_path / "policy-ranked.yaml"), "field": field}


# -- deadlines --------------------------------------------------------------------------------------


def test_an_ordinary_case_must_be_accepted_within_2_working_hours_with_a_warning_at_75_percent():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    pending = cases.index.pending("C1")
    assert [(d.kind, CALENDAR.local_time(d.due_ms).strftime("%H:%M")) for d in pending] == [("accept_warning", "10:30"), ("accept_overdue", "11:00")]


def test_an_emergency_must_be_accepted_within_30_minutes_round_the_clock_and_resolved_the_same_day():
    cases = book()
    open_at(cases, "2026-03-07T22:00", category="gas_leak")  # a Saturday night
    assert [d.kind for d in cases.index.pending("C1")] == ["accept_warning", "accept_overdue"]
    assert CALENDAR.local_time(cases.index.pending("C1")[1].due_ms).strftime("%d %H:%M") == "07 22:30"
    act(cases, ActionKind.ACCEPT, GRID, "2026-03-07T22:10")
    assert CALENDAR.local_time(cases.index.pending("C1")[1].due_ms).strftime("%d %H:%M") == "08 00:00"


def test_extensions_and_waiting_on_the_resident_push_the_resolve_deadline_back():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-03-09T09:10")

    def due() -> str:
        return CALENDAR.local_time(cases.index.pending("C1")[-1].due_ms).strftime("%Y-%m-%d %H:%M")

    assert due() == "2026-03-16 18:00"  # 5 working days
    act(cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-03-10T10:00", extension_hours=24)
    assert due() == "2026-03-19 18:00"  # + 3 working days
    act(cases, ActionKind.REQUEST_EXTENSION, GRID, "2026-03-11T09:00", reason=WAITING_ON_RESIDENT)
    # An open pause counts up to its maximum: to close of the 5th working day after 11 March, i.e. 6 days of working time.
    assert due() == "2026-03-27 18:00"
    act(cases, ActionKind.RESOLVE, GRID, "2026-03-12T09:00")  # the pause ended after 1 working day (7.5 h)
    assert [d.kind for d in cases.index.pending("C1")] == ["auto_close"]


def test_transfer_clock_keep_runs_one_accept_clock_across_holders():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    act(cases, ActionKind.TRANSFER, GRID, "2026-03-09T10:00", reason="not a grid matter")
    assert cases.states["C1"].assignee.unit_id == COMMUNITY
    assert CALENDAR.local_time(cases.index.pending("C1")[-1].due_ms).strftime("%H:%M") == "11:00"


def test_transfer_clock_restart_gives_each_holder_a_fresh_accept_limit(tmp_path):
    (tmp_path / "policy-v1.yaml").write_text(POLICY_TEXT.replace("transfer_clock: keep", "transfer_clock: restart"), encoding="utf-8")
    cases = CaseBook(load_policies(tmp_path), CALENDAR, common_parent)
    open_at(cases, "2026-03-09T09:00")
    act(cases, ActionKind.TRANSFER, GRID, "2026-03-09T10:00", reason="not a grid matter")
    assert CALENDAR.local_time(cases.index.pending("C1")[-1].due_ms).strftime("%H:%M") == "12:00"


def test_a_late_report_opens_its_case_at_the_partition_clock_not_in_the_past():
    cases = book()
    cases.advance(china("2026-03-09T15:00"))
    events, breaches = cases.open(report("camera:late", at=china("2026-03-09T09:00")), "C1", china("2026-03-09T09:00"))
    assert ({local(e.at) for e in events}, breaches) == ({"2026-03-09 15:00"}, [])
    assert CALENDAR.local_time(cases.index.pending("C1")[-1].due_ms).strftime("%H:%M") == "17:00"


# -- breaches ---------------------------------------------------------------------------------------


def test_a_warning_then_accept_overdue_escalates_to_the_community_with_fresh_limits():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    events, breaches = cases.advance(china("2026-03-09T10:30"))
    assert events == []
    assert [(b.kind, b.breach_type, b.tier, local(b.deadline), b.escalation_target_unit_id) for b in breaches] == [
        ("warning", "accept_overdue", "grid", "2026-03-09 11:00", None)]
    events, breaches = cases.advance(china("2026-03-09T11:00"))
    breach = breaches[0]
    assert (breach.kind, breach.breach_type, breach.tier, breach.responsible_unit_id, breach.escalation_target_unit_id, breach.overdue_ms) == (
        "breach", "accept_overdue", "community", GRID, COMMUNITY, 0)
    assert [(e.kind, e.cause_id, e.reason, e.assignee_unit_id, e.assignee_tier) for e in events] == [
        (Kind.ESCALATED, breach.breach_id, "accept_overdue", COMMUNITY, "community")]
    assert CALENDAR.local_time(cases.index.pending("C1")[-1].due_ms).strftime("%H:%M") == "14:30"  # community table: 2 working hours


def test_an_acceptance_after_the_breach_fired_is_recorded_late_and_the_breach_stands():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    events, breaches = act(cases, ActionKind.ACCEPT, GRID, "2026-03-09T11:05")
    assert [b.breach_type for b in breaches] == ["accept_overdue"]
    assert [(e.kind, e.actor_unit_id, e.assignee_unit_id) for e in events] == [(Kind.ESCALATED, None, COMMUNITY), (Kind.LATE_ACTION, GRID, COMMUNITY)]
    assert (cases.states["C1"].status, cases.states["C1"].assignee.unit_id) == (Status.DISPATCHED, COMMUNITY)


def test_resolve_overdue_escalates_and_the_new_tier_must_accept_again():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-03-09T09:10")
    _, warnings = cases.advance(china("2026-03-16T09:00"))
    events, breaches = cases.advance(china("2026-03-16T18:00"))
    assert [(b.kind, b.breach_type, b.tier) for b in warnings + breaches] == [("warning", "resolve_overdue", "grid"), ("breach", "resolve_overdue", "community")]
    assert cases.states["C1"].status == Status.DISPATCHED and cases.states["C1"].lost_by_breach == (GRID,)


def test_a_boundary_drain_returned_by_both_streets_goes_to_their_common_parent_which_must_assign_it():
    cases = book()
    open_at(cases, "2026-03-09T09:00", category="drainage_blockage", chain=unit_chain(department="DEP-WATER"))
    across = report("hotline:h2", category="drainage_blockage", at=china("2026-03-09T09:05"), chain=unit_chain(S02_GRID, "C-S02-01", "S02", "DEP-WATER"))
    cases.merge("C1", across, china("2026-03-09T09:05"))
    first, _ = act(cases, ActionKind.TRANSFER, GRID, "2026-03-09T09:20", reason="drain is on the S02 side")
    second, breaches = act(cases, ActionKind.TRANSFER, S02_GRID, "2026-03-09T09:40", reason="drain is on the S01 side")
    assert [(e.actor_unit_id, e.reason, e.assignee_unit_id) for e in first + second[:1]] == [
        (GRID, "drain is on the S02 side", S02_GRID), (S02_GRID, "drain is on the S01 side", S02_GRID)]
    assert [(b.breach_type, b.tier, b.responsible_unit_id, b.escalation_target_unit_id, local(b.fired_at)) for b in breaches] == [
        ("transfer_limit", "department", S02_GRID, "DEP-WATER", "2026-03-09 09:40")]
    assert (second[1].kind, second[1].assignee_unit_id, second[1].reason) == (Kind.ESCALATED, "DEP-WATER", "transfer_limit")
    with pytest.raises(TransitionError, match="must assign it"):
        act(cases, ActionKind.TRANSFER, "DEP-WATER", "2026-03-09T10:00", reason="not ours")


def test_an_arbiter_from_outside_the_chains_escalates_to_the_next_tier_of_the_first_chain():
    desk = Unit("DESK-D01", Tier.DEPARTMENT, "区指挥中心")
    cases = CaseBook(POLICIES, CALENDAR, lambda a, b, category: desk)
    open_at(cases, "2026-03-09T09:00")
    cases.merge("C1", report("hotline:h2", chain=unit_chain(S02_GRID, "C-S02-01", "S02")), china("2026-03-09T09:05"))
    act(cases, ActionKind.TRANSFER, GRID, "2026-03-09T09:20", reason="S02 side")
    _, breaches = act(cases, ActionKind.TRANSFER, S02_GRID, "2026-03-09T09:40", reason="S01 side")
    assert [(b.tier, b.escalation_target_unit_id) for b in breaches] == [("department", "DESK-D01")]
    events, breaches = cases.advance(china("2026-03-09T14:00"))  # the desk does not accept within 2 working hours
    assert [(b.breach_type, b.escalation_target_unit_id) for b in breaches if b.kind == "breach"] == [("accept_overdue", "SUP")]


def test_an_unsatisfied_rating_is_a_breach_that_escalates():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-03-09T09:10")
    act(cases, ActionKind.RESOLVE, GRID, "2026-03-09T15:00")
    events, breaches = act(cases, ActionKind.RATE, "resident:1", "2026-03-09T20:00", rating=1)
    assert [(b.breach_type, b.tier, local(b.deadline)) for b in breaches] == [("unsatisfied_rating", "community", "2026-03-09 20:00")]
    assert [e.kind for e in events] == [Kind.RATED, Kind.ESCALATED]


def test_a_reopened_case_is_a_breach_that_escalates():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-03-09T09:10")
    act(cases, ActionKind.RESOLVE, GRID, "2026-03-09T15:00")
    act(cases, ActionKind.RATE, "resident:1", "2026-03-09T20:00", rating=5)
    events, breaches = act(cases, ActionKind.REOPEN, "resident:1", "2026-03-10T08:00", reason="garbage is back")
    assert [(b.breach_type, b.tier, b.escalation_target_unit_id) for b in breaches] == [("reopened", "community", COMMUNITY)]
    assert [e.kind for e in events] == [Kind.REOPENED, Kind.ESCALATED]


def test_a_case_nobody_handles_climbs_the_ladder_and_is_referred_to_the_discipline_commission():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    events, breaches = [], []
    for tick in range(0, 14 * 24 * 60, 30):  # a clock tick every 30 minutes for two weeks
        fired = cases.advance(china("2026-03-09T09:00") + timedelta(minutes=tick))
        events, breaches = events + fired[0], breaches + fired[1]
    real = [(b.kind, b.breach_type, b.tier, b.responsible_unit_id) for b in breaches if b.kind != "warning"]
    assert real == [("breach", "accept_overdue", "community", GRID), ("breach", "accept_overdue", "street", COMMUNITY),
                    ("breach", "accept_overdue", "department", STREET), ("breach", "accept_overdue", "supervision", "DEP-URBAN"),
                    ("referral", "final_overdue", "discipline", "SUP")]
    assert [e.assignee_unit_id for e in events] == [COMMUNITY, STREET, "DEP-URBAN", "SUP", "DIS"]
    assert cases.index.pending("C1") == []  # the discipline commission has no time limit


def test_an_unrated_resolved_case_closes_by_itself_after_the_policy_period():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    act(cases, ActionKind.ACCEPT, GRID, "2026-03-09T09:10")
    act(cases, ActionKind.RESOLVE, GRID, "2026-03-09T15:00")
    assert cases.advance(china("2026-03-16T14:59")) == ([], [])
    events, breaches = cases.advance(china("2026-03-16T15:00"))
    assert ([(e.kind, e.reason) for e in events], breaches) == ([(Kind.CLOSED, "auto_close: not rated within 7 days")], [])


def test_a_policy_change_mid_month_applies_only_to_cases_opened_after_it():
    cases = book()
    open_at(cases, "2026-06-14T20:00", case_id="before")  # policy-v1 (5 working days to resolve) until 15 June
    open_at(cases, "2026-06-15T08:00", case_id="after")  # policy-v2: 3 working days
    for case_id in ("before", "after"):
        act(cases, ActionKind.ACCEPT, GRID, "2026-06-15T09:30", case_id=case_id)
    due = {c: CALENDAR.local_time(cases.index.pending(c)[-1].due_ms).strftime("%m-%d") for c in ("before", "after")}
    assert due == {"before": "06-23", "after": "06-18"}  # 19 June is the Dragon Boat Festival
    events, breaches = cases.advance(china("2026-06-18T18:00"))
    assert [(b.case_id, b.breach_type, b.policy_version) for b in breaches if b.kind == "breach"] == [("after", "resolve_overdue", "policy-v2")]
    assert {e.policy_version for e in events} == {"policy-v2"}


def test_breach_ids_are_deterministic():
    cases = book()
    open_at(cases, "2026-03-09T09:00")
    _, breaches = cases.advance(china("2026-03-09T11:00"))
    deadline_ms = to_epoch_ms(china("2026-03-09T11:00"))
    assert breaches[-1].breach_id == hashlib.sha256(f"C1|accept_overdue|community|{deadline_ms}".encode()).hexdigest()[:32]
    assert breaches[-1].breach_id == breach_id("C1", "accept_overdue", "community", deadline_ms)


# -- the deadline index -----------------------------------------------------------------------------


def test_the_index_pops_in_due_case_kind_order_and_skips_stale_entries():
    index = DeadlineIndex()
    index.schedule("B", 1, [Deadline(20, "B", "accept_overdue", 1, 20)])
    index.schedule("A", 1, [Deadline(20, "A", "accept_overdue", 1, 20), Deadline(10, "A", "accept_warning", 1, 20)])
    index.schedule("C", 1, [Deadline(5, "C", "accept_overdue", 1, 5)])
    index.schedule("C", 2, [Deadline(30, "C", "resolve_overdue", 2, 30)])  # C moved on: its old entry is stale
    index.schedule("A", 1, [Deadline(99, "A", "accept_overdue", 1, 99)])  # same seq again: ignored
    assert [(d.due_ms, d.case_id, d.kind) for d in index.pop_due(20)] == [(10, "A", "accept_warning"), (20, "A", "accept_overdue"), (20, "B", "accept_overdue")]
    assert index.pop_due(29) == [] and [d.case_id for d in index.pop_due(30)] == ["C"]


def test_a_warning_already_behind_the_clock_is_not_scheduled():
    index = DeadlineIndex()
    index.pop_due(100)
    index.schedule("A", 1, [Deadline(50, "A", "accept_warning", 1, 150), Deadline(150, "A", "accept_overdue", 1, 150)])
    assert [d.kind for d in index.pending("A")] == ["accept_overdue"]


def test_compaction_keeps_exactly_the_live_entries():
    index = DeadlineIndex()
    for seq in range(1, 3001):
        index.schedule("A", seq, [Deadline(10_000 + seq, "A", "accept_overdue", seq, 10_000 + seq)])
    assert len(index) < 2100
    assert index.pop_due(20_000) == [Deadline(13_000, "A", "accept_overdue", 3000, 13_000)]


# -- determinism ------------------------------------------------------------------------------------


def workload(seed: int, cases: int):
    """Seeded case scripts (happy path, ignored, boundary dispute, extensions, unhappy residents, invalid actions),
    interleaved in time with a clock tick every 30 minutes and some at-least-once redeliveries."""
    rng = random.Random(seed)
    categories = ["garbage", "gas_leak", "drainage_blockage", "illegal_construction", "noise", "neighbour_dispute"]
    start = china("2026-06-08T08:00")
    s02_chain = unit_chain(S02_GRID, "C-S02-01", "S02", "DEP-WATER")
    inputs = []
    for n in range(cases):
        case_id = f"C{n}"
        at = start + timedelta(minutes=rng.randrange(14 * 24 * 60))
        category = rng.choice(categories)
        inputs.append((at, "open", case_id, report(f"app:{n}", category=category, at=at, urgency=rng.choice(list(Urgency)))))
        steps = []
        script = rng.choice(["happy", "ignored", "dispute", "extension", "unhappy", "invalid"])
        if script == "dispute":
            inputs.append((at + timedelta(minutes=1), "merge", case_id, report(f"cam:{n}", category=category, at=at, chain=s02_chain)))
            steps += [(ActionKind.TRANSFER, GRID, {"reason": "S02 side"}), (ActionKind.TRANSFER, S02_GRID, {"reason": "S01 side"}),
                      (ActionKind.ACCEPT, "DEP-URBAN", {}), (ActionKind.RESOLVE, "DEP-URBAN", {})]
        elif script != "ignored":
            steps.append((ActionKind.ACCEPT, GRID, {}))
            if script == "extension":
                steps += [(ActionKind.REQUEST_EXTENSION, GRID, {"extension_hours": 16}), (ActionKind.REQUEST_EXTENSION, GRID, {"reason": WAITING_ON_RESIDENT})]
            if script == "invalid":
                steps += [(rng.choice(list(ActionKind)), rng.choice([GRID, COMMUNITY, "resident:1"]), {"rating": rng.randint(0, 6), "reason": "x"})]
            steps += [(ActionKind.RESOLVE, GRID, {}), (ActionKind.RATE, "resident:1", {"rating": rng.randint(1, 2) if script == "unhappy" else 5})]
            if script == "unhappy" or rng.random() < 0.1:
                steps.append((ActionKind.REOPEN, "resident:1", {"reason": "not fixed"}))
        for step, (kind, unit, fields) in enumerate(steps):
            at += timedelta(minutes=rng.choice([5, 40, 100, 300, 2000]))
            inputs.append((at, "act", case_id, HandlingAction(f"a{n}.{step}", case_id, kind, unit, at, **fields)))
    inputs += [(start + timedelta(minutes=m), "tick", None, None) for m in range(0, 24 * 24 * 60, 30)]
    inputs.sort(key=lambda item: (item[0], item[1], item[2] or ""))
    for position in sorted(rng.sample(range(len(inputs)), len(inputs) // 50), reverse=True):
        inputs.insert(position + 1, inputs[position])  # at-least-once redelivery
    return inputs


def run(inputs, cases: CaseBook | None = None) -> tuple[list, list]:
    cases = cases or book()
    events, breaches = [], []
    for at, what, case_id, payload in inputs:
        fired = cases.advance(at)
        events += fired[0]
        breaches += fired[1]
        try:
            if what == "open":
                if case_id in cases.states:
                    decided = cases.merge(case_id, payload, at)
                else:
                    decided = cases.open(payload, case_id, at)
            elif what == "merge":
                decided = cases.merge(case_id, payload, at)
            elif what == "act":
                decided = cases.act(payload)
            else:
                continue
        except TransitionError:
            continue
        events += decided[0]
        breaches += decided[1]
    return events, breaches


def dump(outputs) -> bytes:
    return orjson.dumps(outputs)


def test_replaying_the_same_inputs_gives_byte_identical_outputs():
    inputs = workload(seed=11, cases=400)
    first, second = run(inputs), run(inputs)
    assert dump(first) == dump(second)
    events, breaches = first
    assert {b.breach_type for b in breaches} >= {"accept_overdue", "resolve_overdue", "transfer_limit", "unsatisfied_rating", "reopened", "final_overdue"}
    assert {e.kind for e in events} == {Kind.OPENED, Kind.DISPATCHED, Kind.REPORT_MERGED, Kind.ACCEPTED, Kind.TRANSFERRED, Kind.ESCALATED,
                                        Kind.EXTENSION_GRANTED, Kind.RESOLVED, Kind.RATED, Kind.REOPENED, Kind.CLOSED, Kind.LATE_ACTION}
    assert len({b.breach_id for b in breaches}) == len(breaches)
    assert verify_chain(events) == []


def test_recovering_from_the_event_log_mid_stream_changes_nothing():
    inputs = workload(seed=5, cases=400)
    expected_events, expected_breaches = run(inputs)
    half = len(inputs) // 2
    events, breaches = run(inputs[:half])
    states = fold(events)
    recovered = CaseBook(POLICIES, CALENDAR, common_parent, states=states, clock_ms=to_epoch_ms(inputs[half - 1][0]))
    redelivered = inputs[half - 20:]  # the consumer restarts from its last committed offset
    more_events, more_breaches = run(redelivered, recovered)
    assert dump((events + more_events, breaches + more_breaches)) == dump((expected_events, expected_breaches))


def test_rebuilding_the_index_from_states_gives_the_same_pending_deadlines():
    cases = book()
    inputs = workload(seed=3, cases=200)
    run(inputs[: len(inputs) // 2], cases)  # mid-stream: many cases still have deadlines
    rebuilt = rebuild_index(cases.states.values(), POLICIES, CALENDAR, cases.index.clock_ms)
    for case_id in cases.states:
        assert rebuilt.pending(case_id) == [d for d in cases.index.pending(case_id)]
    assert sum(bool(rebuilt.pending(case_id)) for case_id in cases.states) > 10


def test_a_deadline_in_a_year_with_no_published_schedule_is_counted_provisionally_and_says_so():
    """2028 has no holiday file: its deadlines are counted Monday-Friday minus the fixed-date holidays, and every
    warning and breach on them is marked provisional; a 2026 deadline is not (the negative control)."""
    summaries = {}
    for year in (2026, 2028):
        at = datetime(year, 3, 1, 1, 0, tzinfo=UTC)
        book = CaseBook(load_policies(), load_calendar(), lambda a, b, category: None)
        enriched = report(f"app:prov-{year}", at=at)
        book.open(enriched, case_id_for(enriched), at)
        _, breaches = book.advance(at + timedelta(days=30))
        assert breaches, year
        summaries[year] = [b.summary for b in breaches]
    assert all("deadline provisional: no published holiday schedule for 2028" in s for s in summaries[2028])
    assert not any("provisional" in s for s in summaries[2026])
