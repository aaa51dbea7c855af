-- verify_stored_ranges: per Kafka topic/partition, what ClickHouse accounts for, to compare with Kafka's
-- own offsets (sinks/audit.py `compare_ranges`): how many distinct offsets are stored and their range,
-- over every audited table (case events and breaches through their offset ledger, migration 004, since a
-- merge may collapse a re-emitted copy), and the lowest original offset of the partition's dead letters
-- (a record no stage could process has a dead letter in place of its row). Read WITHOUT FINAL.
-- stored_offsets = 0: nothing of the partition is stored (its stored_min/stored_max are then meaningless);
-- dead_letters = 0: no dead letter of it (dead_min meaningless). No parameters.
SELECT
    kafka_topic,
    kafka_partition,
    uniqExactIf(kafka_offset, dead = 0) AS stored_offsets,
    minIf(kafka_offset, dead = 0) AS stored_min,
    maxIf(kafka_offset, dead = 0) AS stored_max,
    uniqExactIf(kafka_offset, dead = 1) AS dead_letters,
    minIf(kafka_offset, dead = 1) AS dead_min
FROM
(
    SELECT kafka_topic, kafka_partition, kafka_offset, toUInt8(0) AS dead FROM {db}.raw_events
    UNION ALL
    SELECT kafka_topic, kafka_partition, kafka_offset, toUInt8(0) AS dead FROM {db}.case_event_offsets
    UNION ALL
    SELECT kafka_topic, kafka_partition, kafka_offset, toUInt8(0) AS dead FROM {db}.breach_offsets
    UNION ALL
    SELECT kafka_topic, kafka_partition, kafka_offset, toUInt8(0) AS dead FROM {db}.dead_letters
    UNION ALL
    SELECT kafka_topic, kafka_partition, kafka_offset, toUInt8(0) AS dead FROM {db}.rule_files
    UNION ALL
    SELECT kafka_topic, kafka_partition, kafka_offset, toUInt8(0) AS dead FROM {db}.chain_anchors
    UNION ALL
    SELECT original_topic AS kafka_topic, original_partition AS kafka_partition, original_offset AS kafka_offset, toUInt8(1) AS dead
    FROM {db}.dead_letters
)
GROUP BY kafka_topic, kafka_partition
ORDER BY kafka_topic, kafka_partition
