-- verify_batches: per topic/partition, the offsets the sink recorded as inserted into {table}
-- (sink_batches, parameter table = the same table name) against what {table} holds. Offsets recorded
-- below table_min_offset or above table_max_offset were lost (a gap inside is verify_offset_gaps' job).
-- table_rows = 0 means the table holds nothing of that partition.
SELECT
    kafka_topic,
    kafka_partition,
    first_batch_offset,
    last_batch_offset,
    table_rows,
    table_min_offset,
    table_max_offset
FROM
(
    SELECT
        kafka_topic,
        kafka_partition,
        min(min_offset) AS first_batch_offset,
        max(max_offset) AS last_batch_offset
    FROM {db}.sink_batches
    WHERE table_name = %(table)s AND rows > 0
    GROUP BY kafka_topic, kafka_partition
) AS batches
ANY LEFT JOIN
(
    SELECT
        kafka_topic,
        kafka_partition,
        count() AS table_rows,
        min(kafka_offset) AS table_min_offset,
        max(kafka_offset) AS table_max_offset
    FROM {db}.{table}
    GROUP BY kafka_topic, kafka_partition
) AS stored
USING (kafka_topic, kafka_partition)
ORDER BY kafka_topic, kafka_partition
