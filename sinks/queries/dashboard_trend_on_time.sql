-- dashboard_trend_on_time: each street's on-time rate, month by month, for the dashboard's trends page and
-- `whistle audit trends`. Runs on ClickHouse 18.16 and modern servers.
--
-- Parameters
--   start_ms, end_ms  the first month's start and the last month's end, [start, end) epoch ms (local midnights)
--   as_of_ms          only events and breaches before this instant count (as in ranking.sql)
--   by                'street' (the fragment _month_cases.sql selects on it)
--   tz                the city's time zone: a case's month is the month of its `opened` event there
-- Which cases and what "on time" means are ranking.sql's, so each month's row of a street equals that month's
-- `whistle audit ranking --by street` on_time_rate_pct: the cases come from the shared fragment _month_cases.sql
-- (opened in the period, naming a street), the late ones from _case_overdue_counts.sql;
-- on_time = resolved (last `resolved` after every `reopened` and `escalated`) and no resolve_overdue /
-- final_overdue breach (every kind but 'warning', fired before as_of).
-- on_time_rate_pct = on_time / received, half up in integer basis points, 2 decimals (ranking.sql's rounding).
-- Months in which a street received no case have no row.
SELECT
    month,
    unit_id,
    received,
    on_time,
    toDecimal64(intDiv(20000 * on_time + received, 2 * received), 2) / 100 AS on_time_rate_pct
FROM
(
    SELECT
        month,
        unit_id,
        toInt64(count()) AS received,
        toInt64(countIf(is_resolved AND resolve_overdue = 0)) AS on_time
    FROM
    (
        SELECT
            case_id,
            substring(toString(toDate(toDateTime(intDiv(minIf(at_ms, kind = 'opened'), 1000), %(tz)s))), 1, 7) AS month,
            ifNull(anyIf(street_id, kind = 'opened'), '') AS unit_id,
            {_case_is_resolved}
        FROM {db}.case_events FINAL
        WHERE at_ms < %(as_of_ms)s
          AND case_id IN ({_month_cases})
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
    GROUP BY month, unit_id
)
ORDER BY month, unit_id
