-- breaches: SLA breaches and referrals (and, on request, warnings), deduplicated (FINAL).
--
-- Parameters (an empty string / the full range means "any"):
--   tier              tier the case escalated to ('' = any)
--   unit              responsible_unit_id, the unit that was responsible when it fired ('' = any)
--   from_ms, to_ms    fired_at in [from_ms, to_ms)
--   include_warnings  1 to list warnings too, 0 for breaches and referrals only
-- Order: fired_at, then breach_id.
SELECT
    breach_id,
    case_id,
    kind,
    breach_type,
    tier,
    deadline_ms,
    fired_at_ms,
    toString(toDateTime(intDiv(fired_at_ms, 1000), 'UTC')) AS fired_at_utc,
    overdue_ms,
    responsible_unit_id,
    escalation_target_unit_id,
    policy_version,
    category,
    urgency,
    street_id,
    department_id,
    summary,
    kafka_topic,
    kafka_partition,
    kafka_offset
FROM {db}.breaches FINAL
WHERE (%(tier)s = '' OR tier = %(tier)s)
  AND (%(unit)s = '' OR responsible_unit_id = %(unit)s)
  AND fired_at_ms >= %(from_ms)s AND fired_at_ms < %(to_ms)s
  AND (%(include_warnings)s = 1 OR kind != 'warning')
ORDER BY fired_at_ms, breach_id
