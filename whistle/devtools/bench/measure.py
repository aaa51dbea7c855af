"""Measuring: ClickHouse visibility of rows, the recovered worker's probe cases, per-process CPU and RSS, percentiles."""
from __future__ import annotations

import math
import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
from confluent_kafka import Consumer

from schemas.serde import Serde
from sinks.clickhouse import ServerEngine
from whistle.ground.errors import ConfigError, StackError
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

_AUDIT_TABLES = ("raw_events", "case_events", "breaches", "dead_letters")


class CaseEventWatch:
    """Follows the case events (and dead letters) until every probe case has been accepted; `accepted` keeps
    the broker append time (ms) of each probe case's first acceptance, `copies` how many acceptances were read."""

    def __init__(self, settings: Settings, serde: Serde, cases: set[str]) -> None:
        topics = Topics.with_prefix(settings.topic_prefix)
        self.serde, self.waiting, self.total = serde, set(cases), len(cases)
        self.last_seen_ms = 0
        self.accepted: dict[str, int] = {}
        self.copies: dict[str, set[str]] = {}  # case -> the distinct event ids of its acceptances
        self.deadletter = topics.deadletter
        self.consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"bench-watch-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.consumer.subscribe([topics.case_events, topics.deadletter])

    def poll(self, progress: Callable[[int], None]) -> bool:
        for message in self.consumer.consume(500, timeout=0.2):
            if message.error() is not None:
                continue
            record = self.serde.decode(message.value(), validate=False).record
            if message.topic() == self.deadletter:
                raise StackError(f"a probe was dead-lettered by the recovered worker: {record['error_message']}")
            if record["kind"] != "accepted":
                continue
            self.copies.setdefault(record["case_id"], set()).add(record["event_id"])
            if record["case_id"] in self.waiting:
                self.waiting.discard(record["case_id"])
                self.accepted[record["case_id"]] = message.timestamp()[1]
                self.last_seen_ms = max(self.last_seen_ms, message.timestamp()[1])
        progress(self.total - len(self.waiting))
        return not self.waiting

    def expect(self, cases: set[str]) -> None:
        """Wait for these probe cases too."""
        self.waiting |= cases
        self.total += len(cases)

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Sent:
    sent_at: list[float]  # wall time of each produce call
    deliveries: list  # whistle.edges.sdk.Delivery of each message
    acked_at: float


class ClickHouseWatch:
    """Polls ClickHouse every `poll_s` for the highest offset and row count of every partition of the audit tables.

    It reads the sink's batch records (sinks/migrations/002), which the sink writes right after each insert,
    not the tables: grouping millions of rows five times a second cost ClickHouse more CPU than storing them.
    A row is visible from the first poll that saw its batch: `visible_at` returns the wall time that poll
    returned (an upper bound). Failures are kept and raised by `check()` in the waiting thread.
    """

    def __init__(self, settings: Settings, poll_s: float) -> None:
        self.poll_s = poll_s
        self.engine = ServerEngine.from_settings(settings.clickhouse)
        self._sql = ("SELECT table_name, kafka_topic, kafka_partition, max(max_offset), sum(rows) FROM sink_batches "
                     f"WHERE table_name IN {_AUDIT_TABLES} GROUP BY table_name, kafka_topic, kafka_partition")
        self._seen: dict[tuple[str, str, int], tuple[list[float], list[int]]] = {}
        self._totals: dict[str, int] = {t: 0 for t in _AUDIT_TABLES}
        self._history: tuple[list[float], list[int]] = ([], [])
        self._query_s: list[float] = []
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-clickhouse-watch", daemon=True)

    def __enter__(self) -> ClickHouseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = time.time()
            try:
                rows = self.engine.execute(self._sql, name="bench visibility poll")
            except Exception as exc:  # kept and raised in the waiting thread
                self._error = exc
                return
            seen_at = time.time()
            self._query_s.append(seen_at - asked)
            totals = {t: 0 for t in _AUDIT_TABLES}
            for table, topic, partition, max_offset, rows_in_partition in rows:
                totals[table] += rows_in_partition
                times, offsets = self._seen.setdefault((table, topic, partition), ([], []))
                if not offsets or max_offset > offsets[-1]:
                    times.append(seen_at)
                    offsets.append(max_offset)
            self._totals = totals
            total = sum(totals.values())
            if not self._history[1] or total > self._history[1][-1]:
                self._history[0].append(seen_at)
                self._history[1].append(total)
            self._stop.wait(max(0.0, self.poll_s - (time.time() - asked)))

    def check(self) -> None:
        if self._error is not None:
            raise StackError(f"polling ClickHouse failed: {self._error}") from self._error

    def total(self, table: str) -> int:
        return self._totals[table]

    def visible_at(self, table: str, topic: str, partition: int, offset: int) -> float:
        times, offsets = self._seen[(table, topic, partition)]
        return times[bisect_left(offsets, offset)]

    def first_time_total(self, rows: int) -> float:
        times, totals = self._history
        return times[bisect_left(totals, rows)]

    def steady_rows_per_s(self, rows: int, low: float = 0.1, high: float = 0.9) -> float | None:
        """Rows per second between the first polls that saw `low` and `high` of `rows` rows: the run's slope without
        its start-up and its tail (the last flushes, the last poll), which dominate a short run. None: too few polls."""
        times, totals = self._history
        first, last = bisect_left(totals, low * rows), bisect_left(totals, high * rows)
        if last >= len(totals) or last <= first:
            return None
        return (totals[last] - totals[first]) / (times[last] - times[first])

    def mean_query_ms(self) -> float:
        return round(sum(self._query_s) / len(self._query_s) * 1000, 1) if self._query_s else 0.0


class ProcessUsage:
    """CPU seconds and peak resident memory of named processes over a phase (psutil, sampled every 0.5 s)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._processes: dict[str, psutil.Process] = {}
        self._cpu_start: dict[str, float] = {}
        self._cpu: dict[str, float] = {}
        self._peak: dict[str, int] = {}
        self._window = [time.monotonic(), time.monotonic()]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-usage", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        process = psutil.Process(pid)
        self._processes[name] = process
        self._cpu_start[name] = _cpu_s(process)
        self._sample(name, process)

    def __enter__(self) -> ProcessUsage:
        self._window[0] = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for name, process in list(self._processes.items()):
            self._sample(name, process)
        self._window[1] = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name, process in list(self._processes.items()):
                self._sample(name, process)

    def _sample(self, name: str, process: psutil.Process) -> None:
        try:
            with process.oneshot():
                self._cpu[name] = _cpu_s(process)
                self._peak[name] = max(self._peak.get(name, 0), process.memory_info().rss)
        except psutil.Error:  # the process has exited: its last sample stands
            pass

    def figures(self) -> dict[str, dict[str, float]]:
        """Per process: CPU seconds while watched, that as a share of the watched wall time (100 = one core), peak RSS in MB."""
        out = {}
        wall_s = self._window[1] - self._window[0]
        for name in self._processes:
            cpu = self._cpu.get(name, self._cpu_start[name]) - self._cpu_start[name]
            out[name] = {"cpu_s": round(cpu, 2), "cpu_pct": round(100 * cpu / wall_s) if wall_s > 0 else None,
                         "peak_rss_mb": _mb(self._peak.get(name, 0))}
        return out


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _mb(size: int) -> float:
    return round(size / 2**20, 1)


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """Nearest-rank p50/p90/p99, the minimum and maximum, in the values' unit, and how many values."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "min": None, "p50": None, "p90": None, "p99": None, "max": None}

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 1)

    return {"count": len(ordered), "min": round(ordered[0], 1), "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(ordered[-1], 1)}


def _half_rate(report: dict[str, Any]) -> float:
    for phase, key in (("e2e", "events_per_s"), ("backlog", "stream_events_per_s")):
        if phase in report:
            return report[phase][key] / 2
    raise ConfigError("the latency phase needs the e2e (or backlog) phase first, or --latency-rate", field="latency_rate")
