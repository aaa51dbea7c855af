-- ranking_rules: the content of the rules a ranking's figures were decided with, from the rules registry
-- (rule_files, streams/domain/rules.py): each SLA policy version its cases were judged by, with the SHA-256 the
-- registry bound to it, and each business-calendar edition that counted their breaches' deadlines.
--
-- Parameters: start_ms, end_ms, as_of_ms, by, as ranking.sql; the same holdings' cases (`{_month_holdings}`).
-- A policy the registry does not hold (rows stored before it existed) is listed with an empty sha256.
SELECT rule_kind AS kind, rule_name AS name, rule_sha256 AS sha256
FROM
(  -- inner names differ from the tables' columns: ClickHouse lets an alias shadow a column in WHERE
    SELECT 'policy' AS rule_kind, policy_version AS rule_name, registered AS rule_sha256
    FROM
    (
        SELECT DISTINCT policy_version
        FROM {db}.case_events
        WHERE at_ms < %(as_of_ms)s AND case_id IN (SELECT case_id FROM ({_month_holdings}))
    ) AS judged
    ANY LEFT JOIN
    (
        SELECT name AS policy_version, any(sha256) AS registered
        FROM {db}.rule_files
        WHERE kind = 'policy'
        GROUP BY name
    ) AS registry USING policy_version

    UNION ALL

    SELECT 'calendar_edition' AS rule_kind, '' AS rule_name, assumeNotNull(calendar_sha256) AS rule_sha256
    FROM {db}.breaches
    WHERE kind != 'warning' AND fired_at_ms < %(as_of_ms)s AND isNotNull(calendar_sha256)
      AND case_id IN (SELECT case_id FROM ({_month_holdings}))
    GROUP BY calendar_sha256
)
ORDER BY rule_kind, rule_name, rule_sha256
