-- dashboard_overview: the district's month and the month before it at a glance, for `whistle dashboard`: one row for
-- each (`period` 'previous', then 'current'), in one pass over the case figures; the dashboard shows the change.
--
-- Parameters
--   start_ms, split_ms, end_ms  the month before as [start_ms, split_ms), the month as [split_ms, end_ms), epoch ms
--                               (local midnights, sinks/audit.py month_bounds)
--   as_of_ms          only events and breaches before this instant count (as in ranking.sql)
--
-- Activity in a month (every case of the district, dispatch-desk cases included), cases counted once:
--   opened    cases whose `opened` event falls in the month
--   resolved  cases with at least one `resolved` event in the month
--   closed    cases with at least one `closed` event in the month
-- The month's cohort = the cases opened in the month; over it, with the definitions of ranking.sql
-- (events and breaches before as_of; breaches = every kind but 'warning'):
--   responded = accepted and no accept_overdue breach; cohort_resolved = the fragment _case_is_resolved;
--   on_time = resolved and no resolve_overdue / final_overdue breach;
--   rated = has a `rated` event, satisfied = latest rating >= 4.
--   response_rate_pct = responded / cohort, resolution_rate_pct = cohort_resolved / cohort,
--   on_time_rate_pct = on_time / cohort, satisfaction_rate_pct = satisfied / rated; NULL when the
--   denominator is 0. Rounded half up in integer basis points, like ranking.sql.
-- Duplicated rows are invisible: the cohort's figures come from the case log folded per case (_case_figures.sql,
-- duplicate-insensitive states), breaches are read with FINAL, the activity counts distinct cases.
-- A month without cases still has its row (zeros, rates NULL).
SELECT
    period,
    opened,
    resolved,
    closed,
    cohort,
    responded,
    cohort_resolved,
    on_time,
    rated,
    satisfied,
    if(cohort = 0, NULL, toDecimal64(intDiv(20000 * responded + cohort, 2 * greatest(cohort, 1)), 2) / 100) AS response_rate_pct,
    if(cohort = 0, NULL, toDecimal64(intDiv(20000 * cohort_resolved + cohort, 2 * greatest(cohort, 1)), 2) / 100) AS resolution_rate_pct,
    if(cohort = 0, NULL, toDecimal64(intDiv(20000 * on_time + cohort, 2 * greatest(cohort, 1)), 2) / 100) AS on_time_rate_pct,
    if(rated = 0, NULL, toDecimal64(intDiv(20000 * satisfied + rated, 2 * greatest(rated, 1)), 2) / 100) AS satisfaction_rate_pct
FROM
(
    SELECT period, opened, resolved, closed, cohort, responded, cohort_resolved, on_time, rated, satisfied
    FROM
    (
        SELECT period, cohort, responded, cohort_resolved, on_time, rated, satisfied, cohort AS opened
        FROM (SELECT arrayJoin(['previous', 'current']) AS period) AS periods
        ANY LEFT JOIN
        (
            SELECT
                period,
                toInt64(count()) AS cohort,
                toInt64(countIf(accepted AND accept_overdue = 0)) AS responded,
                toInt64(countIf(is_resolved)) AS cohort_resolved,
                toInt64(countIf(is_resolved AND resolve_overdue = 0)) AS on_time,
                toInt64(countIf(is_rated)) AS rated,
                toInt64(countIf(is_rated AND rating >= 4)) AS satisfied
            FROM
            (
                SELECT case_id, if(opened_at_ms >= %(split_ms)s, 'current', 'previous') AS period, accepted, is_resolved, is_rated, rating
                FROM
                (
                    SELECT
                        case_id,
                        minIfMerge(opened_ms_state) AS opened_at_ms,
                        maxMerge(accepted_state) = 1 AS accepted,
                        {_case_is_resolved},
                        maxMerge(rated_state) = 1 AS is_rated,
                        argMaxIfMerge(last_rating_state) AS rating
                    FROM ({_case_figures}) AS merged
                    GROUP BY case_id
                )
                WHERE opened_at_ms >= %(start_ms)s AND opened_at_ms < %(end_ms)s
            ) AS case_figures
            ANY LEFT JOIN
            (
                SELECT
                    {_case_overdue_counts}
                FROM {db}.breaches FINAL
                WHERE kind != 'warning' AND fired_at_ms < %(as_of_ms)s
                GROUP BY case_id
            ) AS case_breaches
            USING case_id
            GROUP BY period
        ) AS cohort_figures
        USING period
    ) AS cohorts
    ANY LEFT JOIN
    (
        -- Activity: distinct cases, so a copied event changes nothing and no FINAL is needed.
        SELECT
            if(at_ms >= %(split_ms)s, 'current', 'previous') AS period,
            toInt64(uniqExactIf(case_id, kind = 'resolved')) AS resolved,
            toInt64(uniqExactIf(case_id, kind = 'closed')) AS closed
        FROM {db}.case_events
        WHERE kind IN ('resolved', 'closed') AND at_ms >= %(start_ms)s AND at_ms < %(end_ms)s AND at_ms < %(as_of_ms)s
        GROUP BY period
    ) AS activity
    USING period
)
ORDER BY period = 'current'
