-- replay_breaches: every stored copy of the breaches (warnings and referrals too) that fired in a period, for
-- `whistle audit replay` (sinks/replay.py), WITHOUT FINAL: an altered copy must be seen. Columns in the order of
-- the Breach record (streams.domain.sla.Breach). Runs on ClickHouse 18.16 and modern servers.
-- Parameters: from_ms, to_ms (fired_at_ms in [from_ms, to_ms)).
SELECT
    breach_id,
    case_id,
    kind,
    breach_type,
    tier,
    deadline_ms,
    fired_at_ms,
    overdue_ms,
    responsible_unit_id,
    escalation_target_unit_id,
    policy_version,
    category,
    urgency,
    street_id,
    department_id,
    summary,
    policy_sha256,
    calendar_sha256
FROM {db}.breaches
WHERE fired_at_ms >= %(from_ms)s AND fired_at_ms < %(to_ms)s
ORDER BY breach_id, kafka_topic, kafka_partition, kafka_offset
