-- verify_ledger_rows: offsets the sink stored in {table} (per its ledger {offsets}) whose key has no row
-- there any more: a row lost or deleted after it was stored. A copy collapsed into its twin by a merge
-- still has its key, and is not listed. {key} is the table's business key column.
-- Parameters: limit.
SELECT kafka_topic, kafka_partition, kafka_offset, record_key
FROM {db}.{offsets}
WHERE record_key NOT IN (SELECT {key} FROM {db}.{table})
ORDER BY kafka_topic, kafka_partition, kafka_offset
LIMIT %(limit)s
