"""The local stack: real Apache Kafka (KRaft) and real ClickHouse servers, without Docker.

Kafka's jars come from Maven Central (resolved once with Maven into the state folder) and run on
the machine's Java; ClickHouse is Debian's `clickhouse-server` binary run with its own config,
users and data under the state folder. With several ClickHouse replicas (`clickhouse_replicas`),
Apache ZooKeeper (jars from Maven Central too) coordinates them: one shard, every server a replica,
the cluster named by `Settings.clickhouse.cluster` (default `whistle`) in each server's
`config.d/cluster.xml`. Every process is started detached, recorded by PID, and stopped by that PID
only. Every wait is bounded by `StackSettings.start_timeout_s`.

Layout of the state folder (default `.whistle/`):
    kafka-libs/<version>/*.jar         Maven-resolved runtime
    kafka-<n>b/node-<i>/{data,server.properties,broker.log,pid}
    clickhouse/{config.xml,users.xml,data/,log/,pid}                  one server
    clickhouse-<n>r/replica-<i>/{config.xml,config.d/,users.xml,...}  n replicas
    zookeeper-libs/<version>/*.jar, zookeeper/{zoo.cfg,data/,pid}     with n > 1
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
DEFAULT_CLUSTER = "whistle"
MAX_CLICKHOUSE_REPLICAS = 3
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


def _maven_runtime(artifact: str, name: str, version: str, libs: Path, progress: Progress) -> Path:
    """Resolve `artifact` at `version` and its runtime dependencies from Maven Central into `libs`, once, with the pom
    of infra/<name>/ (whose `<name>.version` property is the version)."""
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("java") is None:
        raise StackError("Java not found on PATH: install a JDK 17+ (e.g. `apt-get install -y openjdk-17-jre-headless`)")
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven not found on PATH: install it (e.g. `apt-get install -y maven`)")
    progress(f"resolving {artifact} {version} from Maven Central")
    libs.mkdir(parents=True, exist_ok=True)
    cmd = [mvn, "-q", "-B", "-f", str(INFRA / name / "pom.xml"), "dependency:copy-dependencies",
           "-DincludeScope=runtime", f"-D{name}.version={version}", f"-DoutputDirectory={libs}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"Maven did not resolve {artifact} within 600s: check access to Maven Central") from exc
    jar = artifact.split(":")[1]
    if done.returncode != 0 or not any(libs.glob(f"{jar}-*.jar")):
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise StackError(f"Maven could not resolve {artifact}:{version}: {' | '.join(tail)}")
    marker.write_text(version)
    return libs


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
    """Kafka (1 or 3 KRaft nodes) and ClickHouse (one server, or replicas with ZooKeeper) on loopback, managed by PID.

    `up()` twice is a no-op; `down()` stops only processes this stack started; data survives
    `down`/`up` unless `down(wipe=True)`.
    """

    def __init__(self, settings: Settings, brokers: int = 1, clickhouse_replicas: int = 1) -> None:
        if brokers not in (1, 3):
            raise StackError(f"--brokers must be 1 or 3, not {brokers}")
        if not 1 <= clickhouse_replicas <= MAX_CLICKHOUSE_REPLICAS:
            raise StackError(f"--clickhouse-replicas must be 1 to {MAX_CLICKHOUSE_REPLICAS}, not {clickhouse_replicas}")
        self.settings = settings
        self.cfg = settings.stack
        self.brokers = brokers
        self.replicas = clickhouse_replicas
        self.state = self.cfg.state_dir
        self.kafka_home = self.state / f"kafka-{brokers}b"
        self.libs = self.state / "kafka-libs" / self.cfg.kafka_version
        self._nodes = [_Process(f"kafka-{i}", self.kafka_home / f"node-{i}", str(self.kafka_home / f"node-{i}")) for i in range(1, brokers + 1)]
        if clickhouse_replicas == 1:
            homes = {"clickhouse": self.state / "clickhouse"}
        else:
            homes = {f"clickhouse-{i}": self.state / f"clickhouse-{clickhouse_replicas}r" / f"replica-{i}"
                     for i in range(1, clickhouse_replicas + 1)}
        self._clickhouses = [_Process(name, home, str(home / "config.xml")) for name, home in homes.items()]
        self.ch_home = self._clickhouses[0].home
        self.zk_home = self.state / "zookeeper"
        self.zk_libs = self.state / "zookeeper-libs" / self.cfg.zookeeper_version
        self._zookeeper = _Process("zookeeper", self.zk_home, str(self.zk_home / "zoo.cfg"))

    @property
    def cluster(self) -> str | None:
        """The ClickHouse cluster the replicas form (None for one server): what the migrator runs ON CLUSTER."""
        return None if self.replicas == 1 else self.settings.clickhouse.cluster or DEFAULT_CLUSTER

    def _processes(self) -> list[_Process]:
        return [*self._nodes, *self._clickhouses, *([self._zookeeper] if self.replicas > 1 else [])]

    # ----- addresses -------------------------------------------------------------------------
    def broker_port(self, node: int) -> int:
        return self.cfg.kafka_port + 10 * (node - 1)

    def controller_port(self, node: int) -> int:
        return self.cfg.controller_port + 10 * (node - 1)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{self.broker_port(i)}" for i in range(1, self.brokers + 1))

    def clickhouse_port(self, replica: int = 1) -> int:
        """Native port of ClickHouse replica `replica` (1 for the single server)."""
        return self.cfg.clickhouse_tcp_port + 10 * (replica - 1)

    def clickhouse_http_port(self, replica: int = 1) -> int:
        return self.cfg.clickhouse_http_port + 10 * (replica - 1)

    # ----- lifecycle -------------------------------------------------------------------------
    def up(self, progress: Progress = lambda _msg: None) -> list[ServiceStatus]:
        self._refuse_other_layout()
        self.ensure_kafka_libs(progress)
        for node in range(1, self.brokers + 1):
            self.start_broker(node, progress)
        self.up_clickhouse(progress)
        self.wait_kafka(progress)
        return self.status()

    def up_clickhouse(self, progress: Progress = lambda _msg: None) -> None:
        """Start ZooKeeper (replicated layout) and every ClickHouse server, and wait until each answers."""
        if self.replicas > 1:
            self.start_zookeeper(progress)
            self.wait_zookeeper(progress)
        for replica in range(1, self.replicas + 1):
            self.start_clickhouse(progress, replica)
        self.wait_clickhouse(progress)

    def down(self, wipe: bool = False, progress: Progress = lambda _msg: None) -> None:
        from infra.processes import stop_recorded

        for pid in stop_recorded(self.state / "demo" / "pids"):
            progress(f"stopped demo process {pid}")
        for proc in self._processes():  # ZooKeeper last: the replicas close their sessions first
            if proc.running():
                progress(f"stopping {proc.name} (pid {proc.pid()})")
            proc.stop(timeout_s=30)
        if wipe:
            homes = [self.kafka_home, *(p.home for p in self._clickhouses), *([self.zk_home] if self.replicas > 1 else [])]
            progress(f"wiping {', '.join(map(str, homes))}")
            for home in homes:
                shutil.rmtree(home, ignore_errors=True)

    def status(self) -> list[ServiceStatus]:
        rows = [
            ServiceStatus(p.name, p.pid(), p.running(), f"127.0.0.1:{self.broker_port(i)}", p.log)
            for i, p in enumerate(self._nodes, start=1)
        ]
        rows += [ServiceStatus(p.name, p.pid(), p.running(), f"127.0.0.1:{self.clickhouse_port(i)} (http {self.clickhouse_http_port(i)})",
                               p.home / "log" / "server.log") for i, p in enumerate(self._clickhouses, start=1)]
        if self.replicas > 1:
            zk = self._zookeeper
            rows.append(ServiceStatus(zk.name, zk.pid(), zk.running(), f"127.0.0.1:{self.cfg.zookeeper_port}", zk.log))
        return rows

    def logs(self, service: str, lines: int = 50) -> str:
        for proc in self._processes():
            if proc.name == service:
                return proc.tail(lines)
        names = ", ".join(p.name for p in self._processes())
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
        return _maven_runtime("org.apache.kafka:kafka_2.13", "kafka", self.cfg.kafka_version, self.libs, progress)

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

    # ----- ZooKeeper (replicated ClickHouse only) ---------------------------------------------
    def start_zookeeper(self, progress: Progress = lambda _msg: None) -> None:
        proc = self._zookeeper
        proc.clear_stale_pid()
        if proc.running():
            return
        libs = _maven_runtime("org.apache.zookeeper:zookeeper", "zookeeper", self.cfg.zookeeper_version, self.zk_libs, progress)
        if not _port_free(self.cfg.zookeeper_port):
            raise StackError(f"port {self.cfg.zookeeper_port} is taken by another process: stop it or set WHISTLE_STACK_ZOOKEEPER_PORT")
        (self.zk_home / "data").mkdir(parents=True, exist_ok=True)
        config = self.zk_home / "zoo.cfg"
        config.write_text("\n".join([
            "tickTime=2000", "initLimit=10", "syncLimit=5", f"dataDir={self.zk_home / 'data'}",
            f"clientPort={self.cfg.zookeeper_port}", "clientPortAddress=127.0.0.1",
            "admin.enableServer=false", "4lw.commands.whitelist=srvr", "",
        ]))
        progress(f"starting zookeeper on 127.0.0.1:{self.cfg.zookeeper_port}")
        proc.spawn(["java", "-Xmx256m", f"-Dlog4j2.configurationFile={INFRA / 'zookeeper' / 'log4j2.properties'}",
                    "-cp", f"{libs}/*", "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(config)])

    def wait_zookeeper(self, progress: Progress = lambda _msg: None) -> None:
        """Wait until ZooKeeper serves requests (`srvr` answers with its version). WHY not `ruok`: it answers while the
        server is still loading, and an 18.16 server started then finds no session and crashes (its DDL worker)."""
        progress("waiting for ZooKeeper to serve")

        def ready() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.cfg.zookeeper_port), timeout=1) as conn:
                    conn.sendall(b"srvr")
                    return conn.recv(64).startswith(b"Zookeeper version:")
            except OSError:  # still starting: keep polling until the bounded wait ends
                return False

        def died() -> str | None:
            return None if self._zookeeper.running() else f"zookeeper exited; last log lines:\n{self._zookeeper.tail(15)}"

        _wait(ready, self.cfg.start_timeout_s, f"ZooKeeper at 127.0.0.1:{self.cfg.zookeeper_port}", died)

    # ----- ClickHouse ------------------------------------------------------------------------
    def start_clickhouse(self, progress: Progress = lambda _msg: None, replica: int = 1) -> None:
        """Start ClickHouse replica `replica` (1: the single server), configured for this stack's layout."""
        proc = self._clickhouse(replica)
        proc.clear_stale_pid()
        if proc.running():
            return
        if not Path(CLICKHOUSE_BINARY).exists():
            raise StackError(f"{CLICKHOUSE_BINARY} not found: run `make bootstrap` (installs Debian's clickhouse-server) "
                             "or `apt-get install -y clickhouse-server clickhouse-client`")
        ports = [self.clickhouse_port(replica), self.clickhouse_http_port(replica)] + ([self._interserver_port(replica)] if self.cluster else [])
        for port in ports:
            if not _port_free(port):
                raise StackError(f"port {port} is taken by another process: stop it or set WHISTLE_STACK_CLICKHOUSE_TCP_PORT / _HTTP_PORT")
        home = proc.home
        for sub in ("data/tmp", "data/user_files", "data/format_schemas", "log", "config.d"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        fill = {
            "log_dir": home / "log", "data_dir": home / "data", "users_config": home / "users.xml",
            "tcp_port": self.clickhouse_port(replica), "http_port": self.clickhouse_http_port(replica),
        }
        (home / "config.xml").write_text((INFRA / "clickhouse" / "config.xml").read_text().format(**fill))
        (home / "users.xml").write_text(clickhouse_users_xml(self.settings))
        if self.cluster:
            hosts = "\n".join(f"        <replica><host>127.0.0.1</host><port>{self.clickhouse_port(i)}</port></replica>"
                              for i in range(1, self.replicas + 1))
            (home / "config.d" / "cluster.xml").write_text((INFRA / "clickhouse" / "cluster.xml").read_text().format(
                cluster=self.cluster, replicas=hosts, replica=f"replica-{replica}", zookeeper_port=self.cfg.zookeeper_port,
                interserver_port=self._interserver_port(replica)))
        progress(f"starting {proc.name} on 127.0.0.1:{self.clickhouse_port(replica)}")
        proc.spawn([CLICKHOUSE_BINARY, f"--config-file={home / 'config.xml'}"])

    def stop_clickhouse(self, sig: int = signal.SIGTERM, replica: int = 1) -> None:
        self._clickhouse(replica).stop(timeout_s=60, sig=sig)

    def wait_clickhouse(self, progress: Progress = lambda _msg: None, replica: int | None = None) -> None:
        """Wait until ClickHouse replica `replica` (None: every one) answers SELECT 1."""
        from clickhouse_driver import Client

        for number in range(1, self.replicas + 1) if replica is None else [replica]:
            proc, port = self._clickhouse(number), self.clickhouse_port(number)
            progress(f"waiting for {proc.name} to answer SELECT 1")

            def ready(port: int = port) -> bool:
                try:
                    return Client("127.0.0.1", port=port, connect_timeout=1).execute("SELECT 1") == [(1,)]
                except Exception:  # the server is still starting: keep polling until the bounded wait ends
                    return False

            def died(proc: _Process = proc) -> str | None:
                if proc.running():
                    return None
                err = proc.home / "log" / "server.err.log"
                tail = err.read_text(errors="replace").splitlines()[-5:] if err.exists() else []
                return "clickhouse-server exited: " + " | ".join(tail + [proc.tail(5)])

            _wait(ready, self.cfg.start_timeout_s, f"{proc.name} at 127.0.0.1:{port}", died)

    def _clickhouse(self, replica: int) -> _Process:
        if not 1 <= replica <= self.replicas:
            raise StackError(f"no ClickHouse replica {replica}: this stack runs {self.replicas}")
        return self._clickhouses[replica - 1]

    def _interserver_port(self, replica: int) -> int:
        return self.clickhouse_http_port(replica) + 1
