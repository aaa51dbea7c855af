-- 007: case_figures, the case log folded per case, holder and month as the events arrive, so the dashboard's
-- figures over a month of a million cases read about one row per case instead of grouping its events.
--
-- WHY: every figure over cases (the overview's cohort, the ranking, the trends, the map, case search) groups the
-- month's case events by case with FINAL, which is seconds per request at a million cases. A materialized view
-- folds each inserted block into aggregate states; ClickHouse merges them in the background, and a query finishes
-- the merge (-Merge) over what is left. The log stays the source of truth: the table holds only what follows from
-- the events, the migration backfills it from them, and sinks/queries/_case_figures.sql derives the same states
-- from the events themselves for any case with events at or after a query's as-of (tests/test_case_figures.py
-- proves the stored and derived states agree).
--
-- One row per (case_id, holder_unit_id, holder_tier, event_month, policy_version): the events whose holder after them
-- is that unit (case_events.assignee_unit_id / assignee_tier, as ranking.sql's holdings), in the UTC month of at_ms
-- (the partition: a month's queries skip older ones, since no event of a case precedes its opening), judged by that
-- SLA policy version (a case keeps its version, so in practice one; a key column, read as a plain value, because a
-- string state costs more to merge than the key does to sort).
--
-- Duplicates: the sink delivers at least once, so an event may be inserted twice, and this migration's backfill
-- may repeat what the view already folded. Every state is insensitive to a repeated event: min, max, argMin and
-- argMax by seq, and counts as uniqExact of seq. No sum, no count().
--
-- Facts only, no rules: each state (named <fact>_state, read as <fact> with -Merge) is one kind's first or last seq
-- or time, or a count of them. When a case is resolved, who resolved it and what counts as late stay in the query
-- fragments (_case_is_resolved.sql, _case_resolver.sql), which read these states.
--   first_seq, last_seq            min and max seq;  held_from_ms  the first event's time (the holding's start)
--   opened_ms                      the `opened` event's time;  accepted, first_accepted_ms  whether and when first
--   last_resolved_seq, last_resolved_ms, last_closed_ms, last_<kind>_seq   the last such event (0 when none)
--   rated, last_rating             whether rated and the latest rating (by seq)
--   status_kind                    the kind of the last event that changes the status (migration 003's list)
--   transfers, escalations, reopens   numbers of such events (distinct seqs)
--   category ... department_id     the case's attributes from its first event (they never change; NULL as '')
--   current_unit_id, current_tier, current_urgency   the last event's holder and urgency
--
-- ClickHouse 18.16: no Nullable arguments to a -State function (ifNull first), and a state may not be named as a
-- column it reads (an alias is visible in the whole SELECT), hence the suffix.
-- Re-running is harmless: the table and view exist, and the backfill repeats states (see Duplicates).
CREATE TABLE IF NOT EXISTS {db}.case_figures
(
    case_id             String,
    holder_unit_id      String,
    holder_tier         String,
    event_month         UInt32,
    policy_version      String,
    first_seq_state           AggregateFunction(min, UInt32),
    last_seq_state            AggregateFunction(max, UInt32),
    held_from_ms_state        AggregateFunction(min, Int64),
    opened_ms_state           AggregateFunction(minIf, Int64, UInt8),
    accepted_state            AggregateFunction(max, UInt8),
    first_accepted_ms_state   AggregateFunction(minIf, Int64, UInt8),
    last_resolved_seq_state   AggregateFunction(maxIf, UInt32, UInt8),
    last_resolved_ms_state    AggregateFunction(maxIf, Int64, UInt8),
    last_closed_ms_state      AggregateFunction(maxIf, Int64, UInt8),
    last_reopened_seq_state   AggregateFunction(maxIf, UInt32, UInt8),
    last_escalated_seq_state  AggregateFunction(maxIf, UInt32, UInt8),
    last_urged_seq_state      AggregateFunction(maxIf, UInt32, UInt8),
    last_criticized_seq_state AggregateFunction(maxIf, UInt32, UInt8),
    last_referred_seq_state   AggregateFunction(maxIf, UInt32, UInt8),
    rated_state               AggregateFunction(max, UInt8),
    last_rating_state         AggregateFunction(argMaxIf, UInt8, UInt32, UInt8),
    status_kind_state         AggregateFunction(argMaxIf, String, UInt32, UInt8),
    transfers_state           AggregateFunction(uniqExactIf, UInt32, UInt8),
    escalations_state         AggregateFunction(uniqExactIf, UInt32, UInt8),
    reopens_state             AggregateFunction(uniqExactIf, UInt32, UInt8),
    category_state            AggregateFunction(argMin, String, UInt32),
    district_id_state         AggregateFunction(argMin, String, UInt32),
    street_id_state           AggregateFunction(argMin, String, UInt32),
    community_id_state        AggregateFunction(argMin, String, UInt32),
    grid_id_state             AggregateFunction(argMin, String, UInt32),
    department_id_state       AggregateFunction(argMin, String, UInt32),
    current_unit_id_state     AggregateFunction(argMax, String, UInt32),
    current_tier_state        AggregateFunction(argMax, String, UInt32),
    current_urgency_state     AggregateFunction(argMax, String, UInt32)
)
ENGINE = AggregatingMergeTree()
PARTITION BY event_month
ORDER BY (case_id, holder_unit_id, holder_tier, event_month, policy_version);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.case_figures_feed TO {db}.case_figures AS
SELECT
    case_id,
    assignee_unit_id AS holder_unit_id,
    assignee_tier AS holder_tier,
    toUInt32(toYYYYMM(toDateTime(intDiv(at_ms, 1000), 'UTC'))) AS event_month,
    policy_version,
    minState(seq) AS first_seq_state,
    maxState(seq) AS last_seq_state,
    minState(at_ms) AS held_from_ms_state,
    minIfState(at_ms, kind = 'opened') AS opened_ms_state,
    maxState(toUInt8(kind = 'accepted')) AS accepted_state,
    minIfState(at_ms, kind = 'accepted') AS first_accepted_ms_state,
    maxIfState(seq, kind = 'resolved') AS last_resolved_seq_state,
    maxIfState(at_ms, kind = 'resolved') AS last_resolved_ms_state,
    maxIfState(at_ms, kind = 'closed') AS last_closed_ms_state,
    maxIfState(seq, kind = 'reopened') AS last_reopened_seq_state,
    maxIfState(seq, kind = 'escalated') AS last_escalated_seq_state,
    maxIfState(seq, kind = 'urged') AS last_urged_seq_state,
    maxIfState(seq, kind = 'criticized') AS last_criticized_seq_state,
    maxIfState(seq, kind = 'referred') AS last_referred_seq_state,
    maxState(toUInt8(kind = 'rated')) AS rated_state,
    argMaxIfState(ifNull(rating, toUInt8(0)), seq, kind = 'rated') AS last_rating_state,
    argMaxIfState(kind, seq, kind IN ('opened', 'dispatched', 'escalated', 'accepted', 'resolved', 'rated', 'reopened', 'closed')) AS status_kind_state,
    uniqExactIfState(seq, kind = 'transferred') AS transfers_state,
    uniqExactIfState(seq, kind = 'escalated') AS escalations_state,
    uniqExactIfState(seq, kind = 'reopened') AS reopens_state,
    argMinState(category, seq) AS category_state,
    argMinState(district_id, seq) AS district_id_state,
    argMinState(ifNull(street_id, ''), seq) AS street_id_state,
    argMinState(ifNull(community_id, ''), seq) AS community_id_state,
    argMinState(ifNull(grid_id, ''), seq) AS grid_id_state,
    argMinState(ifNull(department_id, ''), seq) AS department_id_state,
    argMaxState(assignee_unit_id, seq) AS current_unit_id_state,
    argMaxState(assignee_tier, seq) AS current_tier_state,
    argMaxState(urgency, seq) AS current_urgency_state
FROM {db}.case_events
GROUP BY case_id, holder_unit_id, holder_tier, event_month, policy_version;

INSERT INTO {db}.case_figures
SELECT
    case_id,
    assignee_unit_id AS holder_unit_id,
    assignee_tier AS holder_tier,
    toUInt32(toYYYYMM(toDateTime(intDiv(at_ms, 1000), 'UTC'))) AS event_month,
    policy_version,
    minState(seq) AS first_seq_state,
    maxState(seq) AS last_seq_state,
    minState(at_ms) AS held_from_ms_state,
    minIfState(at_ms, kind = 'opened') AS opened_ms_state,
    maxState(toUInt8(kind = 'accepted')) AS accepted_state,
    minIfState(at_ms, kind = 'accepted') AS first_accepted_ms_state,
    maxIfState(seq, kind = 'resolved') AS last_resolved_seq_state,
    maxIfState(at_ms, kind = 'resolved') AS last_resolved_ms_state,
    maxIfState(at_ms, kind = 'closed') AS last_closed_ms_state,
    maxIfState(seq, kind = 'reopened') AS last_reopened_seq_state,
    maxIfState(seq, kind = 'escalated') AS last_escalated_seq_state,
    maxIfState(seq, kind = 'urged') AS last_urged_seq_state,
    maxIfState(seq, kind = 'criticized') AS last_criticized_seq_state,
    maxIfState(seq, kind = 'referred') AS last_referred_seq_state,
    maxState(toUInt8(kind = 'rated')) AS rated_state,
    argMaxIfState(ifNull(rating, toUInt8(0)), seq, kind = 'rated') AS last_rating_state,
    argMaxIfState(kind, seq, kind IN ('opened', 'dispatched', 'escalated', 'accepted', 'resolved', 'rated', 'reopened', 'closed')) AS status_kind_state,
    uniqExactIfState(seq, kind = 'transferred') AS transfers_state,
    uniqExactIfState(seq, kind = 'escalated') AS escalations_state,
    uniqExactIfState(seq, kind = 'reopened') AS reopens_state,
    argMinState(category, seq) AS category_state,
    argMinState(district_id, seq) AS district_id_state,
    argMinState(ifNull(street_id, ''), seq) AS street_id_state,
    argMinState(ifNull(community_id, ''), seq) AS community_id_state,
    argMinState(ifNull(grid_id, ''), seq) AS grid_id_state,
    argMinState(ifNull(department_id, ''), seq) AS department_id_state,
    argMaxState(assignee_unit_id, seq) AS current_unit_id_state,
    argMaxState(assignee_tier, seq) AS current_tier_state,
    argMaxState(urgency, seq) AS current_urgency_state
FROM {db}.case_events
GROUP BY case_id, holder_unit_id, holder_tier, event_month, policy_version;
