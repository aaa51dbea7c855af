-- _case_figures: a fragment, not a query. The rows of case_figures (migration 007) AS THEY STOOD at as_of_ms, for
-- every case opened at or after start_ms (and some earlier ones, which the queries' own opening filter drops): the
-- stored rows of each case with no event at or after as_of, and for each case with one, the same states derived
-- from its events before as_of. Spliced where a query says `{_case_figures}`, and read with -Merge grouped by case
-- (or by case and holder), so every dashboard figure and the ranking fold the log the same way.
--
-- Parameters: start_ms, as_of_ms. WHY the month cut-off is safe: a case's events are stamped with its case-stream
-- partition's time, which never goes back, so none precedes its opening; a case opened at or after start_ms has all
-- its rows in the UTC months from start_ms's on (the partitions read).
-- The derived states are the migration's select list, column for column (UNION ALL matches by position);
-- tests/test_case_figures.py proves the stored and derived states agree. At as_of = now the second part reads no
-- case, and the parts of case_events wholly before as_of are skipped by their minmax index.
SELECT *
FROM {db}.case_figures
WHERE event_month >= toUInt32(toYYYYMM(toDateTime(intDiv(%(start_ms)s, 1000), 'UTC')))
  AND case_id NOT IN (SELECT case_id FROM {db}.case_events WHERE at_ms >= %(as_of_ms)s)

UNION ALL

SELECT
    case_id,
    assignee_unit_id AS holder_unit_id,
    assignee_tier AS holder_tier,
    toUInt32(toYYYYMM(toDateTime(intDiv(at_ms, 1000), 'UTC'))) AS event_month,
    policy_version,
    minState(seq) AS first_seq_state,
    maxState(seq) AS last_seq_state,
    minState(at_ms) AS held_from_ms_state,
    minIfState(at_ms, kind = 'opened') AS opened_ms_state,
    maxState(toUInt8(kind = 'accepted')) AS accepted_state,
    minIfState(at_ms, kind = 'accepted') AS first_accepted_ms_state,
    maxIfState(seq, kind = 'resolved') AS last_resolved_seq_state,
    maxIfState(at_ms, kind = 'resolved') AS last_resolved_ms_state,
    maxIfState(at_ms, kind = 'closed') AS last_closed_ms_state,
    maxIfState(seq, kind = 'reopened') AS last_reopened_seq_state,
    maxIfState(seq, kind = 'escalated') AS last_escalated_seq_state,
    maxIfState(seq, kind = 'urged') AS last_urged_seq_state,
    maxIfState(seq, kind = 'criticized') AS last_criticized_seq_state,
    maxIfState(seq, kind = 'referred') AS last_referred_seq_state,
    maxState(toUInt8(kind = 'rated')) AS rated_state,
    argMaxIfState(ifNull(rating, toUInt8(0)), seq, kind = 'rated') AS last_rating_state,
    argMaxIfState(kind, seq, kind IN ('opened', 'dispatched', 'escalated', 'accepted', 'resolved', 'rated', 'reopened', 'closed')) AS status_kind_state,
    uniqExactIfState(seq, kind = 'transferred') AS transfers_state,
    uniqExactIfState(seq, kind = 'escalated') AS escalations_state,
    uniqExactIfState(seq, kind = 'reopened') AS reopens_state,
    argMinState(category, seq) AS category_state,
    argMinState(district_id, seq) AS district_id_state,
    argMinState(ifNull(street_id, ''), seq) AS street_id_state,
    argMinState(ifNull(community_id, ''), seq) AS community_id_state,
    argMinState(ifNull(grid_id, ''), seq) AS grid_id_state,
    argMinState(ifNull(department_id, ''), seq) AS department_id_state,
    argMaxState(assignee_unit_id, seq) AS current_unit_id_state,
    argMaxState(assignee_tier, seq) AS current_tier_state,
    argMaxState(urgency, seq) AS current_urgency_state
FROM {db}.case_events
WHERE at_ms >= %(start_ms)s AND at_ms < %(as_of_ms)s
  AND case_id IN (SELECT case_id FROM {db}.case_events WHERE at_ms >= %(as_of_ms)s)
GROUP BY case_id, holder_unit_id, holder_tier, event_month, policy_version
