"""Provisioning that tests, the demo and production share: Kafka topics, then ClickHouse schema."""
from __future__ import annotations

from infra.stack import LocalStack
from infra.topics import load_topics, provision_topics
from whistle.settings import Settings


def provision_all(settings: Settings, stack: LocalStack | None = None) -> list[str]:
    """Create/converge topics from infra/topics.yaml. Returns one line per change."""
    kafka = settings.kafka
    if stack is not None:
        from dataclasses import replace

        kafka = replace(kafka, bootstrap_servers=stack.bootstrap_servers,
                        replication_factor=stack.brokers, min_insync_replicas=2 if stack.brokers == 3 else 1)
    changes = provision_topics(kafka, load_topics(prefix=settings.topic_prefix))
    return changes or ["topics: up to date"]
