-- open311_case_events: every stored event row of the cases of Open311 requests, WITHOUT FINAL, in chain order
-- (case, seq, then Kafka position), for the gateway (whistle/edges/gateway.py): it keeps the first copy of each
-- seq, folds them (streams.domain.case.fold) and asks the SLA engine for the pending deadline (expected_datetime)
-- and lists them as the request's notes. Same columns as _case_event_rows (sinks.audit.stored_case_event reads them).
-- Runs on ClickHouse 18.16 and modern servers.
-- Parameters: case_ids, a tuple of case ids.
{_case_event_rows}
WHERE case_id IN %(case_ids)s
ORDER BY case_id, seq, kafka_topic, kafka_partition, kafka_offset
