-- _case_event_rows: a fragment, not a query. Every stored case event row's columns, WITHOUT FINAL (copies and
-- altered rows must be seen), in the order sinks/audit.py rebuilds CaseEvents from (the hash-chain checks of
-- `audit verify` and of the dashboard's timeline). Spliced by sinks/audit.py where a query says `{_case_event_rows}`.
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
