"""The rules registry on Kafka (`whistle.audit.rules`): a worker checks its rule files against it before deciding anything.

At start, before it joins the group: read the registry to its end; refuse to start (ConfigError naming the
file and both hashes) when streams.domain.rules finds a refusal; otherwise publish the files the log does
not know yet and wait until Kafka acknowledged them. Only then does the worker decide with them, so every
decision in the log was made with registered content.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import KafkaException, Producer

from schemas.serde import Serde
from streams.changelog import read_log
from streams.domain.rules import RegisteredRule, RuleFile, refusals
from whistle.ground.errors import ConfigError, DeliveryError, WhistleError
from whistle.ground.names import Topics
from whistle.ground.settings import Settings
from whistle.ground.times import from_epoch_ms, to_epoch_ms, utc_now

log = logging.getLogger("whistle.rules")


@dataclass(frozen=True, slots=True)
class Registration:
    known: int  # rule files the log already held
    registered: tuple[str, ...]  # rule ids this process added


def read_registry(settings: Settings, serde: Serde, *, timeout_s: float = 30.0) -> dict[str, RegisteredRule]:
    """The first registration of every rule id in the log (a later record of the same id changes nothing)."""
    topic = Topics.with_prefix(settings.topic_prefix).rules
    known: dict[str, RegisteredRule] = {}
    for offset, _key, value in read_log(settings, topic, 0, timeout_s):
        try:
            record = serde.decode(value, expect="RuleFile").record
        except WhistleError as exc:
            raise ConfigError(f"{topic}[0]@{offset} is not a rule file record: {exc}", topic=topic, offset=offset) from exc
        known.setdefault(record["rule_id"], RegisteredRule(record["rule_id"], record["file"], record["sha256"]))
    return known


def check_rules(settings: Settings, serde: Serde, files: list[RuleFile], now_ms: int, *, timeout_s: float = 30.0) -> dict[str, RegisteredRule]:
    """What the log knows, once `files` are found to be those its decisions were made with; ConfigError naming each
    refusal (streams.domain.rules) otherwise. A worker checks before it decides, `audit replay` before it re-derives."""
    known = read_registry(settings, serde, timeout_s=timeout_s)
    problems = refusals(known, files, now_ms)
    if problems:
        raise ConfigError("the rule files differ from those the log's decisions were made with:\n  " + "\n  ".join(problems),
                          file=str(files[0].path.parent) if files else "", field="rules")
    return known


def register_rules(settings: Settings, serde: Serde, files: Iterable[RuleFile], *, clock: Callable[[], datetime] = utc_now,
                   timeout_s: float = 30.0) -> Registration:
    """Check `files` against the log and register the new ones (see the module docstring for the order)."""
    files = list(files)
    now = clock()
    known = check_rules(settings, serde, files, to_epoch_ms(now), timeout_s=timeout_s)
    new = [rule for rule in files if rule.rule_id not in known]
    if new:
        _publish(settings, serde, new, now, timeout_s)
        log.info("registered %d rule files in %s", len(new), Topics.with_prefix(settings.topic_prefix).rules)
    return Registration(len(known), tuple(rule.rule_id for rule in new))


def _publish(settings: Settings, serde: Serde, rules: list[RuleFile], now: datetime, timeout_s: float) -> None:
    topic = Topics.with_prefix(settings.topic_prefix).rules
    producer = Producer({**settings.kafka.librdkafka(), "enable.idempotence": True, "acks": "all", "log_level": 0})
    failures: list[str] = []

    def delivered(error, message) -> None:
        if error is not None:
            failures.append(f"{message.key()!r}: {error}")

    try:
        for rule in rules:
            record = {"rule_id": rule.rule_id, "kind": rule.kind, "name": rule.name, "file": rule.path.name, "sha256": rule.sha256,
                      "content": rule.path.read_bytes(),
                      "in_force_from": None if rule.in_force_from_ms is None else from_epoch_ms(rule.in_force_from_ms),
                      "registered_at": now, "registered_by": settings.worker_id}
            producer.produce(topic, serde.encode("RuleFile", record), rule.rule_id.encode("utf-8"), partition=0, on_delivery=delivered)
        left = producer.flush(timeout_s)
    except KafkaException as exc:
        raise DeliveryError(f"registering the rule files in {topic} failed: {exc}", topic=topic) from exc
    if left or failures:
        raise DeliveryError(f"Kafka did not acknowledge {left or len(failures)} rule file records in {topic}: {'; '.join(failures)}",
                            topic=topic)
