-- _case_is_resolved: a fragment, not a query. When a case counts as resolved, in one place: its last `resolved`
-- event comes after every `reopened`, `escalated` and oversight (`urged`, `criticized`, `referred`) one (a reopened
-- case, or one escalated or urged after an unsatisfied rating, is not resolved; an urging before the resolution
-- does not undo it). One select-list item, `is_resolved`, over the rows of {_case_figures} grouped by case_id,
-- spliced where a query says `{_case_is_resolved}` (_month_holdings.sql for the ranking and the on-time trend,
-- dashboard_overview.sql, dashboard_trend_durations.sql), so the dashboard's figures and the ranking can never count
-- it differently.
maxIfMerge(last_resolved_seq_state) > greatest(greatest(maxIfMerge(last_reopened_seq_state), maxIfMerge(last_escalated_seq_state)),
                                         greatest(greatest(maxIfMerge(last_urged_seq_state), maxIfMerge(last_criticized_seq_state)),
                                                  maxIfMerge(last_referred_seq_state))) AS is_resolved
