"""One typed, frozen settings object, built once at the entry point from the environment.

Every knob Whistle has is a field here, read from a `WHISTLE_*` variable. Secrets are kept
in `Secret` so that printing or logging settings never shows them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from whistle.ground.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Secret(str):
    """A string that never shows itself in repr/str-formatting of settings."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    @property
    def value(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: Secret = Secret("")
    ssl_ca_location: str | None = None
    replication_factor: int = 1  # for topics and the workers' state changelog; 3 in production
    min_insync_replicas: int = 1  # 2 in production
    schema_registry_url: str | None = None  # Confluent framing when set
    # Producers' compression: none | lz4 | zstd | snappy | gzip. Unset: none where every broker is on this host (compressing
    # costs CPU the loopback does not pay back), lz4 over a network
    compression: str | None = None

    def producer(self) -> dict[str, Any]:
        """Properties of every Whistle producer of records (the SDK, the worker): idempotent, acknowledged by every
        in-sync replica, keys partitioned as Kafka's Java clients do (murmur2), batched for a few milliseconds."""
        return {**self.librdkafka(), "enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random",
                "allow.auto.create.topics": False, "linger.ms": 5, "batch.size": 1_000_000, "batch.num.messages": 10_000,
                "compression.type": self.compression or ("none" if self.on_loopback() else "lz4")}

    def on_loopback(self) -> bool:
        hosts = [server.rsplit(":", 1)[0].strip("[]") for server in self.bootstrap_servers.split(",")]
        return all(host == "localhost" or host == "::1" or host.startswith("127.") for host in hosts)

    def librdkafka(self) -> dict[str, str]:
        """Connection properties for confluent-kafka clients."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username or ""
            conf["sasl.password"] = self.sasl_password.value
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf


@dataclass(frozen=True)
class ClickHouseSettings:
    host: str = "127.0.0.1"
    port: int = 19000  # native protocol
    http_port: int = 18123
    database: str = "whistle"
    user: str = "whistle_ingest"  # the sink's writer
    password: Secret = Secret("")
    admin_user: str = "default"  # runs migrations
    admin_password: Secret = Secret("")
    auditor_user: str = "auditor"  # read-only
    auditor_password: Secret = Secret("")
    secure: bool = False  # the native protocol over TLS (ClickHouse's port 9440)
    ssl_ca_location: str | None = None  # CA bundle the server's certificate is checked against (default: certifi's)
    # The cluster (in the servers' remote_servers) the migrator creates replicated tables on, ON CLUSTER; None: one server.
    # Each server's config names its own replica in the macros `shard` and `replica` (sinks/migrator.py).
    cluster: str | None = None


@dataclass(frozen=True)
class StackSettings:
    """Where the local (development/test) stack keeps its state and which ports it takes."""

    state_dir: Path = PROJECT_ROOT / ".whistle"
    kafka_version: str = "4.1.1"
    kafka_port: int = 19092  # broker n listens on kafka_port + 10*(n-1)
    controller_port: int = 19093
    clickhouse_tcp_port: int = 19000
    clickhouse_http_port: int = 18123  # replica n of a replicated layout: both ports + 10*(n-1), interserver at http + 1
    zookeeper_port: int = 12181  # Apache ZooKeeper, for replicated ClickHouse only
    zookeeper_version: str = "3.9.5"
    kafka_heap: str = "1g"
    start_timeout_s: float = 90.0


@dataclass(frozen=True)
class TimeSettings:
    """Which clocks Whistle believes, and how far.

    A device's own timestamp is evidence: it is used to order and merge records only while it lies within
    `device_ahead_s` after / `device_behind_s` before the record's arrival (the time Kafka or Whistle
    stamped it); beyond that the record is processed at its arrival and flagged clock_skew. A backfill of
    historical records (the demo, the benchmark, a migration) raises `device_behind_s` explicitly.
    Clock ticks may run at most `ticks_ahead_s` past the wall clock unless an operator says so.
    """

    device_ahead_s: float = 300.0
    device_behind_s: float = 86_400.0
    ticks_ahead_s: float = 60.0


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = field(default_factory=ClickHouseSettings)
    stack: StackSettings = field(default_factory=StackSettings)
    time: TimeSettings = field(default_factory=TimeSettings)
    pii_hmac_key: Secret = Secret("whistle-dev-only-key")
    # Who may send what (API key hashes, units, record-signing generations): read by the gateway and the worker, re-read on change
    keys_file: Path = PROJECT_ROOT / "infra" / "gateway-keys.example.yaml"
    record_signing_key: Secret = Secret("whistle-dev-only-signing-key")  # master of every integrator's record-signing secret
    integrator: str = ""  # a producer's own identity (SDK, `whistle publish`): its name in the key file ...
    integrator_secret: Secret = Secret("")  # ... and its record-signing secret, as `whistle keys signing-secret` printed it
    # A city's own data: its district version directory (map, organisation, responsibility matrix, hotline mapping) and sla/
    # (policies, calendars); format in streams/reference/README.md, checked by `whistle reference check DIR`
    reference_dir: Path = PROJECT_ROOT / "streams" / "reference"
    topic_prefix: str = ""
    worker_id: str = "worker-1"  # static group membership: stable per worker process
    gateway_host: str = "127.0.0.1"  # 0.0.0.0 in a container, whose loopback is its own
    gateway_port: int = 18080
    gateway_kafka_timeout_s: float = 2.0  # how long the gateway waits for Kafka's ack before answering 503 (Retry-After)
    dashboard_host: str = "127.0.0.1"  # `whistle dashboard` refuses any other address unless it is named here
    dashboard_port: int = 18090  # `whistle dashboard`, on loopback
    # `whistle audit verify` fails where a partition's dead letters pass this share of its records (with at least the minimum)
    verify_dead_letter_share: float = 0.05
    verify_dead_letter_min: int = 20
    # The anchorer (`whistle anchor`): seconds between anchors, and its HMAC key (empty: plain SHA-256). Give the key to the
    # anchorer and to auditors running `audit verify`, never to the audit store's writers.
    anchor_interval_s: float = 5.0
    anchor_key: Secret = Secret("")

    def to_env(self) -> dict[str, str]:
        """The `WHISTLE_*` variables that rebuild these settings in a child process (secrets included: never log it)."""
        return _flatten(self, "WHISTLE_")

    @classmethod
    def env_names(cls) -> dict[str, bool]:
        """Every `WHISTLE_*` variable `from_env` reads, and whether it holds a secret."""
        return _names(cls, "WHISTLE_")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every `WHISTLE_<SECTION>_<FIELD>` (or `WHISTLE_<FIELD>` for top-level fields)."""
        env = os.environ if env is None else env
        return _build(cls, env, "WHISTLE_")


def _build(cls, env: Mapping[str, str], prefix: str):
    values = {}
    for f in fields(cls):
        if is_dataclass(f.default_factory):
            values[f.name] = _build(f.default_factory, env, f"{prefix}{f.name.upper()}_")
            continue
        name = f"{prefix}{f.name.upper()}"
        if name not in env:
            continue
        raw = env[name]
        values[f.name] = _coerce(raw, f.type, name)
    return cls(**values)


def _names(cls, prefix: str) -> dict[str, bool]:
    names: dict[str, bool] = {}
    for f in fields(cls):
        if is_dataclass(f.default_factory):
            names.update(_names(f.default_factory, f"{prefix}{f.name.upper()}_"))
        else:
            names[f"{prefix}{f.name.upper()}"] = "Secret" in _kind(f.type)
    return names


def _flatten(obj, prefix: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            env.update(_flatten(value, f"{prefix}{f.name.upper()}_"))
        elif value is not None:
            env[f"{prefix}{f.name.upper()}"] = (value.value if isinstance(value, Secret) else
                                                 str(value).lower() if isinstance(value, bool) else str(value))
    return env


def _kind(annotation) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _coerce(raw: str, annotation, name: str):
    kind = _kind(annotation)
    try:
        if "Secret" in kind:
            return Secret(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError("expected true/false")
            return raw.lower() in ("1", "true", "yes")
        if kind.startswith("Path"):
            return Path(raw)
        return raw or None if "None" in kind else raw
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind}: {exc}", field=name) from exc
