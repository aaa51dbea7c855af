-- 004: the offset ledger of the tables keyed by business id.
--
-- WHY: case_events (ORDER BY case_id, seq) and breaches (ORDER BY breach_id) are ReplacingMergeTree on
-- their business key. A worker that crashed re-emits identical records at new offsets (at-least-once,
-- deterministic ids), and a background merge collapses such a copy into its twin: its offset would vanish
-- from the table. So the sink also writes every offset it stores in these tables into this append-only
-- ledger, right after the data insert and before recording the batch; it resumes from the ledger, and
-- `verify` checks their offsets here (each exactly once, none missing) and that every ledgered key has
-- its row in the table.
CREATE TABLE IF NOT EXISTS {db}.offset_ledger
(
    table_name          String,              -- case_events | breaches
    kafka_topic         String,
    kafka_partition     UInt32,
    kafka_offset        Int64,
    record_key          String,              -- case_events.event_id | breaches.breach_id
    ingest_ms           Int64
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(ingest_ms, 1000), 'UTC'))
ORDER BY (table_name, kafka_topic, kafka_partition, kafka_offset);

CREATE VIEW IF NOT EXISTS {db}.case_event_offsets AS
SELECT kafka_topic, kafka_partition, kafka_offset, record_key FROM {db}.offset_ledger WHERE table_name = 'case_events';

CREATE VIEW IF NOT EXISTS {db}.breach_offsets AS
SELECT kafka_topic, kafka_partition, kafka_offset, record_key FROM {db}.offset_ledger WHERE table_name = 'breaches';
