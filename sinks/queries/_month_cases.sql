-- _month_cases: a fragment, not a query. THE case selection of a monthly ranking, in one place: spliced by
-- sinks/audit.py wherever a query says `{_month_cases}` (ranking.sql, ranking_provenance.sql), so the
-- ranking and its provenance always count the same cases.
--
-- Parameters: start_ms, end_ms, as_of_ms, by (see ranking.sql).
-- The cases whose `opened` event falls in [start_ms, end_ms) and before as_of_ms, and names a unit for
-- `by` (its street_id, or its department_id): dispatch-desk cases (no street) and cases with no owning
-- department are not ranked. Read without FINAL: a copied opened event selects its case only once,
-- since the result is used as `case_id IN (...)`.
SELECT case_id
FROM {db}.case_events
WHERE kind = 'opened'
  AND at_ms >= %(start_ms)s AND at_ms < %(end_ms)s AND at_ms < %(as_of_ms)s
  AND isNotNull(if(%(by)s = 'department', department_id, street_id))
