-- dashboard_overview: the district's month at a glance, for `whistle dashboard` (one row). Run once for the
-- month and once for the month before it; the dashboard shows the change.
--
-- Parameters
--   start_ms, end_ms  the month, as [start, end) epoch ms (local midnights, sinks/audit.py month_bounds)
--   as_of_ms          only events and breaches before this instant count (as in ranking.sql)
--
-- Activity in the month (every case of the district, dispatch-desk cases included), cases counted once:
--   opened    cases whose `opened` event falls in the month
--   resolved  cases with at least one `resolved` event in the month
--   closed    cases with at least one `closed` event in the month
-- The month's cohort = the cases opened in the month; over it, with the definitions of ranking.sql
-- (events and breaches before as_of; breaches = every kind but 'warning'):
--   responded = accepted and no accept_overdue breach; cohort_resolved = last `resolved` after every
--   `reopened` and `escalated`; on_time = resolved and no resolve_overdue / final_overdue breach;
--   rated = has a `rated` event, satisfied = latest rating >= 4.
--   response_rate_pct = responded / cohort, resolution_rate_pct = cohort_resolved / cohort,
--   on_time_rate_pct = on_time / cohort, satisfaction_rate_pct = satisfied / rated; NULL when the
--   denominator is 0. Rounded half up in integer basis points, like ranking.sql.
-- Duplicated rows are invisible: case_events and breaches are read with FINAL.
SELECT
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
    SELECT
        toInt64(countIf(in_cohort)) AS opened,
        toInt64(countIf(resolved_in_month)) AS resolved,
        toInt64(countIf(closed_in_month)) AS closed,
        toInt64(countIf(in_cohort)) AS cohort,
        toInt64(countIf(in_cohort AND accepted AND accept_overdue = 0)) AS responded,
        toInt64(countIf(in_cohort AND is_resolved)) AS cohort_resolved,
        toInt64(countIf(in_cohort AND is_resolved AND resolve_overdue = 0)) AS on_time,
        toInt64(countIf(in_cohort AND is_rated)) AS rated,
        toInt64(countIf(in_cohort AND is_rated AND rating >= 4)) AS satisfied
    FROM
    (
        SELECT
            case_id,
            countIf(kind = 'opened' AND at_ms >= %(start_ms)s AND at_ms < %(end_ms)s) > 0 AS in_cohort,
            countIf(kind = 'resolved' AND at_ms >= %(start_ms)s AND at_ms < %(end_ms)s) > 0 AS resolved_in_month,
            countIf(kind = 'closed' AND at_ms >= %(start_ms)s AND at_ms < %(end_ms)s) > 0 AS closed_in_month,
            countIf(kind = 'accepted') > 0 AS accepted,
            {_case_is_resolved},
            countIf(kind = 'rated') > 0 AS is_rated,
            ifNull(argMaxIf(rating, seq, kind = 'rated'), 0) AS rating
        FROM {db}.case_events FINAL
        WHERE at_ms < %(as_of_ms)s
          AND case_id IN
          (
              SELECT case_id
              FROM {db}.case_events
              WHERE at_ms >= %(start_ms)s AND at_ms < %(end_ms)s AND at_ms < %(as_of_ms)s
          )
        GROUP BY case_id
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
)
