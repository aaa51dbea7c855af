"""Running Whistle's processes and watching its topics: shared by the demo, the benchmark and the tests.

Processes are real `whistle …` commands in their own process groups, configured only through the
`WHISTLE_*` environment built from a `Settings` object, logging to files. Every wait is bounded.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from confluent_kafka import Consumer, TopicPartition

from whistle.errors import StackError
from whistle.settings import Settings


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2,
               tolerate: tuple[type[BaseException], ...] = ()) -> None:
    """Poll `check` until it is true; StackError after `timeout_s`.

    Exceptions of the `tolerate` types count as "not yet" (e.g. Kafka errors while a broker restarts);
    the last one is named if time runs out.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except tolerate as exc:
            last_error = exc
        time.sleep(interval_s)
    raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


@dataclass
class WhistleProcess:
    """A running `whistle` subcommand."""

    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                return self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.poll()

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(settings: Settings, name: str, args: list[str], log_dir: Path, **overrides: str) -> WhistleProcess:
    """Start `whistle ARGS` with `settings` (plus WHISTLE_* `overrides`) in its own process group."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    env = {**os.environ, **settings.to_env(), **overrides, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        popen = subprocess.Popen([sys.executable, "-m", "whistle", *args], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return WhistleProcess(name, popen, log)


def record_pids(path: Path, processes: list[WhistleProcess]) -> None:
    """Remember which processes a command left running, so `whistle stack down` can stop them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p.popen.pid}\n" for p in processes))


def stop_recorded(path: Path, timeout_s: float = 30.0) -> list[int]:
    """Stop (SIGTERM, then SIGKILL) the recorded processes that are still Whistle processes; returns their pids."""
    stopped = []
    try:
        pids = [int(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        return stopped
    for pid in pids:
        try:
            if b"whistle" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue  # gone, or the pid now belongs to someone else
            os.killpg(pid, signal.SIGTERM)
        except (OSError, ProcessLookupError):
            continue
        stopped.append(pid)
    deadline = time.monotonic() + timeout_s
    while any(Path(f"/proc/{pid}").exists() for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in stopped:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    path.unlink(missing_ok=True)
    return stopped


def spawn_worker(settings: Settings, worker_id: str, log_dir: Path) -> WhistleProcess:
    return spawn(replace(settings, worker_id=worker_id), worker_id, ["worker"], log_dir)


def end_offsets(settings: Settings, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark of every partition of `topic`."""
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"whistle-watch-{uuid.uuid4().hex[:8]}"})
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in partitions}
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
    from whistle.topics import Topics

    group = f"{settings.topic_prefix}whistle-sink"
    for topic in Topics.with_prefix(settings.topic_prefix).audited:
        done = committed_offsets(settings, group, topic)
        if any(end > 0 and done.get(p, -1) < end for p, end in end_offsets(settings, topic).items()):
            return False
    return True


class Pipeline:
    """A worker and the sink as processes; `supervise` restarts a crashed one, as a production restart policy would."""

    def __init__(self, settings: Settings, logs: Path, sink_args: tuple[str, ...] = ("--batch-seconds", "0.3")) -> None:
        self.settings, self.logs, self.sink_args = settings, logs, sink_args
        self.worker = spawn_worker(settings, "worker-1", logs)
        self.sink = spawn(settings, "sink", ["sink", *sink_args], logs)
        self.restarts = 0

    def wait_ready(self, timeout_s: float = 90.0) -> "Pipeline":
        wait_for_group(self.settings, f"{self.settings.topic_prefix}whistle-cases", 1, timeout_s)
        wait_for_group(self.settings, f"{self.settings.topic_prefix}whistle-sink", 1, timeout_s)
        return self

    def supervise(self) -> None:
        if not self.worker.alive():
            self.worker, self.restarts = spawn_worker(self.settings, "worker-1", self.logs), self.restarts + 1
        if not self.sink.alive():
            self.sink, self.restarts = spawn(self.settings, "sink", ["sink", *self.sink_args], self.logs), self.restarts + 1

    def stop(self) -> None:
        self.worker.stop()
        self.sink.stop()
