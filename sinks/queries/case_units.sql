-- case_units: what the audit store knows of a case's units, for the gateway's check of a handling action.
-- Run by whistle/edges/gateway.py as the read-only auditor user. Runs on ClickHouse 18.16 and modern servers.
--
-- Parameters: case_id.
-- One row per distinct (kind, note, holder): the opened and report_merged events' notes are the chains
-- of the case's reports (unit@tier>...), and every event names the unit holding the case then.
-- No rows: the store does not know the case (yet).
SELECT kind, assumeNotNull(note) AS chain_text, assignee_unit_id
FROM {db}.case_events
WHERE case_id = %(case_id)s
GROUP BY kind, chain_text, assignee_unit_id
ORDER BY kind, chain_text, assignee_unit_id
