import asyncio
import dataclasses
import os
import socket
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from clickhouse_driver import Client
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from infra.stack import LocalStack
from infra.topics import load_topics, provision_topics
from whistle.ground.errors import StackError


def _new_topic(bootstrap: str, partitions: int = 1) -> str:
    name = f"test-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def _consume(bootstrap: str, topic: str, count: int, timeout_s: float = 30) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values, deadline = [], time.monotonic() + timeout_s
    while len(values) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            values.append(msg.value())
    consumer.close()
    return values


@pytest.fixture
def spare_stack(settings, tmp_path):
    """A second stack on its own ports and state, for lifecycle tests that stop and restart it."""
    spare = settings.stack.clickhouse_tcp_port - 2_000  # below Linux's ephemeral ports (32768+): no client socket holds them
    stack_cfg = dataclasses.replace(settings.stack, state_dir=tmp_path, kafka_port=spare + 92, controller_port=spare + 93,
                                    clickhouse_tcp_port=spare, clickhouse_http_port=spare + 123)
    stack = LocalStack(dataclasses.replace(settings, stack=stack_cfg))
    stack.libs = LocalStack(settings).libs  # share the Maven-resolved jars
    yield stack
    stack.down()


def test_stack_starts_restarts_keeps_data_and_stops_only_its_own(spare_stack):
    first = spare_stack.up()
    assert all(s.running for s in first)
    assert [s.pid for s in spare_stack.up()] == [s.pid for s in first]  # up twice is a no-op

    topic = _new_topic(spare_stack.bootstrap_servers)
    producer = Producer({"bootstrap.servers": spare_stack.bootstrap_servers, "acks": "all"})
    producer.produce(topic, b"survives restart")
    assert producer.flush(30) == 0
    del producer
    ch = Client("127.0.0.1", port=spare_stack.cfg.clickhouse_tcp_port)
    ch.execute("CREATE TABLE IF NOT EXISTS default.kept (x UInt32) ENGINE = MergeTree ORDER BY x")
    ch.execute("INSERT INTO default.kept VALUES", [(7,)])

    bystander = socket.socket()
    bystander.bind(("127.0.0.1", 0))
    spare_stack.down()
    assert not any(s.running for s in spare_stack.status())
    assert all(not os.path.exists(f"/proc/{s.pid}") for s in first)

    spare_stack.up()
    assert _consume(spare_stack.bootstrap_servers, topic, 1) == [b"survives restart"]
    assert Client("127.0.0.1", port=spare_stack.cfg.clickhouse_tcp_port).execute("SELECT x FROM default.kept") == [(7,)]
    bystander.close()


def test_port_taken_is_a_clear_error(spare_stack):
    squatter = socket.socket()
    port = spare_stack.broker_port(1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        with pytest.raises(StackError, match=f"port {port} is taken"):
            spare_stack.start_broker(1)
    finally:
        squatter.close()


def test_stale_pid_file_is_ignored(spare_stack, tmp_path):
    pid_file = spare_stack.ch_home / "pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))  # a live process that is not ClickHouse
    spare_stack.start_clickhouse()
    spare_stack.wait_clickhouse()
    assert int(pid_file.read_text()) != os.getpid()


def test_missing_java_and_failed_maven_are_clear_errors(settings, tmp_path, monkeypatch):
    stack = LocalStack(dataclasses.replace(settings, stack=dataclasses.replace(settings.stack, state_dir=tmp_path)))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="Java not found"):
        stack.ensure_kafka_libs()
    monkeypatch.undo()
    bogus = LocalStack(dataclasses.replace(settings, stack=dataclasses.replace(settings.stack, state_dir=tmp_path, kafka_version="0.0.404")))
    with pytest.raises(StackError, match="Maven could not resolve org.apache.kafka:kafka_2.13:0.0.404"):
        bogus.ensure_kafka_libs()


def test_confluent_kafka_round_trip(kafka_bootstrap):
    topic = _new_topic(kafka_bootstrap)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for i in range(100):
        producer.produce(topic, key=b"k", value=b"v%d" % i)
    assert producer.flush(30) == 0
    assert _consume(kafka_bootstrap, topic, 100) == [b"v%d" % i for i in range(100)]


def test_aiokafka_round_trip(kafka_bootstrap):
    topic = _new_topic(kafka_bootstrap)

    async def round_trip() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(50):
                await producer.send_and_wait(topic, b"a%d" % i, key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=uuid.uuid4().hex)
        await consumer.start()
        try:
            got = []
            async with asyncio.timeout(30):
                while len(got) < 50:
                    batch = await consumer.getmany(timeout_ms=500)
                    got += [m.value for msgs in batch.values() for m in msgs]
            return got
        finally:
            await consumer.stop()

    assert asyncio.run(round_trip()) == [b"a%d" % i for i in range(50)]


def test_clickhouse_insert_select_round_trip(clickhouse_native):
    host, port = clickhouse_native
    client = Client(host, port=port)
    table = f"default.rt_{uuid.uuid4().hex[:8]}"
    client.execute(f"CREATE TABLE {table} (id UInt64, name String) ENGINE = MergeTree ORDER BY id")
    client.execute(f"INSERT INTO {table} (id, name) VALUES", [(i, f"n{i}") for i in range(1000)])
    assert client.execute(f"SELECT count(), sum(id), any(name) FROM {table} WHERE id = 999") == [(1, 999, "n999")]
    client.execute(f"DROP TABLE {table}")


def test_topic_provisioning_is_idempotent(settings, kafka_bootstrap):
    specs = [dataclasses.replace(s, name=f"t{uuid.uuid4().hex[:6]}-{s.name}") for s in load_topics()]
    created = provision_topics(settings.kafka, specs)
    assert len(created) == len(specs)
    assert provision_topics(settings.kafka, specs) == []
    meta = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert {s.name: s.partitions for s in specs} == {s.name: len(meta[s.name].partitions) for s in specs}
