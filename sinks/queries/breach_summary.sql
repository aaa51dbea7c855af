-- breach_summary: warnings, breaches and referrals per tier whose deadline falls in [from_ms, to_ms),
-- deduplicated (FINAL), tiers in ladder order.
-- Parameters: from_ms, to_ms (epoch ms, UTC).
SELECT
    tier,
    countIf(kind = 'warning') AS warnings,
    countIf(kind = 'breach') AS breaches,
    countIf(kind = 'urging') AS urgings,
    countIf(kind = 'criticism') AS criticisms,
    countIf(kind = 'referral') AS referrals
FROM {db}.breaches FINAL
WHERE deadline_ms >= %(from_ms)s AND deadline_ms < %(to_ms)s
GROUP BY tier
ORDER BY indexOf(['grid', 'community', 'street', 'department', 'supervision', 'discipline'], tier)
