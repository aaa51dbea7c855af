"""Topic provisioning from `infra/topics.yaml`: create what is missing, converge what differs.

Re-runnable: a second run changes nothing. Partitions only ever grow (Kafka cannot shrink them,
and growing them moves keys, so growth is reported loudly). Topic configs are set with
incremental alters so that settings made outside this file survive.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic

from whistle.ground.datafiles import read_yaml
from whistle.ground.errors import ConfigError, StackError
from whistle.ground.settings import KafkaSettings

TOPICS_FILE = Path(__file__).resolve().parent / "topics.yaml"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str
    replication_factor: int | None
    key: str
    doc: str
    timestamp_type: str = "CreateTime"  # LogAppendTime: the broker stamps each record on arrival (the time Whistle trusts)


def load_topics(path: Path = TOPICS_FILE, prefix: str = "") -> list[TopicSpec]:
    """Parse and validate the declarative topic file; errors name the file, the topic and the field."""
    raw = read_yaml(path)
    specs = []
    for index, entry in enumerate(raw.get("topics") or []):
        where = f"{path.name}: topics[{index}]"
        try:
            spec = TopicSpec(
                name=prefix + str(entry["name"]),
                partitions=int(entry["partitions"]),
                retention_ms=int(entry.get("retention_ms", -1)),
                cleanup_policy=str(entry.get("cleanup", "delete")),
                replication_factor=int(entry["replication"]) if "replication" in entry else None,
                key=str(entry.get("key", "")),
                doc=str(entry.get("doc", "")),
                timestamp_type=str(entry.get("timestamp", "CreateTime")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: missing or invalid field {exc}", file=str(path)) from exc
        if spec.timestamp_type not in ("CreateTime", "LogAppendTime"):
            raise ConfigError(f"{where} ({spec.name}): timestamp must be CreateTime or LogAppendTime, got {spec.timestamp_type!r}",
                              file=str(path), field="timestamp")
        if spec.partitions < 1 or spec.cleanup_policy not in ("delete", "compact", "compact,delete"):
            raise ConfigError(f"{where} ({spec.name}): partitions must be >= 1 and cleanup delete|compact", file=str(path))
        specs.append(spec)
    if not specs:
        raise ConfigError("no topics declared", file=str(path))
    return specs


def partitions_of(name: str, prefix: str = "") -> int:
    """The declared partition count of topic `name` (e.g. the case stream's, which workers and the clock need)."""
    for spec in load_topics(prefix=prefix):
        if spec.name == name:
            return spec.partitions
    raise ConfigError(f"topic {name} is not declared", file=str(TOPICS_FILE))


def provision_topics(kafka: KafkaSettings, specs: list[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create missing topics, grow partitions, converge configs. Returns what changed, one line each."""
    admin = AdminClient({**kafka.librdkafka(), "log_level": 0})
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except Exception as exc:
        raise StackError(f"Kafka at {kafka.bootstrap_servers} did not answer: {exc}") from exc
    changes: list[str] = []
    wanted = []
    for spec in specs:
        configs = {"retention.ms": str(spec.retention_ms), "cleanup.policy": spec.cleanup_policy,
                   "min.insync.replicas": str(kafka.min_insync_replicas), "message.timestamp.type": spec.timestamp_type}
        if spec.name not in existing:
            wanted.append(NewTopic(spec.name, spec.partitions, spec.replication_factor or kafka.replication_factor, config=configs))
            changes.append(f"created {spec.name} ({spec.partitions} partitions)")
            continue
        have = len(existing[spec.name].partitions)
        if have < spec.partitions:
            _wait_all(admin.create_partitions([NewPartitions(spec.name, spec.partitions)]), timeout_s)
            changes.append(f"grew {spec.name} from {have} to {spec.partitions} partitions (keys move!)")
        elif have > spec.partitions:
            changes.append(f"WARNING {spec.name} has {have} partitions, file says {spec.partitions}: Kafka cannot shrink")
        resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name)
        current = _wait_all(admin.describe_configs([resource]), timeout_s)[0]
        drift = {k: v for k, v in configs.items() if current[k].value != v}
        if drift:
            entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in drift.items()]
            _wait_all(admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, spec.name, incremental_configs=entries)]), timeout_s)
            changes.append(f"set {spec.name} " + ", ".join(f"{k}={v}" for k, v in drift.items()))
    if wanted:
        _wait_all(admin.create_topics(wanted), timeout_s)
    return changes


def _wait_all(futures: dict, timeout_s: float) -> list:
    results = []
    for key, future in futures.items():
        try:
            results.append(future.result(timeout=timeout_s))
        except Exception as exc:
            raise StackError(f"Kafka admin operation on {key} failed: {exc}") from exc
    return results
