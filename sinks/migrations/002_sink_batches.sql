-- 002: the sink's bookkeeping, one row per batch it inserted into an audit table.
--
-- WHY: ClickHouse 18.16 has neither insert_deduplication_token nor non-replicated insert dedup, so
-- the sink makes redelivery idempotent itself: after an insert succeeds it records the offset range,
-- and on (re)assignment of a partition it resumes after the highest offset recorded here (and skips
-- offsets already present in the table: a crash can fall between the insert and this record).
-- `verify` also uses it: offsets a batch recorded must all be in its table, which catches rows lost
-- before the first or after the last offset the table holds (a gap inside is caught anyway).
CREATE TABLE IF NOT EXISTS {db}.sink_batches
(
    table_name          String,              -- raw_events | case_events | breaches | dead_letters
    kafka_topic         String,
    kafka_partition     UInt32,
    min_offset          Int64,               -- first offset inserted by the batch
    max_offset          Int64,               -- last offset inserted by the batch
    rows                UInt32,
    sink_id             String,              -- which sink process (settings.worker_id)
    inserted_ms         Int64
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(inserted_ms, 1000), 'UTC'))
ORDER BY (table_name, kafka_topic, kafka_partition, max_offset);
