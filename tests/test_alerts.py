"""Alert consumers against the real local Kafka broker and a real HTTP receiver on 127.0.0.1."""
from __future__ import annotations

import dataclasses
import io
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.console import Console

from infra.topics import load_topics, provision_topics
from schemas.serde import Serde, to_record
from streams.domain.sla import Breach, breach_id
from whistle.edges.alerts import Verdict, backoff_delay, retry_after_seconds, run_webhook, tail, verdict_of
from whistle.edges.sdk import Publisher
from whistle.ground.errors import ConfigError
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

BASE = datetime(2025, 6, 12, 8, 0, tzinfo=UTC)
PARTITIONS = 6  # whistle.sla.breaches in infra/topics.yaml


# -- rules ----------------------------------------------------------------------------------------------

def test_retry_after_is_read_as_seconds_or_as_an_http_date():
    assert retry_after_seconds("7", BASE) == 7.0
    assert retry_after_seconds("Thu, 12 Jun 2025 08:00:30 GMT", BASE) == 30.0
    assert retry_after_seconds("Thu, 12 Jun 2025 07:00:00 GMT", BASE) == 0.0
    assert retry_after_seconds("soon", BASE) is None


def test_backoff_doubles_up_to_its_cap_but_never_undercuts_retry_after():
    assert [backoff_delay(n, 1.0) for n in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert backoff_delay(0, 1.0, at_least_s=3.0) == 3.0


def test_only_a_2xx_delivers_and_only_a_refusal_of_the_record_dead_letters_it():
    assert [verdict_of(s) for s in (200, 204, 400, 422, 401, 403, 404, 408, 429, 500, 503, 302)] == [
        Verdict.DELIVERED, Verdict.DELIVERED, Verdict.REFUSED, Verdict.REFUSED, Verdict.RETRY, Verdict.RETRY, Verdict.RETRY,
        Verdict.RETRY, Verdict.RETRY, Verdict.RETRY, Verdict.RETRY, Verdict.RETRY]


def test_an_unknown_tier_is_refused_by_name(settings: Settings):
    with pytest.raises(ConfigError, match="unknown tier mayor"):
        tail(settings, {"discipline", "mayor"}, None, Console(file=io.StringIO()), idle_timeout_s=0)


# -- fixtures and helpers -------------------------------------------------------------------------------

@pytest.fixture
def alert_settings(settings: Settings, kafka_bootstrap: str):
    """Settings with a fresh breach and dead-letter topic (unique prefix), deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    kafka = dataclasses.replace(settings.kafka, bootstrap_servers=kafka_bootstrap)
    topics = Topics.with_prefix(prefix)
    specs = [spec for spec in load_topics(prefix=prefix) if spec.name in (topics.breaches, topics.deadletter)]
    provision_topics(kafka, specs)
    yield dataclasses.replace(settings, kafka=kafka, topic_prefix=prefix)
    admin = AdminClient(kafka.librdkafka())
    for future in admin.delete_topics([spec.name for spec in specs]).values():
        future.result(timeout=15)


def make_breach(n: int, *, tier: str = "street", kind: str = "breach", responsible: str = "grid-G01",
                target: str | None = "community-C01") -> dict:
    case_id = f"S01-20250612-{n:010d}"
    deadline = BASE + timedelta(hours=n)
    return to_record(Breach(
        breach_id=breach_id(case_id, "accept_overdue", tier, int(deadline.timestamp() * 1000)), case_id=case_id, kind=kind,
        breach_type="accept_overdue", tier=tier, deadline=deadline, fired_at=deadline + timedelta(minutes=5), overdue_ms=300_000,
        responsible_unit_id=responsible, escalation_target_unit_id=target, policy_version="2025.1", category="garbage",
        urgency="normal", street_id="S01", department_id=None, summary=f"case {n} not accepted in time"))


def produce(settings: Settings, records: list[dict], partition: int | None = None) -> list[tuple[str, int, int, bytes]]:
    """Breaches onto the breach topic (the n-th on `partition`, else on n % 6), with the producer's tier/kind headers.

    Returns (breach_id, partition, offset, bytes) per record."""
    serde = Serde.from_settings(settings)
    topic = Topics.with_prefix(settings.topic_prefix).breaches
    with Publisher(settings, serde=serde, delivery_timeout_s=10.0) as publisher:
        sent = []
        for n, record in enumerate(records):
            value = serde.encode("Breach", record)
            headers = [("whistle.breach.tier", record["tier"].encode()), ("whistle.breach.kind", record["kind"].encode())]
            sent.append((record["breach_id"], value, publisher.produce_raw(topic, record["case_id"], value, headers,
                                                                        partition=n % PARTITIONS if partition is None else partition)))
        return [(bid, future.result(timeout=15).partition, future.result().offset, value) for bid, value, future in sent]


class Receiver:
    """The webhook's far end: answers scripted statuses for the first requests, then 200 (400 for `refuse`, 503 while `down`)."""

    def __init__(self, script: list[tuple[int, dict, float]] = (), refuse: frozenset[str] = frozenset()) -> None:
        self.script, self.refuse, self.down = list(script), refuse, False
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str, int]] = []  # (monotonic time, Idempotency-Key, status)
        self.accepted: list[tuple[str, dict]] = []  # (Idempotency-Key, body) answered 200 in time, in arrival order

    def answer(self, key: str, body: dict) -> tuple[int, dict, float]:
        with self.lock:
            status, headers, delay = self.script.pop(0) if self.script else (503 if self.down else 400 if key in self.refuse else 200, {}, 0.0)
            self.requests.append((time.monotonic(), key, status))
            if status == 200 and delay == 0:
                self.accepted.append((key, body))
            return status, headers, delay

    def accepted_ids(self) -> list[str]:
        with self.lock:
            return [body["breach_id"] for _, body in self.accepted]


@contextmanager
def serving(receiver: Receiver):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, headers, delay = receiver.answer(self.headers["Idempotency-Key"], body)
            time.sleep(delay)
            try:
                self.send_response(status)
                for name, value in {**headers, "Content-Length": "0"}.items():
                    self.send_header(name, value)
                self.end_headers()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting: a timeout
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()
        server.server_close()


def relay_until(settings: Settings, url: str, done, *, group: str, within_s: float = 20.0, **options):
    """Run the webhook consumer until `done()` (bounded), stop it, and return its report."""
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_webhook, settings, url, group_id=group, stop=stop, **options)
        deadline = time.monotonic() + within_s
        while not done() and time.monotonic() < deadline and not running.done():
            time.sleep(0.05)
        reached = done()
        stop.set()
        report = running.result(timeout=15)
    assert reached, f"not reached within {within_s}s: {report}"
    return report


def first_deliveries(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def in_partition(produced, ids: list[str], partition: int) -> list[str]:
    of_partition = {bid for bid, p, _, _ in produced if p == partition}
    return [bid for bid in ids if bid in of_partition]


def committed_and_end(settings: Settings, group: str) -> tuple[list[int], list[int]]:
    topic = Topics.with_prefix(settings.topic_prefix).breaches
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": group, "enable.auto.commit": False})
    try:
        committed = [tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)]
        end = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)]
    finally:
        consumer.close()
    return committed, end


def read_all(settings: Settings, topic: str, expect: int, within_s: float = 10.0) -> list[bytes]:
    """The values of `topic` from the beginning, once `expect` of them arrived (bounded wait)."""
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"read-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + within_s
    try:
        while len(values) < expect and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                values.append(message.value())
    finally:
        consumer.close()
    return values


def console_capture() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=240, color_system=None), out


# -- tail -----------------------------------------------------------------------------------------------

@pytest.mark.kafka
def test_tail_shows_the_discipline_commission_its_referrals_only(alert_settings: Settings):
    records = [make_breach(0, tier="discipline", kind="referral"), make_breach(1, tier="street"),
               make_breach(2, tier="discipline", kind="referral"), make_breach(3, tier="community", kind="warning", target=None)]
    produce(alert_settings, records)
    with Publisher(alert_settings, delivery_timeout_s=10.0) as publisher:
        garbage = publisher.produce_raw(Topics.with_prefix(alert_settings.topic_prefix).breaches, b"x", b"not a breach").result(timeout=15)
    console, out = console_capture()

    printed = tail(alert_settings, {"discipline"}, None, console, from_beginning=True, idle_timeout_s=2.0)

    text = out.getvalue()
    assert printed == 2
    assert records[0]["case_id"] in text and records[2]["case_id"] in text
    assert records[1]["case_id"] not in text and records[3]["case_id"] not in text
    assert "2025-06-12 16:05:00 REFERRAL discipline" in text  # fired_at 08:05 UTC, shown in Asia/Shanghai
    assert "overdue 5m 00s grid-G01 -> community-C01  case 0 not accepted in time" in text
    assert f"unreadable breach record at {garbage.topic} partition {garbage.partition} offset {garbage.offset}" in text


@pytest.mark.kafka
def test_tail_by_unit_shows_what_the_unit_answers_for_or_is_escalated_to(alert_settings: Settings):
    records = [make_breach(0, responsible="street-S07", target="department-D03"), make_breach(1),
               make_breach(2, responsible="community-C09", target="street-S07"), make_breach(3, kind="warning", target=None)]
    produce(alert_settings, records)
    console, out = console_capture()

    printed = tail(alert_settings, None, {"street-S07"}, console, from_beginning=True, idle_timeout_s=2.0)

    text = out.getvalue()
    assert printed == 2
    assert records[0]["case_id"] in text and records[2]["case_id"] in text
    assert records[1]["case_id"] not in text and records[3]["case_id"] not in text


# -- webhook --------------------------------------------------------------------------------------------

@pytest.mark.kafka
def test_the_webhook_loses_nothing_while_its_receiver_fails(alert_settings: Settings):
    produced = produce(alert_settings, [make_breach(n) for n in range(24)])
    everything = {bid for bid, *_ in produced}
    slow, unavailable, busy = (200, {}, 1.0), (503, {}, 0.0), (429, {"Retry-After": "1"}, 0.0)
    receiver = Receiver(script=[slow, unavailable, unavailable, unavailable, unavailable, busy])
    group = f"webhook-{uuid.uuid4().hex}"

    with serving(receiver) as url:
        report = relay_until(alert_settings, url, lambda: everything <= set(receiver.accepted_ids()), group=group,
                             max_backoff_s=0.2, timeout_s=0.3)

    delivered = receiver.accepted_ids()
    assert set(delivered) == everything
    for partition in range(PARTITIONS):
        assert in_partition(produced, delivered, partition) == [bid for bid, p, _, _ in produced if p == partition]
    after_busy = next(i for i, (_, _, status) in enumerate(receiver.requests) if status == 429) + 1
    assert receiver.requests[after_busy][0] - receiver.requests[after_busy - 1][0] >= 1.0  # Retry-After honoured
    assert all(key == body["breach_id"] for key, body in receiver.accepted)  # receivers dedupe on Idempotency-Key
    first_body = next(body for _, body in receiver.accepted if body["breach_id"] == produced[0][0])
    assert first_body == {**make_breach(0), "deadline": "2025-06-12T08:00:00Z", "fired_at": "2025-06-12T08:05:00Z"}
    assert report.delivered == 24 and report.dead_lettered == 0
    committed, end = committed_and_end(alert_settings, group)
    assert committed == end


@pytest.mark.kafka
def test_a_restarted_webhook_resumes_without_loss_after_a_failure(alert_settings: Settings):
    first = produce(alert_settings, [make_breach(n) for n in range(12)])
    receiver = Receiver()
    group = f"webhook-{uuid.uuid4().hex}"

    with serving(receiver) as url:
        relay_until(alert_settings, url, lambda: {b for b, *_ in first} <= set(receiver.accepted_ids()), group=group, max_backoff_s=0.2)
        receiver.down = True
        second = produce(alert_settings, [make_breach(n) for n in range(12, 24)])
        relay_until(alert_settings, url, lambda: sum(status == 503 for _, _, status in receiver.requests) >= 3, group=group,
                    max_backoff_s=0.2)
        receiver.down = False
        everything = {bid for bid, *_ in first + second}
        relay_until(alert_settings, url, lambda: everything <= set(receiver.accepted_ids()), group=group, max_backoff_s=0.2)

    delivered = first_deliveries(receiver.accepted_ids())
    assert set(delivered) == everything
    for partition in range(PARTITIONS):
        assert in_partition(first + second, delivered, partition) == [bid for bid, p, _, _ in first + second if p == partition]
    committed, end = committed_and_end(alert_settings, group)
    assert committed == end


@pytest.mark.kafka
def test_a_refused_breach_is_dead_lettered_and_delivery_goes_on(alert_settings: Settings):
    produced = produce(alert_settings, [make_breach(n) for n in range(5)], partition=0)
    refused_id, _, refused_offset, refused_bytes = produced[2]
    receiver = Receiver(refuse=frozenset({refused_id}))
    group = f"webhook-{uuid.uuid4().hex}"

    with serving(receiver) as url:
        report = relay_until(alert_settings, url, lambda: len(receiver.accepted_ids()) >= 4, group=group, max_backoff_s=0.2)

    assert receiver.accepted_ids() == [bid for bid, *_ in produced if bid != refused_id]
    assert report.dead_lettered == 1
    topics = Topics.with_prefix(alert_settings.topic_prefix)
    letters = read_all(alert_settings, topics.deadletter, expect=1)
    letter = Serde.from_settings(alert_settings).decode(letters[0]).record
    assert (letter["original_topic"], letter["original_partition"], letter["original_offset"]) == (topics.breaches, 0, refused_offset)
    assert letter["original_value"] == refused_bytes
    assert letter["stage"] == "alert-webhook" and "HTTP 400" in letter["error_message"]
    committed, end = committed_and_end(alert_settings, group)
    assert committed[0] == end[0] == 5  # the other partitions hold nothing
