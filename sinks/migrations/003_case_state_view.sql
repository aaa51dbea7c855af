-- 003: case_state becomes a view over case_events, replacing the table 001 created.
--
-- WHY: the case log is the one source of truth. 001's case_state table was to be written by the sink,
-- but the sink is a thin writer that cannot fold events into state, and a second copy of the state
-- could disagree with the log it came from. The view derives every case's latest state from the
-- events at query time, so it cannot drift. The old table only ever held a derived convenience
-- (audited figures come from case_events), so dropping it loses nothing the log does not hold.
--
-- Duplicates: the sink delivers at least once, so an event may be stored twice (same case_id, seq).
-- The view reads case_events with FINAL, which collapses such copies before anything is counted.
--
-- One row per case, columns as 001's table where they make sense:
--   seq                 the last event's seq (the state's version)
--   status              streams.domain.case.Status after the last event that changes it, as `evolve` does:
--                         opened -> opened        dispatched -> dispatched   escalated -> dispatched
--                         accepted -> accepted    resolved -> resolved       rated -> rated
--                         reopened -> reopened    closed -> closed
--                       report_merged, transferred, extension_granted and late_action leave it as it was.
--   category, district_id, street_id, community_id, grid_id, department_id, policy_version
--                       from the opened event (they never change over a case's life)
--   urgency             the last event's: a more urgent merged report raises it (as in CaseState)
--   assignee_unit_id, assignee_tier   the last event's (the unit responsible now)
--   opened_ms           the opened event's time
--   dispatched_ms       the last dispatched or escalated event's time (an escalation dispatches again)
--   accepted_ms         the first accepted event's time
--   resolved_ms         the last resolved event's time (kept after a reopen: status says it is reopened)
--   closed_ms           the last closed event's time (kept after a reopen, likewise)
--   rating              the latest rated event's rating. Unlike CaseState.rating it is kept after a
--                       reopen or escalation, so a dashboard still shows the rating that caused it.
--   transfers, escalations, reopens   numbers of transferred, escalated, reopened events
--   last_event_ms, last_hash          the last event's time and hash (the head of its chain)
-- Times with no such event are NULL. The Kafka position of 001's table is left out: a deduplicated
-- event has no single position (verify and ranking_provenance read positions without FINAL).
--
-- ClickHouse 18.16: maxIf(toNullable(x), cond) returns 0, not NULL, for a case without such an event,
-- so optional times are max(if(cond, toNullable(x), NULL)). No window functions, no DateTime64.
-- A query for one case is `SELECT ... FROM case_state WHERE case_id = ...`; 18.16 does not push that
-- filter into the view by default (enable_optimize_predicate_expression = 0), so it folds every case:
-- fine for dashboards, not for a hot path.
--
-- Re-running is harmless: the drop removes the table (or this view) and the view is created again.
DROP TABLE IF EXISTS {db}.case_state;

CREATE VIEW IF NOT EXISTS {db}.case_state AS
SELECT
    case_id,
    max(event_seq) AS seq,
    argMaxIf(if(kind = 'escalated', 'dispatched', kind), event_seq,
             kind IN ('opened', 'dispatched', 'escalated', 'accepted', 'resolved', 'rated', 'reopened', 'closed')) AS status,
    argMinIf(event_category, event_seq, kind = 'opened') AS category,
    argMax(event_urgency, event_seq) AS urgency,
    argMinIf(event_district_id, event_seq, kind = 'opened') AS district_id,
    argMinIf(event_street_id, event_seq, kind = 'opened') AS street_id,
    argMinIf(event_community_id, event_seq, kind = 'opened') AS community_id,
    argMinIf(event_grid_id, event_seq, kind = 'opened') AS grid_id,
    argMinIf(event_department_id, event_seq, kind = 'opened') AS department_id,
    argMax(event_assignee_unit_id, event_seq) AS assignee_unit_id,
    argMax(event_assignee_tier, event_seq) AS assignee_tier,
    minIf(at_ms, kind = 'opened') AS opened_ms,
    max(if(kind IN ('dispatched', 'escalated'), toNullable(at_ms), NULL)) AS dispatched_ms,
    min(if(kind = 'accepted', toNullable(at_ms), NULL)) AS accepted_ms,
    max(if(kind = 'resolved', toNullable(at_ms), NULL)) AS resolved_ms,
    max(if(kind = 'closed', toNullable(at_ms), NULL)) AS closed_ms,
    argMaxIf(event_rating, event_seq, kind = 'rated') AS rating,
    countIf(kind = 'transferred') AS transfers,
    countIf(kind = 'escalated') AS escalations,
    countIf(kind = 'reopened') AS reopens,
    argMinIf(event_policy_version, event_seq, kind = 'opened') AS policy_version,
    argMax(at_ms, event_seq) AS last_event_ms,
    argMax(hash, event_seq) AS last_hash
FROM
(
    -- The events without their copies. Columns the state reuses as names are renamed here: an alias is
    -- visible in the whole SELECT, so `argMax(urgency, seq) AS urgency` would read itself.
    SELECT
        case_id,
        seq AS event_seq,
        kind,
        at_ms,
        category AS event_category,
        urgency AS event_urgency,
        district_id AS event_district_id,
        street_id AS event_street_id,
        community_id AS event_community_id,
        grid_id AS event_grid_id,
        department_id AS event_department_id,
        assignee_unit_id AS event_assignee_unit_id,
        assignee_tier AS event_assignee_tier,
        rating AS event_rating,
        policy_version AS event_policy_version,
        hash
    FROM {db}.case_events FINAL
)
GROUP BY case_id;
