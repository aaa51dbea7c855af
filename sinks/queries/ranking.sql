-- ranking: the monthly ranking of streets or departments on the 12345 "three rates".
--
-- Parameters
--   start_ms, end_ms  the month, as [start, end) epoch ms (local midnights, computed by sinks/audit.py)
--   as_of_ms          only events and breaches before this instant count (pin it to reproduce a ranking)
--   by                'street' or 'department'
--   min_cases         units that received fewer cases are listed with rank NULL
--
-- Which cases: every case whose `opened` event falls in the month (and before as_of). A case belongs
-- to the street / owning department recorded on its opened event (the first responsible unit stays
-- responsible, 12345 practice). Cases with no such unit (dispatch desk, no owning department) are
-- not ranked. This selection lives in ONE place, the fragment sinks/queries/_month_cases.sql, which
-- sinks/audit.py splices in for `{_month_cases}` here and in ranking_provenance.sql (so the two always
-- count the same cases). Duplicated rows are invisible: case_events and breaches are read with FINAL.
--
-- Per case (from case_events, before as_of):
--   accepted   : it has an `accepted` event;  time to accept = first accepted at - opened at
--   resolved   : its last `resolved` event comes after every `reopened` and `escalated` event
--                (a reopened case, or one escalated after an unsatisfied rating, is not resolved);
--                time to resolve = last resolved at - opened at
--   rated      : it has a `rated` event; its rating is the latest one
-- Breaches count only kind 'breach' or 'referral' (not warnings), fired before as_of:
--   responded in time  = accepted and no accept_overdue breach
--   resolved on time   = resolved and no resolve_overdue or final_overdue breach
--   breaches_<tier>    = breaches escalating the case to that tier; breaches_total = all of them
--
-- Figures per unit (n = cases received):
--   response_rate_pct    = responded in time / n
--   resolution_rate_pct  = resolved / n
--   on_time_rate_pct     = resolved on time / n
--   satisfaction_rate_pct= rated cases with rating >= 4 / rated cases (NULL when none rated)
--   avg_accept_s, p90_accept_s      over accepted cases, seconds     (NULL when none)
--   avg_resolve_h, p90_resolve_h    over resolved cases, hours       (NULL when none)
-- Rounding, all in exact integer arithmetic, half up: a rate is 10000 * num / den rounded to an
-- integer ("basis points", intDiv(20000 * num + den, 2 * den)) and shown as a percent with 2 decimals;
-- averages are rounded to whole seconds / hundredths of an hour. p90 is the nearest-rank percentile:
-- the ceil(0.9 * k)-th smallest of the k durations.
--
-- Rank: among units with at least min_cases cases, by resolution rate, then satisfaction rate (none
-- rated ranks below any rating), then response rate, then on-time rate (all higher first, compared
-- as the displayed basis points), then fewer breaches. Units equal on all five share a rank
-- (competition ranking 1, 2, 2, 4). Rows are ordered by rank, unranked units last, then unit_id.
SELECT
    unit_id,
    rank,
    received,
    responded,
    resolved,
    resolved_on_time,
    rated,
    satisfied,
    toDecimal64(intDiv(20000 * responded + received, 2 * received), 2) / 100 AS response_rate_pct,
    toDecimal64(intDiv(20000 * resolved + received, 2 * received), 2) / 100 AS resolution_rate_pct,
    toDecimal64(intDiv(20000 * resolved_on_time + received, 2 * received), 2) / 100 AS on_time_rate_pct,
    if(rated = 0, NULL, toDecimal64(intDiv(20000 * satisfied + rated, 2 * greatest(rated, 1)), 2) / 100) AS satisfaction_rate_pct,
    if(accepted_n = 0, NULL, intDiv(2 * accept_sum_ms + 1000 * accepted_n, 2000 * greatest(accepted_n, 1))) AS avg_accept_s,
    if(accepted_n = 0, NULL, intDiv(accept_p90_ms + 500, 1000)) AS p90_accept_s,
    if(resolved = 0, NULL, toDecimal64(intDiv(200 * resolve_sum_ms + 3600000 * resolved, 7200000 * greatest(resolved, 1)), 2) / 100) AS avg_resolve_h,
    if(resolved = 0, NULL, toDecimal64(intDiv(200 * resolve_p90_ms + 3600000, 7200000), 2) / 100) AS p90_resolve_h,
    breaches_community,
    breaches_street,
    breaches_department,
    breaches_supervision,
    breaches_discipline,
    breaches_total
FROM
(
    -- One row per unit again, each with the keys of all ranked units, so a rank is a count.
    SELECT
        unit_id, received, responded, resolved, resolved_on_time, rated, satisfied,
        accepted_n, accept_sum_ms, accept_p90_ms, resolve_sum_ms, resolve_p90_ms,
        breaches_community, breaches_street, breaches_department, breaches_supervision, breaches_discipline, breaches_total,
        if(received >= %(min_cases)s, toNullable(1 + arrayCount(other -> other < rank_key, ranked_keys)), NULL) AS rank
    FROM
    (
        SELECT
            groupArray(unit_id) AS unit_id_a,
            groupArray(received) AS received_a,
            groupArray(responded) AS responded_a,
            groupArray(resolved) AS resolved_a,
            groupArray(resolved_on_time) AS resolved_on_time_a,
            groupArray(rated) AS rated_a,
            groupArray(satisfied) AS satisfied_a,
            groupArray(accepted_n) AS accepted_n_a,
            groupArray(accept_sum_ms) AS accept_sum_ms_a,
            groupArray(accept_p90_ms) AS accept_p90_ms_a,
            groupArray(resolve_sum_ms) AS resolve_sum_ms_a,
            groupArray(resolve_p90_ms) AS resolve_p90_ms_a,
            groupArray(breaches_community) AS breaches_community_a,
            groupArray(breaches_street) AS breaches_street_a,
            groupArray(breaches_department) AS breaches_department_a,
            groupArray(breaches_supervision) AS breaches_supervision_a,
            groupArray(breaches_discipline) AS breaches_discipline_a,
            groupArray(breaches_total) AS breaches_total_a,
            groupArray(rank_key) AS rank_key_a,
            groupArrayIf(rank_key, received >= %(min_cases)s) AS ranked_keys
        FROM
        (
            -- Per unit: integer counters only (groupArray skips NULLs, so nothing here may be NULL).
            SELECT
                unit_id,
                toInt64(count()) AS received,
                toInt64(countIf(accepted AND accept_overdue = 0)) AS responded,
                toInt64(countIf(is_resolved)) AS resolved,
                toInt64(countIf(is_resolved AND resolve_overdue = 0)) AS resolved_on_time,
                toInt64(countIf(is_rated)) AS rated,
                toInt64(countIf(is_rated AND rating >= 4)) AS satisfied,
                toInt64(countIf(accepted)) AS accepted_n,
                toInt64(sumIf(first_accepted_ms - opened_ms, accepted)) AS accept_sum_ms,
                toInt64(arraySort(groupArrayIf(first_accepted_ms - opened_ms, accepted))[greatest(intDiv(9 * countIf(accepted) + 9, 10), 1)]) AS accept_p90_ms,
                toInt64(sumIf(last_resolved_ms - opened_ms, is_resolved)) AS resolve_sum_ms,
                toInt64(arraySort(groupArrayIf(last_resolved_ms - opened_ms, is_resolved))[greatest(intDiv(9 * countIf(is_resolved) + 9, 10), 1)]) AS resolve_p90_ms,
                toInt64(sum(to_community)) AS breaches_community,
                toInt64(sum(to_street)) AS breaches_street,
                toInt64(sum(to_department)) AS breaches_department,
                toInt64(sum(to_supervision)) AS breaches_supervision,
                toInt64(sum(to_discipline)) AS breaches_discipline,
                toInt64(sum(breach_count)) AS breaches_total,
                (
                    -toInt64(intDiv(20000 * countIf(is_resolved) + count(), 2 * count())),
                    if(countIf(is_rated) = 0, toInt64(1),
                       -toInt64(intDiv(20000 * countIf(is_rated AND rating >= 4) + countIf(is_rated), 2 * greatest(countIf(is_rated), 1)))),
                    -toInt64(intDiv(20000 * countIf(accepted AND accept_overdue = 0) + count(), 2 * count())),
                    -toInt64(intDiv(20000 * countIf(is_resolved AND resolve_overdue = 0) + count(), 2 * count())),
                    toInt64(sum(breach_count))
                ) AS rank_key
            FROM
            (
                -- Per case.
                SELECT
                    case_id,
                    unit_id,
                    opened_ms,
                    accepted,
                    first_accepted_ms,
                    is_resolved,
                    last_resolved_ms,
                    is_rated,
                    rating,
                    accept_overdue,
                    resolve_overdue,
                    to_community,
                    to_street,
                    to_department,
                    to_supervision,
                    to_discipline,
                    breach_count
                FROM
                (
                    SELECT
                        case_id,
                        ifNull(anyIf(if(%(by)s = 'department', department_id, street_id), kind = 'opened'), '') AS unit_id,
                        minIf(at_ms, kind = 'opened') AS opened_ms,
                        countIf(kind = 'accepted') > 0 AS accepted,
                        minIf(at_ms, kind = 'accepted') AS first_accepted_ms,
                        {_case_is_resolved},
                        maxIf(at_ms, kind = 'resolved') AS last_resolved_ms,
                        countIf(kind = 'rated') > 0 AS is_rated,
                        ifNull(argMaxIf(rating, seq, kind = 'rated'), 0) AS rating
                    FROM {db}.case_events FINAL
                    WHERE at_ms < %(as_of_ms)s
                      AND case_id IN ({_month_cases})
                    GROUP BY case_id
                ) AS case_figures
                ANY LEFT JOIN
                (
                    SELECT
                        {_case_overdue_counts},
                        countIf(tier = 'community') AS to_community,
                        countIf(tier = 'street') AS to_street,
                        countIf(tier = 'department') AS to_department,
                        countIf(tier = 'supervision') AS to_supervision,
                        countIf(tier = 'discipline') AS to_discipline,
                        count() AS breach_count
                    FROM {db}.breaches FINAL
                    WHERE kind IN ('breach', 'referral') AND fired_at_ms < %(as_of_ms)s
                    GROUP BY case_id
                ) AS case_breaches
                USING case_id
            )
            GROUP BY unit_id
        )
    )
    ARRAY JOIN
        unit_id_a AS unit_id,
        received_a AS received,
        responded_a AS responded,
        resolved_a AS resolved,
        resolved_on_time_a AS resolved_on_time,
        rated_a AS rated,
        satisfied_a AS satisfied,
        accepted_n_a AS accepted_n,
        accept_sum_ms_a AS accept_sum_ms,
        accept_p90_ms_a AS accept_p90_ms,
        resolve_sum_ms_a AS resolve_sum_ms,
        resolve_p90_ms_a AS resolve_p90_ms,
        breaches_community_a AS breaches_community,
        breaches_street_a AS breaches_street,
        breaches_department_a AS breaches_department,
        breaches_supervision_a AS breaches_supervision,
        breaches_discipline_a AS breaches_discipline,
        breaches_total_a AS breaches_total,
        rank_key_a AS rank_key
)
ORDER BY isNull(rank), rank, unit_id
