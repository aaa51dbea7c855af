-- _case_resolver: a fragment, not a query. Whether a unit's holding made a case's resolution, in one place: the
-- holder after the case's last `resolved` event is that unit, i.e. the holding's own last `resolved` seq
-- (`holding_resolved_seq`) is the case's (`case_resolved_seq`), both from {_case_figures}: a row's holder is the
-- holder after each of its events. One select-list item, `resolved_by_holder`, spliced where a query says
-- `{_case_resolver}` (_month_holdings.sql, for ranking.sql and dashboard_trend_on_time.sql). With `{_case_is_resolved}`
-- it says whether a unit's holding is resolved: the case is resolved and the unit made that resolution (a resolution
-- reopened, or escalated after an unsatisfied rating, is no unit's).
holding_resolved_seq > 0 AND holding_resolved_seq = case_resolved_seq AS resolved_by_holder
