-- 006: rules by content, and the anchored chain.
--
-- breaches.policy_sha256 / calendar_sha256: the content hashes of the SLA policy file and of the calendar
-- edition that counted the deadline (streams/domain/rules.py); NULL on rows stored before they were recorded.
ALTER TABLE {db}.breaches ADD COLUMN policy_sha256 Nullable(String) AFTER summary;
ALTER TABLE {db}.breaches ADD COLUMN calendar_sha256 Nullable(String) AFTER policy_sha256;

-- The rules registry (whistle.audit.rules): every rule file workers started with, with its content, so an
-- auditor can recompute decisions with the rules the log recorded. One row per Kafka offset.
CREATE TABLE IF NOT EXISTS {db}.rule_files
(
    rule_id             String,              -- <kind>:<name>
    kind                String,              -- policy | calendar | calendar_year | reference
    name                String,
    file                String,
    sha256              String,
    content             String,              -- the file's bytes
    in_force_from_ms    Nullable(Int64),
    registered_at_ms    Int64,
    registered_by       String,
    kafka_topic         String,
    kafka_partition     UInt32,
    kafka_offset        Int64,
    ingest_ms           Int64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(registered_at_ms, 1000), 'UTC'))
ORDER BY (kafka_topic, kafka_partition, kafka_offset);

-- Running digests over each case-events partition in offset order (whistle.audit.anchors, sinks/anchor.py).
-- verify recomputes them from case_events and the offset ledger; the copy here is what `audit anchors` exports.
CREATE TABLE IF NOT EXISTS {db}.chain_anchors
(
    anchor_id           String,
    anchored_topic      String,              -- the case-events topic
    anchored_partition  UInt32,
    first_offset        Int64,
    last_offset         Int64,
    records             Int64,
    digest              String,
    keyed               UInt8,
    anchored_at_ms      Int64,
    kafka_topic         String,
    kafka_partition     UInt32,
    kafka_offset        Int64,
    ingest_ms           Int64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(anchored_at_ms, 1000), 'UTC'))
ORDER BY (kafka_topic, kafka_partition, kafka_offset);
