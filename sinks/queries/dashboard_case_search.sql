-- dashboard_case_search: cases matching the dashboard's search form, from the case_state view (migration 003).
--
-- Parameters (an empty string / the full range means "any"):
--   case_id     exact case id ('' = any)
--   street      street_id of the case
--   grid        grid_id of the case
--   category    category code
--   status      current status (streams.domain.case.Status), or 'open' for every status but closed
--   from_ms, to_ms  opened in [from_ms, to_ms)
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
    SELECT *
    FROM {db}.case_state
    WHERE (%(case_id)s = '' OR case_id = %(case_id)s)
      AND (%(street)s = '' OR ifNull(street_id, '') = %(street)s)
      AND (%(grid)s = '' OR ifNull(grid_id, '') = %(grid)s)
      AND (%(category)s = '' OR category = %(category)s)
      AND (%(status)s = '' OR status = %(status)s OR (%(status)s = 'open' AND status != 'closed'))
      AND opened_ms >= %(from_ms)s AND opened_ms < %(to_ms)s
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
