"""The backlog phase's baselines, each run as a child process (`python -c <main>`, its arguments as JSON on stdin):

- `passthrough_main`: the plain confluent-kafka consume -> produce copier, one read and one write per record
  (the machine's ceiling for moving a record through Kafka);
- `same_topology_main`: a zero-compute copy of the worker's topology, the same Kafka reads and writes per
  event as the worker made in the same phase (counted from its topics): raw topic -> case-stream copy,
  then per case-stream record the outputs and changelog writes, with the worker's delivery order (outputs
  acknowledged before the state is written), and no domain work at all. Whistle's ratio to it is the
  share of the rate that its own work costs, not the topology's.

What neither includes: the sink's reads and ClickHouse's inserts (the e2e phase has them; no copier does).
"""
from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import Consumer, Message, Producer

_PASSTHROUGH_MAIN = "import json, sys; from whistle.devtools.bench.passthrough import passthrough_main; passthrough_main(*json.load(sys.stdin))"
_SAME_TOPOLOGY_MAIN = ("import json, sys; from whistle.devtools.bench.passthrough import same_topology_main; "
                       "same_topology_main(*json.load(sys.stdin))")


def passthrough_main(conf: dict[str, str], producer_conf: dict[str, Any], sources: list[str], target: str, count: int, timeout_s: float) -> None:
    """Consume `sources` and produce every record unchanged to `target`: the plainest Kafka client loop there is,
    with Whistle's producer settings (idempotent, acks=all) and offsets committed as a consumer would."""
    consumer = _consumer(conf, f"{target}-copier", sources)
    producer = Producer(producer_conf)
    copied, first = 0, None
    deadline = time.monotonic() + timeout_s
    try:
        while copied < count and time.monotonic() < deadline:
            batch = _records(consumer)
            if batch and first is None:
                first = time.monotonic()
            for message in batch:
                _produce(producer, target, message.key(), message.value())
                copied += 1
            producer.poll(0)
            if batch:
                consumer.commit(asynchronous=True)
        if producer.flush(60):
            raise SystemExit(1)
    finally:
        consumer.close()
    _report(copied, count, first)


def same_topology_main(conf: dict[str, str], producer_conf: dict[str, Any], sources: list[str], inbox: str, outputs: list[tuple[str, float, int]],
                       state: tuple[str, float, int], count: int, timeout_s: float) -> None:
    """Copy `sources` to `inbox` (stage 1), and for each `inbox` record write `outputs` then `state` (stage 2): each
    a (topic, records per case-stream record, mean value bytes) of the worker's run, a fraction carried over to the
    next record. Stage 2 waits until its outputs are acknowledged before it writes a batch's state, as the worker
    does; the values are blanks of the worker's mean size, keyed as the case-stream record was, the state written
    to the record's partition."""
    cases = _consumer(conf, f"{inbox}-cases", [inbox])
    deadline = time.monotonic() + timeout_s
    while not cases.assignment():  # joined before the clock starts, as the worker's two agents are: the copy is still empty
        if cases.poll(0.2) is not None or time.monotonic() > deadline:
            raise SystemExit(1)
    raw = _consumer(conf, f"{inbox}-ingest", sources)
    ingest_out, cases_out = Producer(producer_conf), Producer(producer_conf)
    blanks = {topic: bytes(size) for topic, _, size in [*outputs, state]}
    owed = {topic: 0.0 for topic, _, _ in [*outputs, state]}
    done, first = 0, None

    def fan_out(message: Message, topic: str, per_record: float, partition: int | None = None) -> None:
        owed[topic] += per_record
        while owed[topic] >= 1.0:
            owed[topic] -= 1.0
            _produce(cases_out, topic, message.key(), blanks[topic], partition)

    try:
        while done < count and time.monotonic() < deadline:
            batch = _records(raw, 0.05)
            if batch and first is None:
                first = time.monotonic()
            for message in batch:
                _produce(ingest_out, inbox, message.key(), message.value())
            ingest_out.poll(0)
            if batch:
                raw.commit(asynchronous=True)
            batch = _records(cases, 0.05)
            for message in batch:
                for topic, per_record, _ in outputs:
                    fan_out(message, topic, per_record)
            if cases_out.flush(60):  # 2. every output acknowledged ...
                raise SystemExit(1)
            for message in batch:  # 3. ... before the state is written
                fan_out(message, state[0], state[1], message.partition())
            cases_out.poll(0)
            done += len(batch)
            if batch:
                cases.commit(asynchronous=True)
        if ingest_out.flush(60) or cases_out.flush(60):
            raise SystemExit(1)
    finally:
        raw.close()
        cases.close()
    _report(done, count, first)


def _consumer(conf: dict[str, str], group: str, topics: list[str]) -> Consumer:
    consumer = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(topics)
    return consumer


def _records(consumer: Consumer, timeout_s: float = 0.5) -> list[Message]:
    return [message for message in consumer.consume(1000, timeout=timeout_s) if message.error() is None]


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
    while True:
        try:
            if partition is None:
                producer.produce(topic, key=key, value=value)
            else:
                producer.produce(topic, key=key, value=value, partition=partition)
            return
        except BufferError:
            producer.poll(0.01)


def _report(done: int, count: int, first: float | None) -> None:
    if done < count or first is None:
        raise SystemExit(1)
    print(json.dumps({"seconds": time.monotonic() - first}), flush=True)  # first record consumed -> every copy acknowledged
