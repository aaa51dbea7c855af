-- dashboard_grid_cases: cases per grid for the dashboard's map, from the case log folded per case (_case_figures.sql).
--
-- Parameters
--   start_ms, end_ms  only cases opened in [start_ms, end_ms) (the full range: every case)
--   as_of_ms          only events before this instant count (the dashboard: every event)
--
-- One row per grid that has such a case (cases without a grid, i.e. dispatch-desk cases, are left out):
--   total_cases    cases opened in the window (a NULL or empty grid_id, i.e. no grid, is left out)
--   open_cases     of them, not closed (their last status-changing event is not `closed`)
--   overdue_cases  open cases with at least one overdue breach or referral (breach_type accept_overdue,
--                  resolve_overdue or final_overdue; warnings do not count), breaches read with FINAL
-- Order: grid_id.
SELECT
    grid_id,
    toInt64(count()) AS total_cases,
    toInt64(countIf(status_kind != 'closed')) AS open_cases,
    toInt64(countIf(status_kind != 'closed' AND overdue > 0)) AS overdue_cases
FROM
(
    SELECT case_id, grid_id, status_kind
    FROM
    (
        SELECT
            case_id,
            argMinMerge(grid_id_state) AS grid_id,
            minIfMerge(opened_ms_state) AS opened_ms,
            argMaxIfMerge(status_kind_state) AS status_kind
        FROM ({_case_figures}) AS merged
        GROUP BY case_id
    )
    WHERE grid_id != '' AND opened_ms >= %(start_ms)s AND opened_ms < %(end_ms)s
) AS cases
ANY LEFT JOIN
(
    SELECT case_id, count() AS overdue
    FROM {db}.breaches FINAL
    WHERE kind != 'warning' AND breach_type IN ('accept_overdue', 'resolve_overdue', 'final_overdue')
    GROUP BY case_id
) AS overdue_cases USING case_id
GROUP BY grid_id
ORDER BY grid_id
