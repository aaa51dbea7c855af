"""Watching a running pipeline from outside: offsets, groups, whole topics; a worker and sink pair that restarts.

Shared by the demo, the benchmark and the tests. Every wait is bounded.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from infra.processes import WhistleProcess, spawn, wait_until
from streams.app import METRICS_FILE
from streams.changelog import watermarks
from whistle.ground.errors import StackError
from whistle.ground.names import Groups
from whistle.ground.settings import Settings


def spawn_worker(settings: Settings, worker_id: str, log_dir: Path) -> WhistleProcess:
    return spawn(replace(settings, worker_id=worker_id), worker_id, ["worker"], log_dir)


def end_offsets(settings: Settings, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark of every partition of `topic`."""
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"whistle-watch-{uuid.uuid4().hex[:8]}"})
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        return {p: watermarks(consumer, TopicPartition(topic, p), timeout_s)[1] for p in partitions}
    finally:
        consumer.close()


def committed_offsets(settings: Settings, group: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """The consumer group's committed offset of every partition of `topic` (-1001 where none)."""
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        done = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
        return {tp.partition: tp.offset for tp in done}
    finally:
        consumer.close()


def read_all(settings: Settings, topics: Iterable[str], timeout_s: float = 30.0, quiet_s: float = 1.0) -> list:
    """Every record now in `topics`, from the beginning to the end offsets read at the start (bounded by `timeout_s`)."""
    topics = list(topics)
    targets = {(t, p): end for t in topics for p, end in end_offsets(settings, t).items() if end > 0}
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"whistle-read-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, 0) for (t, p) in targets])
    records, positions = [], {}
    deadline = time.monotonic() + timeout_s
    try:
        while any(positions.get(tp, -1) + 1 < end for tp, end in targets.items()):
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout_s:.0f}s reading {', '.join(topics)}")
            for message in consumer.consume(1000, timeout=quiet_s):
                if message.error() is None:
                    records.append(message)
                    positions[(message.topic(), message.partition())] = message.offset()
    finally:
        consumer.close()
    return records


def group_members(settings: Settings, group: str, timeout_s: float = 10.0) -> int:
    """How many members a consumer group has with partitions assigned (0 while it is rebalancing or empty)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**settings.kafka.librdkafka(), "log_level": 0})
    try:
        described = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result(timeout=timeout_s)
    except Exception:  # the group does not exist yet, or the coordinator is loading: not ready
        return 0
    if described.state != ConsumerGroupState.STABLE:
        return 0
    return sum(1 for member in described.members if member.assignment and member.assignment.topic_partitions)


def wait_for_group(settings: Settings, group: str, members: int, timeout_s: float = 90.0) -> None:
    """Wait until `members` processes of `group` hold partitions (a worker or sink has really started)."""
    wait_until(lambda: group_members(settings, group) >= members, timeout_s, f"{members} member(s) of consumer group {group}", 0.5)


def sink_caught_up(settings: Settings) -> bool:
    """Whether the sink has stored and committed every record of every audited topic."""
    from whistle.ground.names import Topics

    group = Groups.with_prefix(settings.topic_prefix).sink
    for topic in Topics.with_prefix(settings.topic_prefix).audited:
        done = committed_offsets(settings, group, topic)
        if any(end > 0 and done.get(p, -1) < end for p, end in end_offsets(settings, topic).items()):
            return False
    return True


class Pipeline:
    """A worker and the sink (and, with `anchor`, the anchorer) as processes; `supervise` restarts a crashed worker or sink,
    as a production restart policy would."""

    def __init__(self, settings: Settings, logs: Path, sink_args: tuple[str, ...] = ("--batch-seconds", "0.3"), *, anchor: bool = False) -> None:
        self.settings, self.logs, self.sink_args = settings, logs, sink_args
        self.worker = spawn_worker(settings, "worker-1", logs)
        self.sink = spawn(settings, "sink", ["sink", *sink_args], logs)
        self.anchorer = spawn(settings, "anchor", ["anchor"], logs) if anchor else None
        self.restarts = 0

    def wait_ready(self, timeout_s: float = 90.0) -> Pipeline:
        wait_for_group(self.settings, Groups.with_prefix(self.settings.topic_prefix).cases, 1, timeout_s)
        wait_for_group(self.settings, Groups.with_prefix(self.settings.topic_prefix).sink, 1, timeout_s)
        return self

    def supervise(self) -> None:
        if not self.worker.alive():
            self.worker, self.restarts = spawn_worker(self.settings, "worker-1", self.logs), self.restarts + 1
        if not self.sink.alive():
            self.sink, self.restarts = spawn(self.settings, "sink", ["sink", *self.sink_args], self.logs), self.restarts + 1

    def stop(self) -> None:
        self.worker.stop()
        self.sink.stop()
        if self.anchorer is not None:
            self.anchorer.stop()


def metrics_path(settings: Settings, worker_id: str) -> Path:
    """The worker's metrics file (streams.app); it outlives the process, so a test or bench that reads counters removes it first."""
    return settings.stack.state_dir / "workers" / worker_id / METRICS_FILE


def partitions_recovered(settings: Settings, worker_id: str) -> dict[int, int]:
    """Case-stream partition -> how often the worker `worker_id` read it back from the changelog (its metrics
    file, `whistle_partitions_recovered_total`; written after each batch). Empty before its first batch."""
    path = metrics_path(settings, worker_id)
    if not path.exists():
        return {}
    prefix = 'whistle_partitions_recovered_total{partition="'
    return {int(line[len(prefix):].split('"', 1)[0]): int(line.rsplit(" ", 1)[1])
            for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(prefix)}
