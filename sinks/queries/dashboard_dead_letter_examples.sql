-- dashboard_dead_letter_examples: the latest dead letters of a period, what the pipeline could not process,
-- each with where it came from (original topic / partition / offset) and where its dead letter is, for the
-- dashboard's dead-letters page. Counts by stage and reason are verify_dead_letters.sql's (the query
-- `whistle audit verify` reports), over the same period. Runs on ClickHouse 18.16 and modern servers.
--
-- Parameters
--   from_ms, to_ms  failed_ms in [from_ms, to_ms)
--   stage           only this stage ('' = any)
--   limit           how many, newest first
-- Read without FINAL; a redelivered dead letter (the same original offset dead-lettered again) is listed once,
-- its first copy by dead-letter position (LIMIT 1 BY). reason: as verify_dead_letters.sql extracts it.
-- No record content is stored here, only its key, size and SHA-256.
SELECT
    failed_ms,
    stage,
    error_class,
    extract(error_message, 'reason=([a-z_]+)') AS reason,
    error_message,
    field,
    original_topic,
    original_partition,
    original_offset,
    original_key,
    original_value_size,
    original_value_sha256,
    kafka_topic,
    kafka_partition,
    kafka_offset
FROM
(
    SELECT *
    FROM {db}.dead_letters
    WHERE failed_ms >= %(from_ms)s AND failed_ms < %(to_ms)s
      AND (%(stage)s = '' OR stage = %(stage)s)
    ORDER BY original_topic, original_partition, original_offset, kafka_topic, kafka_partition, kafka_offset
    LIMIT 1 BY original_topic, original_partition, original_offset
)
ORDER BY failed_ms DESC, original_topic, original_partition, original_offset
LIMIT %(limit)s
