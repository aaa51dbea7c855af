"""The local stack: real Apache Kafka (KRaft) and a real ClickHouse server, without Docker.

Kafka's jars come from Maven Central (resolved once with Maven into the state folder) and run on
the machine's Java; ClickHouse is Debian's `clickhouse-server` binary run with its own config,
users and data under the state folder. Every process is started detached, recorded by PID, and
stopped by that PID only. Every wait is bounded by `StackSettings.start_timeout_s`.

Layout of the state folder (default `.whistle/`):
    kafka-libs/<version>/*.jar         Maven-resolved runtime
    kafka-<n>b/node-<i>/{data,server.properties,broker.log,pid}
    clickhouse/{config.xml,users.xml,data/,log/,pid}
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from whistle.ground.errors import StackError
from whistle.ground.settings import Settings

INFRA = Path(__file__).resolve().parent
CLICKHOUSE_BINARY = "/usr/sbin/clickhouse-server"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    address: str
    log: Path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int, marker: str) -> bool:
    """True when `pid` is a live process whose command line mentions `marker` (guards against PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    if zombie:
        return False
    if marker in cmdline:
        return True
    # A process just started can show an empty command line for a moment (still exec'ing); kernel threads
    # have one too, but no executable.
    return not cmdline.strip() and os.path.exists(f"/proc/{pid}/exe")


def clickhouse_users_xml(settings: Settings) -> str:
    """infra/clickhouse/users.xml filled for `settings`: the users the local stack's ClickHouse has."""
    ch = settings.clickhouse
    return (INFRA / "clickhouse" / "users.xml").read_text().format(
        database=ch.database, ingest_user=ch.user, ingest_password_sha256=hashlib.sha256(ch.password.value.encode()).hexdigest(),
        auditor_user=ch.auditor_user, auditor_password_sha256=hashlib.sha256(ch.auditor_password.value.encode()).hexdigest())


class _Process:
    """One detached process owned by the stack: spawned, recorded by PID file, stopped by PID."""

    def __init__(self, name: str, home: Path, marker: str) -> None:
        self.name, self.home, self.marker = name, home, marker
        self.pid_file = home / "pid"
        self.log = home / "process.log"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and _pid_alive(pid, self.marker)

    def clear_stale_pid(self) -> None:
        if self.pid_file.exists() and not self.running():
            self.pid_file.unlink()

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.home, env={**os.environ, **(env or {})},
            )
        self.pid_file.write_text(str(proc.pid))

    def send_signal(self, sig: int) -> None:
        pid = self.pid()
        if pid is not None and _pid_alive(pid, self.marker):
            os.kill(pid, sig)

    def stop(self, timeout_s: float, sig: int = signal.SIGTERM) -> None:
        pid = self.pid()
        if pid is None:
            return
        if _pid_alive(pid, self.marker):
            os.kill(pid, sig)
            deadline = time.monotonic() + timeout_s
            while _pid_alive(pid, self.marker) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid, self.marker):
                os.kill(pid, signal.SIGKILL)
                _wait(lambda: not _pid_alive(pid, self.marker), 10, f"{self.name} (pid {pid}) to exit after SIGKILL")
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _reap(pid: int, timeout_s: float = 10.0) -> None:
    """Collect the exit status when this process started `pid`, so no zombie lingers (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: its own parent reaps it
            return
        if done or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def _wait(check: Callable[[], bool], timeout_s: float, what: str, failed: Callable[[], str | None] | None = None) -> None:
    """Poll `check` until true; raise StackError after `timeout_s`, or at once when `failed` reports a reason."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        reason = failed() if failed else None
        if reason:
            raise StackError(f"gave up waiting for {what}: {reason}")
        time.sleep(0.25)
    raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class LocalStack:
    """Kafka (1 or 3 KRaft nodes) and ClickHouse on loopback, managed by PID.

    `up()` twice is a no-op; `down()` stops only processes this stack started; data survives
    `down`/`up` unless `down(wipe=True)`.
    """

    def __init__(self, settings: Settings, brokers: int = 1) -> None:
        if brokers not in (1, 3):
            raise StackError(f"--brokers must be 1 or 3, not {brokers}")
        self.settings = settings
        self.cfg = settings.stack
        self.brokers = brokers
        self.state = self.cfg.state_dir
        self.kafka_home = self.state / f"kafka-{brokers}b"
        self.ch_home = self.state / "clickhouse"
        self.libs = self.state / "kafka-libs" / self.cfg.kafka_version
        self._nodes = [_Process(f"kafka-{i}", self.kafka_home / f"node-{i}", str(self.kafka_home / f"node-{i}")) for i in range(1, brokers + 1)]
        self._clickhouse = _Process("clickhouse", self.ch_home, str(self.ch_home / "config.xml"))

    # ----- addresses -------------------------------------------------------------------------
    def broker_port(self, node: int) -> int:
        return self.cfg.kafka_port + 10 * (node - 1)

    def controller_port(self, node: int) -> int:
        return self.cfg.controller_port + 10 * (node - 1)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{self.broker_port(i)}" for i in range(1, self.brokers + 1))

    # ----- lifecycle -------------------------------------------------------------------------
    def up(self, progress: Progress = lambda _msg: None) -> list[ServiceStatus]:
        self._refuse_other_layout()
        self.ensure_kafka_libs(progress)
        for node in range(1, self.brokers + 1):
            self.start_broker(node, progress)
        self.start_clickhouse(progress)
        self.wait_kafka(progress)
        self.wait_clickhouse(progress)
        return self.status()

    def down(self, wipe: bool = False, progress: Progress = lambda _msg: None) -> None:
        from infra.processes import stop_recorded

        for pid in stop_recorded(self.state / "demo" / "pids"):
            progress(f"stopped demo process {pid}")
        for proc in [*self._nodes, self._clickhouse]:
            if proc.running():
                progress(f"stopping {proc.name} (pid {proc.pid()})")
            proc.stop(timeout_s=30)
        if wipe:
            progress(f"wiping {self.kafka_home} and {self.ch_home}")
            shutil.rmtree(self.kafka_home, ignore_errors=True)
            shutil.rmtree(self.ch_home, ignore_errors=True)

    def status(self) -> list[ServiceStatus]:
        rows = [
            ServiceStatus(p.name, p.pid(), p.running(), f"127.0.0.1:{self.broker_port(i)}", p.log)
            for i, p in enumerate(self._nodes, start=1)
        ]
        rows.append(ServiceStatus("clickhouse", self._clickhouse.pid(), self._clickhouse.running(),
                                  f"127.0.0.1:{self.cfg.clickhouse_tcp_port} (http {self.cfg.clickhouse_http_port})",
                                  self.ch_home / "log" / "server.log"))
        return rows

    def logs(self, service: str, lines: int = 50) -> str:
        for proc in [*self._nodes, self._clickhouse]:
            if proc.name == service:
                return proc.tail(lines)
        names = ", ".join(p.name for p in [*self._nodes, self._clickhouse])
        raise StackError(f"no service {service!r}; services are: {names}")

    def _refuse_other_layout(self) -> None:
        other = 3 if self.brokers == 1 else 1
        for i in range(1, other + 1):
            home = self.state / f"kafka-{other}b" / f"node-{i}"
            if _Process("kafka", home, str(home)).running():
                raise StackError(f"a {other}-broker Kafka from this stack is running; run `whistle stack down --brokers {other}` first")

    # ----- Kafka -----------------------------------------------------------------------------
    def ensure_kafka_libs(self, progress: Progress = lambda _msg: None) -> Path:
        """Resolve kafka_2.13 and its runtime dependencies from Maven Central, once."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        if shutil.which("java") is None:
            raise StackError("Java not found on PATH: install a JDK 17+ (e.g. `apt-get install -y openjdk-17-jre-headless`)")
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("Maven not found on PATH: install it (e.g. `apt-get install -y maven`)")
        progress(f"resolving Apache Kafka {self.cfg.kafka_version} from Maven Central")
        self.libs.mkdir(parents=True, exist_ok=True)
        cmd = [mvn, "-q", "-B", "-f", str(INFRA / "kafka" / "pom.xml"), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-Dkafka.version={self.cfg.kafka_version}", f"-DoutputDirectory={self.libs}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as exc:
            raise StackError("Maven did not resolve Kafka within 600s: check access to Maven Central") from exc
        if done.returncode != 0 or not any(self.libs.glob("kafka_2.13-*.jar")):
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise StackError(f"Maven could not resolve org.apache.kafka:kafka_2.13:{self.cfg.kafka_version}: {' | '.join(tail)}")
        marker.write_text(self.cfg.kafka_version)
        return self.libs

    def _cluster_id(self) -> str:
        path = self.kafka_home / "cluster.id"
        if not path.exists():
            self.kafka_home.mkdir(parents=True, exist_ok=True)
            # KRaft wants a base64url UUID; derive it from uuid4 as kafka-storage random-uuid does.
            import base64
            path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        return path.read_text().strip()

    def _server_properties(self, node: int) -> str:
        voters = ",".join(f"{i}@127.0.0.1:{self.controller_port(i)}" for i in range(1, self.brokers + 1))
        rf = self.brokers
        isr = 2 if self.brokers == 3 else 1
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={node}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.broker_port(node)},CONTROLLER://127.0.0.1:{self.controller_port(node)}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.broker_port(node)}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.kafka_home / f'node-{node}' / 'data'}",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            f"offsets.topic.replication.factor={rf}",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            "unclean.leader.election.enable=false",
            "auto.create.topics.enable=false",
            "group.initial.rebalance.delay.ms=0",
            "num.partitions=1",
            "log.segment.bytes=268435456",
            "",
        ])

    def start_broker(self, node: int, progress: Progress = lambda _msg: None) -> None:
        proc = self._nodes[node - 1]
        proc.clear_stale_pid()
        if proc.running():
            return
        for port in (self.broker_port(node), self.controller_port(node)):
            if not _port_free(port):
                raise StackError(f"port {port} is taken by another process: stop it or set WHISTLE_STACK_KAFKA_PORT / WHISTLE_STACK_CONTROLLER_PORT")
        props = proc.home / "server.properties"
        proc.home.mkdir(parents=True, exist_ok=True)
        props.write_text(self._server_properties(node))
        classpath = f"{self.libs}/*"
        if not (proc.home / "data" / "meta.properties").exists():
            progress(f"formatting KRaft storage of kafka-{node}")
            # --cluster-id=ID as one argument: a base64url id may begin with "-", which the tool would read as an option
            fmt = subprocess.run(["java", "-cp", classpath, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                                  f"--cluster-id={self._cluster_id()}", "-c", str(props)], capture_output=True, text=True, timeout=120)
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage failed: {fmt.stderr.strip()[-300:]}")
        progress(f"starting kafka-{node} on 127.0.0.1:{self.broker_port(node)}")
        proc.spawn(["java", f"-Xmx{self.cfg.kafka_heap}", f"-Xms{self.cfg.kafka_heap}", "-XX:+UseG1GC",
                    f"-Dlog4j2.configurationFile={INFRA / 'kafka' / 'log4j2.yaml'}", "-Djava.awt.headless=true",
                    "-cp", classpath, "kafka.Kafka", str(props)])

    def stop_broker(self, node: int, sig: int = signal.SIGTERM) -> None:
        """Stop (SIGTERM, clean) or kill (SIGKILL) one broker: used by the fault drills."""
        self._nodes[node - 1].stop(timeout_s=60, sig=sig)

    def wait_kafka(self, progress: Progress = lambda _msg: None) -> None:
        from confluent_kafka.admin import AdminClient

        progress("waiting for Kafka metadata")
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "socket.timeout.ms": 2000, "log_level": 0})

        def ready() -> bool:
            try:
                meta = admin.list_topics(timeout=2)
            except Exception:  # the broker is still starting: keep polling until the bounded wait ends
                return False
            return len(meta.brokers) == sum(p.running() for p in self._nodes)

        def died() -> str | None:
            for proc in self._nodes:
                if not proc.running():
                    return f"{proc.name} exited; last log lines:\n{proc.tail(15)}"
            return None

        _wait(ready, self.cfg.start_timeout_s, f"Kafka at {self.bootstrap_servers}", died)

    # ----- ClickHouse ------------------------------------------------------------------------
    def start_clickhouse(self, progress: Progress = lambda _msg: None) -> None:
        proc = self._clickhouse
        proc.clear_stale_pid()
        if proc.running():
            return
        if not Path(CLICKHOUSE_BINARY).exists():
            raise StackError(f"{CLICKHOUSE_BINARY} not found: run `make bootstrap` (installs Debian's clickhouse-server) "
                             "or `apt-get install -y clickhouse-server clickhouse-client`")
        for port in (self.cfg.clickhouse_tcp_port, self.cfg.clickhouse_http_port):
            if not _port_free(port):
                raise StackError(f"port {port} is taken by another process: stop it or set WHISTLE_STACK_CLICKHOUSE_TCP_PORT / _HTTP_PORT")
        for sub in ("data/tmp", "data/user_files", "data/format_schemas", "log"):
            (self.ch_home / sub).mkdir(parents=True, exist_ok=True)
        fill = {
            "log_dir": self.ch_home / "log", "data_dir": self.ch_home / "data", "users_config": self.ch_home / "users.xml",
            "tcp_port": self.cfg.clickhouse_tcp_port, "http_port": self.cfg.clickhouse_http_port,
        }
        (self.ch_home / "config.xml").write_text((INFRA / "clickhouse" / "config.xml").read_text().format(**fill))
        (self.ch_home / "users.xml").write_text(clickhouse_users_xml(self.settings))
        progress(f"starting clickhouse-server on 127.0.0.1:{self.cfg.clickhouse_tcp_port}")
        proc.spawn([CLICKHOUSE_BINARY, f"--config-file={self.ch_home / 'config.xml'}"])

    def stop_clickhouse(self, sig: int = signal.SIGTERM) -> None:
        self._clickhouse.stop(timeout_s=60, sig=sig)

    def wait_clickhouse(self, progress: Progress = lambda _msg: None) -> None:
        from clickhouse_driver import Client

        progress("waiting for ClickHouse to answer SELECT 1")

        def ready() -> bool:
            try:
                return Client("127.0.0.1", port=self.cfg.clickhouse_tcp_port, connect_timeout=1).execute("SELECT 1") == [(1,)]
            except Exception:  # the server is still starting: keep polling until the bounded wait ends
                return False

        def died() -> str | None:
            if self._clickhouse.running():
                return None
            err = self.ch_home / "log" / "server.err.log"
            tail = err.read_text(errors="replace").splitlines()[-5:] if err.exists() else []
            return "clickhouse-server exited: " + " | ".join(tail + [self._clickhouse.tail(5)])

        _wait(ready, self.cfg.start_timeout_s, f"ClickHouse at 127.0.0.1:{self.cfg.clickhouse_tcp_port}", died)
