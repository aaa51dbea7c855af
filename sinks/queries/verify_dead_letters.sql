-- verify_dead_letters: the dead letters of a period, per original topic/partition and why, for `whistle audit verify`
-- (sinks/audit.py `dead_letter_findings`). Runs on ClickHouse 18.16 and modern servers. Read WITHOUT FINAL:
-- a redelivered dead letter is counted once by its original offset (uniqExact).
--
-- Parameters: from_ms, to_ms (failed_ms window, epoch ms, [from, to)).
-- reason: the `reason=` an error names in its message (streams' refusals: unknown_case, unsigned, ...), '' if none.
SELECT
    original_topic,
    original_partition,
    stage,
    error_class,
    extract(error_message, 'reason=([a-z_]+)') AS reason,
    uniqExact(original_offset) AS records
FROM {db}.dead_letters
WHERE failed_ms >= %(from_ms)s AND failed_ms < %(to_ms)s
GROUP BY original_topic, original_partition, stage, error_class, reason
ORDER BY original_topic, original_partition, stage, error_class, reason
