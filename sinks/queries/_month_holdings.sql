-- _month_holdings: a fragment, not a query. WHO HELD WHICH CASE in a monthly ranking, in one place: spliced by
-- sinks/audit.py wherever a query says `{_month_holdings}` (ranking.sql, ranking_provenance.sql, ranking_rules.sql,
-- dashboard_trend_on_time.sql), so a ranking, its provenance, its rules and the trends always count the same holdings.
--
-- Parameters: start_ms, end_ms, as_of_ms, by (see ranking.sql).
-- One row (case_id, unit_id) per case opened in [start_ms, end_ms) before as_of_ms and unit of tier `by` that held it
-- before as_of_ms: a case event (before as_of) names the unit as the case's holder after it (assignee_unit_id, of
-- assignee_tier `by`). A case held by a grid and then escalated to its community gives a row for each. Read without
-- FINAL: a copied event gives its pair once, since the rows are grouped (and used as `IN (...)`).
SELECT case_id, assignee_unit_id AS unit_id
FROM {db}.case_events
WHERE assignee_tier = %(by)s AND at_ms < %(as_of_ms)s
  AND case_id IN (
      SELECT case_id
      FROM {db}.case_events
      WHERE kind = 'opened' AND at_ms >= %(start_ms)s AND at_ms < %(end_ms)s AND at_ms < %(as_of_ms)s
  )
GROUP BY case_id, unit_id
