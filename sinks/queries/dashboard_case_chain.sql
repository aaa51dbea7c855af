-- dashboard_case_chain: every stored event row of one case, WITHOUT FINAL (copies and altered rows must be
-- seen), in chain order, for the dashboard's per-event hash-chain check (whistle/edges/dashboard.py;
-- the same columns and order as verify_case_events.sql, which checks every case for `audit verify`).
-- Parameters: case_id.
SELECT
    event_id,
    case_id,
    seq,
    kind,
    at_ms,
    cause_id,
    actor_unit_id,
    assignee_unit_id,
    assignee_tier,
    category,
    urgency,
    district_id,
    street_id,
    community_id,
    grid_id,
    department_id,
    source,
    report_id,
    reason,
    note,
    rating,
    policy_version,
    prev_hash,
    hash,
    kafka_topic,
    kafka_partition,
    kafka_offset
FROM {db}.case_events
WHERE case_id = %(case_id)s
ORDER BY seq, kafka_topic, kafka_partition, kafka_offset
