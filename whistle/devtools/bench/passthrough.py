"""The backlog phase's baseline: a plain confluent-kafka consume -> produce copier, run as a child process
(`python -c _PASSTHROUGH_MAIN`, its arguments as JSON on stdin)."""
from __future__ import annotations

import json
import time

from confluent_kafka import Consumer, Producer

_PASSTHROUGH_MAIN = "import json, sys; from whistle.devtools.bench.passthrough import passthrough_main; passthrough_main(*json.load(sys.stdin))"


def passthrough_main(conf: dict[str, str], producer_conf: dict[str, str], sources: list[str], target: str, count: int, timeout_s: float) -> None:
    """Consume `sources` and produce every record unchanged to `target`: the plainest Kafka client loop there is,
    with Whistle's producer settings (idempotent, acks=all) and offsets committed as a consumer would."""
    consumer = Consumer({**conf, "group.id": f"{target}-copier", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer(producer_conf)
    consumer.subscribe(sources)
    copied, first = 0, None
    deadline = time.monotonic() + timeout_s
    try:
        while copied < count and time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.5)
            if batch and first is None:
                first = time.monotonic()
            for message in batch:
                if message.error() is not None:
                    continue
                while True:
                    try:
                        producer.produce(target, key=message.key(), value=message.value())
                        break
                    except BufferError:
                        producer.poll(0.01)
                copied += 1
            producer.poll(0)
            if batch:
                consumer.commit(asynchronous=True)
        if producer.flush(60):
            raise SystemExit(1)
    finally:
        consumer.close()
    if copied < count:
        raise SystemExit(1)
    print(json.dumps({"seconds": time.monotonic() - first}), flush=True)  # first record consumed -> every copy acknowledged
