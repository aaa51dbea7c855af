-- sink_resume: the highest offset of a Kafka topic/partition that ClickHouse already holds in {table},
-- so the sink resumes after it (never inserting a redelivered record twice). sink_batches records
-- every completed batch (max() of no rows is 0 in ClickHouse, hence the count() guard); the table itself is read above that, because a crash can fall between a
-- batch's insert and its record. -1 when nothing is stored yet.
-- Parameters: table_name, topic, partition. {table} is an audited table, or the offset ledger view of one
-- keyed by business id (case_event_offsets, breach_offsets: migration 004).
SELECT greatest(
    (SELECT if(count() = 0, toInt64(-1), max(max_offset)) FROM {db}.sink_batches
      WHERE table_name = %(table_name)s AND kafka_topic = %(topic)s AND kafka_partition = %(partition)s),
    (SELECT if(count() = 0, toInt64(-1), max(kafka_offset)) FROM {db}.{table}
      WHERE kafka_topic = %(topic)s AND kafka_partition = %(partition)s)
) AS stored_through
