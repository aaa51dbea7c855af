"""The case-state changelog: a compacted topic the cases agent writes, and reads back when it is given a partition.

Why not a Faust table: Faust's recovery feeds every changelog record through its event machinery and
keeps a second, pickled copy of every case in the table's dict. A worker holding 1,000,000 open cases
took 280 s and 2.5 GB to recover that way (`whistle bench --phase recovery --million`); read here with
librdkafka and decoded as it streams into `CaseProcessor.recover`, 48 s and 1.4 GB. The live objects are
the only copy.

Changelog partition p holds the state of case-stream partition p (records are written with an explicit
partition), so a worker given partition p reads exactly one changelog partition. The topic is internal
to the workers, like a Faust changelog: created by them at start with the deployment's replication, and
never read by anyone else.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from whistle.ground.errors import ConfigError, StackError
from whistle.ground.names import Groups
from whistle.ground.settings import Settings


def changelog_topic(settings: Settings) -> str:
    return Groups.with_prefix(settings.topic_prefix).changelog


def ensure_changelog(settings: Settings, partitions: int, timeout_s: float = 30.0) -> str:
    """Create the compacted changelog if it is missing; refuse one whose partition count differs from the case stream's."""
    kafka, name = settings.kafka, changelog_topic(settings)
    admin = AdminClient({**kafka.librdkafka(), "log_level": 0})
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
        if name not in existing:
            config = {"cleanup.policy": "compact", "min.insync.replicas": str(kafka.min_insync_replicas)}
            future = admin.create_topics([NewTopic(name, partitions, kafka.replication_factor, config=config)])[name]
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another worker starting at the same time
                    raise
            except TimeoutError as exc:
                raise StackError(f"Kafka did not create the changelog within {timeout_s:.0f} s", topic=name) from exc
        elif len(existing[name].partitions) != partitions:
            raise ConfigError(f"the changelog has {len(existing[name].partitions)} partitions, the case stream {partitions}: "
                              "a case's state would be read from the wrong partition", topic=name)
    except KafkaException as exc:
        raise StackError(f"cannot create the changelog on {kafka.bootstrap_servers}: {exc}", topic=name) from exc
    return name


def read_partition(settings: Settings, partition: int, timeout_s: float) -> Iterator[tuple[str, bytes | None]]:
    """Changelog partition `partition` as (key, value) in log order (None: deleted), from the beginning to its
    end. Transient errors (a broker restarting) are waited out; StackError on a fatal one, or if the end is
    not reached within `timeout_s`."""
    topic = changelog_topic(settings)
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"{topic}-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": True})
    try:
        low, end = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        if end <= low:
            return
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline, last = time.monotonic() + timeout_s, -1
        while last + 1 < end:  # or until the end of the partition is reported (compaction may leave holes at the end)
            if time.monotonic() > deadline:
                raise StackError(f"reading the changelog timed out at offset {last} of {end}", topic=topic, partition=partition)
            for message in consumer.consume(10_000, timeout=0.5):
                error = message.error()
                if error is None:
                    yield message.key().decode(), message.value()
                    last = message.offset()
                elif error.code() == KafkaError._PARTITION_EOF:
                    return
                elif error.fatal():
                    raise StackError(f"reading the changelog failed: {error}", topic=topic, partition=partition)
    finally:
        consumer.close()
