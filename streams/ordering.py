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
either has a record queued (its next one cannot be earlier) or is caught up (every record the broker
reported in its latest fetch response has been handed over; the caller knows, from librdkafka's
cached high watermark) and the head was appended at least `grace_ms` ago (a record appended just
before the head may still be on its way from the broker). A partition with data still in flight holds the merge back,
until `max_queued` records wait or the merge has waited `max_wait_s` with the consumer's local queue drained: then
the head goes anyway, so a partition whose leader is away cannot stop the others (at the cost of order across that
gap; counted in `forced`). The wait counts only while drained: records the consumer already holds (librdkafka
prefetches far ahead, and a batch of thousands takes seconds to process) are not "in flight", and a clock that
ran while the worker processed a batch would force heads past records already fetched (figures: README).

Flow control: the consumer fetches every partition at about the same rate in bytes, so a sparse
partition (a few cameras) is fetched simulated hours ahead of a dense one, and its records queue here,
waiting for the others, until `max_queued` forces heads out of order. `flow` says which partitions to
stop fetching (their queue reached `pause_at`) and which to fetch again (theirs fell to `resume_at`),
as Kafka Streams pauses a partition whose buffer passes `buffered.records.per.partition`; a paused
partition has records queued, so it never holds the merge back.

The tie-break: records appended in the same millisecond (one produce request carries many partitions'
batches, each stamped with the same time) go in (topic, partition, offset) order, a rule anyone can
apply to the log afterwards to get the same sequence.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from heapq import heapify, heappop, heappush
from typing import Generic, TypeVar

Record = TypeVar("Record")
PartitionKey = tuple[str, int]  # (topic, partition)


class AppendOrder(Generic[Record]):
    """Raw records queued per partition, handed out in append order (see the module docstring)."""

    def __init__(self, max_wait_s: float, max_queued: int, grace_ms: int, pause_at: int, resume_at: int) -> None:
        self.max_wait_s, self.max_queued, self.grace_ms = max_wait_s, max_queued, grace_ms
        self.pause_at, self.resume_at = pause_at, resume_at
        self._queues: dict[PartitionKey, deque[tuple[int, int, Record]]] = {}
        self._assigned: set[PartitionKey] = set()
        self._paused: set[PartitionKey] = set()
        self._blocked_since: float | None = None  # when the merge began waiting on a partition in flight, drained
        self._queued = 0
        self.forced = 0  # records handed out while a partition still had records in flight (order not guaranteed)

    def assign(self, partitions: Iterable[PartitionKey]) -> None:
        self._assigned.update(partitions)

    def revoke(self, partitions: Iterable[PartitionKey]) -> list[PartitionKey]:
        """Forget partitions given away: their queued records were neither processed nor committed, the new owner reads them.
        Returns those of them that were paused: a consumer keeps a partition paused across a rebalance, so the caller
        resumes them (else one assigned back would never be fetched again)."""
        paused = []
        for partition in partitions:
            self._assigned.discard(partition)
            self._queued -= len(self._queues.pop(partition, ()))
            if partition in self._paused:
                self._paused.discard(partition)
                paused.append(partition)
        return paused

    def add(self, partition: PartitionKey, offset: int, timestamp_ms: int, record: Record) -> None:
        self._queues.setdefault(partition, deque()).append((timestamp_ms, offset, record))
        self._queued += 1

    def queued(self) -> int:
        return self._queued

    def flow(self) -> tuple[list[PartitionKey], list[PartitionKey]]:
        """The partitions to pause now (their queue reached `pause_at`) and to resume (a paused one's fell to `resume_at`)."""
        pause = [p for p, queue in self._queues.items() if len(queue) >= self.pause_at and p not in self._paused]
        resume = [p for p in self._paused if len(self._queues.get(p, ())) <= self.resume_at]
        self._paused.update(pause)
        self._paused.difference_update(resume)
        return pause, resume

    def metrics(self) -> str:
        """The count of forced records in Prometheus's text format: above 0, the order across partitions was not kept for them."""
        return ("# HELP whistle_arrival_order_forced_total Raw records handed to ingest while another partition still had records in flight.\n"
                f"# TYPE whistle_arrival_order_forced_total counter\nwhistle_arrival_order_forced_total {self.forced}\n")

    def ready(self, now_s: float, now_ms: int, caught_up: Callable[[PartitionKey], bool], drained: bool) -> list[tuple[PartitionKey, int, Record]]:
        """The records that may go now, in order, as (partition, offset, record); they leave the queues. `now_s`: a
        monotonic clock; `now_ms`: the wall clock, epoch ms, against the append times; `caught_up`: whether a partition
        with nothing queued has nothing more fetched either (asked for each partition whose queue is empty at the start
        or empties meanwhile); `drained`: whether the consumer had no more records at hand (its last fetch returned
        fewer than it asked for)."""
        heads = [(queue[0][0], partition, queue[0][1]) for partition, queue in self._queues.items() if queue]
        heapify(heads)
        out: list[tuple[PartitionKey, int, Record]] = []
        empty = {p: caught_up(p) for p in self._assigned if not self._queues.get(p)}
        in_flight = {p for p, done in empty.items() if not done}
        idle = {p for p, done in empty.items() if done}
        if not in_flight:
            self._blocked_since = None
        elif drained and self._blocked_since is None:
            self._blocked_since = now_s
        waited = drained and self._blocked_since is not None and now_s - self._blocked_since >= self.max_wait_s
        while heads:
            appended, partition, _ = heads[0]
            queue = self._queues[partition]
            if in_flight and not waited and self._queued < self.max_queued:
                break
            if idle and now_ms - appended < self.grace_ms and not in_flight:
                break
            heappop(heads)
            self.forced += bool(in_flight)
            _, offset, record = queue.popleft()
            self._queued -= 1
            out.append((partition, offset, record))
            if queue:
                heappush(heads, (queue[0][0], partition, queue[0][1]))
            elif partition in self._assigned:  # its next record may be earlier than any other queued one
                if caught_up(partition):
                    idle.add(partition)
                else:  # a new wait: it starts now
                    in_flight.add(partition)
                    self._blocked_since, waited = (now_s if drained else None), False
        return out
