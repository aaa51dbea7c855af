-- verify_offsets: per Kafka topic/partition stored in {table}, how many rows and distinct offsets it
-- holds and their range. Read WITHOUT FINAL on purpose: a redelivered record inserted twice is two rows
-- until a merge removes one, and it must be seen. Gap-free and duplicate-free means
-- row_count = offset_count = max_offset - min_offset + 1.
-- {table} is one of the audited tables (raw_events, case_events, breaches, dead_letters).
SELECT
    kafka_topic,
    kafka_partition,
    count() AS row_count,
    uniqExact(kafka_offset) AS offset_count,
    min(kafka_offset) AS min_offset,
    max(kafka_offset) AS max_offset
FROM {db}.{table}
GROUP BY kafka_topic, kafka_partition
ORDER BY kafka_topic, kafka_partition
