"""Provisioning that tests, the demo and production share: Kafka topics, then the ClickHouse schema.

`whistle provision` (production) and `whistle stack up` (local) both call `provision_all`; both
steps are idempotent, so it is safe to run on every deploy.
"""
from __future__ import annotations

from dataclasses import replace

from infra.stack import LocalStack
from infra.topics import load_topics, provision_topics
from sinks.clickhouse import ServerEngine
from sinks.migrator import migrate
from whistle.ground.settings import Settings


def provision_all(settings: Settings, stack: LocalStack | None = None) -> list[str]:
    """Create/converge topics from infra/topics.yaml, then apply pending migrations (replicated, on every host, when the
    settings or the local stack name a ClickHouse cluster). One line per change."""
    kafka, clickhouse = settings.kafka, settings.clickhouse
    if stack is not None:  # the local stack's own addresses and durability settings
        kafka = replace(kafka, bootstrap_servers=stack.bootstrap_servers,
                        replication_factor=stack.brokers, min_insync_replicas=2 if stack.brokers == 3 else 1)
        clickhouse = replace(clickhouse, port=stack.cfg.clickhouse_tcp_port, cluster=stack.cluster)
    changes = provision_topics(kafka, load_topics(prefix=settings.topic_prefix)) or ["topics: up to date"]
    admin = replace(clickhouse, user=clickhouse.admin_user, password=clickhouse.admin_password)
    engine = ServerEngine.from_settings(admin, database="default")
    try:
        applied = migrate(engine, clickhouse.database, cluster=clickhouse.cluster)
    finally:
        engine.close()
    names = ", ".join(f"{m.version:03d}_{m.name}" for m in applied)
    return changes + [f"migrations: applied {names} to {clickhouse.database}" if applied else "migrations: up to date"]
