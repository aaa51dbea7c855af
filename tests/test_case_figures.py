"""case_figures (migration 007): the case log folded per case, holder and month as the sink inserts events, which the
dashboard's figures and the ranking read (sinks/queries/_case_figures.sql). On both ClickHouse engines, over the hand-built
store of tests/test_audit_queries.py (inserted as the sink does, so the materialized view folds it)."""
from __future__ import annotations

import re

import pytest
from test_audit_queries import UNSCORED, beijing, store  # noqa: F401  (store: the fixture)

from sinks import audit
from sinks.clickhouse import render_identifiers, strip_comment_lines
from sinks.migrator import load_migrations

MONTH = "2025-03"
_END_OF_TIME_MS = 2**63 - 1
# Each state finished, per stored row's key: the same figures whatever rows and parts the states are split into.
_FINISHED = """
SELECT case_id, holder_unit_id, holder_tier, event_month, policy_version,
    minMerge(first_seq_state), maxMerge(last_seq_state), minMerge(held_from_ms_state), minIfMerge(opened_ms_state),
    maxMerge(accepted_state), minIfMerge(first_accepted_ms_state), maxIfMerge(last_resolved_seq_state),
    maxIfMerge(last_resolved_ms_state), maxIfMerge(last_closed_ms_state), maxIfMerge(last_reopened_seq_state),
    maxIfMerge(last_escalated_seq_state), maxIfMerge(last_urged_seq_state), maxIfMerge(last_criticized_seq_state),
    maxIfMerge(last_referred_seq_state), maxMerge(rated_state), argMaxIfMerge(last_rating_state), argMaxIfMerge(status_kind_state),
    uniqExactIfMerge(transfers_state), uniqExactIfMerge(escalations_state), uniqExactIfMerge(reopens_state),
    argMinMerge(category_state), argMinMerge(district_id_state), argMinMerge(street_id_state),
    argMinMerge(community_id_state), argMinMerge(grid_id_state), argMinMerge(department_id_state),
    argMaxMerge(current_unit_id_state), argMaxMerge(current_tier_state), argMaxMerge(current_urgency_state)
FROM ({source})
GROUP BY case_id, holder_unit_id, holder_tier, event_month, policy_version
ORDER BY case_id, holder_unit_id, holder_tier, event_month, policy_version
"""


def _migration_statements() -> tuple[str, str, str]:
    [migration] = [m for m in load_migrations() if m.name == "case_figures"]
    table, view, backfill = migration.statements
    return table, view, backfill


def _select_list(sql: str) -> str:
    """The select list of a statement over case_events, whitespace normalized (the states it computes)."""
    text = " ".join(strip_comment_lines(sql).split())
    return text[text.index("SELECT case_id, assignee_unit_id AS holder_unit_id"):text.index(" FROM {db}.case_events")]


def _output_names(select_list: str) -> list[str]:
    """The name of each item of `SELECT a, f(b, c) AS d, ...`: its alias, or the column itself."""
    items, depth, start = [], 0, len("SELECT ")
    for at, char in enumerate(select_list):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append(select_list[start:at].strip())
            start = at + 1
    items.append(select_list[start:].strip())
    return [item.rsplit(" AS ", 1)[-1] for item in items]


def test_the_view_the_backfill_and_the_as_of_fragment_compute_the_same_states():
    # One fold, three places that must spell it alike: the view (new events), the backfill (events already stored) and
    # the fragment's derivation for cases with events after a query's as-of.
    _, view, backfill = _migration_statements()
    fragment = (audit.QUERIES_DIR / "_case_figures.sql").read_text()
    derived = fragment[fragment.index("\nUNION ALL\n"):]
    assert _select_list(view) == _select_list(backfill) == _select_list(derived)
    # The table's state columns are the select list's, in its order (UNION ALL with `SELECT *` matches by position).
    table, _, _ = _migration_statements()
    columns = re.findall(r"^\s+(\w+)\s+(?:String|UInt32|AggregateFunction)", table, flags=re.M)
    assert columns == _output_names(_select_list(view)) and len(columns) == 34
    # Negative control: a state left out of one of them is seen.
    assert _select_list(view) != _select_list(view.replace("    maxState(seq) AS last_seq_state,\n", ""))


def test_the_view_fed_rows_equal_the_backfill_over_the_same_events(store):  # noqa: F811
    engine, database = store
    _, _, backfill = _migration_statements()
    stored = engine.execute(render_identifiers(_FINISHED.replace("{source}", "SELECT * FROM {db}.case_figures"), db=database))
    rebuilt = engine.execute(render_identifiers(_FINISHED.replace("{source}", backfill[backfill.index("SELECT"):]), db=database))
    assert stored == rebuilt and len(stored) >= 11  # a row per case and holder at least: every case of the data set


def _figures(engine, database) -> dict[str, list]:
    """Every figure the dashboard shows over cases, for the data set's month, as of now and as of a moment inside it."""
    start_ms, end_ms = audit.month_bounds(MONTH)
    month = {"start_ms": start_ms, "end_ms": end_ms, "as_of_ms": _END_OF_TIME_MS}
    search = {"case_id": "", "street": "", "grid": "", "category": "", "status": "", "start_ms": 0, "end_ms": _END_OF_TIME_MS,
              "as_of_ms": _END_OF_TIME_MS, "limit": 500}
    both_months = {"start_ms": audit.month_bounds("2025-02")[0], "split_ms": start_ms, "end_ms": end_ms, "as_of_ms": _END_OF_TIME_MS}
    figures: dict[str, list] = {
        "overview": audit.run_query(engine, database, "dashboard_overview", both_months).rows,
        "grid_cases": audit.run_query(engine, database, "dashboard_grid_cases", month).rows,
        "case_search": audit.run_query(engine, database, "dashboard_case_search", search).rows,
        "durations": audit.trend_durations(engine, database, MONTH).rows,
        "on_time": audit.trend_on_time(engine, database, MONTH, 2).rows,
    }
    for by in ("grid", "community", "street", "department"):
        for as_of in (None, beijing("2025-03-12 12:00")):
            figures[f"ranking {by} {as_of}"] = audit.ranking(engine, database, MONTH, by, 1, as_of=as_of, policies=UNSCORED).rows
    return figures


def test_every_case_event_stored_twice_changes_no_figure(store):  # noqa: F811
    """The sink delivers at least once: a redelivered batch is a second copy of its events, folded again by the view."""
    engine, database = store
    before = _figures(engine, database)
    assert before["case_search"] and before["overview"][1][:2] == ("current", 10) and before["ranking grid None"]  # not vacuous

    count_rows = f"SELECT count() FROM {database}.case_figures"
    rows_before = engine.execute(count_rows)[0][0]
    engine.execute(f"INSERT INTO {database}.case_events SELECT * FROM {database}.case_events")

    assert _figures(engine, database) == before
    # Negative control: the copies did reach the aggregate (more rows of states), and a figure counted with count() over
    # them, not with the duplicate-insensitive states, would have doubled.
    assert engine.execute(count_rows)[0][0] > rows_before
    double = f"SELECT count() FROM {database}.case_events WHERE kind = 'opened'"
    distinct = f"SELECT uniqExact(case_id) FROM {database}.case_events WHERE kind = 'opened'"
    assert engine.execute(double)[0][0] == 2 * engine.execute(distinct)[0][0]


def test_case_search_states_every_case_as_the_case_state_view_does(store):  # noqa: F811
    # Two readings of one log: the search's columns from the folded states, and migration 003's view over the events.
    engine, database = store
    columns = ("case_id, status, category, urgency, street_id, community_id, grid_id, department_id, assignee_unit_id, assignee_tier, "
               "opened_ms, accepted_ms, resolved_ms, closed_ms, rating, transfers, escalations, reopens")
    search = {"case_id": "", "street": "", "grid": "", "category": "", "status": "", "start_ms": 0, "end_ms": _END_OF_TIME_MS,
              "as_of_ms": _END_OF_TIME_MS, "limit": 500}
    found = audit.run_query(engine, database, "dashboard_case_search", search).as_dicts()
    view = engine.execute(f"SELECT {columns} FROM {database}.case_state ORDER BY case_id")
    names = [c.strip() for c in columns.split(",")]
    assert sorted(tuple(row[name] for name in names) for row in found) == [tuple(row) for row in view]
    assert {row["status"] for row in found} >= {"closed", "dispatched"}  # the data set holds cases in several states


@pytest.mark.parametrize("as_of", [beijing("2025-03-06 09:30"), beijing("2025-03-12 12:00")])
def test_a_case_with_events_after_the_as_of_is_folded_from_its_events_before_it(store, as_of):  # noqa: F811
    # At a past as-of the stored states hold later events too; the fragment folds such cases from their events instead.
    # The cases opened in the month as the fragment states them equal those whose `opened` event precedes as_of.
    engine, database = store
    start_ms, end_ms = audit.month_bounds(MONTH)
    as_of_ms = int(as_of.timestamp() * 1000)
    fragment = audit.query_text("dashboard_case_search").split("FROM (", 1)[1]  # the spliced fragment, as the search runs it
    assert "UNION ALL" in fragment
    search = {"case_id": "", "street": "", "grid": "", "category": "", "status": "", "start_ms": start_ms, "end_ms": end_ms,
              "as_of_ms": as_of_ms, "limit": 500}
    found = {row["case_id"]: row for row in audit.run_query(engine, database, "dashboard_case_search", search).as_dicts()}
    expected = engine.execute(f"SELECT case_id, max(seq) FROM {database}.case_events FINAL WHERE at_ms < %(as_of)s "
                              f"AND case_id IN (SELECT case_id FROM {database}.case_events WHERE kind = 'opened' "
                              f"AND at_ms >= %(start)s AND at_ms < %(end)s AND at_ms < %(as_of)s) GROUP BY case_id",
                              {"as_of": as_of_ms, "start": start_ms, "end": end_ms})
    assert set(found) == {case_id for case_id, _ in expected} and found
    later = engine.execute(f"SELECT count() FROM {database}.case_events WHERE at_ms >= %(as_of)s", {"as_of": as_of_ms})[0][0]
    assert later > 0  # the as-of does cut cases short (the derivation is exercised)
    assert all(row["closed_ms"] is None or row["closed_ms"] < as_of_ms for row in found.values())
    assert all(row["resolved_ms"] is None or row["resolved_ms"] < as_of_ms for row in found.values())
    # Negative control: the stored states of the same cases (as of the end of time) do hold events at or after as_of.
    now = {row["case_id"]: row for row in audit.run_query(engine, database, "dashboard_case_search",
                                                          {**search, "as_of_ms": _END_OF_TIME_MS}).as_dicts()}
    assert any(now[c] != found[c] for c in found)
