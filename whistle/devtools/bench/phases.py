"""`whistle bench`: Whistle's performance figures, measured on this machine against the real Kafka and ClickHouse.

A benchmark that prints figures (and writes them as JSON), not a timed test: it asserts nothing about
speed. One run pre-generates N simulated events once (`whistle.devtools.simulate`, validated and encoded as
the SDK would), then measures, each phase on a topic prefix and ClickHouse database of its own so
that phases and runs never mix:

- pipeline  the pure pipeline functions (`Ingestor`, `CaseProcessor`) in this process, no Kafka:
            the domain code's own ceiling;
- e2e       all N events published at full speed with the SDK while `whistle worker` process(es) and
            `whistle sink` run: events/s from the first produce to the moment ClickHouse shows every
            row the run caused (raw_events, case_events, breaches, dead_letters), and the steady slope
            between 10 % and 90 % of those rows visible (a short run's start and tail would dominate
            it); the stream stage's share ends at the broker append time of the last case event;
- backlog   the same N events preloaded into fresh raw topics: first a plain confluent-kafka
            consume -> produce passthrough (one process) copies them (the machine's ceiling), then
            whistle worker(s) drain them (the stream stage alone), then a zero-compute copier of the
            worker's topology makes the same Kafka reads and writes per event as the worker just did
            (`whistle.devtools.bench.passthrough`); Whistle's ratio to each, in events/s and in events
            per CPU-second;
- latency   the same events at half the e2e rate: produced (the producer's timestamp) -> visible in
            ClickHouse, for the raw row and for the case events each event caused;
- breach    emergency cases whose accept deadline falls during the run, with the clock service
            (`whistle.edges.clock.run_clock`, 0.2 s) ticking in real time: broker append time of each
            breach minus the wall time at which the pipeline clock reached its deadline;
- recovery  a worker's case-state changelog holding M open cases, then a fresh worker after a crash:
            seconds from its start until it has processed a new record on every partition, and its RSS.
- rebalance the same M open cases held by one worker while an accept probe goes to every partition every
            0.2 s (through the app topic, so a probe waits for the ingest stage as well); a second worker
            joins, later it is killed (a static member leaving: the group notices only after the session
            timeout, and meanwhile its raw-topic and case-stream partitions wait). Per partition, the
            longest a probe sent in each window waited
            for its acceptance (its processing pause), for partitions that moved and partitions kept,
            and which partitions each worker read back from the changelog (its metrics file); every
            probe must be accepted exactly once.

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

Outputs: the e2e phase and the backlog phase's drain are checked against the pure pipeline on the same
messages (`whistle.devtools.bench.outputs`): same case events, breaches and dead letters. A run whose
outputs differ measured other work than the pipeline's, so its rate is printed as FAILED and never
judged as a target met.

Machine: all processes (Kafka, ClickHouse, workers, sink, this process) share the machine; the
report names it and its load average, and lists each process's CPU seconds, CPU µs per event and
peak RSS (psutil, sampled every 0.5 s).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from infra.processes import WhistleProcess, spawn, wait_until
from infra.provision import provision_all
from infra.topics import partitions_of
from schemas.serde import Serde
from sinks.clickhouse import ServerEngine
from streams.changelog import changelog_topic, ensure_changelog
from streams.domain.reference import load_reference
from whistle.devtools.bench.changelog import open_case_writes, write_open_cases
from whistle.devtools.bench.events import SIM_START, Message, emergency_reports, encode_event, generate_events
from whistle.devtools.bench.history import history_phase
from whistle.devtools.bench.inprocess import pipeline_rate
from whistle.devtools.bench.kafka_admin import create_topic, drained, edge_timestamp, group_lag, mean_value_bytes, set_log_append_time
from whistle.devtools.bench.machine import describe_machine, stack_pids
from whistle.devtools.bench.measure import _AUDIT_TABLES, CaseEventWatch, ClickHouseWatch, ProcessUsage, Sent, _half_rate, _mb, percentiles
from whistle.devtools.bench.options import PHASES, BenchOptions
from whistle.devtools.bench.outputs import OutputReader, RunOutputs, compare_outputs
from whistle.devtools.bench.passthrough import _PASSTHROUGH_MAIN, _SAME_TOPOLOGY_MAIN
from whistle.devtools.bench.rebalance import ProbeFeed, waits_by_partition
from whistle.devtools.bench.report import judge_targets, print_report
from whistle.devtools.feed import NAMESPACE, Signers, source_record
from whistle.devtools.harness import end_offsets, group_members, metrics_path, partitions_recovered, read_all, spawn_worker
from whistle.devtools.simulate import HANDLING_SYSTEM, SimEvent
from whistle.edges.clock import Timeline, run_clock, write_ticks
from whistle.edges.sdk import Publisher
from whistle.ground.errors import ConfigError, StackError, WhistleError
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings
from whistle.ground.times import utc_now

_APP_ACTION = f"{NAMESPACE}.HandlingAction"


def run_bench(settings: Settings, options: BenchOptions, console: Console) -> dict[str, Any]:
    """Run the selected phases, print the figures as tables, write them as JSON; returns the report."""
    # The bench replays a simulated period that starts at SIM_START: a backfill, so its workers believe the devices' times.
    behind_s = max(settings.time.device_behind_s, (utc_now() - SIM_START).total_seconds() + 30 * 86_400)
    bench = _Bench(replace(settings, time=replace(settings.time, device_behind_s=behind_s)), options, console)
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
        self.signers = Signers(settings)
        self.processes: list[WhistleProcess] = []
        self.phase_settings: list[Settings] = []
        self._pure: tuple[dict[str, Any], RunOutputs] | None = None
        self.report: dict[str, Any] = {"run_id": self.run_id, "started_at": utc_now().isoformat(timespec="seconds"),
                                       "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}}
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)

    def run(self) -> dict[str, Any]:
        """Every selected phase in order. A phase that fails (a process dying, a bounded wait running out, outputs that
        differ from the pure pipeline's) is recorded under `errors` with what went wrong, its own processes are stopped,
        and the run goes on; `whistle bench` exits 1 if any failed."""
        report, phases = self.report, self.options.phases
        report["machine"] = describe_machine(self.settings)
        report["errors"] = {}
        with self.progress:
            events, messages = self._messages()
            work = {"pipeline": lambda: self._pure_run(messages)[0],
                    "e2e": lambda: self._e2e(messages), "backlog": lambda: self._backlog(messages),
                    "latency": lambda: self._latency(messages), "breach": lambda: self._breach(events),
                    "recovery": lambda: self._recovery(events), "rebalance": lambda: self._rebalance(events), "history": self._history}
            for phase in PHASES:
                if phase not in phases:
                    continue
                try:
                    report[phase] = work[phase]()
                    if not report[phase].get("outputs_match", True):  # its figures measured other work: the run fails
                        report["errors"][phase] = "its outputs differ from the pure pipeline's on the same input"
                except (WhistleError, KafkaException) as exc:
                    report["errors"][phase] = str(exc)
                    self.console.print(f"[red]bench phase {phase} failed: {exc}[/red]")
                    for process in self.processes:
                        process.stop(10)
        report["targets"] = judge_targets(report)
        return report

    def _history(self) -> dict[str, Any]:
        tasks: dict[str, Any] = {}

        def progress(description: str, done: int, total: int) -> None:
            task = tasks.get(description)
            if task is None:
                task = tasks[description] = self.progress.add_task(description, total=total)
            self.progress.update(task, completed=done, total=total)

        result = history_phase(self.settings, self.reference, self.options.history_days, self.options.history_incidents_per_day,
                               self.options.seed, progress)
        for task in tasks.values():
            self.progress.update(task, completed=self.progress.tasks[task].total)
        return result

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
            messages.append(encode_event(self.serde, self.signers, event))
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

    def _pure_run(self, messages: list[Message]) -> tuple[dict[str, Any], RunOutputs]:
        """The pure pipeline's figures and outputs on the messages: run once, by the pipeline phase or the first check."""
        if self._pure is None:
            figures, outputs = self._step("pipeline: the pure functions in this process",
                                          lambda: pipeline_rate(self.settings, self.reference, messages))
            reader = OutputReader(self.serde, Topics(), messages)
            self._pure = figures, reader.read((out.topic, out.value, out.headers) for out in outputs)
        return self._pure

    def _check_outputs(self, settings: Settings, messages: list[Message], phase: str) -> dict[str, Any]:
        """The phase's case events, breaches and dead letters, read back from Kafka, against the pure pipeline's on the
        same input: the phase's raw records in the order the worker is to take them (`streams.ordering`: the broker's
        append time, ties by topic, partition, offset), read back from its raw topics.

        Not the simulator's order: at full speed the simulated period is compressed (the bench's day passes in about
        a second), and the broker appends records of different partitions up to a few hundred milliseconds apart
        from the order they were sent in, hours of simulated time; what the pure run decides on that order, and how
        far it is from the simulator's, is reported beside the check (`reference`).
        """
        topics = Topics.with_prefix(settings.topic_prefix)
        by_value = {m.value: m for m in messages}
        raw = read_all(settings, topics.sources, timeout_s=self.options.wait_s)
        ordered = [by_value[r.value()] for r in sorted(raw, key=lambda r: (r.timestamp()[1], r.topic(), r.partition(), r.offset()))]
        figures, outputs = self._step(f"{phase}: the pure pipeline on the raw topics' append order",
                                      lambda: pipeline_rate(self.settings, self.reference, ordered))
        expected = OutputReader(self.serde, Topics(), messages).read((out.topic, out.value, out.headers) for out in outputs)
        reader = OutputReader(self.serde, topics, messages)

        def read() -> RunOutputs:
            records = read_all(settings, [topics.case_events, topics.breaches, topics.deadletter], timeout_s=self.options.wait_s)
            return reader.read((r.topic(), r.value(), r.headers() or ()) for r in records)

        got = self._step(f"{phase}: outputs against the pure pipeline's", read)
        check = compare_outputs(self.serde, expected, got, reader.describe)
        in_simulator_order = self._pure_run(messages)[1]
        check["reference"] = {"order": "append", "events_in_order_of_the_simulator": sum(a is b for a, b in zip(ordered, messages)),
                              "dead_letters": figures["dead_letters"],
                              "dead_letters_in_the_simulators_order": sum(map(len, in_simulator_order.dead_letters.values())),
                              "case_events": sum(map(len, expected.case_events.values())),
                              "case_events_in_the_simulators_order": sum(map(len, in_simulator_order.case_events.values()))}
        return check

    def _topology(self, settings: Settings, events: int) -> dict[str, Any]:
        """Records per input event of every topic the phase wrote (read once its workers stopped), and their mean size."""
        prefix = settings.topic_prefix
        names = sorted(t for t in AdminClient({**settings.kafka.librdkafka(), "log_level": 0}).list_topics(timeout=30).topics
                       if t.startswith(prefix))
        records = {name[len(prefix):]: sum(end_offsets(settings, name).values()) for name in names}
        topics, changelog = Topics(), changelog_topic(replace(settings, topic_prefix=""))
        per_event = {name: round(n / events, 4) for name, n in records.items() if n}
        return {"records": records, "per_event": per_event,
                "mean_bytes": {name: mean_value_bytes(settings, prefix + name) for name in
                               (topics.inbox, topics.case_events, topics.breaches, topics.deadletter, changelog)},
                "worker_reads_per_event": round(sum(records.get(t, 0) for t in (*topics.sources, topics.inbox)) / events, 4),
                "sink_reads_per_event": round(sum(records.get(t, 0) for t in topics.audited) / events, 4)}

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

        wait_until(ready, self.options.wait_s, what, interval_s)

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
        rows = sum(expected.values())
        visible_at = watch.first_time_total(rows)
        steady_rows = watch.steady_rows_per_s(rows)
        last_case_event = edge_timestamp(settings, topics.case_events, last=True) / 1000
        self._stop(workers + [sink])
        first = sent.sent_at[0]
        count = len(messages)
        processes = usage.figures()
        check = self._check_outputs(settings, messages, "e2e")
        return {"events": count, "workers": len(workers), "outputs_match": check["outputs_match"], "outputs": check,
                "publish_s": round(sent.acked_at - first, 3), "publish_events_per_s": round(count / (sent.acked_at - first)),
                "visible_s": round(visible_at - first, 3), "events_per_s": round(count / (visible_at - first)),
                "rows_per_s": round(rows / (visible_at - first)),
                "steady_rows_per_s": round(steady_rows) if steady_rows else None,
                "steady_events_per_s": round(steady_rows * count / rows) if steady_rows else None,
                "stream_s": round(last_case_event - first, 3), "stream_events_per_s": round(count / (last_case_event - first)),
                "rows": expected, "poll_s": watch.poll_s, "topology": self._topology(settings, count), "processes": processes,
                "cpu_us_per_event": _cpu_us_per_event(processes, count)}

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
            futures.append(publisher.produce_raw(topic_of[message.source], message.key, message.value, message.headers))
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
        processes = usage.figures()
        whistle_cpu = sum(v["cpu_s"] for k, v in processes.items() if k.startswith("bench-backlog"))
        check = self._check_outputs(settings, messages, "backlog")
        topology = self._topology(settings, count)
        same = self._same_topology(settings, topics, topology, count)

        def ratios(copier: dict[str, Any]) -> dict[str, float | None]:
            return {"ratio": round(stream_rate / copier["events_per_s"], 4),
                    "cpu_ratio": round(count / whistle_cpu / copier["events_per_cpu_s"], 4) if whistle_cpu and copier["events_per_cpu_s"] else None}

        return {"events": count, "workers": len(workers), "outputs_match": check["outputs_match"], "outputs": check,
                "stream_s": round(last - first, 3), "stream_events_per_s": round(stream_rate),
                "stream_events_per_cpu_s": round(count / whistle_cpu) if whistle_cpu else None,
                "passthrough": passthrough, **ratios(passthrough), "same_topology": {**same, **ratios(same)},
                "topology": topology, "processes": processes, "cpu_us_per_event": _cpu_us_per_event(processes, count)}

    def _same_topology(self, settings: Settings, topics: Topics, topology: dict[str, Any], count: int) -> dict[str, Any]:
        """The zero-compute copier of the worker's topology, on copies of the topics the worker wrote, at its records per event."""
        base, prefix = Topics(), settings.topic_prefix
        copy_of = {name: f"{prefix}bench.same.{name}" for name in
                   (base.inbox, base.case_events, base.breaches, base.deadletter, changelog_topic(replace(settings, topic_prefix="")))}
        for name, copy in copy_of.items():
            create_topic(settings, copy, len(end_offsets(settings, prefix + name)))
        *outputs, state = [(copy_of[name], topology["per_event"].get(name, 0.0), topology["mean_bytes"][name]) for name in list(copy_of)[1:]]
        return self._copier(settings, "same-topology", _SAME_TOPOLOGY_MAIN,
                            [list(topics.sources), copy_of[base.inbox], outputs, state, count], copy_of[base.inbox], count)

    def _passthrough(self, settings: Settings, topics: Topics, target: str, count: int) -> dict[str, Any]:
        """Copy the raw topics to `target` in one plain confluent-kafka process."""
        return self._copier(settings, "passthrough", _PASSTHROUGH_MAIN, [list(topics.sources), target, count], target, count)

    def _copier(self, settings: Settings, name: str, main: str, args: list[Any], target: str, count: int) -> dict[str, Any]:
        """Run a baseline copier (`whistle.devtools.bench.passthrough`) as a child process until it has copied `count`
        records to `target` and exited; its rate is its own (first record consumed -> every copy acknowledged)."""
        log = self.dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:  # the connection settings go over stdin: no secret on a command line
            popen = subprocess.Popen([sys.executable, "-c", main], stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        child = WhistleProcess(name, popen, log)
        self.processes.append(child)
        assert popen.stdin is not None
        popen.stdin.write(json.dumps([settings.kafka.librdkafka(), settings.kafka.producer(), *args, self.options.wait_s]).encode())
        popen.stdin.close()
        task = self.progress.add_task(f"backlog: {name} copier", total=count)
        usage = ProcessUsage()
        usage.watch(name, popen.pid)
        for server, pid in stack_pids(settings).items():
            usage.watch(server, pid)
        with usage:
            def copied() -> bool:
                done = sum(end_offsets(settings, target).values())
                self.progress.update(task, completed=done)
                return done >= count

            self._wait(copied, f"the {name} copier to copy {count:,} records", [child], 0.5)
            popen.wait(self.options.wait_s)  # the same-topology copier writes its outputs after the case-stream copy
        if popen.returncode != 0:
            raise StackError(f"the {name} copier exited with code {popen.returncode}; log {log}:\n{child.tail(15)}")
        seconds = json.loads(log.read_text().splitlines()[-1])["seconds"]
        figures = usage.figures()
        cpu = figures[name]["cpu_s"]
        return {"events": count, "seconds": round(seconds, 3), "events_per_s": round(count / seconds),
                "events_per_cpu_s": round(count / cpu) if cpu else None, "processes": figures,
                "cpu_us_per_event": _cpu_us_per_event(figures, count)}

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
        for record in read_all(settings, [topics.case_events], timeout_s=self.options.wait_s):
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
            sending = [publisher.submit(event.source, source_record(event), signer=self.signers(event.integrator)) for event in reports]
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
        opened = sum(1 for r in read_all(settings, [topics.case_events], timeout_s=self.options.wait_s)
                     if self.serde.decode(r.value(), validate=False).record["kind"] == "opened")
        late_ms, warnings = [], 0
        for record in read_all(settings, [topics.breaches], timeout_s=self.options.wait_s):
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
                last = [found[-1] for found in loaded.probes.values()]  # one per partition
                sending = [publisher.submit("app", {"event": (_APP_ACTION, probe)}, signer=self.signers(HANDLING_SYSTEM)) for probe in last]
                for future in sending:
                    future.result(timeout=60)
            probe_cases = {probe["case_id"] for probe in last}
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

    # -- rebalances of workers holding many open cases -----------------------------------------------

    def _rebalance(self, events: list[SimEvent]) -> dict[str, Any]:
        settings = self._phase("rebalance")
        topics = Topics.with_prefix(settings.topic_prefix)
        group = Groups.with_prefix(settings.topic_prefix).cases
        count, partitions = self.options.open_cases, partitions_of(topics.inbox, settings.topic_prefix)
        changelog = ensure_changelog(settings, partitions)
        task = self.progress.add_task(f"rebalance: writing {count:,} open cases to {changelog}", total=count)
        loaded = write_open_cases(settings, changelog, open_case_writes(self.reference, events, count, partitions),
                                  lambda n: self.progress.update(task, completed=n))
        self.progress.update(task, completed=count)
        names = ["bench-rebalance-1", "bench-rebalance-2"]
        for name in names:
            metrics_path(settings, name).unlink(missing_ok=True)  # a previous run's worker of the same id
        first = spawn_worker(settings, names[0], self.dir / "logs")
        self.processes.append(first)
        self._wait_groups(settings, [first], None)
        watcher = CaseEventWatch(settings, self.serde, set())
        try:
            with Publisher(settings) as publisher:
                feed = ProbeFeed(publisher, self.signers(HANDLING_SYSTEM), loaded.probes, watcher, _APP_ACTION, self.options.probe_interval_s)
                marks: dict[str, float] = {}

                def until(what: str, done: Callable[[], bool], processes: list[WhistleProcess], steady_s: float = 3.0) -> float:
                    """Feed probes until `done` and every probe sent up to 1 s ago is answered, then `steady_s` more; returns when `done` held."""
                    def reached() -> bool:
                        feed.step()
                        return done() and feed.answered_before(time.time() - 1.0)
                    self._step(f"rebalance: {what}", lambda: self._wait(reached, what, processes, 0.0))
                    at = time.time()
                    self._wait(lambda: (feed.step(), time.time() - at >= steady_s)[1], what, processes, 0.0)
                    return at

                marks["ready"] = until(f"one worker reading back {count:,} open cases, then answering probes",
                                       lambda: len(partitions_recovered(settings, names[0])) == partitions, [first])
                marks["join"] = time.time()
                second = spawn_worker(settings, names[1], self.dir / "logs")
                self.processes.append(second)
                until("a second worker joining", lambda: group_members(settings, group) == 2 and bool(partitions_recovered(settings, names[1])),
                      [first, second])
                first_after_join = partitions_recovered(settings, names[0])
                moved = set(partitions_recovered(settings, names[1]))
                marks["leave"] = time.time()
                second.kill()
                until("the second worker leaving (killed; noticed after the session timeout)", lambda: group_members(settings, group) == 1, [first])
                marks["end"] = time.time()
                feed.feeding = False
                self._wait(lambda: (feed.step(), not watcher.waiting)[1], "every probe to be accepted", [first], 0.0)
                probes = feed.check()
        finally:
            watcher.close()
        first_at_end = partitions_recovered(settings, names[0])
        self._stop([first])
        join = waits_by_partition(feed.sent, watcher.accepted, marks["join"], marks["leave"])
        leave = waits_by_partition(feed.sent, watcher.accepted, marks["leave"], marks["end"])
        before = waits_by_partition(feed.sent, watcher.accepted, marks["ready"], marks["join"])

        def split(waits: dict[int, float]) -> dict[str, Any]:
            return {"pause_s_by_partition": waits, "moved_max_s": max((w for p, w in waits.items() if p in moved), default=None),
                    "kept_max_s": max((w for p, w in waits.items() if p not in moved), default=None)}

        return {"open_cases": count, "partitions": partitions, "moved_partitions": sorted(moved), "probes_accepted_once": probes,
                "probe_interval_s": feed.interval_s, "steady_wait_max_s": max(before.values()),
                "join": {**split(join), "first_worker_read_back": {p: n - 1 for p, n in first_after_join.items() if n > 1},
                         "second_worker_read_back": sorted(moved)},
                "leave": {**split(leave), "first_worker_read_back": sorted(p for p, n in first_at_end.items() if n > first_after_join.get(p, 0))}}


def _cpu_us_per_event(processes: dict[str, dict[str, float]], events: int) -> dict[str, float]:
    """Each process's CPU µs per input event over a phase."""
    return {name: round(figures["cpu_s"] * 1e6 / events, 1) for name, figures in processes.items()}
