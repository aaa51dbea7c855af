-- ranking: the monthly ranking of grids, communities, streets or departments on the 12345 "three rates", each unit on
-- the cases it held and charged with the failures of its own holding.
--
-- Parameters
--   start_ms, end_ms  the month, as [start, end) epoch ms (local midnights, computed by sinks/audit.py)
--   as_of_ms          only events and breaches before this instant count (pin it to reproduce a ranking)
--   by                'grid', 'community', 'street' or 'department': the tier of the units ranked
--   min_cases         units that held fewer cases are listed with rank NULL
--   policy_versions, unsatisfied_max   each SLA policy version and its unsatisfied_rating_max (parallel arrays;
--                     a version not listed counts only its unsatisfied_rating breaches)
--   scored            1 when the ranking's policy has a `ranking` section (streams/domain/sla.py RankingRules), else 0
--   w_response, w_resolution, w_satisfaction, w_on_time   its weights in basis points (summing to 10000; 0 when unscored)
--
-- Which holdings: the fragment sinks/queries/_month_holdings.sql (spliced by sinks/audit.py for `{_month_holdings}`
-- here, in ranking_provenance.sql, ranking_rules.sql and dashboard_trend_on_time.sql): each case opened in the month
-- (before as_of) with each unit of tier `by` that held it (a case event names it as the holder after the event), and
-- that holding's own figures. A case a grid held and then its community counts for both; a department-owned case a
-- grid handled counts for the grid only. Case figures come from the fragment _case_figures.sql (the case log folded
-- per case and holder, as of as_of; duplicate-insensitive), breaches are read with FINAL: a copied row counts once.
--
-- Per holding (unit U, case C; events before as_of whose holder after them is U, breaches charged to U):
--   held from      the first event naming U as holder (its dispatch, escalation or transfer to U, or the opening)
--   accepted       U accepted C (an `accepted` event, U holding);  time to accept = U's first acceptance - held from
--   resolved       C is resolved (the fragment _case_is_resolved: its last `resolved` event comes after every
--                  `reopened`, `escalated`, `urged`, `criticized` and `referred` one) and U made that last resolution
--                  (the fragment _case_resolver: U's own last `resolved` is the case's); time to resolve = that
--                  resolution - held from
--   rated          C was rated while U held it; its rating is the latest of those
-- Failures are charged to the unit holding the case when they happened: breaches by responsible_unit_id (the holder
-- when the breach fired; every kind but 'warning' (breach, urging, criticism, referral), fired before as_of), which case late by the
-- fragment _case_overdue_counts, and ratings by the holder of the `rated` event:
--   responded in time  = accepted and no accept_overdue breach charged to U
--   resolved on time   = resolved and no resolve_overdue or final_overdue breach charged to U
--   unsatisfied        = rated, and its rating <= the case's policy's unsatisfied_rating_max or an unsatisfied_rating
--                        breach was charged to U;  satisfied = rated and not unsatisfied
--   urgings, criticisms, referrals = breach records of kind 'urging' (督办), 'criticism' (通报批评), 'referral' (问责)
--                        charged to U (none yet: 0)
--   breaches_<tier>    = breaches charged to U escalating the case to that tier; breaches_total = all of them
--
-- Figures per unit (n = cases held):
--   response_rate_pct    = responded in time / n
--   resolution_rate_pct  = resolved / n
--   on_time_rate_pct     = resolved on time / n
--   satisfaction_rate_pct= satisfied / rated (NULL when none rated)
--   score                = the composite score: sum of weight * rate over the weighted rates that have a value (a
--                          satisfaction rate with nothing rated has none), divided by the sum of those weights; NULL
--                          when unscored or when no weighted rate has a value
--   avg_accept_s, p90_accept_s      over accepted holdings, seconds     (NULL when none)
--   avg_resolve_h, p90_resolve_h    over resolved holdings, hours       (NULL when none)
-- Rounding, all in exact integer arithmetic, half up: a rate is 10000 * num / den rounded to an integer ("basis
-- points", intDiv(20000 * num + den, 2 * den)) and shown as a percent with 2 decimals; the score is computed from
-- those basis points and the weights' basis points, intDiv(2 * sum(w * r) + sum(w), 2 * sum(w)), shown likewise;
-- averages are rounded to whole seconds / hundredths of an hour. p90 is the nearest-rank percentile: the
-- ceil(0.9 * k)-th smallest of the k durations.
--
-- Rank: among units with at least min_cases cases, by score (higher first; a unit without one ranks below any
-- score; unscored rankings skip this key), then resolution rate, then satisfaction rate (none rated ranks below any
-- rating), then response rate, then on-time rate (all higher first, compared as basis points), then fewer breaches.
-- Units equal on all share a rank (competition ranking 1, 2, 2, 4). Rows are ordered by rank, unranked units last,
-- then unit_id.
SELECT
    unit_id,
    rank,
    received,
    responded,
    resolved,
    resolved_on_time,
    rated,
    satisfied,
    toDecimal64(response_bp, 2) / 100 AS response_rate_pct,
    toDecimal64(resolution_bp, 2) / 100 AS resolution_rate_pct,
    toDecimal64(on_time_bp, 2) / 100 AS on_time_rate_pct,
    if(rated = 0, NULL, toDecimal64(satisfaction_bp, 2) / 100) AS satisfaction_rate_pct,
    if(score_bp < 0, NULL, toDecimal64(score_bp, 2) / 100) AS score,
    if(accepted_n = 0, NULL, intDiv(2 * accept_sum_ms + 1000 * accepted_n, 2000 * greatest(accepted_n, 1))) AS avg_accept_s,
    if(accepted_n = 0, NULL, intDiv(accept_p90_ms + 500, 1000)) AS p90_accept_s,
    if(resolved = 0, NULL, toDecimal64(intDiv(200 * resolve_sum_ms + 3600000 * resolved, 7200000 * greatest(resolved, 1)), 2) / 100) AS avg_resolve_h,
    if(resolved = 0, NULL, toDecimal64(intDiv(200 * resolve_p90_ms + 3600000, 7200000), 2) / 100) AS p90_resolve_h,
    unsatisfied,
    urgings,
    criticisms,
    referrals,
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
        response_bp, resolution_bp, on_time_bp, satisfaction_bp, score_bp,
        accepted_n, accept_sum_ms, accept_p90_ms, resolve_sum_ms, resolve_p90_ms,
        unsatisfied, urgings, criticisms, referrals,
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
            groupArray(response_bp) AS response_bp_a,
            groupArray(resolution_bp) AS resolution_bp_a,
            groupArray(on_time_bp) AS on_time_bp_a,
            groupArray(satisfaction_bp) AS satisfaction_bp_a,
            groupArray(score_bp) AS score_bp_a,
            groupArray(accepted_n) AS accepted_n_a,
            groupArray(accept_sum_ms) AS accept_sum_ms_a,
            groupArray(accept_p90_ms) AS accept_p90_ms_a,
            groupArray(resolve_sum_ms) AS resolve_sum_ms_a,
            groupArray(resolve_p90_ms) AS resolve_p90_ms_a,
            groupArray(unsatisfied) AS unsatisfied_a,
            groupArray(urgings) AS urgings_a,
            groupArray(criticisms) AS criticisms_a,
            groupArray(referrals) AS referrals_a,
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
            -- Per unit: the rates in basis points, the score (-1: none) and the rank key (nothing here may be NULL:
            -- groupArray skips NULLs).
            SELECT
                *,
                if(%(scored)s = 0 OR score_weight = 0, toInt64(-1), toInt64(intDiv(2 * score_sum + score_weight, 2 * greatest(score_weight, 1)))) AS score_bp,
                (
                    if(%(scored)s = 0, toInt64(0), if(score_bp < 0, toInt64(1), -score_bp)),
                    -resolution_bp,
                    if(rated = 0, toInt64(1), -satisfaction_bp),
                    -response_bp,
                    -on_time_bp,
                    breaches_total
                ) AS rank_key
            FROM
            (
                SELECT
                    *,
                    %(w_response)s * response_bp + %(w_resolution)s * resolution_bp + %(w_on_time)s * on_time_bp
                        + if(rated = 0, 0, %(w_satisfaction)s * satisfaction_bp) AS score_sum,
                    %(w_response)s + %(w_resolution)s + %(w_on_time)s + if(rated = 0, 0, %(w_satisfaction)s) AS score_weight
                FROM
                (
                    SELECT
                        *,
                        toInt64(intDiv(20000 * responded + received, 2 * received)) AS response_bp,
                        toInt64(intDiv(20000 * resolved + received, 2 * received)) AS resolution_bp,
                        toInt64(intDiv(20000 * resolved_on_time + received, 2 * received)) AS on_time_bp,
                        toInt64(intDiv(20000 * satisfied + rated, 2 * greatest(rated, 1))) AS satisfaction_bp
                    FROM
                    (
                        -- Per unit: integer counters.
                        SELECT
                            unit_id,
                            toInt64(count()) AS received,
                            toInt64(countIf(accepted AND accept_overdue = 0)) AS responded,
                            toInt64(countIf(resolved_here)) AS resolved,
                            toInt64(countIf(resolved_here AND resolve_overdue = 0)) AS resolved_on_time,
                            toInt64(countIf(is_rated)) AS rated,
                            toInt64(countIf(is_rated AND NOT is_unsatisfied)) AS satisfied,
                            toInt64(countIf(is_unsatisfied)) AS unsatisfied,
                            toInt64(countIf(accepted)) AS accepted_n,
                            toInt64(sumIf(first_accepted_ms - held_from_ms, accepted)) AS accept_sum_ms,
                            toInt64(arraySort(groupArrayIf(first_accepted_ms - held_from_ms, accepted))[greatest(intDiv(9 * countIf(accepted) + 9, 10), 1)]) AS accept_p90_ms,
                            toInt64(sumIf(last_resolved_ms - held_from_ms, resolved_here)) AS resolve_sum_ms,
                            toInt64(arraySort(groupArrayIf(last_resolved_ms - held_from_ms, resolved_here))[greatest(intDiv(9 * countIf(resolved_here) + 9, 10), 1)]) AS resolve_p90_ms,
                            toInt64(sum(urging_count)) AS urgings,
                            toInt64(sum(criticism_count)) AS criticisms,
                            toInt64(sum(referral_count)) AS referrals,
                            toInt64(sum(to_community)) AS breaches_community,
                            toInt64(sum(to_street)) AS breaches_street,
                            toInt64(sum(to_department)) AS breaches_department,
                            toInt64(sum(to_supervision)) AS breaches_supervision,
                            toInt64(sum(to_discipline)) AS breaches_discipline,
                            toInt64(sum(breach_count)) AS breaches_total
                        FROM
                        (
                            -- Per holding, with the breach records charged to it (urgings and criticisms among them).
                            SELECT
                                case_id, unit_id, held_from_ms, accepted, first_accepted_ms, resolved_here, last_resolved_ms, is_rated,
                                is_rated AND (rating <= transform(policy_version, %(policy_versions)s, %(unsatisfied_max)s, 0)
                                              OR unsatisfied_breaches > 0) AS is_unsatisfied,
                                accept_overdue, resolve_overdue, referral_count, urging_count, criticism_count,
                                to_community, to_street, to_department, to_supervision, to_discipline, breach_count
                            FROM
                            (
                                -- Per holding: its own figures, and whether the case's resolution is its.
                                SELECT
                                    case_id, unit_id, held_from_ms, accepted, first_accepted_ms,
                                    resolved_here, last_resolved_ms, is_rated, rating, policy_version
                                FROM ({_month_holdings}) AS holding_events
                            ) AS holdings
                            ANY LEFT JOIN
                            (
                                SELECT
                                    {_case_overdue_counts},
                                    responsible_unit_id AS unit_id,
                                    countIf(breach_type = 'unsatisfied_rating') AS unsatisfied_breaches,
                                    countIf(kind = 'referral') AS referral_count,
                                    countIf(kind = 'urging') AS urging_count,
                                    countIf(kind = 'criticism') AS criticism_count,
                                    countIf(tier = 'community') AS to_community,
                                    countIf(tier = 'street') AS to_street,
                                    countIf(tier = 'department') AS to_department,
                                    countIf(tier = 'supervision') AS to_supervision,
                                    countIf(tier = 'discipline') AS to_discipline,
                                    count() AS breach_count
                                FROM {db}.breaches FINAL
                                WHERE kind != 'warning' AND fired_at_ms < %(as_of_ms)s
                                GROUP BY case_id, unit_id
                            ) AS holding_breaches
                            USING (case_id, unit_id)
                        )
                        GROUP BY unit_id
                    )
                )
            )
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
        response_bp_a AS response_bp,
        resolution_bp_a AS resolution_bp,
        on_time_bp_a AS on_time_bp,
        satisfaction_bp_a AS satisfaction_bp,
        score_bp_a AS score_bp,
        accepted_n_a AS accepted_n,
        accept_sum_ms_a AS accept_sum_ms,
        accept_p90_ms_a AS accept_p90_ms,
        resolve_sum_ms_a AS resolve_sum_ms,
        resolve_p90_ms_a AS resolve_p90_ms,
        unsatisfied_a AS unsatisfied,
        urgings_a AS urgings,
        criticisms_a AS criticisms,
        referrals_a AS referrals,
        breaches_community_a AS breaches_community,
        breaches_street_a AS breaches_street,
        breaches_department_a AS breaches_department,
        breaches_supervision_a AS breaches_supervision,
        breaches_discipline_a AS breaches_discipline,
        breaches_total_a AS breaches_total,
        rank_key_a AS rank_key
)
ORDER BY isNull(rank), rank, unit_id
