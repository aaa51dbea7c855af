-- case_timeline: everything that happened to one case, in order.
--
-- Parameter: case_id.
-- Rows: every case event (record 'case_event': reports and their channel, dispatch, acceptance,
-- transfers with who returned it and why, escalations, resolution, rating...) and every SLA record
-- (record 'sla': warnings, breaches, referrals), deduplicated (FINAL).
-- Columns mean, for a case event / an SLA record:
--   kind       event kind                  / '<kind>:<breach_type>', e.g. 'breach:accept_overdue'
--   unit_id    the unit that acted         / the unit responsible when it fired
--   assignee   unit responsible afterwards / unit the case escalates to
--   tier       tier of the assignee        / tier escalated to (warnings: current tier)
--   reason     reason given                / the one-line summary
--   ref_id     cause_id (report, action, breach or tick id) / breach_id
-- Order: time, then seq; an SLA record goes right before the event it caused (the escalation whose
-- cause_id is its breach_id), so an unsatisfied rating, its breach and the escalation read in that order;
-- an SLA record that caused no event (a warning) comes first among rows of its millisecond.
SELECT
    at_ms,
    toString(toDateTime(intDiv(at_ms, 1000), 'UTC')) AS at_utc,
    record,
    seq,
    kind,
    unit_id,
    assignee,
    tier,
    source,
    report_id,
    reason,
    note,
    rating,
    ref_id,
    kafka_topic,
    kafka_partition,
    kafka_offset
FROM
(
    SELECT
        at_ms,
        seq AS order_seq,
        1 AS record_order,
        'case_event' AS record,
        toNullable(seq) AS seq,
        kind,
        actor_unit_id AS unit_id,
        toNullable(assignee_unit_id) AS assignee,
        assignee_tier AS tier,
        source,
        report_id,
        reason,
        note,
        rating,
        cause_id AS ref_id,
        kafka_topic,
        kafka_partition,
        kafka_offset
    FROM {db}.case_events FINAL
    WHERE case_id = %(case_id)s

    UNION ALL

    SELECT
        fired_at_ms AS at_ms,
        caused_seq AS order_seq,
        0 AS record_order,
        'sla' AS record,
        CAST(NULL AS Nullable(UInt32)) AS seq,
        concat(kind, ':', breach_type) AS kind,
        toNullable(responsible_unit_id) AS unit_id,
        escalation_target_unit_id AS assignee,
        tier,
        CAST(NULL AS Nullable(String)) AS source,
        CAST(NULL AS Nullable(String)) AS report_id,
        toNullable(summary) AS reason,
        CAST(NULL AS Nullable(String)) AS note,
        CAST(NULL AS Nullable(UInt8)) AS rating,
        breach_id AS ref_id,
        kafka_topic,
        kafka_partition,
        kafka_offset
    FROM
    (
        SELECT *
        FROM {db}.breaches FINAL
        WHERE case_id = %(case_id)s
    ) AS case_breaches
    ANY LEFT JOIN
    (
        SELECT cause_id AS breach_id, min(seq) AS caused_seq
        FROM {db}.case_events FINAL
        WHERE case_id = %(case_id)s
        GROUP BY cause_id
    ) AS caused USING breach_id
)
ORDER BY at_ms, order_seq, record_order, ref_id
