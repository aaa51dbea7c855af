-- open311_requests: app reports as Open311 service requests, with the progress of their case.
-- Run by the gateway (whistle/edges/gateway.py) as the read-only auditor user, for GET /open311/v2/requests.json
-- and GET /open311/v2/requests/{id}.json. Runs on ClickHouse 18.16 and modern servers.
--
-- Parameters (bound by clickhouse-driver; {db} is the only identifier):
--   by_id            1: the reports in `ids` (other filters ignored, as the spec says); 0: the window below
--   ids              tuple of report ids (ResidentReport.report_id, as the sender gave it); ('') when by_id = 0
--   start_ms, end_ms reported_at window, epoch ms, inclusive
--   all_codes        1: every category; 0: those in `codes` (('') when all_codes = 1)
--   want_open, want_closed  1/0: which Open311 statuses to return
--   closed_kinds     tuple of case event kinds after which a request is closed (whistle.edges.open311.CLOSED_KINDS)
--   offset, limit    the page: skip `offset` rows, then at most `limit` rows, newest first (ties by id, then sender)
--
-- One row per report: a report is its sender's (the integrator whose signature verified) and its id, and
-- reaches its case by the scoped id the worker gave it (app:<sender>:<id>). Unsigned reports are left out:
-- the worker refused them. `reporter_hash` is the stored (keyed-hash) reporter id, for the reporter's
-- feedback check; the gateway never returns it.
-- A report that has not become a case yet has case_id '' (and last_kind '', i.e. open).
-- Duplicates are collapsed by key: raw_events may hold a report twice (a retried send, a redelivered
-- offset), case_events a redelivered event: GROUP BY report / case, argMax by seq.
-- Report fields are read from the payload JSON with visitParam* (18.16 has no JSON functions):
-- each name occurs once in a ResidentReport payload, wherever the envelope puts it.
SELECT
    report_id,
    sender,
    reporter_hash,
    category,
    description,
    lat,
    lon,
    address_text,
    photo_refs_json,
    requested_ms,
    case_id,
    own_kind,
    last_kind,
    updated_ms,
    assignee_unit_id
FROM
(
    SELECT
        event_id AS report_id,
        sender,
        concat('app:', sender, ':', event_id) AS scoped_id,
        visitParamExtractString(argMin(payload, kafka_offset), 'reporter_id') AS reporter_hash,
        visitParamExtractString(argMin(payload, kafka_offset), 'category') AS category,
        visitParamExtractString(argMin(payload, kafka_offset), 'description') AS description,
        visitParamExtractFloat(argMin(payload, kafka_offset), 'lat') AS lat,
        visitParamExtractFloat(argMin(payload, kafka_offset), 'lon') AS lon,
        visitParamExtractString(argMin(payload, kafka_offset), 'address_text') AS address_text,
        visitParamExtractRaw(argMin(payload, kafka_offset), 'photo_refs') AS photo_refs_json,
        min(event_ms) AS requested_ms
    FROM {db}.raw_events
    WHERE source = 'app' AND record_type = 'ResidentReport' AND decode_error = '' AND sender != ''
      AND ((%(by_id)s = 1 AND event_id IN %(ids)s)
        OR (%(by_id)s = 0 AND event_ms >= %(start_ms)s AND event_ms <= %(end_ms)s
            AND (%(all_codes)s = 1 OR visitParamExtractString(payload, 'category') IN %(codes)s)))
    GROUP BY sender, event_id
) AS reports
ANY LEFT JOIN
(
    SELECT
        tupleElement(link, 1) AS scoped_id,
        tupleElement(link, 2) AS own_kind,
        case_id,
        last_kind,
        updated_ms,
        assignee_unit_id
    FROM
    (
        SELECT
            case_id,
            groupUniqArrayIf((assumeNotNull(report_id), kind), kind IN ('opened', 'report_merged') AND startsWith(assumeNotNull(report_id), 'app:')) AS links,
            argMaxIf(kind, seq, kind NOT IN ('report_merged', 'late_action')) AS last_kind,
            max(at_ms) AS updated_ms,
            argMax(assignee_unit_id, seq) AS assignee_unit_id
        FROM {db}.case_events
        WHERE case_id IN
        (
            SELECT case_id
            FROM {db}.case_events
            WHERE kind IN ('opened', 'report_merged')
              AND report_id IN
              (
                  SELECT concat('app:', sender, ':', event_id)
                  FROM {db}.raw_events
                  WHERE source = 'app' AND record_type = 'ResidentReport' AND decode_error = '' AND sender != ''
                    AND ((%(by_id)s = 1 AND event_id IN %(ids)s)
                      OR (%(by_id)s = 0 AND event_ms >= %(start_ms)s AND event_ms <= %(end_ms)s))
              )
        )
        GROUP BY case_id
    )
    ARRAY JOIN links AS link
) AS cases USING scoped_id
WHERE (%(want_open)s = 1 AND last_kind NOT IN %(closed_kinds)s)
   OR (%(want_closed)s = 1 AND last_kind IN %(closed_kinds)s)
ORDER BY requested_ms DESC, report_id, sender
LIMIT %(offset)s, %(limit)s
