-- dashboard_case_chain: every stored event row of one case, WITHOUT FINAL (copies and altered rows must be
-- seen), in chain order, for the dashboard's per-event hash-chain check (whistle/edges/dashboard.py;
-- the same columns and order as verify_case_events.sql, which checks every case for `audit verify`).
-- Parameters: case_id.
{_case_event_rows}
WHERE case_id = %(case_id)s
ORDER BY seq, kafka_topic, kafka_partition, kafka_offset
