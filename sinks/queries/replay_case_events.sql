-- replay_case_events: every stored copy of the case events of a period (by event time), for `whistle audit replay`
-- (sinks/replay.py), WITHOUT FINAL: an altered copy must be seen. Runs on ClickHouse 18.16 and modern servers.
-- Parameters: from_ms, to_ms (at_ms in [from_ms, to_ms)).
{_case_event_rows}
WHERE at_ms >= %(from_ms)s AND at_ms < %(to_ms)s
ORDER BY case_id, seq, kafka_topic, kafka_partition, kafka_offset
