-- verify_anchor_entries: what the store holds of one case-events partition, as the anchored digest counts it
-- (sinks/anchor.py): per offset in order, the stored case event's hash (found through the offset ledger, since a
-- merge may collapse a re-emitted copy into its twin), or for a record the sink dead-lettered the SHA-256 of its
-- bytes. Read WITHOUT FINAL; an offset the ledger lacks is simply absent (verify names it).
-- Parameters: topic (the case-events topic), partition.
SELECT kafka_offset, entry
FROM
(
    SELECT kafka_offset, hash AS entry
    FROM
    (
        SELECT kafka_offset, record_key
        FROM {db}.case_event_offsets
        WHERE kafka_topic = %(topic)s AND kafka_partition = %(partition)s
    ) AS ledgered
    ANY LEFT JOIN
    (
        SELECT event_id AS record_key, any(hash) AS hash
        FROM {db}.case_events
        WHERE kafka_topic = %(topic)s AND kafka_partition = %(partition)s
        GROUP BY event_id
    ) AS stored USING record_key
    UNION ALL
    SELECT original_offset AS kafka_offset,
           ifNull(original_value_sha256, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855') AS entry  -- a tombstone: SHA-256 of no bytes
    FROM {db}.dead_letters
    WHERE original_topic = %(topic)s AND original_partition = %(partition)s
)
ORDER BY kafka_offset
