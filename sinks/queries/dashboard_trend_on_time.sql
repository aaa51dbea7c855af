-- dashboard_trend_on_time: each street's on-time rate, month by month, for the dashboard's trends page and
-- `whistle audit trends`. Runs on ClickHouse 18.16 and modern servers.
--
-- Parameters
--   start_ms, end_ms  the first month's start and the last month's end, [start, end) epoch ms (local midnights)
--   as_of_ms          only events and breaches before this instant count (as in ranking.sql)
--   by                'street' (the fragment _month_holdings.sql selects on it)
--   tz                the city's time zone: a case's month is the month of its `opened` event there
-- Which holdings and what "on time" means are ranking.sql's, so each month's row of a street equals that month's
-- `whistle audit ranking --by street` on_time_rate_pct: the holdings come from the shared fragment _month_holdings.sql
-- (cases opened in the period, each with each street-tier unit that held it), the resolution from _case_is_resolved.sql
-- and _case_resolver.sql over the case log folded per case (_case_figures.sql), the late ones from
-- _case_overdue_counts.sql (breaches charged to the holder);
-- on_time = the case is resolved, by this unit, and no resolve_overdue / final_overdue breach record (every kind
-- but 'warning', fired before as_of) was charged to it.
-- on_time_rate_pct = on_time / received, half up in integer basis points, 2 decimals (ranking.sql's rounding).
-- Months in which a street held no case have no row.
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
        toInt64(countIf(resolved_here AND resolve_overdue = 0)) AS on_time
    FROM
    (
        SELECT month, unit_id, resolved_here, resolve_overdue
        FROM
        (
            SELECT
                case_id, unit_id, resolved_here,
                substring(toString(toDate(toDateTime(intDiv(opened_ms, 1000), %(tz)s))), 1, 7) AS month
            FROM ({_month_holdings}) AS holdings
        ) AS held
        ANY LEFT JOIN
        (
            SELECT
                {_case_overdue_counts},
                responsible_unit_id AS unit_id
            FROM {db}.breaches FINAL
            WHERE kind != 'warning' AND fired_at_ms < %(as_of_ms)s
            GROUP BY case_id, unit_id
        ) AS late
        USING (case_id, unit_id)
    )
    GROUP BY month, unit_id
)
ORDER BY month, unit_id
