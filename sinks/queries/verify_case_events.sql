-- verify_case_events: every stored case event row of one bucket of cases, WITHOUT FINAL (copies and
-- altered rows must be seen), in chain order, for the hash-chain check in sinks/audit.py.
-- Cases are split into `buckets` by cityHash64(case_id) so each pass holds a bounded share in memory.
-- Parameters: buckets, bucket (0 <= bucket < buckets).
{_case_event_rows}
WHERE cityHash64(case_id) %% %(buckets)s = %(bucket)s
ORDER BY case_id, seq, kafka_topic, kafka_partition, kafka_offset
