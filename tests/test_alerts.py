"""Alert consumers against the real local Kafka broker and a real HTTP receiver on 127.0.0.1."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import re
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
from whistle.devtools.harness import committed_offsets, end_offsets, wait_for_group
from whistle.edges.alerts import (
    SECRET_ENV,
    SIGNATURE_HEADER,
    Verdict,
    backoff_delay,
    retry_after_seconds,
    run_webhook,
    signature_header,
    tail,
    verdict_of,
    verify_signature,
    webhook_group,
    webhook_secret,
)
from whistle.edges.sdk import Publisher
from whistle.ground.errors import ConfigError
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import PROJECT_ROOT, Settings

BASE = datetime(2025, 6, 12, 8, 0, tzinfo=UTC)
PARTITIONS = 6  # whistle.sla.breaches in infra/topics.yaml
SECRET = b"receiver-secret"


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


def test_each_receiver_has_a_consumer_group_of_its_own_derived_from_its_url_and_filters():
    url = "https://street-office.example/whistle"
    default = Groups.alerts_webhook_for("p.", url)
    digest = hashlib.sha256(json.dumps([url, [], []], separators=(",", ":")).encode()).hexdigest()[:12]
    assert default == f"p.whistle-alerts-webhook-{digest}"  # the rule the README gives
    assert Groups.alerts_webhook_for("p.", url, ["street", "discipline"], {"grid-G01", "street-S07"}) == \
        Groups.alerts_webhook_for("p.", url, ("discipline", "street", "street"), ["street-S07", "grid-G01"])  # order-insensitive
    others = {Groups.alerts_webhook_for("p.", url + "2"), Groups.alerts_webhook_for("p.", url, ["discipline"]),
              Groups.alerts_webhook_for("p.", url, None, ["grid-G01"]), Groups.alerts_webhook_for("q.", url)}
    assert default not in others and len(others) == 4
    assert Groups.alerts_webhook_for("", url, ["discipline"]) == "whistle-alerts-webhook-179e490ee88c"  # the README's example
    assert Groups.alerts_webhook_for("p.", url, ["discipline"], name="street-office") == "p.street-office"  # the operator's name, prefixed
    with pytest.raises(ConfigError, match="cannot be empty"):
        Groups.alerts_webhook_for("p.", url, name=" ")
    with pytest.raises(ConfigError, match="unknown tier mayor"):
        webhook_group(Settings(topic_prefix="p."), url, {"mayor"})


def readme_receiver():
    """The standard-library receiver check shown in the README's "Alerting consumers" section."""
    section = (PROJECT_ROOT / "README.md").read_text().split("## Alerting consumers", 1)[1].split("\n## ", 1)[0]
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", section, re.S).group(1), namespace)
    return namespace["whistle_signature_ok"]


def test_a_signature_holds_only_for_its_secret_body_and_time():
    body, sent = b'{"breach_id":"b1"}', BASE + timedelta(days=400)
    header = signature_header(SECRET, body, sent)
    t = int(sent.timestamp())
    assert header == f"t={t},v1={hmac.new(SECRET, f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"
    ok = readme_receiver()
    for check in (lambda s, h, b, now: verify_signature(s, h, b, now), lambda s, h, b, now: ok(s, h, b, now.timestamp())):
        assert check(SECRET, header, body, sent + timedelta(seconds=299))
        assert not check(b"another receiver's secret", header, body, sent)
        assert not check(SECRET, header, body.replace(b"b1", b"b2"), sent)  # tampered body
        assert not check(SECRET, header, body, sent + timedelta(seconds=301))  # older than 5 minutes: a replay
        assert not check(SECRET, header, body, sent - timedelta(seconds=301))  # from a clock far ahead
        assert check(SECRET, f"t={t},v1={'0' * 64},{header.split(',')[1]}", body, sent)  # any v1 (secret rotation)
        for malformed in ("", "garbage", f"v1={header.split('v1=')[1]}", f"t={t}", f"t=soon,{header.split(',')[1]}",
                          f"{header},t={t}", f"t={t},v1=é"):
            assert not check(SECRET, malformed, body, sent), malformed
    assert verify_signature(SECRET.decode(), header.encode(), body, sent)  # str secret, bytes header
    assert not verify_signature(SECRET, None, body, sent) and not verify_signature(SECRET, b"\xff", body, sent)
    with pytest.raises(ConfigError, match="UTC-aware"):
        verify_signature(SECRET, header, body, sent.replace(tzinfo=None))


def test_the_webhook_secret_comes_from_a_file_or_the_environment_never_both(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    assert webhook_secret(secret_file, env={}) == b"s3cret"
    assert webhook_secret(None, env={SECRET_ENV: "from-env"}) == b"from-env"
    with pytest.raises(ConfigError, match="not both") as both:
        webhook_secret(secret_file, env={SECRET_ENV: "from-env"})
    assert "s3cret" not in str(both.value) and "from-env" not in str(both.value)
    with pytest.raises(ConfigError, match="--secret-file PATH or WHISTLE_ALERTS_WEBHOOK_SECRET"):
        webhook_secret(None, env={})
    with pytest.raises(ConfigError, match="empty"):
        webhook_secret(None, env={SECRET_ENV: " "})
    with pytest.raises(ConfigError, match="cannot read"):
        webhook_secret(tmp_path / "missing", env={})
    with pytest.raises(ConfigError, match="signed"):
        run_webhook(Settings(), "http://127.0.0.1:9/alerts", secret=b"")


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
        self.signed: list[tuple[str | None, bytes]] = []  # (Whistle-Signature, raw body) of every request

    def answer(self, key: str, body: dict, signature: str | None = None, raw: bytes = b"") -> tuple[int, dict, float]:
        with self.lock:
            self.signed.append((signature, raw))
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
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            status, headers, delay = receiver.answer(self.headers["Idempotency-Key"], orjson.loads(raw),
                                                     self.headers[SIGNATURE_HEADER], raw)
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


def relay_until(settings: Settings, url: str, done, *, group: str | None, within_s: float = 20.0, **options):
    """Run the webhook consumer until `done()` (bounded), stop it, and return its report."""
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_webhook, settings, url, group=group, stop=stop, **{"secret": SECRET, **options})
        deadline = time.monotonic() + within_s
        while not done() and time.monotonic() < deadline and not running.done():
            time.sleep(0.05)
        reached = done()
        stop.set()
        report = running.result(timeout=15)
    assert reached, f"not reached within {within_s}s: {report}"
    return report


def relays_until(settings: Settings, relays: list[tuple[str, dict]], done, *, within_s: float = 20.0, started=None):
    """Run several webhook consumers side by side (url, options each) until `done()` (bounded); their reports.

    `started()`, if given, runs once they are all running (e.g. to wait for their group, then produce)."""
    stop = threading.Event()
    with ThreadPoolExecutor(len(relays)) as pool:
        running = [pool.submit(run_webhook, settings, url, stop=stop, max_backoff_s=0.2, **options) for url, options in relays]
        if started is not None:
            started()
        deadline = time.monotonic() + within_s
        while not done() and time.monotonic() < deadline and not any(r.done() for r in running):
            time.sleep(0.05)
        reached = done()
        stop.set()
        reports = [r.result(timeout=15) for r in running]
    assert reached, f"not reached within {within_s}s: {reports}"
    return reports


def signature_time(header: str) -> datetime:
    return datetime.fromtimestamp(int(header.split(",")[0].removeprefix("t=")), UTC)


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
    committed, end = committed_and_end(alert_settings, alert_settings.topic_prefix + group)
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
    committed, end = committed_and_end(alert_settings, alert_settings.topic_prefix + group)
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
    committed, end = committed_and_end(alert_settings, alert_settings.topic_prefix + group)
    assert committed[0] == end[0] == 5  # the other partitions hold nothing


@pytest.mark.kafka
def test_every_receiver_gets_every_breach_and_each_its_own_signature(alert_settings: Settings):
    produced = produce(alert_settings, [make_breach(n) for n in range(12)])
    everything = {bid for bid, *_ in produced}
    street_office, commission = Receiver(), Receiver()
    secrets = {"street": b"street-office-secret", "commission": b"commission-secret"}

    with serving(street_office) as url_a, serving(commission) as url_b:
        reports = relays_until(alert_settings, [(url_a, {"secret": secrets["street"]}), (url_b, {"secret": secrets["commission"]})],
                               lambda: everything <= set(street_office.accepted_ids()) and everything <= set(commission.accepted_ids()))

    assert set(street_office.accepted_ids()) == set(commission.accepted_ids()) == everything
    assert [r.group_id for r in reports] == [Groups.alerts_webhook_for(alert_settings.topic_prefix, url) for url in (url_a, url_b)]
    assert reports[0].group_id != reports[1].group_id and all(r.group_id.startswith(alert_settings.topic_prefix) for r in reports)
    assert [r.delivered for r in reports] == [12, 12]
    for receiver, mine, theirs in ((street_office, secrets["street"], secrets["commission"]),
                                   (commission, secrets["commission"], secrets["street"])):
        for header, raw in receiver.signed:
            assert header is not None and verify_signature(mine, header, raw, signature_time(header))
            assert not verify_signature(theirs, header, raw, signature_time(header))
    for report in reports:
        committed, end = committed_and_end(alert_settings, report.group_id)
        assert committed == end


@pytest.mark.kafka
def test_relays_forced_into_one_group_split_the_breaches(alert_settings: Settings):
    """The negative control: what sharing a group does, and what the derived default (above) avoids."""
    a, b = Receiver(), Receiver()
    everything: set[str] = set()

    def once_both_hold_partitions():
        wait_for_group(alert_settings, alert_settings.topic_prefix + "shared", 2, timeout_s=30)
        everything.update(bid for bid, *_ in produce(alert_settings, [make_breach(n) for n in range(12)]))

    with serving(a) as url_a, serving(b) as url_b:
        reports = relays_until(alert_settings, [(url_a, {"secret": SECRET, "group": "shared"}), (url_b, {"secret": SECRET, "group": "shared"})],
                               lambda: bool(everything) and everything <= set(a.accepted_ids()) | set(b.accepted_ids()),
                               within_s=45, started=once_both_hold_partitions)

    got_a, got_b = set(a.accepted_ids()), set(b.accepted_ids())
    assert reports[0].group_id == reports[1].group_id == alert_settings.topic_prefix + "shared"
    assert got_a | got_b == everything and not got_a & got_b
    assert got_a and got_b  # each receiver misses what the other got
    assert webhook_group(alert_settings, url_a) != webhook_group(alert_settings, url_b)


@pytest.mark.kafka
def test_a_relay_with_another_filter_has_its_own_group(alert_settings: Settings):
    records = [make_breach(n, tier="discipline" if n % 2 else "street", kind="referral" if n % 2 else "breach") for n in range(6)]
    produced = produce(alert_settings, records)
    referrals = {r["breach_id"] for r in records if r["tier"] == "discipline"}
    receiver = Receiver()

    with serving(receiver) as url:
        topic = Topics.with_prefix(alert_settings.topic_prefix).breaches
        filtered = Groups.alerts_webhook_for(alert_settings.topic_prefix, url, ["discipline"])
        ends = end_offsets(alert_settings, topic)

        def filtered_relay_read_everything() -> bool:  # it skipped the other tiers' records too, not only delivered its own
            return committed_offsets(alert_settings, filtered, topic) == ends

        reports = relays_until(alert_settings, [(url, {"secret": SECRET}), (url, {"secret": SECRET, "tiers": {"discipline"}})],
                               lambda: len(receiver.accepted_ids()) >= 9 and filtered_relay_read_everything())

    counts = {bid: receiver.accepted_ids().count(bid) for bid, *_ in produced}
    assert counts == {bid: 2 if bid in referrals else 1 for bid, *_ in produced}  # the same URL, two audiences, two groups
    assert reports[0].group_id != reports[1].group_id
    assert reports[1].group_id == Groups.alerts_webhook_for(alert_settings.topic_prefix, url, ["discipline"])
    assert (reports[0].delivered, reports[1].delivered, reports[1].skipped) == (6, 3, 3)


@pytest.mark.kafka
def test_every_post_is_signed_at_whistles_clock_and_each_retry_afresh(alert_settings: Settings):
    produced = produce(alert_settings, [make_breach(n) for n in range(3)], partition=0)
    ticks = iter(range(10**6))
    start = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)  # Whistle's clock: years after the breaches' own times
    receiver = Receiver(script=[(503, {}, 0.0), (503, {}, 0.0)])
    group = f"webhook-{uuid.uuid4().hex}"

    with serving(receiver) as url:
        relay_until(alert_settings, url, lambda: len(receiver.accepted_ids()) >= 3, group=group, max_backoff_s=0.2,
                    clock=lambda: start + timedelta(seconds=next(ticks)))

    assert receiver.accepted_ids() == [bid for bid, *_ in produced]
    assert len(receiver.signed) == 5  # two refused attempts, then three deliveries
    ok = readme_receiver()
    times = []
    for (header, raw), (_, key, _) in zip(receiver.signed, receiver.requests, strict=True):
        assert header is not None
        sent = signature_time(header)
        times.append(sent)
        assert start <= sent < start + timedelta(minutes=1)  # Whistle's clock, never the breach's fired_at
        assert orjson.loads(raw)["breach_id"] == key
        assert verify_signature(SECRET, header, raw, sent + timedelta(seconds=300)) and ok(SECRET, header, raw, sent.timestamp())
        assert not verify_signature(b"wrong", header, raw, sent)
        assert not verify_signature(SECRET, header, raw.replace(b"not accepted", b"accepted"), sent)  # tampered
        assert not verify_signature(SECRET, header, raw, sent + timedelta(seconds=301))  # replayed later
        assert not ok(SECRET, header, raw, (sent + timedelta(seconds=301)).timestamp())
    assert times == sorted(times) and len(set(times)) == 5  # each attempt, retries included, signed when it was sent
