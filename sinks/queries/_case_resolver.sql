-- _case_resolver: a fragment, not a query. Who resolved a case, in one place: the holder after its last `resolved`
-- event. One select-list item, `resolver`, over the rows of {_case_figures} grouped by case_id, spliced where a query
-- says `{_case_resolver}` (_month_holdings.sql, for ranking.sql and dashboard_trend_on_time.sql). With
-- `{_case_is_resolved}` it says whether a unit's holding is resolved: the case is resolved and its resolver is that
-- unit (a resolution reopened, or escalated after an unsatisfied rating, is no unit's).
argMaxIfMerge(resolver_unit_id_state) AS resolver
