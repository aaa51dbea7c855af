-- verify_offset_duplicates: offsets of one topic/partition of {table} stored in more than one row
-- (read WITHOUT FINAL), lowest first, at most `limit` of them. Parameters: topic, partition, limit.
SELECT
    kafka_offset,
    count() AS copies
FROM {db}.{table}
WHERE kafka_topic = %(topic)s AND kafka_partition = %(partition)s
GROUP BY kafka_offset
HAVING count() > 1
ORDER BY kafka_offset
LIMIT %(limit)s
