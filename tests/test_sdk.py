"""The producer SDK against the real local Kafka broker."""
from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.topics import load_topics, provision_topics
from schemas.catalog import default_catalog
from schemas.serde import Serde
from streams.domain.credentials import load_credentials, verify_sender
from streams.domain.reference import load_reference
from whistle.devtools.feed import settings_as
from whistle.edges.sdk import Delivery, Publisher
from whistle.ground.errors import AuthError, ConfigError, DeliveryError, ValidationError
from whistle.ground.settings import Secret, Settings

pytestmark = pytest.mark.kafka

CATALOG = default_catalog()
SERDE = Serde(CATALOG)


@pytest.fixture(scope="module")
def kafka_settings(settings: Settings, kafka_bootstrap: str):
    """Settings whose topic prefix points at a fresh copy of every topic in infra/topics.yaml, deleted afterwards."""
    prefixed = dataclasses.replace(settings, topic_prefix=f"test-{uuid.uuid4().hex[:8]}.",
                                   kafka=dataclasses.replace(settings.kafka, bootstrap_servers=kafka_bootstrap))
    prefixed = settings_as(prefixed, "resident-app")  # the producer's identity: WHISTLE_INTEGRATOR and its secret
    topics = load_topics(prefix=prefixed.topic_prefix)
    provision_topics(prefixed.kafka, topics)
    for topic in topics:
        wait_for_leaders(kafka_bootstrap, topic.name)
    yield prefixed
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.delete_topics([t.name for t in topics]).values():
        future.result(timeout=15)


def partitions_of(bootstrap: str, topic: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}"})
    try:
        return sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    finally:
        consumer.close()


def wait_for_leaders(bootstrap: str, topic: str, timeout_s: float = 20.0) -> None:
    """Block until every partition of a new topic answers offset queries (leaders elected)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            message_count(bootstrap, topic)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_back(bootstrap: str, topic: str, count: int, timeout_s: float = 20.0) -> list:
    """The first `count` messages of `topic` (all partitions), in (partition, offset) order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions_of(bootstrap, topic)])
    messages, deadline = [], time.monotonic() + timeout_s
    try:
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return sorted(messages, key=lambda m: (m.partition(), m.offset()))


def message_count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions_of(bootstrap, topic))
    finally:
        consumer.close()


def murmur2_partition(key: bytes, partitions: int = 6) -> int:
    """Where aiokafka (and so Faust) puts a key on a topic of `partitions` partitions."""
    return DefaultPartitioner()(key, list(range(partitions)), list(range(partitions)))


def test_publish_returns_where_kafka_stored_the_record_and_it_reads_back(kafka_settings, kafka_bootstrap):
    example = CATALOG.topic("whistle.raw.camera").examples[0]
    with Publisher(kafka_settings) as publisher:
        delivery = publisher.publish("camera", example)
    assert delivery.topic == kafka_settings.topic_prefix + "whistle.raw.camera"
    (message,) = [m for m in read_back(kafka_bootstrap, delivery.topic, 1) if (m.partition(), m.offset()) == delivery[1:]]
    assert message.key() == b"cam-0042" and delivery.partition == murmur2_partition(b"cam-0042")
    assert SERDE.decode(message.value(), expect="CameraDetection").record == SERDE.validate("CameraDetection", example)


def test_app_events_are_keyed_per_type_on_the_partitions_faust_expects(kafka_settings, kafka_bootstrap):
    examples = CATALOG.topic("whistle.raw.app").examples
    with Publisher(kafka_settings) as publisher:
        deliveries = [publisher.publish("app", example) for example in examples]
    keys = [b"app-7f3c2a91", b"app-7f3c2b02", b"ST03-20250612-1a2b3c4d5e", b"ST03-20250612-1a2b3c4d5e"]
    assert [d.partition for d in deliveries] == [murmur2_partition(k) for k in keys]
    stored = {(m.partition(), m.offset()): m for m in read_back(kafka_bootstrap, deliveries[0].topic, len(examples))}
    for delivery, key, example in zip(deliveries, keys, examples):
        message = stored[delivery.partition, delivery.offset]
        assert message.key() == key
        assert SERDE.decode(message.value()).record == SERDE.validate("AppEvent", example)


def test_every_record_is_signed_as_the_configured_integrator_and_without_one_nothing_is_sent(kafka_settings, kafka_bootstrap):
    example = CATALOG.topic("whistle.raw.camera").examples[0]
    with Publisher(kafka_settings) as publisher:
        delivery = publisher.publish("camera", example)
    messages = read_back(kafka_bootstrap, delivery.topic, message_count(kafka_bootstrap, delivery.topic))
    (message,) = [m for m in messages if (m.partition(), m.offset()) == delivery[1:]]
    credentials = load_credentials(kafka_settings.keys_file, load_reference())
    master = kafka_settings.record_signing_key.value
    assert verify_sender(credentials, master, "whistle.raw.camera", message.key(), message.value(), message.headers()).integrator == "resident-app"
    with pytest.raises(AuthError):  # the negative control: the signature names these bytes, not others
        verify_sender(credentials, master, "whistle.raw.camera", message.key(), message.value()[:-1] + b"\x00", message.headers())
    anonymous = dataclasses.replace(kafka_settings, integrator="", integrator_secret=Secret(""))
    with Publisher(anonymous) as publisher, pytest.raises(ConfigError, match="WHISTLE_INTEGRATOR"):
        publisher.publish("camera", example)


def test_publish_async_resolves_after_the_broker_acknowledged(kafka_settings, kafka_bootstrap):
    ticket = CATALOG.topic("whistle.raw.hotline").examples[0]

    async def send() -> Delivery:
        with Publisher(kafka_settings) as publisher:
            return await publisher.publish_async("hotline", ticket)

    topic, partition, offset = asyncio.run(send())
    stored = {(m.partition(), m.offset()) for m in read_back(kafka_bootstrap, topic, 1)}
    assert (partition, offset) in stored


def test_an_invalid_record_is_refused_naming_the_field_and_nothing_is_sent(kafka_settings, kafka_bootstrap):
    topic = kafka_settings.topic_prefix + "whistle.raw.camera"
    before = message_count(kafka_bootstrap, topic)
    bad = {**CATALOG.topic("whistle.raw.camera").examples[0], "confidence": 1.7, "detected_at": "2025-06-12T08:15:02"}
    with Publisher(kafka_settings) as publisher:
        with pytest.raises(ValidationError) as caught:
            publisher.publish("camera", bad)
    assert [field for field, _ in caught.value.problems] == ["detected_at", "confidence"]
    assert "confidence: 1.7 is above 1.0" in str(caught.value)
    assert caught.value.context["topic"] == "whistle.raw.camera"
    assert message_count(kafka_bootstrap, topic) == before


def test_produce_raw_keeps_headers_and_pinned_partition(kafka_settings, kafka_bootstrap):
    topic = kafka_settings.topic_prefix + "whistle.raw.hotline"
    with Publisher(kafka_settings) as publisher:
        delivery = publisher.produce_raw(topic, b"k-1", b"raw-bytes", {"whistle.error.stage": "decode"}, partition=2).result(timeout=20)
    assert delivery.partition == 2
    (message,) = [m for m in read_back(kafka_bootstrap, topic, 2) if (m.partition(), m.offset()) == delivery[1:]]
    assert message.value() == b"raw-bytes" and message.headers() == [("whistle.error.stage", b"decode")]


def test_close_flushes_every_submitted_record(kafka_settings, kafka_bootstrap):
    base = CATALOG.topic("whistle.raw.camera").examples[1]
    publisher = Publisher(kafka_settings)
    futures = [publisher.submit("camera", {**base, "detection_id": f"flush-{i}", "camera_id": f"cam-{i % 7}"}) for i in range(300)]
    publisher.close()
    deliveries = [future.result(timeout=0) for future in futures]
    stored = {(m.partition(), m.offset()) for m in read_back(kafka_bootstrap, deliveries[0].topic, message_count(kafka_bootstrap, deliveries[0].topic))}
    assert {(d.partition, d.offset) for d in deliveries} <= stored


def test_a_write_kafka_cannot_take_raises_delivery_error(settings, kafka_bootstrap):
    missing = dataclasses.replace(settings, topic_prefix=f"absent-{uuid.uuid4().hex[:8]}.", kafka=dataclasses.replace(settings.kafka, bootstrap_servers=kafka_bootstrap))
    missing = settings_as(missing, "camera-platform")
    with Publisher(missing, delivery_timeout_s=1.5) as publisher:
        with pytest.raises(DeliveryError, match="Kafka did not acknowledge the write") as caught:
            publisher.publish("camera", CATALOG.topic("whistle.raw.camera").examples[0])
    assert caught.value.context["topic"] == missing.topic_prefix + "whistle.raw.camera"
