"""One case-stream record, one transaction: a record whose processing fails part-way leaves no trace.

The reproduction: a record whose deadline arithmetic falls outside the business calendar fails after
part of its work was done. Before transactions the case stayed changed in memory with nothing emitted,
its deadlines never fired, the next event was emitted with a skipped seq and the hash chain broke.
Now the record is dead-lettered and the partition is exactly as it was.
"""
from __future__ import annotations

import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from test_case import T0, report

from schemas.serde import Serde, to_record
from streams.domain.calendar import DEFAULT_CALENDAR_FILE, SLA_REFERENCE_DIR, load_calendar
from streams.domain.case import Kind, Status, verify_chain
from streams.domain.case_id import case_id_for
from streams.domain.model import ActionKind, HandlingAction
from streams.domain.reference import load_reference
from streams.domain.sla import CaseBook, load_policies
from streams.pipeline import ACTION, ENRICHED, CaseProcessor
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics


def _published_years_only():
    """The shipped calendar without its provisional years (provisional_years: 0): it ends with the last published
    schedule, so a record dated after it makes deadline arithmetic fail part-way, which is what is under test."""
    folder = Path(tempfile.mkdtemp(prefix="whistle-calendar-"))
    for path in SLA_REFERENCE_DIR.glob("calendar-cn*.yaml"):
        text = path.read_text(encoding="utf-8")
        (folder / path.name).write_text(re.sub(r"(?m)^provisional_years: \d+", "provisional_years: 0", text), encoding="utf-8")
    return load_calendar(folder / DEFAULT_CALENDAR_FILE.name)


CALENDAR = _published_years_only()
BEFORE_THE_CALENDAR = datetime(CALENDAR.first_day.year - 3, 6, 1, 1, 0, tzinfo=UTC)


def _inbox(serde: Serde, branch: str, record) -> bytes:
    return serde.encode("CaseInboxEvent", {"event": (branch, to_record(record))}, validate=False)


def test_an_action_dated_before_the_calendar_is_recorded_at_the_cases_last_event_and_the_chain_goes_on():
    """The issue's reproduction: an accept dated years back used to fail after the new state was built
    (ghost state, seq 3 never emitted, chain broken). A case's log never runs backwards: the action is
    recorded at the case's previous event, its claimed time kept as a flag, and the next action follows."""
    serde, topics = Serde(), Topics()
    cases = CaseProcessor(serde, load_reference(), load_policies(), CALENDAR, topics, 1)
    enriched = report("app:tx-1")
    case_id = case_id_for(enriched)
    grid = enriched.chain[0].unit_id

    def process(offset: int, branch: str, record, at: datetime):
        return cases.process(Position(topics.inbox, 0, offset), case_id.encode(), _inbox(serde, branch, record), at)

    process(0, ENRICHED, enriched, T0)
    outputs, _ = process(1, ACTION, HandlingAction("act:early", case_id, ActionKind.ACCEPT, grid, BEFORE_THE_CALENDAR), T0)
    [accepted] = [serde.decode(o.value).record for o in outputs if o.topic == topics.case_events]
    assert (accepted["kind"], accepted["seq"], accepted["at"]) == (Kind.ACCEPTED, 3, T0)
    assert f"backdated:claimed={BEFORE_THE_CALENDAR.year}" in accepted["note"]
    resolved, _ = process(2, ACTION, HandlingAction("act:resolve", case_id, ActionKind.RESOLVE, grid, T0 + timedelta(minutes=10), note="已清理"), T0)
    [event] = [serde.decode(o.value).record for o in resolved if o.topic == topics.case_events]
    assert (event["kind"], event["seq"]) == (Kind.RESOLVED, 4)
    assert cases._parts[0].book.states[case_id].status == Status.RESOLVED


AFTER_THE_CALENDAR = datetime(CALENDAR.last_day.year + 2, 6, 1, 1, 0, tzinfo=UTC)


def _late_action_outcome(cases: CaseProcessor):
    """Open a case, then send an action dated after the calendar's last day: its time makes the accept
    deadline due (an escalation), whose next deadline the calendar cannot compute."""
    serde, topics = cases.serde, cases.topics
    enriched = report("app:tx-late")
    case_id = case_id_for(enriched)
    cases.process(Position(topics.inbox, 0, 0), case_id.encode(), _inbox(serde, ENRICHED, enriched), T0)
    book = cases._parts[0].book
    before = (book.states[case_id], book.index.clock_ms, book.index.pending(case_id))
    late = HandlingAction("act:late", case_id, ActionKind.ACCEPT, enriched.chain[0].unit_id, AFTER_THE_CALENDAR)
    outputs, _ = cases.process(Position(topics.inbox, 0, 1), case_id.encode(), _inbox(serde, ACTION, late), T0)
    return before, (book.states[case_id], book.index.clock_ms, book.index.pending(case_id)), outputs


def _processor() -> CaseProcessor:
    return CaseProcessor(Serde(), load_reference(), load_policies(), CALENDAR, Topics(), 1)


def test_deadlines_fired_by_a_failing_record_are_rolled_back_with_it():
    before, after, outputs = _late_action_outcome(_processor())
    assert [o.topic for o in outputs] == [Topics().deadletter]
    assert after == before


def test_without_the_rollback_the_failing_record_leaves_a_ghost_clock_and_lost_deadlines(monkeypatch):
    """Negative control: the same record with the rollback switched off moves the partition clock years
    ahead and drops the case's pending deadlines, with nothing emitted to say so."""
    def keep_everything(book: CaseBook) -> None:
        book._saved = None
        book.index.commit()

    monkeypatch.setattr(CaseBook, "rollback", keep_everything)
    before, after, outputs = _late_action_outcome(_processor())
    assert [o.topic for o in outputs] == [Topics().deadletter]
    assert after[1] > before[1] and after[2] != before[2]


def test_a_rolled_back_book_replays_like_one_that_never_saw_the_record():
    """The rollback restores the deadline index too: both books fire the same breaches a week later."""
    def run(with_failure: bool):
        book = CaseBook(load_policies(), CALENDAR, lambda a, b, category: report().chain[3])
        events = []
        for n in range(3):
            enriched = report(f"app:tx-r{n}", at=T0 + timedelta(minutes=n))
            opened, _ = book.open(enriched, case_id_for(enriched), T0 + timedelta(minutes=n))
            events += opened
        if with_failure:
            book.begin()
            try:
                book.advance(T0 + timedelta(hours=1))
                book.act(HandlingAction("act:late", events[0].case_id, ActionKind.ACCEPT, events[0].assignee_unit_id, AFTER_THE_CALENDAR))
            except Exception:
                book.rollback()
            else:
                raise AssertionError("the late action should have failed")
        fired, breaches = book.advance(T0 + timedelta(days=7))
        return events + fired, breaches

    assert run(True) == run(False)
    events, breaches = run(True)
    assert breaches and verify_chain(events) == []
