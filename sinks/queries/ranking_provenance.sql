-- ranking_provenance: where a ranking's figures come from, so an auditor can re-derive them from the log.
--
-- Parameters: start_ms, end_ms, as_of_ms, by — the same as ranking.sql, and the same holdings, shared with it:
-- `{_month_holdings}` is the fragment sinks/queries/_month_holdings.sql (each case opened in [start_ms, end_ms)
-- before as_of_ms with each unit of tier `by` that held it); its cases are read here.
--
-- One row per source table and Kafka topic/partition: the offset range and number of rows read (case events before
-- as_of; breach records the ranking counts — breaches, referrals, urgings, criticisms — fired before as_of), and the
-- SLA policy versions those rows were judged by (sorted, comma-separated). Rows are counted WITHOUT FINAL: a copy
-- redelivered at the same offset counts twice here, and `verify` reports it. sinks/audit.py adds the as-of used.
SELECT
    source_table,
    kafka_topic,
    kafka_partition,
    min_offset,
    max_offset,
    row_count,
    policy_versions
FROM
(
    SELECT
        'case_events' AS source_table,
        kafka_topic,
        kafka_partition,
        min(kafka_offset) AS min_offset,
        max(kafka_offset) AS max_offset,
        count() AS row_count,
        arrayStringConcat(arraySort(groupUniqArray(policy_version)), ',') AS policy_versions
    FROM {db}.case_events
    WHERE at_ms < %(as_of_ms)s
      AND case_id IN (SELECT case_id FROM ({_month_holdings}))
    GROUP BY kafka_topic, kafka_partition

    UNION ALL

    SELECT
        'breaches' AS source_table,
        kafka_topic,
        kafka_partition,
        min(kafka_offset) AS min_offset,
        max(kafka_offset) AS max_offset,
        count() AS row_count,
        arrayStringConcat(arraySort(groupUniqArray(policy_version)), ',') AS policy_versions
    FROM {db}.breaches
    WHERE kind != 'warning' AND fired_at_ms < %(as_of_ms)s
      AND case_id IN (SELECT case_id FROM ({_month_holdings}))
    GROUP BY kafka_topic, kafka_partition
)
ORDER BY source_table, kafka_topic, kafka_partition
