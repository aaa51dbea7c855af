-- _case_overdue_counts: a fragment, not a query. Which breaches make a case late, in one place: the select
-- list (case_id, accept_overdue, resolve_overdue) over {db}.breaches FINAL grouped by case_id (ranking.sql and
-- dashboard_trend_on_time.sql also by responsible_unit_id: each holder's own lateness), spliced where a query says
-- `{_case_overdue_counts}` (ranking.sql, dashboard_overview.sql, dashboard_trend_on_time.sql). A resolve deadline
-- missed into the discipline commission (final_overdue) is a late resolution.
case_id,
countIf(breach_type = 'accept_overdue') AS accept_overdue,
countIf(breach_type IN ('resolve_overdue', 'final_overdue')) AS resolve_overdue
