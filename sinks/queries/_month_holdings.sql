-- _month_holdings: a fragment, not a query. WHO HELD WHICH CASE in a monthly ranking, in one place: spliced by
-- sinks/audit.py wherever a query says `{_month_holdings}` (ranking.sql, ranking_provenance.sql, ranking_rules.sql,
-- dashboard_trend_on_time.sql), so a ranking, its provenance, its rules and the trends always count the same holdings.
--
-- Parameters: start_ms, end_ms, as_of_ms, by (see ranking.sql).
-- One row per case opened in [start_ms, end_ms) before as_of_ms and unit of tier `by` that held it before as_of_ms: a
-- case event (before as_of) names the unit as the case's holder after it (assignee_unit_id, of assignee_tier `by`). A
-- case held by a grid and then escalated to its community gives a row for each. Read from {_case_figures} (the case
-- log folded per case, holder and month, as of as_of), with the case's own figures:
--   opened_ms                    its `opened` event's time
--   is_resolved                  the fragment _case_is_resolved.sql
--   last_resolved_ms             its last `resolved` event's time
-- and the holding's:
--   resolved_here                the case is resolved and this holding made the resolution (_case_resolver.sql)
--   held_from_ms                 its first event's time (the dispatch, escalation or transfer to it, or the opening)
--   accepted, first_accepted_ms  whether and when it first accepted the case
--   is_rated, rating             whether the case was rated while it held it, and the latest such rating
--   policy_version               the SLA policy version of its events (the least, should a case have had two)
-- Only cases some unit of tier `by` ever held are folded (the stored rows name every holder the events before any
-- as-of name, so the filter keeps every case the holdings need): a street or department ranking folds the few cases
-- those tiers held, not the district's month.
-- One join: the month's cases (left) with the holdings of tier `by` (right, the table ClickHouse builds; ALL: a case
-- held by two units keeps both rows), on cityHash64 of the case id (a hash table of integers, not of a million
-- strings), then only the pairs of the same case: a hash collision can add a pair, never lose one, and the pair is
-- dropped.
SELECT
    case_id, unit_id, opened_ms, is_resolved, is_resolved AND resolved_by_holder AS resolved_here, last_resolved_ms,
    held_from_ms, accepted, first_accepted_ms, is_rated, rating, policy_version
FROM
(
    SELECT case_id, holding_case_id, unit_id, opened_ms, is_resolved, {_case_resolver}, last_resolved_ms,
           held_from_ms, accepted, first_accepted_ms, is_rated, rating, policy_version
    FROM
    (
        SELECT case_id, case_key, opened_ms, is_resolved, case_resolved_seq, last_resolved_ms
        FROM
        (
            SELECT
                case_id,
                cityHash64(case_id) AS case_key,
                minIfMerge(opened_ms_state) AS opened_ms,
                {_case_is_resolved},
                maxIfMerge(last_resolved_seq_state) AS case_resolved_seq,
                maxIfMerge(last_resolved_ms_state) AS last_resolved_ms
            FROM ({_case_figures}) AS merged
            WHERE case_id IN (SELECT case_id FROM {db}.case_figures WHERE holder_tier = %(by)s)
            GROUP BY case_id
        )
        WHERE opened_ms >= %(start_ms)s AND opened_ms < %(end_ms)s
    ) AS opened_in_month
    ALL INNER JOIN
    (
        SELECT
            case_id AS holding_case_id,
            cityHash64(case_id) AS case_key,
            holder_unit_id AS unit_id,
            minMerge(held_from_ms_state) AS held_from_ms,
            maxMerge(accepted_state) = 1 AS accepted,
            minIfMerge(first_accepted_ms_state) AS first_accepted_ms,
            maxIfMerge(last_resolved_seq_state) AS holding_resolved_seq,
            maxMerge(rated_state) = 1 AS is_rated,
            argMaxIfMerge(last_rating_state) AS rating,
            min(policy_version) AS policy_version
        FROM ({_case_figures}) AS held
        WHERE holder_tier = %(by)s
        GROUP BY case_id, unit_id
    ) AS holding
    USING case_key
)
WHERE holding_case_id = case_id
