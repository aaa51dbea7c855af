-- dashboard_trend_durations: how long cases took to be accepted and to be resolved, p50 and p90, per day or
-- week of their opening, for the dashboard's trends page and `whistle audit trends`. Runs on ClickHouse 18.16
-- and modern servers.
--
-- Parameters
--   start_ms, end_ms  cases whose `opened` event falls in [start_ms, end_ms) (a month: local midnights)
--   as_of_ms          only events before this instant count (as in ranking.sql)
--   bucket            'day' or 'week' (weeks start on Monday; a week cut by the period holds only its cases)
--   tz                the city's time zone: days and weeks are calendar ones there
-- Every case of the district opened in the period (dispatch-desk cases included), from the case log folded per case
-- (_case_figures.sql, as of as_of).
-- Durations and percentiles are ranking.sql's: time to accept = first `accepted` - opened (accepted cases);
-- time to resolve = last `resolved` - opened (resolved cases: the fragment _case_is_resolved). p50 / p90 are nearest-rank: the ceil(0.5 k)-th / ceil(0.9 k)-th smallest of the k durations;
-- accept in whole seconds, resolve in hours with 2 decimals, both rounded half up; NULL when k = 0.
SELECT
    bucket_start,
    cases,
    accepted,
    resolved,
    if(accepted = 0, NULL, intDiv(accept_p50_ms + 500, 1000)) AS p50_accept_s,
    if(accepted = 0, NULL, intDiv(accept_p90_ms + 500, 1000)) AS p90_accept_s,
    if(resolved = 0, NULL, toDecimal64(intDiv(200 * resolve_p50_ms + 3600000, 7200000), 2) / 100) AS p50_resolve_h,
    if(resolved = 0, NULL, toDecimal64(intDiv(200 * resolve_p90_ms + 3600000, 7200000), 2) / 100) AS p90_resolve_h
FROM
(
    SELECT
        toString(if(%(bucket)s = 'week', toMonday(opened_day), opened_day)) AS bucket_start,
        toInt64(count()) AS cases,
        toInt64(countIf(is_accepted)) AS accepted,
        toInt64(countIf(is_resolved)) AS resolved,
        arraySort(groupArrayIf(first_accepted_ms - opened_ms, is_accepted)) AS accept_ms,
        arraySort(groupArrayIf(last_resolved_ms - opened_ms, is_resolved)) AS resolve_ms,
        toInt64(accept_ms[greatest(intDiv(accepted + 1, 2), 1)]) AS accept_p50_ms,
        toInt64(accept_ms[greatest(intDiv(9 * accepted + 9, 10), 1)]) AS accept_p90_ms,
        toInt64(resolve_ms[greatest(intDiv(resolved + 1, 2), 1)]) AS resolve_p50_ms,
        toInt64(resolve_ms[greatest(intDiv(9 * resolved + 9, 10), 1)]) AS resolve_p90_ms
    FROM
    (
        SELECT
            opened_ms, toDate(toDateTime(intDiv(opened_ms, 1000), %(tz)s)) AS opened_day, is_accepted, first_accepted_ms,
            is_resolved, last_resolved_ms
        FROM
        (
            SELECT
                case_id,
                minIfMerge(opened_ms_state) AS opened_ms,
                maxMerge(accepted_state) = 1 AS is_accepted,
                minIfMerge(first_accepted_ms_state) AS first_accepted_ms,
                {_case_is_resolved},
                maxIfMerge(last_resolved_ms_state) AS last_resolved_ms
            FROM ({_case_figures}) AS merged
            GROUP BY case_id
        )
        WHERE opened_ms >= %(start_ms)s AND opened_ms < %(end_ms)s
    )
    GROUP BY bucket_start
)
ORDER BY bucket_start
