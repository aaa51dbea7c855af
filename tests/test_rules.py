"""Rules by content: content hashes an auditor can recompute, the registry's refusals, and a holiday schedule added
later that changes no decision already made (streams/domain/rules.py, streams/domain/calendar.py editions)."""
from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path

from test_case import report
from test_sla import POLICIES, china, common_parent

from streams.domain.calendar import SLA_REFERENCE_DIR, load_calendar
from streams.domain.reference import DEFAULT_VERSION, REFERENCE_ROOT
from streams.domain.rules import CALENDAR_YEAR, POLICY, RegisteredRule, RuleFile, refusals, rule_files
from streams.domain.sla import CaseBook, deadlines_for, load_policies
from whistle.ground.times import to_epoch_ms

# A 2027 schedule as the State Council might publish it (test data): the Spring Festival takes 6-12 February.
YEAR_2027 = """year: 2027
{in_force}holidays:
  - {{name: 元旦 New Year's Day, from: 2027-01-01, to: 2027-01-01}}
  - {{name: 春节 Spring Festival, from: 2027-02-06, to: 2027-02-12}}
  - {{name: 劳动节 Labour Day, from: 2027-05-01, to: 2027-05-02}}
  - {{name: 国庆节 National Day, from: 2027-10-01, to: 2027-10-03}}
make_up_working_days:
  - {{date: 2027-02-14, for: 春节 Spring Festival}}
"""
IN_FORCE = datetime(2027, 2, 1, tzinfo=UTC)


def calendar_with_2027(tmp_path: Path, in_force: datetime | None):
    directory = tmp_path / "sla"
    shutil.copytree(SLA_REFERENCE_DIR, directory)
    (directory / "calendar-cn-2027.yaml").write_text(
        YEAR_2027.format(in_force="" if in_force is None else f"in_force_from: {in_force.isoformat()}\n"), encoding="utf-8")
    return load_calendar(directory / "calendar-cn.yaml")  # its year_files pattern finds the new file: the base file stays as it was


def test_a_calendar_editions_hash_is_what_sha256sum_prints_for_its_files():
    calendar = load_calendar()
    listing = subprocess.run("sha256sum calendar-cn.yaml calendar-cn-2025.yaml calendar-cn-2026.yaml | sha256sum", shell=True,
                             cwd=SLA_REFERENCE_DIR, capture_output=True, text=True, check=True).stdout.split()[0]
    assert calendar.sha256 == listing
    policy = POLICIES["policy-v1"]
    assert policy.sha256 == subprocess.run(["sha256sum", policy.file], capture_output=True, text=True, check=True).stdout.split()[0]


def test_a_schedule_in_force_later_counts_only_for_decisions_from_then_on(tmp_path):
    calendar = calendar_with_2027(tmp_path, IN_FORCE)
    festival = to_epoch_ms(china("2027-02-08T10:00"))  # a Monday of the festival
    before, after = calendar.edition_at(to_epoch_ms(IN_FORCE) - 1), calendar.edition_at(to_epoch_ms(IN_FORCE))
    assert before is calendar and before.is_provisional(festival) and before.is_working_day(date(2027, 2, 8))
    assert not after.is_provisional(festival) and not after.is_working_day(date(2027, 2, 8))
    assert before.sha256 == load_calendar().sha256 != after.sha256
    assert [s.name for s in calendar.sources][-1] == "cn-mainland/2027"


def _resolve_deadline(calendar, opened: str) -> int:
    book = CaseBook(POLICIES, calendar, common_parent)
    when = china(opened)
    book.advance(when)
    book.open(report("app:C1", at=when), "C1", when)
    state = book.states["C1"]
    return next(d.deadline_ms for d in deadlines_for(state, POLICIES[state.policy_version], calendar) if d.kind == "accept_overdue")


def test_adding_a_later_schedule_changes_no_decision_made_before_it_comes_into_force(tmp_path):
    """A case opened on Friday 5 February 2027 (before the schedule is in force) keeps the deadline the provisional rule gave
    it; one opened once the schedule is in force is counted on it. Negative control: the same file in force from the start
    changes the earlier decision."""
    shipped = load_calendar()
    later = calendar_with_2027(tmp_path / "later", datetime(2027, 2, 5, 17, tzinfo=UTC))  # Friday 6 February 01:00 city time
    from_start = calendar_with_2027(tmp_path / "start", None)
    friday = "2027-02-05T17:30"  # city time: the last working half hour before the festival
    assert _resolve_deadline(later, friday) == _resolve_deadline(shipped, friday)  # the decision made before stays as it was
    assert _resolve_deadline(from_start, friday) != _resolve_deadline(shipped, friday)  # negative control
    saturday = "2027-02-13T10:00"  # opened after the schedule came into force: counted on it
    assert _resolve_deadline(later, saturday) == _resolve_deadline(from_start, saturday) != _resolve_deadline(shipped, saturday)


def _local_rules() -> list[RuleFile]:
    return rule_files(load_policies(), load_calendar(), REFERENCE_ROOT / DEFAULT_VERSION)


def _registered(rules: list[RuleFile]) -> dict[str, RegisteredRule]:
    return {r.rule_id: RegisteredRule(r.rule_id, r.path.name, r.sha256) for r in rules}


NOW = to_epoch_ms(datetime(2026, 12, 7, tzinfo=UTC))


def test_every_rule_file_is_registered_and_a_fresh_log_accepts_them():
    rules = _local_rules()
    kinds = {r.kind for r in rules}
    assert kinds == {"policy", "calendar", "calendar_year", "reference"}
    assert {r.name for r in rules if r.kind == "reference"} == {f"{DEFAULT_VERSION}/{n}" for n in
                                                                 ("cameras.csv", "categories.json", "district.json", "exceptions.geojson", "gazetteer.csv", "grids.geojson", "hotline.yaml")}
    assert refusals({}, rules, NOW) == []
    assert refusals(_registered(rules), rules, NOW) == []


def test_a_rule_edited_in_place_under_its_version_name_is_refused_naming_the_file_and_both_hashes():
    rules = _local_rules()
    known = _registered(rules)
    policy = next(r for r in rules if r.kind == POLICY)
    known[policy.rule_id] = RegisteredRule(policy.rule_id, policy.path.name, "0" * 64)
    (problem,) = refusals(known, rules, NOW)
    assert str(policy.path) in problem and "0" * 64 in problem and policy.sha256 in problem and "new version name" in problem


def test_a_schedule_new_to_a_log_that_holds_decisions_must_come_into_force_from_now_on():
    rules = _local_rules()
    known = _registered(rules)
    added = RuleFile(CALENDAR_YEAR, "cn-mainland/2027", Path("calendar-cn-2027.yaml"), "1" * 64, None)
    (problem,) = refusals(known, [*rules, added], NOW)
    assert "calendar-cn-2027.yaml" in problem and "in_force_from" in problem
    assert refusals(known, [*rules, RuleFile(CALENDAR_YEAR, added.name, added.path, added.sha256, NOW - 1)], NOW) != []
    assert refusals(known, [*rules, RuleFile(CALENDAR_YEAR, added.name, added.path, added.sha256, NOW)], NOW) == []  # control


def test_a_rule_the_log_knows_that_a_worker_lacks_is_refused():
    rules = _local_rules()
    known = _registered(rules)
    without_2025 = [r for r in rules if r.name != "cn-mainland/2025"]
    (problem,) = refusals(known, without_2025, NOW)
    assert "calendar_year:cn-mainland/2025" in problem and "could not be recomputed" in problem
