"""`whistle bench`: Whistle's performance figures, measured on this machine against the real Kafka and ClickHouse.

A benchmark that prints figures (and writes them as JSON), not a timed test: it asserts nothing about
speed. One run pre-generates N simulated events once (`whistle.devtools.simulate`, validated and encoded as
the SDK would), then measures, each phase on a topic prefix and ClickHouse database of its own so
that phases and runs never mix:

- pipeline  the pure pipeline functions (`Ingestor`, `CaseProcessor`) in this process, no Kafka:
            the domain code's own ceiling;
- e2e       all N events published at full speed with the SDK while `whistle worker` process(es) and
            `whistle sink` run: events/s from the first produce to the moment ClickHouse shows every
            row the run caused (raw_events, case_events, breaches, dead_letters); the stream stage's
            share ends at the broker append time of the last case event;
- backlog   the same N events preloaded into fresh raw topics: first a plain confluent-kafka
            consume -> produce passthrough (one process) copies them (the machine's ceiling), then
            whistle worker(s) drain them (the stream stage alone); ratio whistle / passthrough, in
            events/s and in events per CPU-second;
- latency   the same events at half the e2e rate: produced (the producer's timestamp) -> visible in
            ClickHouse, for the raw row and for the case events each event caused;
- breach    emergency cases whose accept deadline falls during the run, with the clock service
            (`whistle.edges.clock.run_clock`, 0.2 s) ticking in real time: broker append time of each
            breach minus the wall time at which the pipeline clock reached its deadline;
- recovery  a worker's case-state changelog holding M open cases, then a fresh worker after a crash:
            seconds from its start until it has processed a new record on every partition, and its RSS.

How "visible" is measured: a poller queries ClickHouse every `poll_s` for the highest offset (and
row count) of every partition of every audit table, and stamps what it sees with the wall time the
query returned. A row's visibility time is the first poll that saw it, so every latency is an upper
bound that includes up to one poll interval of detection delay. Broker-side times use topics set
to `message.timestamp.type=LogAppendTime` (only the bench's own derived topics are changed).

The recovery changelog is written by the bench, not by running M reports through a worker (hours at
this scale, and duplicate merging would fold nearby reports into one case): each case's state comes
from the domain functions the case processor uses (`open_case`, `evolve`, `handle_action`, `MergeIndex.open_case`),
and it is written as the three records `CaseProcessor` writes when it opens a case (`open:`, `case:`,
`clock:`), to the changelog topic the worker declared, at the partition of the case's key.

Machine: all processes (Kafka, ClickHouse, workers, sink, this process) share the machine; the
report names it and its load average, and lists each process's CPU seconds and peak RSS
(psutil, sampled every 0.5 s).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import platform
import subprocess
import sys
import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.processes import WhistleProcess, spawn, wait_until
from infra.provision import provision_all
from infra.stack import LocalStack
from infra.topics import partitions_of
from schemas.serde import Serde
from sinks.clickhouse import ServerEngine
from streams.changelog import changelog_topic
from streams.domain.calendar import load_calendar
from streams.domain.case import Status, evolve, handle_action, open_case
from streams.domain.enrich import Enricher, case_id_for, case_partition_key
from streams.domain.merge import MergeIndex
from streams.domain.model import ActionKind, EnrichedReport, HandlingAction
from streams.domain.normalize import normalize_app_report, normalize_camera, normalize_hotline
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import DistrictReference, load_reference
from streams.domain.sla import load_policies, policy_in_force
from streams.pipeline import CaseProcessor, Ingestor, partition_for_key
from whistle.devtools.feed import NAMESPACE, source_record
from whistle.devtools.harness import end_offsets, group_members, read_all, spawn_worker
from whistle.devtools.simulate import SimConfig, SimEvent, simulate
from whistle.edges.clock import Timeline, run_clock, write_ticks
from whistle.edges.sdk import PRODUCER_DEFAULTS, Publisher
from whistle.ground.deadletter import Position
from whistle.ground.errors import ConfigError, StackError, WhistleError
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings
from whistle.ground.times import to_epoch_ms, utc_now

PHASES = ("pipeline", "e2e", "backlog", "latency", "breach", "recovery")
MILLION = 1_000_000
# The simulated period starts on a Monday (city time) inside the business calendar's published years.
SIM_START = datetime(2026, 1, 4, 16, 0, tzinfo=UTC)
# Open cases of the recovery phase are opened within this window of pipeline time (Monday 10:00 city
# time onwards): shorter than any accept warning, so recovering them fires no deadline.
RECOVERY_START = datetime(2026, 3, 9, 2, 0, tzinfo=UTC)
RECOVERY_WINDOW = timedelta(minutes=10)
TARGETS = {"e2e_events_per_s": 20_000, "latency_p99_ms": 2_000, "breach_p99_ms": 1_000, "recovery_rss_mb": 1_536, "recovery_s": 60}
_APP_ACTION = f"{NAMESPACE}.HandlingAction"
_CAUSE_FIELDS = {"CameraDetection": ("camera:", "detection_id"), "HotlineTicket": ("hotline:", "ticket_id"),
                 "ResidentReport": ("app:", "report_id"), "HandlingAction": ("", "action_id")}
_AUDIT_TABLES = ("raw_events", "case_events", "breaches", "dead_letters")


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how much. `whistle bench --million` sets open_cases=MILLION."""

    events: int = 50_000  # pre-generated simulated events, used by every phase
    reports_only: bool = False  # leave out the handling units' actions
    workers: int = 1  # `whistle worker` processes in the e2e, backlog, latency and breach phases
    latency_seconds: float = 20.0  # how long the half-rate phase publishes (capped by `events`)
    latency_rate: float | None = None  # events/s for the latency phase; default: half the e2e rate
    breach_cases: int = 200  # emergency reports whose accept deadline falls during the breach phase
    breach_spread_s: float = 20.0  # their deadlines spread over this many seconds of the run
    open_cases: int = 100_000  # open cases in the recovered worker's changelog
    seed: int = 7
    phases: tuple[str, ...] = PHASES
    json_path: Path | None = None  # default: <state dir>/bench/<run id>.json
    keep: bool = False  # keep the bench's topics and databases (default: deleted at the end)
    timeout_s: float = 600.0  # bound of every wait

    def __post_init__(self) -> None:
        unknown = sorted(set(self.phases) - set(PHASES))
        if unknown:
            raise ConfigError(f"unknown bench phase {unknown[0]!r}; phases are {', '.join(PHASES)}", field="phases")
        if self.events < 1 or self.workers < 1 or self.open_cases < 1 or self.breach_cases < 1:
            raise ConfigError("events, workers, open_cases and breach_cases must be at least 1", field="events")


@dataclass(frozen=True, slots=True)
class Message:
    """One pre-encoded raw record, as the SDK sends it, and the cause id its case events will name."""

    source: str
    key: bytes
    value: bytes
    cause_id: str


def run_bench(settings: Settings, options: BenchOptions, console: Console) -> dict[str, Any]:
    """Run the selected phases, print the figures as tables, write them as JSON; returns the report."""
    bench = _Bench(settings, options, console)
    try:
        report = bench.run()
    finally:
        bench.close()
    print_report(report, console)
    path = options.json_path or settings.stack.state_dir / "bench" / f"{report['run_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["json_path"] = str(path)
    console.print(f"[dim]figures written to {path}[/dim]")
    return report


# -- the run ------------------------------------------------------------------------------------------


class _Bench:
    def __init__(self, settings: Settings, options: BenchOptions, console: Console) -> None:
        self.settings, self.options, self.console = settings, options, console
        self.run_id = f"{time.strftime('%m%d%H%M')}{uuid.uuid4().hex[:4]}"
        self.prefix = f"{settings.topic_prefix}bench{self.run_id}"
        self.dir = settings.stack.state_dir / "bench" / self.run_id
        self.serde = Serde.from_settings(settings)
        self.reference = load_reference()
        self.processes: list[WhistleProcess] = []
        self.phase_settings: list[Settings] = []
        self.report: dict[str, Any] = {"run_id": self.run_id, "started_at": utc_now().isoformat(timespec="seconds"),
                                       "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}}
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)

    def run(self) -> dict[str, Any]:
        """Every selected phase in order. A phase that fails (a process dying, a bounded wait running out) is
        recorded under `errors` with what went wrong, its own processes are stopped, and the run goes on."""
        report, phases = self.report, self.options.phases
        report["machine"] = describe_machine(self.settings)
        report["errors"] = {}
        with self.progress:
            events, messages = self._messages()
            work = {"pipeline": lambda: self._step("pipeline: the pure functions in this process",
                                                   lambda: pipeline_rate(self.settings, self.reference, messages)),
                    "e2e": lambda: self._e2e(messages), "backlog": lambda: self._backlog(messages),
                    "latency": lambda: self._latency(messages), "breach": lambda: self._breach(events),
                    "recovery": lambda: self._recovery(events)}
            for phase in PHASES:
                if phase not in phases:
                    continue
                try:
                    report[phase] = work[phase]()
                except (WhistleError, KafkaException) as exc:
                    report["errors"][phase] = str(exc)
                    self.console.print(f"[red]bench phase {phase} failed: {exc}[/red]")
                    for process in self.processes:
                        process.stop(10)
        report["targets"] = judge_targets(report)
        return report

    def close(self) -> None:
        for process in self.processes:
            process.stop(10)
        if not self.options.keep:
            self._delete_phase_data()

    # -- helpers -----------------------------------------------------------------------------------

    def _step(self, description: str, work: Callable[[], Any]) -> Any:
        task = self.progress.add_task(description, total=None)
        try:
            return work()
        finally:
            self.progress.update(task, total=1, completed=1)

    def _messages(self) -> tuple[list[SimEvent], list[Message]]:
        """The run's simulated events, validated and encoded once (outside every timed window)."""
        task = self.progress.add_task(f"simulating and encoding {self.options.events:,} events", total=self.options.events)
        events, messages = [], []
        for event in generate_events(self.reference, self.options):
            events.append(event)
            messages.append(encode_event(self.serde, event))
            if len(messages) % 5000 == 0:
                self.progress.update(task, completed=len(messages))
        self.progress.update(task, completed=len(messages))
        counts: dict[str, int] = {}
        for event in events:
            counts[event.record_type] = counts.get(event.record_type, 0) + 1
        self.report["messages"] = {"events": len(messages), "by_type": counts, "simulated_from": events[0].at.isoformat(),
                                   "simulated_to": events[-1].at.isoformat(),
                                   "mean_bytes": round(sum(len(m.value) for m in messages) / len(messages))}
        return events, messages

    def _phase(self, name: str) -> Settings:
        """Settings of a phase: its own topic prefix and ClickHouse database (written as the admin user, so that
        the ingest user's rights stay limited to the production database), provisioned like production."""
        ch = self.settings.clickhouse
        clickhouse = replace(ch, database=f"bench_{self.run_id}_{name}", user=ch.admin_user, password=ch.admin_password)
        settings = replace(self.settings, topic_prefix=f"{self.prefix}{name}.", clickhouse=clickhouse)
        self.phase_settings.append(settings)
        provision_all(settings)
        topics = Topics.with_prefix(settings.topic_prefix)
        set_log_append_time(settings, [topics.inbox, topics.case_events, topics.breaches])
        return settings

    def _spawn(self, settings: Settings, name: str, args: list[str]) -> WhistleProcess:
        process = spawn(settings, name, args, self.dir / "logs")
        self.processes.append(process)
        return process

    def _workers(self, settings: Settings, phase: str, count: int | None = None) -> list[WhistleProcess]:
        workers = []
        for n in range(1, (count or self.options.workers) + 1):
            worker = spawn_worker(settings, f"bench-{phase}-{n}", self.dir / "logs")
            self.processes.append(worker)
            workers.append(worker)
        return workers

    def _running_pipeline(self, phase: str) -> tuple[Settings, Topics, list[WhistleProcess], WhistleProcess]:
        """A phase's own deployment with its worker(s) and sink started, in their groups and warmed up."""
        settings = self._phase(phase)
        workers, sink = self._workers(settings, phase), self._spawn(settings, f"sink-{phase}", ["sink"])
        self._wait_groups(settings, workers, sink)
        self._warm_up(settings, workers)
        return settings, Topics.with_prefix(settings.topic_prefix), workers, sink

    def _wait(self, check: Callable[[], bool], what: str, processes: list[WhistleProcess], interval_s: float = 0.2) -> None:
        """Wait for `check` (bounded); fail at once with its log when a process of the phase died."""

        def ready() -> bool:
            try:
                if check():
                    return True
            except KafkaException as exc:  # e.g. a partition whose leader is moving: not ready yet, the wait stays bounded
                if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION:
                    raise
            for process in processes:
                if not process.alive():
                    raise StackError(f"{process.name} exited (code {process.popen.returncode}) while waiting for {what}; "
                                     f"log {process.log}:\n{process.tail(15)}")
            return False

        wait_until(ready, self.options.timeout_s, what, interval_s)

    def _wait_groups(self, settings: Settings, workers: list[WhistleProcess], sink: WhistleProcess | None) -> None:
        groups = [(Groups.with_prefix(settings.topic_prefix).cases, len(workers))] + ([(Groups.with_prefix(settings.topic_prefix).sink, 1)] if sink else [])
        for group, members in groups:
            self._step(f"waiting for {members} member(s) of {group}",
                       lambda: self._wait(lambda: group_members(settings, group) >= members, f"group {group}", workers + ([sink] if sink else []), 0.5))

    def _warm_up(self, settings: Settings, workers: list[WhistleProcess]) -> None:
        """Wait until the workers really process records: Faust keeps its partitions paused for a while after the
        group is stable. One clock tick (before the simulated period: it fires nothing) into every case-stream
        partition, then wait until the workers have committed it."""
        topics = Topics.with_prefix(settings.topic_prefix)
        with Publisher(settings) as publisher:
            write_ticks(publisher, publisher.serde, topics, partitions_of(topics.inbox, settings.topic_prefix), SIM_START - timedelta(days=1))
        group = Groups.with_prefix(settings.topic_prefix).cases
        self._step("waiting for the workers to process a warm-up tick",
                   lambda: self._wait(lambda: drained(settings, group, [topics.inbox]), "the workers to process a warm-up tick", workers, 0.5))

    def _stop(self, processes: list[WhistleProcess]) -> None:
        for process in processes:
            process.stop(30)

    def _usage(self, settings: Settings, processes: list[WhistleProcess]) -> ProcessUsage:
        usage = ProcessUsage()
        usage.watch("bench (publisher, pollers)", os.getpid())
        for process in processes:
            usage.watch(process.name, process.popen.pid)
        for name, pid in stack_pids(settings).items():
            usage.watch(name, pid)
        return usage

    def _delete_phase_data(self) -> None:
        if not self.phase_settings:
            return
        admin = AdminClient({**self.settings.kafka.librdkafka(), "log_level": 0})
        try:
            names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(self.prefix)]
            if names:
                for future in admin.delete_topics(names, operation_timeout=60).values():
                    future.result()
                wait_until(lambda: not set(names) & set(admin.list_topics(timeout=30).topics), 60, f"the deletion of {len(names)} bench topics")
        except (KafkaException, StackError) as exc:
            self.console.print(f"[yellow]could not delete the bench topics ({exc}); delete topics {self.prefix}* by hand[/yellow]")
        ch = self.settings.clickhouse
        engine = ServerEngine.from_settings(replace(ch, user=ch.admin_user, password=ch.admin_password), database="default")
        try:
            for settings in self.phase_settings:
                engine.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
        finally:
            engine.close()

    # -- e2e ---------------------------------------------------------------------------------------

    def _e2e(self, messages: list[Message]) -> dict[str, Any]:
        settings, topics, workers, sink = self._running_pipeline("e2e")
        with self._usage(settings, workers + [sink]) as usage, ClickHouseWatch(settings, poll_s=0.2) as watch:
            with Publisher(settings) as publisher:
                sent = self._publish(publisher, topics, messages, "e2e: publishing at full speed")
            expected = self._await_visible(settings, watch, workers, sink, len(messages), "e2e")
        visible_at = watch.first_time_total(sum(expected.values()))
        last_case_event = edge_timestamp(settings, topics.case_events, last=True) / 1000
        self._stop(workers + [sink])
        first = sent.sent_at[0]
        count = len(messages)
        return {"events": count, "workers": len(workers),
                "publish_s": round(sent.acked_at - first, 3), "publish_events_per_s": round(count / (sent.acked_at - first)),
                "visible_s": round(visible_at - first, 3), "events_per_s": round(count / (visible_at - first)),
                "rows_per_s": round(sum(expected.values()) / (visible_at - first)),
                "stream_s": round(last_case_event - first, 3), "stream_events_per_s": round(count / (last_case_event - first)),
                "rows": expected, "poll_s": watch.poll_s, "processes": usage.figures()}

    def _publish(self, publisher: Publisher, topics: Topics, messages: list[Message], description: str,
                 rate: float | None = None) -> Sent:
        """Produce every message (at `rate` per second, or as fast as the SDK takes them); returns send times and positions."""
        task = self.progress.add_task(description, total=len(messages))
        topic_of = {"camera": topics.camera, "hotline": topics.hotline, "app": topics.app}
        sent_at, futures = [], []
        started = time.time()
        for n, message in enumerate(messages):
            if rate is not None:
                ahead = started + n / rate - time.time()
                if ahead > 0.002:
                    time.sleep(ahead)
            sent_at.append(time.time())
            futures.append(publisher.produce_raw(topic_of[message.source], message.key, message.value))
            if n % 2000 == 0:
                self.progress.update(task, completed=n)
        publisher.flush()
        acked_at = time.time()
        self.progress.update(task, completed=len(messages))
        return Sent(sent_at, [future.result(timeout=0) for future in futures], acked_at)

    def _await_visible(self, settings: Settings, watch: ClickHouseWatch, workers: list[WhistleProcess], sink: WhistleProcess,
                       raw_count: int, phase: str) -> dict[str, int]:
        """Wait until the workers have consumed everything and ClickHouse shows every record; the rows per table."""
        topics = Topics.with_prefix(settings.topic_prefix)
        group = Groups.with_prefix(settings.topic_prefix).cases
        task = self.progress.add_task(f"{phase}: rows visible in ClickHouse", total=raw_count)
        everything = workers + [sink]

        def raw_visible() -> bool:
            watch.check()
            self.progress.update(task, completed=watch.total("raw_events"))
            return watch.total("raw_events") >= raw_count

        self._wait(raw_visible, f"{raw_count:,} raw rows in ClickHouse", everything)
        self._wait(lambda: drained(settings, group, [*topics.sources, topics.inbox]), "the workers to consume every record", everything, 0.5)
        expected = {"raw_events": sum(sum(end_offsets(settings, t).values()) for t in topics.sources),
                    "case_events": sum(end_offsets(settings, topics.case_events).values()),
                    "breaches": sum(end_offsets(settings, topics.breaches).values()),
                    "dead_letters": sum(end_offsets(settings, topics.deadletter).values())}
        total = sum(expected.values())
        self.progress.update(task, total=total)

        def all_visible() -> bool:
            watch.check()
            self.progress.update(task, completed=sum(watch.total(t) for t in _AUDIT_TABLES))
            return all(watch.total(table) >= rows for table, rows in expected.items())

        self._wait(all_visible, f"{total:,} rows in ClickHouse", everything)
        return expected

    # -- backlog: the stream stage alone, and the passthrough ----------------------------------------

    def _backlog(self, messages: list[Message]) -> dict[str, Any]:
        settings = self._phase("backlog")
        topics = Topics.with_prefix(settings.topic_prefix)
        with Publisher(settings) as publisher:
            self._publish(publisher, topics, messages, "backlog: preloading the raw topics")
        copy_topic = f"{settings.topic_prefix}bench.passthrough"
        create_topic(settings, copy_topic, partitions_of(topics.inbox, settings.topic_prefix))
        passthrough = self._passthrough(settings, topics, copy_topic, len(messages))

        workers = self._workers(settings, "backlog")
        self._wait_groups(settings, workers, None)
        group = Groups.with_prefix(settings.topic_prefix).cases
        task = self.progress.add_task("backlog: whistle worker(s) draining the raw topics and the case stream", total=None)
        with self._usage(settings, workers) as usage:
            def done() -> bool:
                consumed, total = group_lag(settings, group, [*topics.sources, topics.inbox])
                self.progress.update(task, total=total, completed=consumed)
                return consumed == total

            self._wait(done, "the workers to drain the backlog", workers, 1.0)
        first = edge_timestamp(settings, topics.inbox, last=False) / 1000
        last = edge_timestamp(settings, topics.case_events, last=True) / 1000
        self._stop(workers)
        count = len(messages)
        stream_rate = count / (last - first)
        whistle_cpu = sum(v["cpu_s"] for k, v in usage.figures().items() if k.startswith("bench-backlog"))
        return {"events": count, "workers": len(workers), "stream_s": round(last - first, 3), "stream_events_per_s": round(stream_rate),
                "stream_events_per_cpu_s": round(count / whistle_cpu) if whistle_cpu else None,
                "passthrough": passthrough, "ratio": round(stream_rate / passthrough["events_per_s"], 4),
                "cpu_ratio": round(count / whistle_cpu / passthrough["events_per_cpu_s"], 4) if whistle_cpu and passthrough["events_per_cpu_s"] else None,
                "processes": usage.figures()}

    def _passthrough(self, settings: Settings, topics: Topics, target: str, count: int) -> dict[str, Any]:
        """Copy the raw topics to `target` in one plain confluent-kafka process; rate from the broker's append times."""
        log = self.dir / "logs" / "passthrough.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:  # the connection settings go over stdin: no secret on a command line
            popen = subprocess.Popen([sys.executable, "-c", _PASSTHROUGH_MAIN], stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        child = WhistleProcess("passthrough", popen, log)
        self.processes.append(child)
        popen.stdin.write(json.dumps([settings.kafka.librdkafka(), list(topics.sources), target, count, self.options.timeout_s]).encode())
        popen.stdin.close()
        task = self.progress.add_task("backlog: plain passthrough copying the raw topics", total=count)
        usage = ProcessUsage()
        usage.watch("passthrough", popen.pid)
        for name, pid in stack_pids(settings).items():
            usage.watch(name, pid)
        with usage:
            def copied() -> bool:
                done = sum(end_offsets(settings, target).values())
                self.progress.update(task, completed=done)
                return done >= count

            self._wait(copied, f"the passthrough to copy {count:,} records", [child], 0.5)
            popen.wait(60)
        seconds = json.loads(log.read_text().splitlines()[-1])["seconds"]
        figures = usage.figures()
        cpu = figures["passthrough"]["cpu_s"]
        return {"events": count, "seconds": round(seconds, 3), "events_per_s": round(count / seconds),
                "events_per_cpu_s": round(count / cpu) if cpu else None, "processes": figures}

    # -- latency at half rate ----------------------------------------------------------------------

    def _latency(self, messages: list[Message]) -> dict[str, Any]:
        rate = self.options.latency_rate or _half_rate(self.report)
        count = max(1, min(len(messages), int(rate * self.options.latency_seconds)))
        chosen = messages[:count]
        settings, topics, workers, sink = self._running_pipeline("latency")
        with self._usage(settings, workers + [sink]) as usage, ClickHouseWatch(settings, poll_s=0.05) as watch:
            with Publisher(settings) as publisher:
                sent = self._publish(publisher, topics, chosen, f"latency: publishing at {rate:,.0f} events/s", rate=rate)
            expected = self._await_visible(settings, watch, workers, sink, count, "latency")
        self._stop(workers + [sink])
        raw_ms = []
        for message_sent_at, delivery in zip(sent.sent_at, sent.deliveries):
            seen = watch.visible_at("raw_events", delivery.topic, delivery.partition, delivery.offset)
            raw_ms.append((seen - message_sent_at) * 1000)
        sent_at_of_cause = {message.cause_id: at for message, at in zip(chosen, sent.sent_at)}
        effect_seen: dict[str, float] = {}
        effect_appended: dict[str, float] = {}
        for record in read_all(settings, [topics.case_events], timeout_s=self.options.timeout_s):
            cause = self.serde.decode(record.value(), validate=False).record["cause_id"]
            if cause in sent_at_of_cause:
                seen = watch.visible_at("case_events", record.topic(), record.partition(), record.offset())
                effect_seen[cause] = max(effect_seen.get(cause, 0.0), seen)
                effect_appended[cause] = max(effect_appended.get(cause, 0.0), record.timestamp()[1] / 1000)
        case_ms = [(seen - sent_at_of_cause[cause]) * 1000 for cause, seen in effect_seen.items()]
        by_second: dict[int, list[float]] = {}  # flat if the rate is sustainable, growing if a backlog builds up
        for cause, seen in effect_seen.items():
            by_second.setdefault(int(sent_at_of_cause[cause] - sent.sent_at[0]), []).append((seen - sent_at_of_cause[cause]) * 1000)
        appended_ms = [(at - sent_at_of_cause[cause]) * 1000 for cause, at in effect_appended.items()]
        achieved = count / (sent.sent_at[-1] - sent.sent_at[0]) if count > 1 else rate
        return {"target_rate_per_s": round(rate), "achieved_rate_per_s": round(achieved), "events": count,
                "raw_row_visible_ms": percentiles(raw_ms), "case_events_in_kafka_ms": percentiles(appended_ms),
                "case_events_visible_ms": percentiles(case_ms),
                "case_events_visible_p50_ms_by_second": [percentiles(by_second[s])["p50"] for s in sorted(by_second)],
                "events_with_case_events": len(case_ms), "rows": expected, "poll_s": watch.poll_s,
                "mean_poll_query_ms": watch.mean_query_ms(), "processes": usage.figures()}

    # -- breach latency with the clock service in real time ------------------------------------------

    def _breach(self, events: list[SimEvent]) -> dict[str, Any]:
        settings = self._phase("breach")
        topics = Topics.with_prefix(settings.topic_prefix)
        pipeline_start = utc_now().replace(microsecond=0)
        reports = emergency_reports(self.reference, events, self.options.breach_cases, pipeline_start, self.options.breach_spread_s)
        if not reports:
            raise ConfigError("the simulated events hold no emergency report: raise --events", field="events")
        workers = self._workers(settings, "breach")
        self._wait_groups(settings, workers, None)
        group = Groups.with_prefix(settings.topic_prefix).cases
        with Publisher(settings) as publisher:
            sending = [publisher.submit(event.source, source_record(event)) for event in reports]
            for future in sending:
                future.result(timeout=60)
        self._step(f"breach: {len(reports)} emergency reports opening cases before the clock starts",
                   lambda: self._wait(lambda: drained(settings, group, [*topics.sources, topics.inbox]), "the reports to open cases", workers, 0.5))
        partitions = partitions_of(topics.inbox, settings.topic_prefix)
        stop = threading.Event()
        wall_start = time.time()
        timeline = Timeline(pipeline_start, wall_start)
        errors: list[BaseException] = []

        def clock() -> None:
            try:
                with Publisher(settings) as ticks:
                    run_clock(ticks, ticks.serde, topics, partitions, timeline, interval_s=0.2, should_stop=stop.is_set)
            except Exception as exc:  # reported below: a dead clock invalidates the phase
                errors.append(exc)

        ticker = threading.Thread(target=clock, name="bench-clock", daemon=True)
        with self._usage(settings, workers) as usage:
            ticker.start()
            run_for = self.options.breach_spread_s + 5.0
            task = self.progress.add_task("breach: clock ticking in real time, deadlines falling due", total=round(run_for))
            while time.time() - wall_start < run_for and not errors:
                time.sleep(0.5)
                self.progress.update(task, completed=round(time.time() - wall_start))
            stop.set()
            ticker.join(10)
            time.sleep(1.0)
        if errors:
            raise StackError(f"the clock service failed: {errors[0]}") from errors[0]
        self._stop(workers)
        opened = sum(1 for r in read_all(settings, [topics.case_events], timeout_s=self.options.timeout_s)
                     if self.serde.decode(r.value(), validate=False).record["kind"] == "opened")
        late_ms, warnings = [], 0
        for record in read_all(settings, [topics.breaches], timeout_s=self.options.timeout_s):
            breach = self.serde.decode(record.value(), validate=False).record
            if breach["kind"] == "warning":
                warnings += 1
            elif breach["breach_type"] == "accept_overdue":
                reached = timeline.wall_for(breach["deadline"])
                late_ms.append(record.timestamp()[1] - reached * 1000)
        return {"reports": len(reports), "cases_opened": opened, "breaches": len(late_ms), "warnings": warnings,
                "tick_interval_s": 0.2, "breach_after_deadline_ms": percentiles(late_ms),
                "processes": usage.figures()}

    # -- recovery of a worker holding many open cases ----------------------------------------------

    def _recovery(self, events: list[SimEvent]) -> dict[str, Any]:
        settings = self._phase("recovery")
        topics = Topics.with_prefix(settings.topic_prefix)
        count = self.options.open_cases
        first = self._workers(settings, "recovery", 1)
        self._wait_groups(settings, first, None)
        idle_rss = psutil.Process(first[0].popen.pid).memory_info().rss
        first[0].kill()  # a crash: the state below is what the next worker must recover
        changelog = changelog_topic(settings)
        if changelog not in AdminClient({**settings.kafka.librdkafka(), "log_level": 0}).list_topics(timeout=30).topics:
            raise StackError(f"the worker did not declare its changelog topic {changelog}")
        partitions = partitions_of(topics.inbox, settings.topic_prefix)
        task = self.progress.add_task(f"recovery: writing {count:,} open cases to {changelog}", total=count)
        began = time.time()
        loaded = write_open_cases(settings, changelog, open_case_writes(self.reference, events, count, partitions),
                                  lambda n: self.progress.update(task, completed=n))
        load_s = time.time() - began
        self.progress.update(task, completed=count)

        spawned_at = time.time()
        worker = spawn_worker(settings, first[0].name, self.dir / "logs")  # the same id: a restarted worker (static membership)
        self.processes.append(worker)
        usage = self._usage(settings, [worker])
        with usage:
            with Publisher(settings) as publisher:
                sending = [publisher.submit("app", {"event": (_APP_ACTION, probe)}) for probe in loaded.probes.values()]
                for future in sending:
                    future.result(timeout=60)
            probe_cases = {probe["case_id"] for probe in loaded.probes.values()}
            task = self.progress.add_task("recovery: a fresh worker recovering, then accepting one case per partition", total=len(probe_cases))
            watcher = CaseEventWatch(settings, self.serde, probe_cases)
            try:
                self._wait(lambda: watcher.poll(lambda n: self.progress.update(task, completed=n)), "the recovered worker to accept the probe cases", [worker])
            except StackError as exc:
                rss = _mb(psutil.Process(worker.popen.pid).memory_info().rss) if worker.alive() else None
                raise StackError(f"{exc}: {len(watcher.waiting)} of {len(probe_cases)} probes unprocessed, worker RSS {rss} MB; "
                                 f"its log: {worker.log}") from exc
            finally:
                watcher.close()
            recovered_at = watcher.last_seen_ms / 1000
            time.sleep(2.0)  # let the worker settle (garbage, buffers) before reading its resident size
        rss_after = psutil.Process(worker.popen.pid).memory_info().rss
        figures = usage.figures()
        self._stop([worker])
        return {"open_cases": count, "partitions_with_cases": len(loaded.probes), "changelog_records": loaded.records,
                "changelog_mb": round(loaded.bytes / 2**20, 1), "load_s": round(load_s, 1),
                "recovery_s": round(recovered_at - spawned_at, 2), "rss_idle_mb": _mb(idle_rss), "rss_after_mb": _mb(rss_after),
                "peak_rss_mb": figures[worker.name]["peak_rss_mb"],
                "bytes_per_case": round((rss_after - idle_rss) / count), "processes": figures}


# -- the messages ---------------------------------------------------------------------------------------


def generate_events(reference: DistrictReference, options: BenchOptions) -> Iterator[SimEvent]:
    """The first `options.events` simulated events (of the realistic district load, as many days as needed)."""
    per_day = 2_800 if options.reports_only else 6_200  # events a simulated day of 2,000 incidents yields
    config = SimConfig(seed=options.seed, start=SIM_START, days=options.events / per_day * 1.5 + 1)
    events = simulate(reference, config)
    if options.reports_only:
        events = (e for e in events if e.record_type != "HandlingAction")
    return itertools.islice(events, options.events)


def encode_event(serde: Serde, event: SimEvent) -> Message:
    """Validate and encode a simulated event exactly as `Publisher.submit` does."""
    spec = serde.catalog.topic_for_source(event.source)
    checked = serde.validate(spec.schema, source_record(event))
    key = spec.key_for(checked)
    prefix, id_field = _CAUSE_FIELDS[event.record_type]
    return Message(event.source, key.encode() if isinstance(key, str) else key, serde.encode(spec.schema, checked, validate=False),
                   prefix + event.record[id_field])


def _enriched(reference: DistrictReference, enricher: Enricher, event: SimEvent) -> EnrichedReport:
    """A simulated report through the pipeline's own normalize and enrich functions."""
    if event.source == "camera":
        report = normalize_camera(event.record, reference)
    elif event.source == "hotline":
        report = normalize_hotline(event.record, reference, lambda phone: phone)
    else:
        report = normalize_app_report(event.record, reference, lambda reporter: reporter)
    return enricher.enrich(report)


def emergency_reports(reference: DistrictReference, events: list[SimEvent], wanted: int, pipeline_start: datetime,
                      spread_s: float) -> list[SimEvent]:
    """Emergency reports re-dated so that their accept deadlines fall 2 s .. 2 s + `spread_s` after `pipeline_start`.

    The accept limit is the policy's (elapsed time); a limit counted in working time cannot be placed
    on the wall clock this way and is refused.
    """
    policies, calendar = load_policies(), load_calendar()
    policy = policy_in_force(policies, pipeline_start)
    limit = policy.limits["initial"]["emergency"].accept
    if limit.on_working_time:
        raise ConfigError(f"{policy.file}: the emergency accept limit {limit} counts working time; the breach phase needs elapsed time",
                          field="limits.initial.emergency.accept")
    base_ms = to_epoch_ms(pipeline_start)
    limit_ms = calendar.add(base_ms, limit) - base_ms
    enricher = Enricher(reference)
    chosen = []
    for event in events:
        if event.record_type == "HandlingAction":
            continue
        report = _enriched(reference, enricher, event).report
        if policy.class_of(report.category, report.urgency.value) == "emergency":
            chosen.append(event)
        if len(chosen) == wanted:
            break
    time_field = {"camera": "detected_at", "hotline": "received_at", "app": "reported_at"}
    redated = []
    for n, event in enumerate(chosen):
        due = pipeline_start + timedelta(seconds=2 + spread_s * n / max(1, len(chosen) - 1))
        at = due - timedelta(milliseconds=limit_ms)
        redated.append(replace(event, at=at, record={**event.record, time_field[event.source]: at}))
    return redated


# -- the pure pipeline, in process ------------------------------------------------------------------


def pipeline_rate(settings: Settings, reference: DistrictReference, messages: list[Message]) -> dict[str, Any]:
    """Events/s of `Ingestor` then `CaseProcessor` over the messages, in this process: no Kafka, no Faust."""
    topics = Topics()
    serde = Serde.from_settings(settings)
    partitions = partitions_of(topics.inbox)
    ingestor = Ingestor(serde, reference, PersonalDataHasher(settings.pii_hmac_key), topics)
    cases = CaseProcessor(serde, reference, load_policies(), load_calendar(), topics, partitions)
    topic_of = {"camera": topics.camera, "hotline": topics.hotline, "app": topics.app}
    now = utc_now()
    began = time.perf_counter()
    routed = [ingestor.process(Position(topic_of[m.source], 0, n), m.key, m.value, now) for n, m in enumerate(messages)]
    ingested = time.perf_counter()
    offsets = [0] * partitions
    outputs = 0
    for out in routed:
        if out.topic != topics.inbox:
            continue
        partition = partition_for_key(out.key.decode(), partitions)
        produced, _ = cases.process(Position(topics.inbox, partition, offsets[partition]), out.key, out.value, now)
        offsets[partition] += 1
        outputs += len(produced)
    done = time.perf_counter()
    count = len(messages)
    return {"events": count, "ingest_us_per_event": round((ingested - began) / count * 1e6, 1),
            "cases_us_per_record": round((done - ingested) / max(1, sum(offsets)) * 1e6, 1), "outputs": outputs,
            "dead_letters": count - sum(offsets), "events_per_s": round(count / (done - began))}


# -- the passthrough (a child process) -------------------------------------------------------------------


_PASSTHROUGH_MAIN = "import json, sys; from whistle.devtools.bench import passthrough_main; passthrough_main(*json.load(sys.stdin))"


def passthrough_main(conf: dict[str, str], sources: list[str], target: str, count: int, timeout_s: float) -> None:
    """Consume `sources` and produce every record unchanged to `target`: the plainest Kafka client loop there is,
    with the SDK's producer settings (idempotent, acks=all, lz4) and offsets committed as a consumer would."""
    consumer = Consumer({**conf, "group.id": f"{target}-copier", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({**conf, **PRODUCER_DEFAULTS})
    consumer.subscribe(sources)
    copied, first = 0, None
    deadline = time.monotonic() + timeout_s
    try:
        while copied < count and time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.5)
            if batch and first is None:
                first = time.monotonic()
            for message in batch:
                if message.error() is not None:
                    continue
                while True:
                    try:
                        producer.produce(target, key=message.key(), value=message.value())
                        break
                    except BufferError:
                        producer.poll(0.01)
                copied += 1
            producer.poll(0)
            if batch:
                consumer.commit(asynchronous=True)
        if producer.flush(60):
            raise SystemExit(1)
    finally:
        consumer.close()
    if copied < count:
        raise SystemExit(1)
    print(json.dumps({"seconds": time.monotonic() - first}), flush=True)  # first record consumed -> every copy acknowledged


# -- the recovery changelog ----------------------------------------------------------------------------


@dataclass
class Loaded:
    records: int = 0
    bytes: int = 0
    probes: dict[int, dict[str, Any]] = field(default_factory=dict)  # partition -> an accept action on one of its dispatched cases


def open_case_writes(reference: DistrictReference, events: list[SimEvent], count: int,
                     partitions: int) -> Iterator[tuple[int, bytes, bytes, dict[str, Any] | None]]:
    """(partition, key, value, probe) changelog records of `count` open cases, as `CaseProcessor` writes them when it opens a case.

    States are made by the domain functions the case processor uses (open_case, evolve, handle_action,
    MergeIndex.open_case), without the merge lookup: every case is distinct. Reports come from the simulated events (normalized and enriched by the pipeline's functions),
    renamed so that every case is distinct; every other case is accepted as well, so the states
    mix dispatched and accepted cases. `probe` is an accept action for the (dispatched) case, or None.
    """
    enricher = Enricher(reference)
    pool = [_enriched(reference, enricher, e) for e in events if e.record_type != "HandlingAction"][:10_000]
    if not pool:
        raise ConfigError("the simulated events hold no report to open cases from: raise --events", field="events")
    policy = policy_in_force(load_policies(), RECOVERY_START)
    merge = MergeIndex(reference.gazetteer.normalize)
    step = RECOVERY_WINDOW / count
    probe_at = RECOVERY_START + RECOVERY_WINDOW
    for n in range(count):
        base = pool[n % len(pool)]
        at = RECOVERY_START + step * n
        enriched = replace(base, report=replace(base.report, report_id=f"bench:{n:08d}", occurred_at=at))
        case_id = case_id_for(enriched)
        state = None
        for event in open_case(enriched, case_id, policy.version, at):
            state = evolve(state, event)
        if n % 2:
            accept = HandlingAction(f"bench-accept:{n}", case_id, ActionKind.ACCEPT, state.assignee.unit_id, at)
            for event in handle_action(state, accept, policy.rules):
                state = evolve(state, event)
        partition = partition_for_key(case_partition_key(enriched), partitions)
        probe = None
        if state.status == Status.DISPATCHED:
            probe = {"action_id": f"bench-probe:{n}", "case_id": case_id, "kind": "accept", "unit_id": state.assignee.unit_id,
                     "at": probe_at, "reason": None, "note": None, "rating": None, "extension_hours": None}
        yield partition, f"open:{case_id}".encode(), pickle.dumps(merge.open_case(case_id, enriched)), None
        yield partition, f"case:{case_id}".encode(), pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), probe
        yield partition, f"clock:{partition}".encode(), str(to_epoch_ms(at)).encode(), None


def write_open_cases(settings: Settings, changelog: str, writes: Iterable[tuple[int, bytes, bytes, dict | None]],
                     progress: Callable[[int], None]) -> Loaded:
    """Produce the changelog records (acks=all); returns what was written and one probe per partition."""
    failures: list[str] = []

    def delivered(error, message) -> None:
        if error is not None:
            failures.append(error.str())

    producer = Producer({**settings.kafka.librdkafka(), **PRODUCER_DEFAULTS})
    loaded = Loaded()
    for partition, key, value, probe in writes:
        while True:
            try:
                producer.produce(changelog, key=key, value=value, partition=partition, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        loaded.records += 1
        loaded.bytes += len(key) + len(value)
        if probe is not None:
            loaded.probes[partition] = probe
        if loaded.records % 30_000 == 0:
            producer.poll(0)
            progress(loaded.records // 3)
    if producer.flush(120) or failures:
        raise StackError(f"writing the changelog {changelog} failed: {failures[:1] or 'records left unacknowledged'}")
    return loaded


class CaseEventWatch:
    """Follows the case events (and dead letters) until every probe case has been accepted."""

    def __init__(self, settings: Settings, serde: Serde, cases: set[str]) -> None:
        topics = Topics.with_prefix(settings.topic_prefix)
        self.serde, self.waiting, self.total = serde, set(cases), len(cases)
        self.last_seen_ms = 0
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
            if record["kind"] == "accepted" and record["case_id"] in self.waiting:
                self.waiting.discard(record["case_id"])
                self.last_seen_ms = max(self.last_seen_ms, message.timestamp()[1])
        progress(self.total - len(self.waiting))
        return not self.waiting

    def close(self) -> None:
        self.consumer.close()


# -- measuring -------------------------------------------------------------------------------------------


@dataclass
class Sent:
    sent_at: list[float]  # wall time of each produce call
    deliveries: list  # whistle.edges.sdk.Delivery of each message
    acked_at: float


class ClickHouseWatch:
    """Polls ClickHouse every `poll_s` for the highest offset and row count of every partition of the audit tables.

    A row is visible from the first poll that saw it: `visible_at` returns the wall time that poll
    returned (an upper bound). Failures are kept and raised by `check()` in the waiting thread.
    """

    def __init__(self, settings: Settings, poll_s: float) -> None:
        self.poll_s = poll_s
        self.engine = ServerEngine.from_settings(settings.clickhouse)
        self._sql = " UNION ALL ".join(f"SELECT '{t}', kafka_topic, kafka_partition, max(kafka_offset), count() FROM {t} "
                                       f"GROUP BY kafka_topic, kafka_partition" for t in _AUDIT_TABLES)
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


# -- Kafka helpers ------------------------------------------------------------------------------------------


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


# -- the machine --------------------------------------------------------------------------------------------


def describe_machine(settings: Settings) -> dict[str, Any]:
    """Cores, memory, CPU model, load, and the versions that matter for the figures."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ch = settings.clickhouse
    engine = ServerEngine.from_settings(replace(ch, user=ch.admin_user, password=ch.admin_password), database="default")
    try:
        clickhouse = engine.execute("SELECT version()")[0][0]
    finally:
        engine.close()
    return {"cpu_model": model, "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(), "platform": platform.platform(),
            "kafka": settings.kafka.bootstrap_servers, "kafka_version": settings.stack.kafka_version if stack_pids(settings) else "external",
            "clickhouse_version": clickhouse}


def stack_pids(settings: Settings) -> dict[str, int]:
    """PIDs of the local stack's Kafka broker and ClickHouse server, when this machine runs them."""
    return {("kafka broker" if s.name.startswith("kafka") else "clickhouse server"): s.pid
            for s in LocalStack(settings).status() if s.running and s.pid}


# -- judging and printing -------------------------------------------------------------------------------


def judge_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The design targets next to what this run measured. `met` is None where the run cannot tell
    (a phase not run is left out; the recovery targets are stated for a million cases)."""
    judged = []

    def judge(target: str, measured: Any, unit: str, met: bool | None) -> None:
        judged.append({"target": target, "measured": f"{measured} {unit}", "met": met})

    if "e2e" in report:
        rate = report["e2e"]["events_per_s"]
        judge(f"{TARGETS['e2e_events_per_s']:,} events/s sustained end to end", f"{rate:,}", "events/s", rate >= TARGETS["e2e_events_per_s"])
    if "latency" in report:
        p99 = report["latency"]["case_events_visible_ms"]["p99"]
        judge(f"p99 produced -> visible <= {TARGETS['latency_p99_ms']} ms at half rate", p99, "ms (case events)",
              p99 is not None and p99 <= TARGETS["latency_p99_ms"])
    if "breach" in report:
        p99 = report["breach"]["breach_after_deadline_ms"]["p99"]
        judge(f"breach published <= {TARGETS['breach_p99_ms']} ms after its deadline, p99", p99, "ms",
              p99 is not None and p99 <= TARGETS["breach_p99_ms"])
    if "recovery" in report:
        recovery = report["recovery"]
        full_size = recovery["open_cases"] >= MILLION
        rss = recovery["rss_after_mb"]
        judge(f"{MILLION:,} open cases in <= {TARGETS['recovery_rss_mb']} MB per worker", f"{rss:,} MB for {recovery['open_cases']:,} cases", "",
              rss <= TARGETS["recovery_rss_mb"] if full_size else None)
        judge(f"{MILLION:,} open cases recovered in <= {TARGETS['recovery_s']} s", f"{recovery['recovery_s']} s for {recovery['open_cases']:,} cases", "",
              recovery["recovery_s"] <= TARGETS["recovery_s"] if full_size else None)
    return judged


def print_report(report: dict[str, Any], console: Console) -> None:
    machine = report["machine"]
    console.print(f"\n[bold]Whistle bench {report['run_id']}[/bold] on {machine['cpu_model']}, {machine['cores']} cores, "
                  f"{machine['ram_gb']} GB RAM (load {machine['load_average_1m']} at start); Kafka {machine['kafka_version']}, "
                  f"ClickHouse {machine['clickhouse_version']}, Python {machine['python']}")
    messages = report["messages"]
    console.print(f"{messages['events']:,} simulated events ({', '.join(f'{n:,} {t}' for t, n in sorted(messages['by_type'].items()))}), "
                  f"{messages['mean_bytes']} bytes each on average")
    rates = Table(title="Throughput (events/s)")
    for column in ("measure", "events/s", "seconds", "notes"):
        rates.add_column(column, justify="right" if column in ("events/s", "seconds") else "left")
    if "pipeline" in report:
        p = report["pipeline"]
        rates.add_row("pure pipeline functions, one process, no Kafka", f"{p['events_per_s']:,}", "",
                      f"ingest {p['ingest_us_per_event']} µs/event, cases {p['cases_us_per_record']} µs/record")
    if "e2e" in report:
        e = report["e2e"]
        rates.add_row("SDK publish (full speed, acked)", f"{e['publish_events_per_s']:,}", f"{e['publish_s']}", "")
        rates.add_row("end to end: first produce -> last row visible", f"[bold]{e['events_per_s']:,}[/bold]", f"{e['visible_s']}",
                      f"{e['workers']} worker(s) + sink; {sum(e['rows'].values()):,} rows, {e['rows_per_s']:,} rows/s")
        rates.add_row("  stream stage within it (-> last case event)", f"{e['stream_events_per_s']:,}", f"{e['stream_s']}", "")
    if "backlog" in report:
        b = report["backlog"]
        rates.add_row("stream stage alone (backlog: raw -> case events)", f"{b['stream_events_per_s']:,}", f"{b['stream_s']}",
                      f"{b['workers']} worker(s); {b['stream_events_per_cpu_s'] or '-'} events per worker CPU-second")
        pt = b["passthrough"]
        rates.add_row("plain confluent-kafka passthrough (1 process)", f"{pt['events_per_s']:,}", f"{pt['seconds']}",
                      f"{pt['events_per_cpu_s'] or '-'} events per CPU-second")
        rates.add_row("ratio whistle stream stage / passthrough", f"{b['ratio']:.3f}", "",
                      f"per CPU-second: {_fmt(b['cpu_ratio'])}")
    console.print(rates)
    if "latency" in report or "breach" in report:
        latency = Table(title="Latency (ms)")
        for column in ("measure", "count", "p50", "p90", "p99", "max"):
            latency.add_column(column, justify="left" if column == "measure" else "right")
        if "latency" in report:
            lat = report["latency"]
            for label, key in (("raw row visible in ClickHouse", "raw_row_visible_ms"),
                               ("its case events appended in Kafka (stream stage)", "case_events_in_kafka_ms"),
                               ("its case events visible in ClickHouse", "case_events_visible_ms")):
                figures = lat[key]
                latency.add_row(f"{label} @ {lat['achieved_rate_per_s']:,}/s", *(_fmt(figures[k]) for k in ("count", "p50", "p90", "p99", "max")))
        if "breach" in report:
            figures = report["breach"]["breach_after_deadline_ms"]
            latency.add_row("breach published after its deadline (ticks 0.2 s)", *(_fmt(figures[k]) for k in ("count", "p50", "p90", "p99", "max")))
        console.print(latency)
        if "latency" in report:
            series = report["latency"]["case_events_visible_p50_ms_by_second"]
            console.print(f"[dim]visibility polled every {report['latency']['poll_s'] * 1000:.0f} ms (mean query "
                          f"{report['latency']['mean_poll_query_ms']} ms): latencies include up to one poll interval. "
                          f"Case events p50 by second of the run: {', '.join(f'{v:,.0f}' for v in series)}[/dim]")
    if "recovery" in report:
        r = report["recovery"]
        recovery = Table(title=f"A worker holding {r['open_cases']:,} open cases")
        recovery.add_column("measure")
        recovery.add_column("value", justify="right")
        for label, value in (("changelog records (MB)", f"{r['changelog_records']:,} ({r['changelog_mb']:,} MB)"),
                             ("writing them (bench)", f"{r['load_s']} s"),
                             ("recovery: start -> new record processed on every partition", f"[bold]{r['recovery_s']} s[/bold]"),
                             ("RSS idle worker", f"{r['rss_idle_mb']:,} MB"), ("RSS after recovery", f"[bold]{r['rss_after_mb']:,} MB[/bold]"),
                             ("peak RSS", f"{r['peak_rss_mb']:,} MB"), ("bytes per open case", f"{r['bytes_per_case']:,}")):
            recovery.add_row(label, value)
        console.print(recovery)
    usage = Table(title="Processes (CPU seconds, % of one core, peak RSS MB) per phase")
    for column in ("phase", "process", "CPU s", "CPU %", "peak RSS MB"):
        usage.add_column(column, justify="left" if column in ("phase", "process") else "right")
    for phase in ("e2e", "backlog", "latency", "breach", "recovery"):
        if phase not in report:
            continue
        processes = dict(report[phase]["processes"])
        if phase == "backlog":
            processes.update({f"{name} (passthrough run)": v for name, v in report[phase]["passthrough"]["processes"].items()})
        for name, figures in processes.items():
            usage.add_row(phase, name, f"{figures['cpu_s']}", _fmt(figures["cpu_pct"]), f"{figures['peak_rss_mb']:,}")
    console.print(usage)
    for phase, error in report.get("errors", {}).items():
        console.print(f"[red]phase {phase} did not complete: {error}[/red]")
    targets = Table(title="Targets")
    for column in ("target", "measured", "met"):
        targets.add_column(column)
    for row in report["targets"]:
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[dim]not at this size (--million)[/dim]"}[row["met"]]
        targets.add_row(row["target"], row["measured"], met)
    console.print(targets)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, (int, float)) else str(value)
