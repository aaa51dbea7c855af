-- example_cases: one case (the smallest id) of each kind the demo walks through; '' when a run has none:
--   merged   reports from two or more channels joined one case;
--   bounced  returned as "not ours" until the transfer limit escalated it to the units' common parent (not the
--            referred one, shown on its own);
--   late     a resolve deadline missed, and the resident rated the case unsatisfied (rating <= 2);
--   referred urged, criticised and referred to the discipline commission while its holder kept it.
SELECT example, example_case FROM
(
    SELECT 'merged' AS example, min(case_id) AS example_case FROM
    (
        SELECT case_id FROM {db}.case_events FINAL
        WHERE kind IN ('opened', 'report_merged')
        GROUP BY case_id
        HAVING uniqExact(source) >= 2
    )
    UNION ALL
    SELECT 'referred' AS example, min(case_id) AS example_case FROM {db}.case_events FINAL WHERE kind = 'referred'
    UNION ALL
    SELECT 'bounced' AS example, min(case_id) AS example_case FROM {db}.breaches FINAL
    WHERE breach_type = 'transfer_limit' AND case_id NOT IN (SELECT case_id FROM {db}.case_events FINAL WHERE kind = 'referred')
    UNION ALL
    SELECT 'late' AS example, min(case_id) AS example_case FROM {db}.case_events FINAL
    WHERE kind = 'rated' AND rating <= 2
      AND case_id IN (SELECT case_id FROM {db}.breaches FINAL WHERE breach_type = 'resolve_overdue')
)
ORDER BY example
