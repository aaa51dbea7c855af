-- dashboard_case_search: cases matching the dashboard's search form, from the case log folded per case
-- (_case_figures.sql over migration 007's table, as of as_of_ms), with migration 003's case_state columns and meaning
-- (status: the last status-changing event's kind, an escalation dispatching again; times NULL without such an event).
--
-- Parameters (an empty string / the full range means "any"):
--   case_id     exact case id ('' = any)
--   street      street_id of the case
--   grid        grid_id of the case
--   category    category code
--   status      current status (streams.domain.case.Status), or 'open' for every status but closed
--   start_ms, end_ms  opened in [start_ms, end_ms)
--   as_of_ms    only events before this instant count (the dashboard: every event)
--   limit       at most this many rows
--
-- One row per case; `breaches` counts its breaches and referrals (not warnings, FINAL), `overdue` those of
-- breach_type accept_overdue, resolve_overdue or final_overdue. Order: newest opened first, then case_id.
SELECT
    case_id,
    status,
    category,
    urgency,
    street_id,
    community_id,
    grid_id,
    department_id,
    assignee_unit_id,
    assignee_tier,
    opened_ms,
    accepted_ms,
    resolved_ms,
    closed_ms,
    rating,
    transfers,
    escalations,
    reopens,
    toInt64(breaches) AS breaches,
    toInt64(overdue) AS overdue
FROM
(
    -- Every column, for the cases found (below): the other cases' states are read but not merged.
    SELECT
        case_id,
        argMaxIfMerge(status_kind_state) AS status_kind,
        if(status_kind = 'escalated', 'dispatched', status_kind) AS status,
        argMinMerge(category_state) AS category,
        argMaxMerge(current_urgency_state) AS urgency,
        nullIf(argMinMerge(street_id_state), '') AS street_id,
        nullIf(argMinMerge(community_id_state), '') AS community_id,
        nullIf(argMinMerge(grid_id_state), '') AS grid_id,
        nullIf(argMinMerge(department_id_state), '') AS department_id,
        argMaxMerge(current_unit_id_state) AS assignee_unit_id,
        argMaxMerge(current_tier_state) AS assignee_tier,
        minIfMerge(opened_ms_state) AS opened_ms,
        if(maxMerge(accepted_state) = 1, toNullable(minIfMerge(first_accepted_ms_state)), NULL) AS accepted_ms,
        if(maxIfMerge(last_resolved_seq_state) > 0, toNullable(maxIfMerge(last_resolved_ms_state)), NULL) AS resolved_ms,
        if(maxIfMerge(last_closed_ms_state) > 0, toNullable(maxIfMerge(last_closed_ms_state)), NULL) AS closed_ms,
        if(maxMerge(rated_state) = 1, toNullable(argMaxIfMerge(last_rating_state)), NULL) AS rating,
        uniqExactIfMerge(transfers_state) AS transfers,
        uniqExactIfMerge(escalations_state) AS escalations,
        uniqExactIfMerge(reopens_state) AS reopens
    FROM ({_case_figures}) AS merged
    WHERE case_id IN
    (
        -- The cases found: only the states the form filters and sorts on are merged for every case.
        SELECT case_id
        FROM
        (
            SELECT
                case_id,
                argMaxIfMerge(status_kind_state) AS found_kind,
                if(found_kind = 'escalated', 'dispatched', found_kind) AS found_status,
                argMinMerge(category_state) AS found_category,
                argMinMerge(street_id_state) AS found_street_id,
                argMinMerge(grid_id_state) AS found_grid_id,
                minIfMerge(opened_ms_state) AS found_opened_ms
            FROM ({_case_figures}) AS merged
            WHERE %(case_id)s = '' OR case_id = %(case_id)s
            GROUP BY case_id
        )
        WHERE (%(street)s = '' OR found_street_id = %(street)s)
          AND (%(grid)s = '' OR found_grid_id = %(grid)s)
          AND (%(category)s = '' OR found_category = %(category)s)
          AND (%(status)s = '' OR found_status = %(status)s OR (%(status)s = 'open' AND found_status != 'closed'))
          AND found_opened_ms >= %(start_ms)s AND found_opened_ms < %(end_ms)s
        ORDER BY found_opened_ms DESC, case_id
        LIMIT %(limit)s
    )
    GROUP BY case_id
) AS found
ANY LEFT JOIN
(
    SELECT
        case_id,
        count() AS breaches,
        countIf(breach_type IN ('accept_overdue', 'resolve_overdue', 'final_overdue')) AS overdue
    FROM {db}.breaches FINAL
    WHERE kind != 'warning'
    GROUP BY case_id
) AS case_breaches USING case_id
ORDER BY opened_ms DESC, case_id
LIMIT %(limit)s
