"""Alert consumers of the breach topic: a live console tail and a webhook relay.

WHY: a breach is only useful if the audience it concerns hears about it — the street office about its
overdue cases, the discipline commission about referrals (`--tier discipline`). Producers put the tier
and kind in the headers `whistle.breach.tier` / `whistle.breach.kind`, so an audience filtering by tier
skips other tiers' records without decoding them.

- `tail`: prints breaches as they arrive (or from the beginning). It reads with a fresh consumer group
  per run and commits nothing: watching must never move anyone's offsets.
- `run_webhook`: POSTs every breach as JSON to a receiver, as a consumer group that loses nothing while
  the receiver is away. HTTP client: httpx (sync `httpx.Client`, bounded timeout, keep-alive).
  Every receiver has a consumer group of its own (`Groups.alerts_webhook_for`: the operator's `--group`
  name, or one derived from the URL and filters), so N receivers each get every breach they asked for.
  Every POST is signed for its receiver (`Whistle-Signature`, below; `verify_signature` checks it).

Webhook delivery order, per record (one record in flight at a time, so each partition stays in order):
  1. poll the next record; filtered out (tier, unit) -> step 4;
  2. POST it; header `Idempotency-Key: <breach_id>`, so a receiver can drop the redeliveries that
     at-least-once delivery brings (after a crash or a rebalance), and header
     `Whistle-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the receiver's secret>`,
     `t` read from Whistle's clock when this attempt is sent (each retry is signed afresh), never the
     breach's own time; a receiver refuses a signature older than 5 minutes (replayed);
     - 2xx: delivered -> step 4;
     - connection error, timeout, 401, 403, 404, 408, 429, 5xx (or any other unexpected answer): commit the progress
       made so far, pause every assigned partition and keep polling (staying in the group, serving
       rebalances) for an exponential backoff capped at `max_backoff_s`, at least the receiver's
       `Retry-After`; then resume and POST the same record again. Stopping, or losing the record's
       partition, during a backoff leaves the record uncommitted: the next run or owner delivers it;
     - any other 4xx (e.g. 400, 422): the receiver refuses this record -> step 3;
     (an undecodable record cannot be POSTed -> step 3)
  3. write it to the dead-letter topic (`streams.pipeline.dead_letter`, stage "alert-webhook", with the
     original bytes and position) and wait for Kafka's acknowledgement, retrying like step 2 meanwhile;
  4. store its offset. Stored offsets are committed (synchronously) at least every
     `COMMIT_INTERVAL_S` while records flow, whenever the topic goes quiet, before a backoff, when
     partitions are revoked and at shutdown. So a committed offset is always behind a record that was
     delivered (2xx), dead-lettered, or filtered out — never behind one the receiver has not taken.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from rich.console import Console
from rich.text import Text

from schemas.serde import Serde
from streams.domain.model import Tier
from streams.pipeline import dead_letter
from whistle.edges.sdk import Publisher
from whistle.ground.deadletter import Position
from whistle.ground.errors import ConfigError, DeliveryError, StackError, WhistleError
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings
from whistle.ground.times import utc_now

log = logging.getLogger("whistle.edges.alerts")

TIER_HEADER = "whistle.breach.tier"
LOCAL_TIMEZONE = ZoneInfo("Asia/Shanghai")  # the city's clock, for people reading alerts
KIND_STYLES = {"warning": "yellow", "breach": "bold red", "referral": "bold magenta"}
POLL_S = 0.2
COMMIT_INTERVAL_S = 1.0  # a crash redelivers at most this much (receivers dedupe on Idempotency-Key)
INITIAL_BACKOFF_S = 0.25
MAX_RETRY_AFTER_S = 600.0  # a receiver asking for more (or a far-future date) is waited on this long, then tried again
HOLD_STEP_S = 0.1  # while backing off, the consumer is polled this often (rebalances, max.poll.interval.ms)
DEAD_LETTER_TIMEOUT_S = 10.0
_REPLY_EXCERPT_CHARS = 200
SIGNATURE_HEADER = "Whistle-Signature"
SIGNATURE_TOLERANCE_S = 300  # receivers refuse a signature older (or further ahead) than this: a replay
SECRET_ENV = "WHISTLE_ALERTS_WEBHOOK_SECRET"  # the receiver's signing secret, when not given by --secret-file

T = TypeVar("T")


class UndeliverableAlert(DeliveryError):
    """A breach the webhook cannot hand over: the receiver refused it (4xx) or the record cannot be read."""

    stage = "alert-webhook"


# -- rules (pure) ------------------------------------------------------------------------------------


class Verdict(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


def verdict_of(status: int) -> Verdict:
    """What an HTTP status means for the record: taken, try again later, or refused for good.

    408 and 429 are the receiver asking to come back later, like 5xx. 1xx/3xx answers, and 401, 403 and
    404 (wrong credentials or path), are a misconfiguration, not a verdict on the record: it is held (and
    retried, loudly) rather than refused, or one expired token would dead-letter every breach.
    """
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if 400 <= status < 500 and status not in (401, 403, 404, 408, 429):
        return Verdict.REFUSED
    return Verdict.RETRY


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """The wait a `Retry-After` header asks for (delay-seconds or HTTP-date), within [0, MAX_RETRY_AFTER_S]; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC with no claim about the local zone (RFC 5322)
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff_delay(attempt: int, max_backoff_s: float, at_least_s: float = 0.0) -> float:
    """Exponential backoff for the `attempt`-th retry (0-based), capped at `max_backoff_s`, never below `at_least_s` (Retry-After)."""
    return max(min(max_backoff_s, INITIAL_BACKOFF_S * 2 ** min(attempt, 32)), at_least_s)


def checked_tiers(tiers: Iterable[str] | None) -> frozenset[str] | None:
    """The tier filter, every name a Tier value; ConfigError naming the unknown ones."""
    if not tiers:
        return None
    chosen = frozenset(tiers)
    unknown = sorted(chosen - {tier.value for tier in Tier})
    if unknown:
        raise ConfigError(f"unknown tier {', '.join(unknown)}; expected one of {', '.join(t.value for t in Tier)}", field="tier")
    return chosen


def wanted(record: dict[str, Any], tiers: frozenset[str] | None, units: frozenset[str] | None) -> bool:
    """Whether a breach is for this audience: its tier is chosen, and a chosen unit is responsible or the escalation target."""
    if tiers is not None and record["tier"] not in tiers:
        return False
    return units is None or record["responsible_unit_id"] in units or record["escalation_target_unit_id"] in units


def _tier_header_rules_out(message: Message, tiers: frozenset[str] | None) -> bool:
    """True when the tier header alone shows the record is not for this audience (no decoding needed)."""
    if tiers is None:
        return False
    headers: list[tuple[str, bytes | None]] = message.headers() or []  # type: ignore[assignment]  # stubs: a consumed message's headers are (name, bytes | None) pairs, never the dict producers may pass
    for name, value in headers:
        if name == TIER_HEADER:
            return value is None or value.decode("utf-8", "replace") not in tiers
    return False


# -- signatures -------------------------------------------------------------------------------------


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _mac(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def signature_header(secret: str | bytes, body: bytes, now: datetime) -> str:
    """The `Whistle-Signature` value for `body` sent at `now`: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    timestamp = int(now.timestamp())
    return f"t={timestamp},v1={_mac(_key(secret), timestamp, body)}"


def verify_signature(secret: str | bytes, header: str | bytes | None, body: bytes, now: datetime,
                     tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """Receiver side: whether `header` (the `Whistle-Signature` value) signs the raw `body` with `secret`, recently.

    False for a missing or malformed header, a wrong signature (any `v1=` entry may match, so a sender
    can sign with an old and a new secret while rotating), or a timestamp more than `tolerance_s` away
    from `now` (older: a replay; further ahead: a wrong clock). Digests are compared in constant time.
    `now` is the receiver's UTC-aware clock.
    """
    if now.tzinfo is None:
        raise ConfigError("verify_signature needs a UTC-aware now, got a naive datetime", field="now")
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            return False
    if not header or not secret:
        return False
    timestamps, candidates = [], []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            candidates.append(value.encode("utf-8"))
    if len(timestamps) != 1 or not candidates or not (timestamps[0].isascii() and timestamps[0].isdigit()) or len(timestamps[0]) > 12:
        return False
    timestamp = int(timestamps[0])
    if abs(now.timestamp() - timestamp) > tolerance_s:
        return False
    expected = _mac(_key(secret), timestamp, body).encode("ascii")
    matched = False
    for candidate in candidates:  # every entry is compared: the time taken does not tell which one matched
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def webhook_secret(secret_file: Path | None = None, env: dict[str, str] | None = None) -> bytes:
    """The receiver's signing secret: the content of `secret_file` or the `WHISTLE_ALERTS_WEBHOOK_SECRET` variable, never both.

    Surrounding whitespace (a file's trailing newline) is dropped. ConfigError when neither or both are
    given, or the secret is empty; the secret itself never appears in an error.
    """
    env = dict(os.environ) if env is None else env
    from_env = env.get(SECRET_ENV)
    if secret_file is not None and from_env is not None:
        raise ConfigError(f"the webhook secret comes from --secret-file or {SECRET_ENV}, not both", field="secret")
    if secret_file is not None:
        try:
            secret = secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the webhook secret file {secret_file}: {exc.strerror}", field="secret") from exc
    elif from_env is not None:
        secret = from_env.strip().encode("utf-8")
    else:
        raise ConfigError(f"every webhook POST is signed: give the receiver's secret with --secret-file PATH or {SECRET_ENV}",
                          field="secret")
    if not secret:
        raise ConfigError("the webhook secret is empty", field="secret")
    return secret


def _frozen(units: Iterable[str] | None) -> frozenset[str] | None:
    return frozenset(units) if units else None


def _position(message: Message) -> Position:
    """Where a consumed record is (a record without an error always has a topic, partition and offset)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    return Position(topic, partition, offset)


# -- tail ---------------------------------------------------------------------------------------------


ASSIGNMENT_GRACE_S = 30.0  # a new consumer group can take this long to be given partitions on a fresh broker


def tail(settings: Settings, tiers: set[str] | None, units: set[str] | None, console: Console, *,
         from_beginning: bool = False, stop_after: int | None = None, idle_timeout_s: float | None = None) -> int:
    """Print breaches for the chosen tiers and/or units as they arrive; the number printed.

    Runs until interrupted, `stop_after` breaches were printed, or `idle_timeout_s` passed without a new
    record (counted from the partition assignment or the last record). A record that cannot be read is reported with
    its topic/partition/offset and skipped: a watcher never stops on bad data.
    """
    tier_filter, unit_filter = checked_tiers(tiers), _frozen(units)
    serde = Serde.from_settings(settings)
    topic = Topics.with_prefix(settings.topic_prefix).breaches
    consumer = Consumer({
        **settings.kafka.librdkafka(),
        "group.id": f"whistle-alerts-tail-{uuid.uuid4().hex}",  # its own group: never moves another reader's offsets
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
    })
    assigned: list[float] = []  # when the group gave this tail its partitions: idle time counts from then
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: assigned.append(time.monotonic()))
    printed = 0
    last_record, started = None, time.monotonic()
    try:
        while stop_after is None or printed < stop_after:
            message = consumer.poll(POLL_S)
            if message is None:
                since = last_record or (assigned[0] if assigned else started + ASSIGNMENT_GRACE_S)
                if idle_timeout_s is not None and time.monotonic() - since > idle_timeout_s:
                    break
                continue
            error = message.error()
            if error is not None:
                _report_consumer_error(error, console)
                continue
            last_record = time.monotonic()
            if _tier_header_rules_out(message, tier_filter):
                continue
            try:
                record = serde.decode(message.value(), expect="Breach").record
            except WhistleError as exc:
                console.print(Text(f"! unreadable breach record at {message.topic()} partition {message.partition()} "
                                   f"offset {message.offset()}: {exc}", style="bold yellow"), soft_wrap=True)
                continue
            if wanted(record, tier_filter, unit_filter):
                console.print(breach_line(record), soft_wrap=True)
                printed += 1
    finally:
        consumer.close()
    return printed


def breach_line(record: dict[str, Any]) -> Text:
    """One breach as a readable line: local time, kind, tier, case, rule, how late, who -> whom, summary."""
    line = Text()
    line.append(record["fired_at"].astimezone(LOCAL_TIMEZONE).strftime("%Y-%m-%d %H:%M:%S"), style="dim")
    line.append(f" {record['kind'].upper():<8}", style=KIND_STYLES.get(record["kind"], ""))
    line.append(f" {record['tier']:<11}", style="bold")
    line.append(f" {record['case_id']}", style="cyan")
    line.append(f" {record['breach_type']}")
    line.append(f" {_lateness(record['overdue_ms'])}")
    line.append(f" {record['responsible_unit_id']} -> {record['escalation_target_unit_id'] or '-'}")
    line.append(f"  {record['summary']}")
    return line


def _lateness(overdue_ms: int) -> str:
    """'overdue 2h 05m', or for a warning (negative) 'due in 45m 00s'."""
    seconds = abs(overdue_ms) // 1000
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    if days:
        span = f"{days}d {hours:02d}h"
    elif hours:
        span = f"{hours}h {minutes:02d}m"
    else:
        span = f"{minutes}m {seconds:02d}s"
    return f"overdue {span}" if overdue_ms >= 0 else f"due in {span}"


def _report_consumer_error(error: KafkaError, console: Console) -> None:
    if error.fatal():
        raise StackError(f"Kafka consumer failed: {error.str()}", code=error.name())
    console.print(Text(f"! kafka: {error.str()}", style="yellow"), soft_wrap=True)


# -- webhook ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class WebhookReport:
    """What a webhook run did, for the command's summary."""

    delivered: int = 0  # 2xx answers
    dead_lettered: int = 0  # refused (4xx) or unreadable records, now in the dead-letter topic
    skipped: int = 0  # not for the chosen tiers/units
    retries: int = 0  # backoffs taken (receiver down, busy or slow; dead-letter writes not acknowledged)
    group_id: str = ""  # the consumer group it ran as


class _TryLater(Exception):
    """A transient failure; `after_s` is the least wait the other side asked for."""

    def __init__(self, after_s: float = 0.0) -> None:
        super().__init__(after_s)
        self.after_s = after_s


class _Abandoned(Exception):
    """Stopping, or the record's partition was revoked, during a backoff: leave the record uncommitted."""


def webhook_group(settings: Settings, url: str, tiers: set[str] | None = None, units: set[str] | None = None,
                  group: str | None = None) -> str:
    """The consumer group `run_webhook` runs as for these arguments (see `Groups.alerts_webhook_for`)."""
    return Groups.alerts_webhook_for(settings.topic_prefix, url, checked_tiers(tiers), _frozen(units), name=group)


def run_webhook(settings: Settings, url: str, *, secret: str | bytes, group: str | None = None, tiers: set[str] | None = None,
                units: set[str] | None = None, max_backoff_s: float = 30.0, timeout_s: float = 10.0,
                stop: threading.Event | None = None, clock: Callable[[], datetime] = utc_now,
                sleep: Callable[[float], None] = time.sleep) -> WebhookReport:
    """POST every breach (for the chosen tiers/units) to `url` until `stop` is set; see the module docstring for the order.

    Body: the Breach record's fields as JSON, times ISO 8601 UTC, signed with `secret` (`Whistle-Signature`).
    The consumer group is `group` (the operator's name) or one derived from the URL and filters, with the
    deployment's prefix either way (`webhook_group`). `timeout_s` bounds each request; `clock` (UTC now)
    stamps signatures and dead letters and reads HTTP-date Retry-After; `sleep` paces backoffs.
    """
    if clock().tzinfo is None:
        raise ConfigError("the webhook's clock must return UTC-aware datetimes, got a naive one", field="clock")
    if not secret:
        raise ConfigError("every webhook POST is signed: the receiver's secret cannot be empty", field="secret")
    url = _checked_url(url)
    group_id = webhook_group(settings, url, tiers, units, group)
    relay = _WebhookRelay(settings, url, group_id, _key(secret), checked_tiers(tiers), _frozen(units), max_backoff_s,
                          timeout_s, stop or threading.Event(), clock, sleep)
    return relay.run()


def _checked_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"webhook URL {url!r} is not a URL: {exc}", field="url") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"webhook URL {url!r} must be http(s)://host[:port]/path", field="url")
    return url


class _WebhookRelay:
    """One webhook consumer: Kafka in, HTTP out, offsets committed behind what the receiver took."""

    def __init__(self, settings: Settings, url: str, group_id: str, secret: bytes, tiers: frozenset[str] | None,
                 units: frozenset[str] | None, max_backoff_s: float, timeout_s: float, stop: threading.Event,
                 clock: Callable[[], datetime], sleep: Callable[[float], None]) -> None:
        self.url, self.tiers, self.units, self.max_backoff_s = url, tiers, units, max_backoff_s
        self.stop, self.clock, self.sleep = stop, clock, sleep
        self._secret = secret  # never logged
        self.serde = Serde.from_settings(settings)
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.report = WebhookReport(group_id=group_id)
        self.consumer = Consumer({
            **settings.kafka.librdkafka(),
            "group.id": group_id,
            "client.id": f"whistle-alerts-webhook-{settings.worker_id}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        })
        self.publisher = Publisher(settings, serde=self.serde, delivery_timeout_s=DEAD_LETTER_TIMEOUT_S)
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False,
                                   headers={"Content-Type": "application/json", "User-Agent": "whistle-alerts"})
        self._uncommitted = False
        self._last_commit = time.monotonic()

    def run(self) -> WebhookReport:
        self.consumer.subscribe([self.topics.breaches], on_revoke=self._on_revoke)
        log.info("webhook relay consuming %s as consumer group %s", self.topics.breaches, self.report.group_id)
        try:
            while not self.stop.is_set():
                message = self.consumer.poll(POLL_S)
                if message is None:
                    self._commit()
                    continue
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise StackError(f"Kafka consumer failed: {error.str()}", code=error.name())
                    log.warning("kafka: %s", error.str())
                    continue
                self._handle(message)
                if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
                    self._commit()
        finally:
            self._commit()
            self.consumer.close()
            self.client.close()
            self.publisher.close()
        return self.report

    def _handle(self, message: Message) -> None:
        try:
            if _tier_header_rules_out(message, self.tiers):
                self.report.skipped += 1
            else:
                self._relay(message)
        except _Abandoned:
            return
        self.consumer.store_offsets(message=message)
        self._uncommitted = True

    def _relay(self, message: Message) -> None:
        """Settle one record: delivered, dead-lettered, or skipped. Raises _Abandoned if it could not be settled now."""
        try:
            record = self.serde.decode(message.value(), expect="Breach").record
        except WhistleError as exc:
            unreadable = UndeliverableAlert(f"breach record cannot be read: {exc}", field=exc.context.get("field"))
            self._retrying(message, lambda: self._dead_letter(message, unreadable))
            return
        if not wanted(record, self.tiers, self.units):
            self.report.skipped += 1
            return
        body = orjson.dumps(record, option=orjson.OPT_UTC_Z)
        refusal = self._retrying(message, lambda: self._post(record["breach_id"], body))
        if refusal is not None:
            self._retrying(message, lambda: self._dead_letter(message, refusal))

    def _post(self, breach_id: str, body: bytes) -> UndeliverableAlert | None:
        """One POST: None when the receiver took it, the refusal when it refused it for good; _TryLater otherwise."""
        try:
            headers = {"Idempotency-Key": breach_id, SIGNATURE_HEADER: signature_header(self._secret, body, self.clock())}
            response = self.client.post(self.url, content=body, headers=headers)
        except httpx.TransportError as exc:  # refused/reset connections, timeouts, protocol errors
            log.warning("webhook %s unreachable for breach %s: %s: %s", self.url, breach_id, type(exc).__name__, exc)
            raise _TryLater() from exc
        verdict = verdict_of(response.status_code)
        if verdict is Verdict.DELIVERED:
            self.report.delivered += 1
            return None
        reply = response.text[:_REPLY_EXCERPT_CHARS]
        if verdict is Verdict.REFUSED:
            return UndeliverableAlert(f"webhook receiver refused the breach: HTTP {response.status_code} {reply}".rstrip(),
                                      status=response.status_code, url=self.url, breach_id=breach_id)
        log.warning("webhook %s answered HTTP %d for breach %s; will retry", self.url, response.status_code, breach_id)
        raise _TryLater(retry_after_seconds(response.headers.get("Retry-After"), self.clock()) or 0.0)

    def _dead_letter(self, message: Message, error: UndeliverableAlert) -> None:
        """Write the record to the dead-letter topic and wait for Kafka's acknowledgement (_TryLater if it did not come)."""
        where = _position(message)
        error.with_context(topic=where.topic, partition=where.partition, offset=where.offset)
        out = dead_letter(self.serde, self.topics, where, message.key(), message.value(), error, self.clock())
        try:
            self.publisher.produce_raw(out.topic, out.key, out.value, list(out.headers)).result(timeout=DEAD_LETTER_TIMEOUT_S + 5.0)
        except (DeliveryError, FutureTimeout) as exc:
            log.warning("dead letter for %s/%d/%d not acknowledged: %s", where.topic, where.partition, where.offset, exc)
            raise _TryLater() from exc
        log.error("dead-lettered %s/%d/%d: %s", where.topic, where.partition, where.offset, error)
        self.report.dead_lettered += 1

    def _retrying(self, message: Message, attempt: Callable[[], T]) -> T:
        """`attempt()` until it does not ask to try later, backing off in between; _Abandoned on stop or revocation."""
        retries = 0
        while True:
            try:
                return attempt()
            except _TryLater as again:
                self.report.retries += 1
                self._hold(backoff_delay(retries, self.max_backoff_s, again.after_s))
                retries += 1
            if self.stop.is_set() or not self._owns(message):
                raise _Abandoned()

    def _hold(self, seconds: float) -> None:
        """Wait without leaving the group: partitions paused, the consumer polled, what was done so far committed."""
        self._commit()
        self.consumer.pause(self.consumer.assignment())
        try:
            waited = 0.0
            while waited < seconds and not self.stop.is_set():
                self._put_back(self.consumer.poll(0))
                step = min(HOLD_STEP_S, seconds - waited)
                self.sleep(step)
                waited += step
        finally:
            self.consumer.resume(self.consumer.assignment())

    def _put_back(self, message: Message | None) -> None:
        """A record polled during a hold (from a partition assigned after the pause) is rewound, to come again in order."""
        if message is not None and message.error() is None:
            where = _position(message)
            self.consumer.seek(TopicPartition(where.topic, where.partition, where.offset))

    def _owns(self, message: Message) -> bool:
        return any(tp.topic == message.topic() and tp.partition == message.partition() for tp in self.consumer.assignment())

    def _commit(self) -> None:
        """Commit the stored offsets. A failure is logged and retried on the next commit; at worst records are redelivered."""
        if not self._uncommitted:
            return
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError._NO_OFFSET:
                log.warning("offset commit failed (%s); will retry", error.str())
                return
        self._uncommitted = False
        self._last_commit = time.monotonic()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit()
