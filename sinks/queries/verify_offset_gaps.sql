-- verify_offset_gaps: the missing offset ranges [first_missing, last_missing] between the lowest and
-- highest offset stored for one topic/partition of {table}, lowest first, at most `limit` of them.
-- Parameters: topic, partition, limit.
SELECT
    gap.1 AS first_missing,
    gap.2 AS last_missing
FROM
(
    SELECT arraySort(groupUniqArray(kafka_offset)) AS offsets
    FROM {db}.{table}
    WHERE kafka_topic = %(topic)s AND kafka_partition = %(partition)s
)
ARRAY JOIN
    arrayFilter(g -> g.2 >= g.1, arrayMap((offset, step) -> (offset - step + 1, offset - 1), offsets, arrayDifference(offsets))) AS gap
ORDER BY first_missing
LIMIT %(limit)s
