"""The case_state view (migration 003) on ClickHouse 18.16 and chdb: each case's latest state, derived from the
case log of tests/test_audit_queries.py with hand-computed expectations, copies of events counted once.

On top of that data set (which already holds C1:6 twice, a producer retry) the sink redelivers C2:3 (transferred),
C2:4 (escalated), C3:5 (rated) and C6:5 (reopened), and C12 arrives: a merged urgent report raises its urgency,
an extension, rated 2 (unsatisfied), escalated to the community, then a late action by the grid that lost it.
"""
from __future__ import annotations

import shutil

from test_audit_queries import C1, C2, C3, C7, COMMUNITY_S1, EVENTS_TOPIC, GRID_S1_1, INGEST_MS, S1, case, event_row, load, ms, step

from sinks.migrator import MIGRATIONS_DIR, migrate

REDELIVERED = ("C2:3", "C2:4", "C3:5", "C6:5")
URGENT = {"urgency": "urgent"}
C12 = case("C12", S1, GRID_S1_1, [
    step("opened", "2025-03-26 09:00", cause="app:R12", source="app", report_id="app:R12"),
    step("dispatched", "2025-03-26 09:00", cause="app:R12"),
    step("report_merged", "2025-03-26 09:30", cause="hotline:T12", source="hotline", report_id="hotline:T12", **URGENT),
    step("accepted", "2025-03-26 10:00", actor="G-S1-1", **URGENT),
    step("extension_granted", "2025-03-26 11:00", actor="G-S1-1", reason="parts on order", **URGENT),
    step("resolved", "2025-03-27 10:00", actor="G-S1-1", **URGENT),
    step("rated", "2025-03-27 12:00", actor="reporter", rating=2, **URGENT),
    step("escalated", "2025-03-27 12:00", cause="B12", assignee=COMMUNITY_S1, reason="unsatisfied_rating", **URGENT),
    step("late_action", "2025-03-27 13:00", actor="G-S1-1", reason="resolve after the case was escalated away", **URGENT),
])

STATE_COLUMNS = ("case_id, seq, status, assignee_unit_id, assignee_tier, dispatched_ms, accepted_ms, resolved_ms, closed_ms, "
                 "rating, transfers, escalations, reopens, last_event_ms")
EXPECTED_STATES = [
    ("C1", 7, "closed", "G-S1-1", "grid", ms("2025-03-03 09:00"), ms("2025-03-03 09:10"), ms("2025-03-03 13:00"),
     ms("2025-03-04 09:00"), 5, 0, 0, 0, ms("2025-03-04 09:00")),
    ("C10", 4, "resolved", "G-S4-1", "grid", ms("2025-03-25 09:00"), ms("2025-03-25 09:10"), ms("2025-03-25 10:00"),
     None, None, 0, 0, 0, ms("2025-03-25 10:00")),
    ("C11", 4, "resolved", "G-S5-1", "grid", ms("2025-03-25 09:00"), ms("2025-03-25 09:10"), ms("2025-03-25 10:00"),
     None, None, 0, 0, 0, ms("2025-03-25 10:00")),
    # late_action leaves the status the escalation set; the unsatisfied rating stays visible after the escalation.
    ("C12", 9, "dispatched", "C-S1-1", "community", ms("2025-03-27 12:00"), ms("2025-03-26 10:00"), ms("2025-03-27 10:00"),
     None, 2, 0, 1, 0, ms("2025-03-27 13:00")),
    # Returned once, escalated twice (both copies of C2:3 and C2:4 count once); first acceptance by the community.
    ("C2", 10, "closed", "ST-S1", "street", ms("2025-03-06 08:30"), ms("2025-03-05 12:30"), ms("2025-03-06 10:00"),
     ms("2025-03-06 10:30"), 3, 1, 2, 0, ms("2025-03-06 10:30")),
    # Rated 1, escalated, resolved again and rated 4: the latest rating and the last resolution.
    ("C3", 10, "closed", "C-S1-1", "community", ms("2025-03-10 13:00"), ms("2025-03-10 08:20"), ms("2025-03-11 15:00"),
     ms("2025-03-11 16:00"), 4, 0, 1, 0, ms("2025-03-11 16:00")),
    ("C4", 5, "accepted", "C-S1-1", "community", ms("2025-03-25 14:05"), ms("2025-03-20 14:05"), None,
     None, None, 0, 1, 0, ms("2025-03-25 15:00")),
    ("C5", 4, "dispatched", "ST-S2", "street", ms("2025-03-12 13:00"), None, None,
     None, None, 0, 2, 0, ms("2025-03-12 13:00")),
    # Reopened and escalated at the same instant: seq decides, the escalation is last.
    ("C6", 6, "dispatched", "C-S2-1", "community", ms("2025-03-16 09:00"), ms("2025-03-15 09:30"), ms("2025-03-15 11:00"),
     None, None, 0, 1, 1, ms("2025-03-16 09:00")),
    ("C7", 4, "resolved", "D2", "department", ms("2025-03-18 10:00"), ms("2025-03-18 10:15"), ms("2025-03-18 12:00"),
     None, None, 0, 0, 0, ms("2025-03-18 12:00")),
    ("C8", 3, "accepted", "G-S3-1", "grid", ms("2025-03-31 23:30"), ms("2025-04-01 00:10"), None,
     None, None, 0, 0, 0, ms("2025-04-01 00:10")),
    ("C9", 2, "dispatched", "G-S3-1", "grid", ms("2025-04-01 00:30"), None, None,
     None, None, 0, 0, 0, ms("2025-04-01 00:30")),
]


def redeliver_and_add_c12(tables):
    """The sink inserts four events again in a later batch (a redelivery), and C12's events land after C11's."""
    events = tables["case_events"]
    events.extend({**row, "later_batch": True} for row in [r for r in events if r["event_id"] in REDELIVERED])
    events.extend({**event_row(record), "kafka_topic": EVENTS_TOPIC, "kafka_partition": 0, "kafka_offset": offset,
                   "ingest_ms": INGEST_MS, "later_batch": False} for offset, record in enumerate(C12, start=32))


def case_states(engine, database, columns=STATE_COLUMNS):
    return engine.execute(f"SELECT {columns} FROM {database}.case_state ORDER BY case_id")


def test_case_state_is_the_latest_state_of_each_case_with_copies_counted_once(engine, database):
    load(engine, database, redeliver_and_add_c12)

    copies = engine.execute(f"SELECT event_id, count() FROM {database}.case_events GROUP BY event_id HAVING count() > 1 ORDER BY event_id")
    assert copies == [("C1:6", 2), ("C2:3", 2), ("C2:4", 2), ("C3:5", 2), ("C6:5", 2)]
    assert case_states(engine, database) == EXPECTED_STATES


def test_case_state_carries_the_place_urgency_policy_and_chain_head(engine, database):
    load(engine, database, redeliver_and_add_c12)

    columns = ("case_id, category, urgency, district_id, street_id, community_id, grid_id, department_id, opened_ms, "
               "policy_version, last_hash")
    states = {row[0]: row for row in case_states(engine, database, columns)}
    assert states["C2"] == ("C2", "drain_blocked", "normal", "DIS1", "S1", "C-S1-1", "G-S1-1", "D1", ms("2025-03-05 10:00"),
                            "sla-v1", C2[-1]["hash"])
    assert states["C7"] == ("C7", "drain_blocked", "normal", "DIS1", None, None, None, "D2", ms("2025-03-18 10:00"),
                            "sla-v1", C7[-1]["hash"])
    assert states["C8"][9] == "sla-v2"
    assert states["C12"][2] == "urgent"  # raised by the merged report
    assert (states["C1"][10], states["C3"][10], states["C12"][10]) == (C1[-1]["hash"], C3[-1]["hash"], C12[-1]["hash"])


def test_migrating_again_keeps_the_view_and_its_rows(engine, database):
    load(engine, database, redeliver_and_add_c12)

    assert migrate(engine, database) == []
    assert engine.execute("SELECT engine FROM system.tables WHERE database = %(db)s AND name = 'case_state'", {"db": database}) == [("View",)]
    assert case_states(engine, database) == EXPECTED_STATES


def test_a_database_with_the_case_state_table_is_upgraded_to_the_view(engine, database, tmp_path):
    first_two = tmp_path / "migrations"
    first_two.mkdir()
    for name in ("001_audit_tables.sql", "002_sink_batches.sql"):
        shutil.copy(MIGRATIONS_DIR / name, first_two)
    migrate(engine, database, first_two)

    assert [(m.version, m.name) for m in migrate(engine, database)] == [(3, "case_state_view"), (4, "offset_ledger"), (5, "raw_sender"),
                                                                    (6, "rules_and_anchors"), (7, "case_figures")]
    assert engine.execute("SELECT engine FROM system.tables WHERE database = %(db)s AND name = 'case_state'", {"db": database}) == [("View",)]
    assert case_states(engine, database) == []
