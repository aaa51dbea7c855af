"""Kafka helpers of the bench: consumer-group lag, edge timestamps, record sizes, topic creation and configuration."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from infra.processes import wait_until
from whistle.devtools.harness import end_offsets
from whistle.ground.errors import StackError
from whistle.ground.settings import Settings


def group_lag(settings: Settings, group: str, topics: Iterable[str]) -> tuple[int, int]:
    """(records `group` has committed, records now in `topics`), read with one short-lived consumer."""
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for topic in topics for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
        committed = consumer.committed(partitions, timeout=10)
        done = total = 0
        for tp in committed:
            end = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)[1]
            total += end
            done += min(end, max(0, tp.offset))
        return done, total
    finally:
        consumer.close()


def drained(settings: Settings, group: str, topics: Iterable[str]) -> bool:
    """True when `group` has committed every record now in `topics`."""
    done, total = group_lag(settings, group, topics)
    return done == total


def edge_timestamp(settings: Settings, topic: str, *, last: bool) -> int:
    """The earliest first-record (or latest last-record) timestamp over the partitions of `topic`, in ms."""
    ends = {p: end for p, end in end_offsets(settings, topic).items() if end > 0}
    if not ends:
        raise StackError(f"topic {topic} is empty")
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"bench-edge-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    start = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in ends}
    consumer.assign([TopicPartition(topic, p, end - 1 if last else start[p]) for p, end in ends.items()])
    stamps: dict[int, int] = {}
    deadline = time.monotonic() + 30
    try:
        while len(stamps) < len(ends):
            if time.monotonic() > deadline:
                raise StackError(f"timed out reading the edge records of {topic}")
            for message in consumer.consume(len(ends), timeout=1.0):
                if message.error() is None and message.partition() not in stamps:
                    stamps[message.partition()] = message.timestamp()[1]
    finally:
        consumer.close()
    return max(stamps.values()) if last else min(stamps.values())


def set_log_append_time(settings: Settings, topics: list[str]) -> None:
    """Have the broker stamp records of `topics` with their append time (the bench's own topics only)."""
    admin = AdminClient({**settings.kafka.librdkafka(), "log_level": 0})
    resources = [ConfigResource("topic", name, incremental_configs=[
        ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET)]) for name in topics]
    for future in admin.incremental_alter_configs(resources).values():
        future.result(timeout=30)


def create_topic(settings: Settings, name: str, partitions: int) -> None:
    """Create `name` and wait until every partition has a leader (a fresh topic answers NOT_LEADER for a moment)."""
    admin = AdminClient({**settings.kafka.librdkafka(), "log_level": 0})
    topic = NewTopic(name, partitions, settings.kafka.replication_factor, config={"message.timestamp.type": "LogAppendTime"})
    admin.create_topics([topic])[name].result(timeout=30)

    def led() -> bool:
        described = admin.list_topics(name, timeout=10).topics.get(name)
        return described is not None and len(described.partitions) == partitions and all(
            p.leader >= 0 and p.error is None for p in described.partitions.values())

    wait_until(led, 30, f"leaders for the partitions of {name}")


def mean_value_bytes(settings: Settings, topic: str, sample: int = 20_000) -> int:
    """The mean value size of (up to `sample` of) the first records of `topic`'s partitions; 0 when it is empty."""
    ends = {p: end for p, end in end_offsets(settings, topic).items() if end > 0}
    if not ends:
        return 0
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"bench-size-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    held = sum(end - consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p, end in ends.items())
    wanted = min(sample, held)
    sizes: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(sizes) < wanted:
            if time.monotonic() > deadline:
                raise StackError(f"timed out sampling the records of {topic}")
            sizes += [len(m.value() or b"") for m in consumer.consume(1000, timeout=1.0) if m.error() is None]
    finally:
        consumer.close()
    return round(sum(sizes) / len(sizes)) if sizes else 0
