-- dashboard_trend_breaches: breaches, urgings, criticisms and referrals per day and tier (the tier the case escalated to), for the
-- dashboard's trends page and `whistle audit trends`. Runs on ClickHouse 18.16 and modern servers.
--
-- Parameters
--   from_ms, to_ms  fired_at in [from_ms, to_ms) (a month: local midnights, sinks/audit.py month_bounds)
--   tz              the city's time zone: a day is a calendar day there
-- Which records: every kind but 'warning' (breaches, urgings, criticisms, referrals), read with FINAL (a copied record counts once):
-- exactly what `whistle audit breaches --from --to` lists (breaches.sql), so a month's counts sum to its rows.
-- Days without any breach have no row; tiers in ladder order within a day.
SELECT
    toString(toDate(toDateTime(intDiv(fired_at_ms, 1000), %(tz)s))) AS day,
    tier,
    toInt64(countIf(kind = 'breach')) AS breaches,
    toInt64(countIf(kind = 'urging')) AS urgings,
    toInt64(countIf(kind = 'criticism')) AS criticisms,
    toInt64(countIf(kind = 'referral')) AS referrals
FROM {db}.breaches FINAL
WHERE kind IN ('breach', 'urging', 'criticism', 'referral')
  AND fired_at_ms >= %(from_ms)s AND fired_at_ms < %(to_ms)s
GROUP BY day, tier
ORDER BY day, indexOf(['grid', 'community', 'street', 'department', 'supervision', 'discipline'], tier)
