"""The order in which the ingest stage takes raw records: Kafka's append order, across every raw partition.

Kafka orders records within a partition only, and a consumer receives partitions in fetch-sized chunks:
at full speed one raw topic can be drained seconds (simulated hours) ahead of another, so a handling
action overtakes the report it acts on, and a second channel's report of an incident opens the case
before the first. Whistle decides at the case stream, in the order ingest writes to it, so ingest must
write in the order the broker appended the raw records: the raw topics stamp LogAppendTime
(infra/topics.yaml), the broker's clock, which no client sets.

`AppendOrder` is that merge, as stream processors do it (Kafka Streams picks the head record with the
lowest timestamp across a task's partitions and waits, up to `max.task.idle.ms`, for a partition that
has data not fetched yet): each raw partition's records queue in offset order; the head with the
lowest (timestamp, topic, partition, offset) goes next, as long as every other assigned partition
either has a record queued (its next one cannot be earlier) or has been read to its end. A partition
with data still in flight holds the merge back, for at most `max_wait_s` after the head arrived, or
until `max_queued` records wait: then the head goes anyway, so a partition whose leader is away
cannot stop the others (at the cost of order across that gap).

The tie-break: records appended in the same millisecond (one produce request carries many partitions'
batches, each stamped with the same time) go in (topic, partition, offset) order, a rule anyone can
apply to the log afterwards to get the same sequence.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from heapq import heapify, heappop, heappush
from typing import Generic, TypeVar

Record = TypeVar("Record")
PartitionKey = tuple[str, int]  # (topic, partition)


class AppendOrder(Generic[Record]):
    """Raw records queued per partition, handed out in append order (see the module docstring)."""

    def __init__(self, max_wait_s: float, max_queued: int) -> None:
        self.max_wait_s, self.max_queued = max_wait_s, max_queued
        self._queues: dict[PartitionKey, deque[tuple[int, int, float, Record]]] = {}
        self._read_to_end: set[PartitionKey] = set()
        self._assigned: set[PartitionKey] = set()
        self._queued = 0

    def assign(self, partitions: Iterable[PartitionKey]) -> None:
        self._assigned.update(partitions)

    def revoke(self, partitions: Iterable[PartitionKey]) -> None:
        """Forget partitions given away: their queued records were neither processed nor committed, the new owner reads them."""
        for partition in partitions:
            self._assigned.discard(partition)
            self._read_to_end.discard(partition)
            self._queued -= len(self._queues.pop(partition, ()))

    def add(self, partition: PartitionKey, offset: int, timestamp_ms: int, record: Record, now_s: float) -> None:
        self._queues.setdefault(partition, deque()).append((timestamp_ms, offset, now_s, record))
        self._read_to_end.discard(partition)
        self._queued += 1

    def at_end(self, partition: PartitionKey) -> None:
        """The consumer read `partition` to its end (librdkafka's partition EOF): nothing of it is in flight."""
        self._read_to_end.add(partition)

    def queued(self) -> int:
        return self._queued

    def ready(self, now_s: float) -> list[tuple[PartitionKey, int, Record]]:
        """The records that may go now, in order, as (partition, offset, record); they leave the queues."""
        heads = [(queue[0][0], partition, queue[0][1]) for partition, queue in self._queues.items() if queue]
        heapify(heads)
        out: list[tuple[PartitionKey, int, Record]] = []
        in_flight = {p for p in self._assigned if p not in self._read_to_end and not self._queues.get(p)}
        while heads:
            _, partition, _ = heads[0]
            queue = self._queues[partition]
            if in_flight and now_s - queue[0][2] < self.max_wait_s and self._queued < self.max_queued:
                break
            heappop(heads)
            _, offset, _, record = queue.popleft()
            self._queued -= 1
            out.append((partition, offset, record))
            if queue:
                heappush(heads, (queue[0][0], partition, queue[0][1]))
            elif partition in self._assigned and partition not in self._read_to_end:
                in_flight.add(partition)  # its next record may be earlier than any other queued one
        return out
