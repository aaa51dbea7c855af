-- 001: the audit store. Applied by sinks/migrator.py; see its docstring for the file rules.
--
-- Every table must create on ClickHouse 18.16 and on modern ClickHouse: no DateTime64 (times are
-- Int64 epoch milliseconds in columns named *_ms, UTC), no LowCardinality, Map, JSON or TTL.
-- Personal data never lands here in clear: the sink writes keyed hashes (whistle/pii.py) in its place.
--
-- Rows carry the Kafka position they were read from (kafka_topic, kafka_partition, kafka_offset) so
-- every figure traces back to the log, and sinks/audit.py `verify` can prove each offset landed once.
-- The sink delivers at least once: a redelivered record is a second row with the same key, removed
-- at some later merge. Queries that must not see duplicates read with FINAL (or GROUP BY the key).
-- The partition key is a function of the record alone (never of the insert time) so that a
-- duplicate always falls into the same partition as its original and FINAL can collapse it.

-- Raw input records (whistle.raw.camera | hotline | app), one row per consumed offset.
-- An undecodable record still gets its row (payload '', decode_error set) so offsets stay gap-free.
CREATE TABLE IF NOT EXISTS {db}.raw_events
(
    source              String,              -- camera | hotline | app
    record_type         String,              -- Avro schema name, e.g. CameraDetection, HotlineTicket, HandlingAction
    event_id            String,              -- detection_id | ticket_id | report_id | action_id
    event_ms            Int64,               -- event time the record states; 0 when undecodable
    kafka_key           String,
    payload             String,              -- the decoded record as JSON, personal data replaced by keyed hashes
    raw_sha256          String,              -- hex SHA-256 of the value bytes as read: ties the row to the log
    raw_size            UInt32,              -- length of the value bytes
    decode_error        String,              -- '' when decoded
    kafka_topic         String,
    kafka_partition     UInt32,
    kafka_offset        Int64,
    kafka_timestamp_ms  Int64,               -- the Kafka record timestamp
    ingest_ms           Int64                -- when the sink inserted the row
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(kafka_timestamp_ms, 1000), 'UTC'))
ORDER BY (kafka_topic, kafka_partition, kafka_offset);

-- Case lifecycle events (whistle.cases.events), the system of record. Columns = CaseEvent fields.
CREATE TABLE IF NOT EXISTS {db}.case_events
(
    event_id            String,
    case_id             String,
    seq                 UInt32,
    kind                String,
    at_ms               Int64,
    cause_id            String,
    actor_unit_id       Nullable(String),
    assignee_unit_id    String,
    assignee_tier       String,
    category            String,
    urgency             String,
    district_id         String,
    street_id           Nullable(String),
    community_id        Nullable(String),
    grid_id             Nullable(String),
    department_id       Nullable(String),
    source              Nullable(String),
    report_id           Nullable(String),
    reason              Nullable(String),
    note                Nullable(String),
    rating              Nullable(UInt8),
    policy_version      String,
    prev_hash           String,
    hash                String,
    kafka_topic         String,
    kafka_partition     UInt32,
    kafka_offset        Int64,
    ingest_ms           Int64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(at_ms, 1000), 'UTC'))
ORDER BY (case_id, seq);

-- Latest state of every case, written by the sink from the case events it inserts (one row per
-- applied event; the highest seq wins). A convenience for dashboards: audited figures are computed
-- from case_events itself.
CREATE TABLE IF NOT EXISTS {db}.case_state
(
    case_id             String,
    seq                 UInt32,              -- seq of the last event applied: the version
    status              String,              -- streams.domain.case.Status
    category            String,
    urgency             String,
    district_id         String,
    street_id           Nullable(String),
    community_id        Nullable(String),
    grid_id             Nullable(String),
    department_id       Nullable(String),
    assignee_unit_id    String,
    assignee_tier       String,
    opened_ms           Int64,
    dispatched_ms       Nullable(Int64),     -- last dispatch (escalations dispatch again)
    accepted_ms         Nullable(Int64),     -- first acceptance
    resolved_ms         Nullable(Int64),     -- last resolution
    closed_ms           Nullable(Int64),
    rating              Nullable(UInt8),     -- latest rating
    transfers           UInt16,
    escalations         UInt16,
    reopens             UInt16,
    policy_version      String,
    last_event_ms       Int64,
    last_hash           String,
    kafka_topic         String,              -- position of the last event applied
    kafka_partition     UInt32,
    kafka_offset        Int64,
    ingest_ms           Int64
)
ENGINE = ReplacingMergeTree(seq)
PARTITION BY toYYYYMM(toDateTime(intDiv(opened_ms, 1000), 'UTC'))
ORDER BY case_id;

-- SLA warnings, breaches and referrals (whistle.sla.breaches). Columns = Breach fields.
CREATE TABLE IF NOT EXISTS {db}.breaches
(
    breach_id                   String,
    case_id                     String,
    kind                        String,      -- warning | breach | referral
    breach_type                 String,      -- accept_overdue | resolve_overdue | transfer_limit | unsatisfied_rating | reopened | final_overdue
    tier                        String,      -- tier the case escalates to (warnings: current tier)
    deadline_ms                 Int64,
    fired_at_ms                 Int64,
    overdue_ms                  Int64,
    responsible_unit_id         String,
    escalation_target_unit_id   Nullable(String),
    policy_version              String,
    category                    String,
    urgency                     String,
    street_id                   Nullable(String),
    department_id               Nullable(String),
    summary                     String,
    kafka_topic                 String,
    kafka_partition             UInt32,
    kafka_offset                Int64,
    ingest_ms                   Int64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(deadline_ms, 1000), 'UTC'))
ORDER BY breach_id;

-- Dead letters (whistle.deadletter). The original bytes stay in the dead-letter topic (kept forever,
-- access-restricted): they may hold personal data in clear, so only their hash and size land here.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    original_topic          String,
    original_partition      UInt32,
    original_offset         Int64,
    original_key            Nullable(String),    -- key bytes as read (ids, not personal data); NULL when none
    original_value_sha256   Nullable(String),    -- hex SHA-256 of the value bytes; NULL for a tombstone
    original_value_size     UInt32,
    stage                   String,
    error_class             String,
    error_message           String,
    field                   Nullable(String),
    failed_ms               Int64,
    kafka_topic             String,              -- position of the dead-letter record itself
    kafka_partition         UInt32,
    kafka_offset            Int64,
    ingest_ms               Int64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(failed_ms, 1000), 'UTC'))
ORDER BY (kafka_topic, kafka_partition, kafka_offset);
