"""Producer SDK: validated Avro records onto Whistle's topics, each acknowledged (or refused) to the caller.

    with Publisher(settings) as publisher:
        delivery = publisher.publish("camera", {"detection_id": ..., ...})   # blocks until acked
        future = publisher.submit("hotline", ticket)                         # concurrent.futures.Future
        topic, partition, offset = await publisher.publish_async("app", event)

Why these producer settings (librdkafka's defaults bite, see REFERENCE.md):
- `enable.idempotence=true`, `acks=all`: a retried batch is written once, in order, by every in-sync replica;
- `partitioner=murmur2_random`: the same key lands on the same partition as with the Java client and
  aiokafka (Faust), so every event of a camera, ticket or case stays in one ordered partition;
- `allow.auto.create.topics=false`: topics come from infra/topics.yaml only, never from a typo;
- `linger.ms=5` with large batches and lz4: batching under load, a few ms of latency when idle;
- `message.timeout.ms` = the delivery timeout: every send ends in an ack or a DeliveryError within it.
Delivery reports are served by a background poll thread; `close()` (or leaving the `with` block) flushes.

Identity: every record goes out with `whistle-integrator` and `whistle-signature` headers (HMAC-SHA256 of the
topic, key and value with the integrator's secret, `streams.domain.credentials`); the worker refuses any other.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas.serde import Serde
from streams.domain.credentials import RecordSigner, parse_signer
from whistle.ground.errors import ConfigError, DeliveryError, ValidationError
from whistle.ground.settings import Settings

_log = logging.getLogger("whistle.edges.sdk")

_QUEUE_FULL_PAUSE_S = 0.005


class Delivery(NamedTuple):
    """Where Kafka stored an acknowledged record."""

    topic: str
    partition: int
    offset: int


class Publisher:
    """Validates, encodes and produces records; thread-safe, one per process is enough."""

    def __init__(
        self,
        settings: Settings,
        *,
        serde: Serde | None = None,
        delivery_timeout_s: float = 30.0,
        signer: RecordSigner | None = None,
    ) -> None:
        self.settings = settings
        self.serde = serde or Serde.from_settings(settings)
        self.signer = signer or (parse_signer(settings.integrator, settings.integrator_secret.value) if settings.integrator else None)
        self.delivery_timeout_s = delivery_timeout_s
        self._producer = Producer({
            **settings.kafka.producer(),
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            "client.id": f"whistle-{settings.worker_id}",
            "logger": _log,
            "error_cb": _log_kafka_error,
        })
        self._stop = threading.Event()
        self._closed = False
        self._poller = threading.Thread(target=self._serve_delivery_reports, name="whistle-sdk-delivery", daemon=True)
        self._poller.start()

    def topic(self, name: str) -> str:
        """The Kafka topic for a topic spec name (applies `settings.topic_prefix`)."""
        return self.settings.topic_prefix + name

    def submit(self, source: str, record: Mapping[str, Any], *, wait_for_queue: bool = True, signer: RecordSigner | None = None) -> Future[Delivery]:
        """Validate, sign and send a camera/hotline/app record; the future resolves when Kafka acknowledged it.

        Signed as `signer` (the gateway, on behalf of the API key's integrator), else as this publisher's
        own integrator (WHISTLE_INTEGRATOR, WHISTLE_INTEGRATOR_SECRET): the worker takes no unsigned record.
        Raises ValidationError (naming every bad field) before anything is sent.
        """
        signer = signer or self.signer
        if signer is None:
            raise ConfigError("no integrator identity to sign records with: set WHISTLE_INTEGRATOR and WHISTLE_INTEGRATOR_SECRET "
                              "(whistle keys signing-secret prints the secret)", field="integrator")
        spec = self.serde.catalog.topic_for_source(source)
        try:
            checked = self.serde.validate(spec.schema, record)
        except ValidationError as exc:
            exc.with_context(topic=spec.name)
            raise
        value = self.serde.encode(spec.schema, checked, validate=False)
        key = spec.key_for(checked)
        key_bytes = key.encode("utf-8") if isinstance(key, str) else key
        return self.produce_raw(self.topic(spec.name), key_bytes, value, signer.headers(spec.name, key_bytes, value), wait_for_queue=wait_for_queue)

    def publish(self, source: str, record: Mapping[str, Any], *, signer: RecordSigner | None = None) -> Delivery:
        """Send one record and wait for Kafka's acknowledgement; DeliveryError if it was not written."""
        future = self.submit(source, record, signer=signer)
        try:
            return future.result(timeout=self.delivery_timeout_s + 5.0)
        except FutureTimeout as exc:  # message.timeout.ms should have answered first
            raise DeliveryError(f"no delivery report within {self.delivery_timeout_s + 5.0:.0f}s", source=source) from exc

    async def publish_async(self, source: str, record: Mapping[str, Any], *, signer: RecordSigner | None = None) -> Delivery:
        """`publish` for asyncio: returns (topic, partition, offset) only after the broker acknowledged.

        Never blocks the event loop: a full local queue raises DeliveryError at once (back-pressure).
        """
        return await asyncio.wrap_future(self.submit(source, record, wait_for_queue=False, signer=signer))

    def produce_raw(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes]] | None = None,
        *,
        partition: int | None = None,
        wait_for_queue: bool = True,
    ) -> Future[Delivery]:
        """Produce already-encoded bytes to `topic` (no prefix added) with the SDK's delivery guarantees.

        `partition` pins the partition (e.g. clock ticks); otherwise the key's murmur2 hash picks it.
        """
        future: Future[Delivery] = Future()
        arguments: dict[str, Any] = {"value": value, "key": key, "on_delivery": _settle(future)}
        if headers:
            arguments["headers"] = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if partition is not None:
            arguments["partition"] = partition
        deadline = time.monotonic() + self.delivery_timeout_s
        while True:
            try:
                self._producer.produce(topic, **arguments)
                return future
            except BufferError as exc:
                if not wait_for_queue or time.monotonic() > deadline:
                    raise DeliveryError("the producer's local queue is full: Kafka is not taking writes fast enough", topic=topic, retriable=True) from exc
                time.sleep(_QUEUE_FULL_PAUSE_S)  # the poll thread drains delivery reports meanwhile
            except KafkaException as exc:
                error = exc.args[0]
                raise DeliveryError(f"Kafka refused the write: {error.str()}", topic=topic, code=error.name(), retriable=error.retriable()) from exc

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait until every sent record is acknowledged or failed; the number still pending."""
        return self._producer.flush(self.delivery_timeout_s + 5.0 if timeout_s is None else timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, then stop. Records still pending after the timeout are purged and fail their futures."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._poller.join()
        pending = self.flush(timeout_s)
        if pending:
            self._producer.purge()
            self._producer.flush(0)  # runs the purged records' delivery reports: their futures fail
            raise DeliveryError(f"{pending} records were not acknowledged before close and were dropped", pending=pending)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _serve_delivery_reports(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(0.05)
            except Exception:  # this thread must outlive any bad callback, or every later send would hang
                _log.exception("delivery report callback failed")


def _settle(future: Future[Delivery]):
    """A delivery callback resolving `future` (runs on the poll thread)."""

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        try:
            if error is None:
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                assert topic is not None and partition is not None and offset is not None  # acks=all: an acknowledged record has all three
                future.set_result(Delivery(topic, partition, offset))
            else:
                future.set_exception(DeliveryError(
                    f"Kafka did not acknowledge the write: {error.str()}",
                    topic=message.topic(),
                    partition=_known_partition(message.partition()),
                    code=error.name(),
                    retriable=error.retriable(),
                ))
        except InvalidStateError:  # the caller cancelled (e.g. its asyncio task): nobody is waiting
            pass

    return on_delivery


def _known_partition(partition: int | None) -> int | None:
    return partition if partition is not None and partition >= 0 else None


def _log_kafka_error(error: KafkaError) -> None:
    _log.warning("kafka client error: %s", error)
