"""The auditors' queries: named SQL files in sinks/queries/, run on any `Engine`, returned as small tables.

WHY SQL files: an auditor must be able to read exactly what produced a figure (each file's header
states its formulas) and re-run it; a rule several queries share is written once, as a fragment file
(sinks/queries/_<name>.sql) spliced where a query says `{_<name>}`. Python here only binds parameters,
checks inputs and, for `verify`, recomputes the case events' hash chains, which SQL cannot do on
ClickHouse 18.16, and compares what ClickHouse stores with what Kafka holds (`verify_against_kafka`:
Kafka's offsets are read by `read_kafka_ranges`, the comparison `compare_ranges` is pure).
CLI-free: `whistle audit ...` renders the `Result`s with `render_table`, `to_csv` or `to_json`.
"""
from __future__ import annotations

import csv
import functools
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from rich.table import Table

from sinks.clickhouse import Engine, check_identifier, render_identifiers, strip_comment_lines
from streams.domain.case import CaseEvent, event_hash, verify_chain
from streams.domain.model import Tier
from streams.domain.sla import RANKED_RATES, SlaPolicy, load_policies, policy_in_force
from whistle.ground.errors import ConfigError, StackError, ValidationError
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings
from whistle.ground.times import from_epoch_ms, from_iso, to_epoch_ms

QUERIES_DIR = Path(__file__).resolve().parent / "queries"
AUDITED_TABLES = ("raw_events", "case_events", "breaches", "dead_letters", "rule_files", "chain_anchors")
# Tables keyed by business id, whose offsets are accounted in the sink's ledger (migration 004): (ledger view, key column).
LEDGERED = {"case_events": ("case_event_offsets", "event_id"), "breaches": ("breach_offsets", "breach_id")}
RANKING_UNITS = ("grid", "community", "street", "department")  # the tiers a ranking ranks (the units holding cases)
DEFAULT_MIN_CASES = 5  # the minimum-case rule when the scoring policy has no `ranking` section
LOCAL_TIMEZONE = "Asia/Shanghai"  # the city's months (streams/reference/sla/calendar-cn.yaml)
_END_OF_TIME_MS = 2**63 - 1
_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
_CASE_EVENT_FIELDS = tuple(f.name for f in fields(CaseEvent))  # _case_event_rows.sql selects them in this order
_MAX_LISTED = 100  # gaps / duplicated offsets listed per partition
_SUBJECT = re.compile(r"[a-z_]+ (\S+)\[(\d+)\]")  # a Problem's subject "case_events topic[partition]"
_FRAGMENT = re.compile(r"\{(_[a-z0-9_]+)\}")  # `{_month_holdings}` in a query = sinks/queries/_month_holdings.sql (query_text)


@dataclass(frozen=True, slots=True)
class Result:
    """A query's answer: its name, column names and rows (values as the engine returned them)."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing `verify` found wrong. `check` is offsets | batches | chain; `subject` says where."""

    check: str
    subject: str
    detail: str


def run_query(engine: Engine, database: str, name: str, params: Mapping[str, Any], **identifiers: str) -> Result:
    """Run sinks/queries/<name>.sql (its `{_fragment}`s spliced in, see `query_text`) with `{db}` = database
    (and any other identifier placeholders)."""
    sql = render_identifiers(query_text(name), db=database, **identifiers)
    columns, rows = engine.execute_with_columns(sql, params, name=f"{name}.sql")
    return Result(name, tuple(columns), tuple(rows))


def ranking(engine: Engine, database: str, month: str, by: str = "street", min_cases: int | None = None, *,
            as_of: datetime | None = None, tz: str = LOCAL_TIMEZONE, policies: Mapping[str, SlaPolicy] | None = None) -> Result:
    """Monthly ranking of the grids, communities, streets or departments that held the month's cases (formulas:
    sinks/queries/ranking.sql).

    `month` is 'YYYY-MM' in `tz`; `as_of` (default: everything stored) cuts off later events so a published ranking
    can be reproduced exactly. `policies` (default: streams/reference/sla) give each case's unsatisfied_rating_max,
    and the one in force when the month began (`ranking_policy`) the composite score's weights and, when
    `min_cases` is None, the minimum-case rule (DEFAULT_MIN_CASES without a `ranking` section): smaller units are
    listed unranked.
    """
    if min_cases is not None and (isinstance(min_cases, bool) or not isinstance(min_cases, int) or min_cases < 0):
        raise ValidationError(f"min_cases must be a whole number >= 0, got {min_cases!r}", field="min_cases")
    scope = _ranking_scope(month, by, as_of, tz)
    policies = load_policies() if policies is None else policies
    scoring = ranking_policy(policies, month, tz)
    rules = None if scoring is None else scoring.ranking
    if min_cases is None:
        min_cases = ranking_min_cases(policies, month, tz)
    weights = {rate: 0 if rules is None else rules.weights_bp[rate] for rate in RANKED_RATES}
    versions = sorted(policies)
    return run_query(engine, database, "ranking", {
        **scope, "min_cases": min_cases, "scored": int(rules is not None), **{f"w_{rate}": weight for rate, weight in weights.items()},
        "policy_versions": versions, "unsatisfied_max": [policies[v].rules.unsatisfied_rating_max for v in versions]})


def ranking_policy(policies: Mapping[str, SlaPolicy], month: str, tz: str = LOCAL_TIMEZONE) -> SlaPolicy | None:
    """The policy whose `ranking` section (if any) scores `month`: the one in force when the month began, so a month is
    scored by one rule however policies change during it (None: no policy was in force yet)."""
    try:
        return policy_in_force(policies, month_bounds(month, tz)[0])
    except ConfigError:
        return None


def ranking_min_cases(policies: Mapping[str, SlaPolicy], month: str, tz: str = LOCAL_TIMEZONE) -> int:
    """The minimum-case rule of `month` when none is asked for: the scoring policy's, else DEFAULT_MIN_CASES."""
    scoring = ranking_policy(policies, month, tz)
    return DEFAULT_MIN_CASES if scoring is None or scoring.ranking is None else scoring.ranking.min_cases


def as_of_from_text(text: str) -> datetime:
    """A ranking's `--as-of` / `as_of=`: ISO 8601 with a zone (`2026-12-01T00:00:00+08:00`, `...Z`); a time without one is refused."""
    try:
        moment = from_iso(text.strip())
    except ValueError as exc:
        raise ValidationError(f"as_of must be an ISO 8601 time with a zone, like 2026-12-01T00:00:00+08:00, got {text!r}", field="as_of") from exc
    to_epoch_ms(moment, "as_of")  # refuses a naive time
    return moment


def pinned(moment: datetime) -> datetime:
    """`moment` cut to the millisecond (the store's resolution), so the as-of a ranking prints reproduces it exactly."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def as_of_text(moment: datetime, tz: str = LOCAL_TIMEZONE) -> str:
    """How a ranking prints its as-of: ISO 8601 in city time to the millisecond (`--as-of` reads it back)."""
    return moment.astimezone(ZoneInfo(tz)).isoformat(timespec="milliseconds")


def ranking_provenance(engine: Engine, database: str, month: str, by: str = "street", *, as_of: datetime | None = None,
                       tz: str = LOCAL_TIMEZONE, policies: Mapping[str, SlaPolicy] | None = None) -> Result:
    """The Kafka offset ranges and policy versions behind `ranking(month, by, as_of=as_of)`, each row with the as-of
    used (ISO 8601 in `tz`, None: everything stored) and the policy that scored it ('' when none has a `ranking` section)."""
    result = run_query(engine, database, "ranking_provenance", _ranking_scope(month, by, as_of, tz))
    stamp = None if as_of is None else as_of_text(as_of, tz)
    score_policy = ranking_score_policy(load_policies() if policies is None else policies, month, tz)
    return Result(result.name, (*result.columns, "as_of", "score_policy"), tuple((*row, stamp, score_policy) for row in result.rows))


def ranking_score_policy(policies: Mapping[str, SlaPolicy], month: str, tz: str = LOCAL_TIMEZONE) -> str:
    """The version of the policy whose `ranking` section scores `month`'s ranking ('' when none has one)."""
    scoring = ranking_policy(policies, month, tz)
    return scoring.version if scoring is not None and scoring.ranking is not None else ""


def ranking_rules(engine: Engine, database: str, month: str, by: str = "street", *,
                  as_of: datetime | None = None, tz: str = LOCAL_TIMEZONE) -> Result:
    """The policy versions (with their registered content hashes) and calendar editions behind `ranking(month, by, as_of=as_of)`."""
    return run_query(engine, database, "ranking_rules", _ranking_scope(month, by, as_of, tz))


def case_timeline(engine: Engine, database: str, case_id: str) -> Result:
    """Every event and SLA record of one case, in order (sinks/queries/case_timeline.sql)."""
    if not isinstance(case_id, str) or not case_id:
        raise ValidationError("case_id must be a non-empty string", field="case_id")
    return run_query(engine, database, "case_timeline", {"case_id": case_id})


def breaches(engine: Engine, database: str, *, tier: str | None = None, unit: str | None = None,
             since: datetime | None = None, until: datetime | None = None, include_warnings: bool = False) -> Result:
    """Breaches and referrals (warnings too on request) fired in [since, until), optionally of one
    escalation tier and one responsible unit (sinks/queries/breaches.sql)."""
    if tier is not None and tier not in {t.value for t in Tier}:
        raise ValidationError(f"tier must be one of {', '.join(t.value for t in Tier)}, got {tier!r}", field="tier")
    params = {
        "tier": tier or "",
        "unit": unit or "",
        "from_ms": 0 if since is None else to_epoch_ms(since, "since"),
        "to_ms": _END_OF_TIME_MS if until is None else to_epoch_ms(until, "until"),
        "include_warnings": int(include_warnings),
    }
    return run_query(engine, database, "breaches", params)


TREND_BUCKETS = ("day", "week")


def trend_breaches(engine: Engine, database: str, month: str, *, tz: str = LOCAL_TIMEZONE) -> Result:
    """Breaches and referrals fired in `month`, per city day and tier (sinks/queries/dashboard_trend_breaches.sql):
    the rows `breaches(since=, until=)` lists for the month, counted."""
    from_ms, to_ms = month_bounds(month, tz)
    return run_query(engine, database, "dashboard_trend_breaches", {"from_ms": from_ms, "to_ms": to_ms, "tz": tz})


def trend_on_time(engine: Engine, database: str, month: str, months: int = 12, *, as_of: datetime | None = None,
                  tz: str = LOCAL_TIMEZONE) -> Result:
    """Each street-tier unit's on-time rate in each of the `months` months ending with `month` (dashboard_trend_on_time.sql):
    per month, ranking(month, "street")'s on_time_rate_pct."""
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= 36:
        raise ValidationError(f"months must be a whole number from 1 to 36, got {months!r}", field="months")
    end_ms = month_bounds(month, tz)[1]  # validates month
    first = int(month[:4]) * 12 + int(month[5:7]) - months  # the first month, counted in months since year 0
    scope = {**_ranking_scope(f"{first // 12:04d}-{first % 12 + 1:02d}", "street", as_of, tz), "end_ms": end_ms}
    return run_query(engine, database, "dashboard_trend_on_time", {**scope, "tz": tz})


def trend_durations(engine: Engine, database: str, month: str, bucket: str = "day", *, as_of: datetime | None = None,
                    tz: str = LOCAL_TIMEZONE) -> Result:
    """p50 / p90 time to accept and to resolve of the cases opened in `month`, per day or week of their opening
    (sinks/queries/dashboard_trend_durations.sql)."""
    if bucket not in TREND_BUCKETS:
        raise ValidationError(f"bucket must be one of {', '.join(TREND_BUCKETS)}, got {bucket!r}", field="bucket")
    start_ms, end_ms = month_bounds(month, tz)
    as_of_ms = _END_OF_TIME_MS if as_of is None else to_epoch_ms(as_of, "as_of")
    return run_query(engine, database, "dashboard_trend_durations",
                     {"start_ms": start_ms, "end_ms": end_ms, "as_of_ms": as_of_ms, "bucket": bucket, "tz": tz})


def verify(engine: Engine, database: str, *, events_per_pass: int = 200_000) -> list[Problem]:
    """Everything that would make the audit store untrustworthy; [] when it is sound.

    - offsets: in every audited table, each Kafka topic/partition holds every offset between its
      lowest and highest exactly once (gaps and duplicate rows listed), and every offset the sink
      recorded in sink_batches is there;
    - chain: every case's events are gap-free from seq 1 and hash-chained, every row's hash matches
      its content (an altered row), and copies of one event agree.
    Case events are checked `events_per_pass` at a time (by case hash bucket) to bound memory.
    """
    check_identifier(database, "database")
    problems: list[Problem] = []
    for table in AUDITED_TABLES:
        problems.extend(_offset_problems(engine, database, table))
        problems.extend(_batch_problems(engine, database, table))
        problems.extend(_ledger_problems(engine, database, table))
    problems.extend(_chain_problems(engine, database, events_per_pass))
    return problems


# -- verify against Kafka ------------------------------------------------------------------------

BEHIND, BROKEN, CLEAN, NOTED = "behind", "broken", "clean", "noted"  # noted: reported, changes no verdict
EXIT_CODES = {CLEAN: 0, BROKEN: 1, BEHIND: 2}  # `whistle audit verify`: broken wins over behind


@dataclass(frozen=True, slots=True)
class KafkaRange:
    """One partition as Kafka has it: offsets [low, high) are in the log (low = low watermark, high = high
    watermark); `committed` is the sink group's committed offset (the next it would read), None when none."""

    topic: str
    partition: int
    low: int
    high: int
    committed: int | None = None


@dataclass(frozen=True, slots=True)
class StoredRange:
    """One partition as ClickHouse accounts for it (sinks/queries/verify_stored_ranges.sql): `offsets` distinct
    offsets stored between `first` and `last` (None, None when nothing is), and the lowest original offset of
    its dead letters (`dead_first`, None when none)."""

    topic: str
    partition: int
    offsets: int
    first: int | None
    last: int | None
    dead_first: int | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing `verify` reports. status: behind (the sink's lag, not an error) | broken (an error).
    kind: lag | unstored (behind), lost | missing | beyond (broken, from comparing with Kafka), or the check of a
    ClickHouse-internal `Problem` (offsets | batches | rows | chain, broken). [first, last] are Kafka offsets, inclusive."""

    kind: str
    status: str
    topic: str | None
    partition: int | None
    first: int | None
    last: int | None
    records: int
    detail: str


def read_kafka_ranges(settings: Settings, *, timeout_s: float = 10.0, topics: Iterable[str] | None = None) -> list[KafkaRange]:
    """Kafka's low and high watermarks of every partition of every audited topic of `settings`' deployment (or of
    `topics`), and the sink group's committed offsets (settings.kafka.librdkafka(); every request bounded by `timeout_s`).

    A topic Kafka does not have is left out (what ClickHouse holds of it is then reported `beyond`).
    Raises StackError when Kafka does not answer in time.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    topics = tuple(topics) if topics is not None else Topics.with_prefix(settings.topic_prefix).audited
    group = Groups.with_prefix(settings.topic_prefix).sink
    admin = AdminClient({**settings.kafka.librdkafka(), "log_level": 0, "socket.timeout.ms": int(timeout_s * 1000)})
    try:
        metadata = admin.list_topics(timeout=timeout_s).topics
        partitions = [TopicPartition(topic, p) for topic in topics if topic in metadata and metadata[topic].error is None
                      for p in sorted(metadata[topic].partitions)]
        if not partitions:
            return []
        watermarks = {}
        for name, spec in (("low", OffsetSpec.earliest()), ("high", OffsetSpec.latest())):
            futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout_s)
            watermarks[name] = {(tp.topic, tp.partition): future.result(timeout=timeout_s).offset for tp, future in futures.items()}
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(tp.topic, tp.partition) for tp in partitions])
        answer = admin.list_consumer_group_offsets([request], request_timeout=timeout_s)[group].result(timeout=timeout_s)
        committed = {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions if tp.offset >= 0}
    except (KafkaException, TimeoutError) as exc:  # concurrent.futures.TimeoutError is TimeoutError (3.11)
        raise StackError(f"Kafka did not answer verify's offset requests within {timeout_s:.0f}s: {exc}") from exc
    return [KafkaRange(topic, partition, watermarks["low"][topic, partition], watermarks["high"][topic, partition],
                       committed.get((topic, partition))) for topic, partition in ((tp.topic, tp.partition) for tp in partitions)]


def stored_ranges(engine: Engine, database: str) -> list[StoredRange]:
    """What ClickHouse accounts for of each Kafka partition (sinks/queries/verify_stored_ranges.sql)."""
    check_identifier(database, "database")
    rows = run_query(engine, database, "verify_stored_ranges", {}).rows
    return [StoredRange(topic, int(partition), int(offsets), int(first) if offsets else None, int(last) if offsets else None,
                        int(dead_first) if dead else None)
            for topic, partition, offsets, first, last, dead, dead_first in rows]


def compare_ranges(kafka: Iterable[KafkaRange], stored: Iterable[StoredRange]) -> list[Finding]:
    """Kafka's offsets against ClickHouse's, per partition (pure). Offsets start at 0 in every partition.

    The sink's position is where it resumes: after the highest offset stored, or at its committed offset
    when that is further on (the records between were dead-lettered), as `Sink._on_assign` does.
    - lag (behind): records in Kafka at or after the sink's position, not stored yet; `unstored` when
      nothing of the partition is stored at all (and nothing committed) while Kafka holds records for it;
    - lost (broken): records before the first stored offset, or between the sink's position and Kafka's
      low watermark, that are gone from Kafka (deleted by retention or delete_records) and were never stored;
    - missing (broken): records still in Kafka below the first stored offset: the sink never goes back to them;
    - beyond (broken): offsets stored that Kafka's log never reached (a recreated topic, another cluster).
    Gaps and duplicates between stored offsets are `verify`'s own checks.
    """
    by_partition = {(s.topic, s.partition): s for s in stored}
    findings: list[Finding] = []
    for k in sorted(kafka, key=lambda r: (r.topic, r.partition)):
        s = by_partition.pop((k.topic, k.partition), None)
        findings.extend(_partition_findings(k, s))
    for s in sorted(by_partition.values(), key=lambda r: (r.topic, r.partition)):
        if s.last is not None:
            findings.append(Finding("beyond", BROKEN, s.topic, s.partition, s.first, s.last, s.offsets,
                                    "ClickHouse holds offsets of a partition Kafka does not have"))
    return findings


def _partition_findings(k: KafkaRange, s: StoredRange | None) -> list[Finding]:
    def finding(kind: str, status: str, first: int, end: int, detail: str) -> Finding:
        return Finding(kind, status, k.topic, k.partition, first, end - 1, end - first, detail)

    stored_end = s.last + 1 if s is not None and s.last is not None else 0
    committed = k.committed if k.committed is not None and k.committed > 0 else 0
    position = max(stored_end, committed)
    starts = [x for x in ((s.first, s.dead_first) if s is not None else ()) if x is not None]
    first = min(starts) if starts else position  # nothing stored: everything before the position is unaccounted
    found = []
    if s is not None and s.last is not None and s.last >= k.high:
        found.append(finding("beyond", BROKEN, max(k.high, s.first or 0), s.last + 1,
                             f"stored, but Kafka's log ends at {k.high} (recreated topic or another cluster)"))
    if first > 0:
        why = "before the first stored offset" if starts else "committed by the sink, none stored"
        if min(first, k.low) > 0:
            found.append(finding("lost", BROKEN, 0, min(first, k.low, k.high), f"{why}, and gone from Kafka (low watermark {k.low})"))
        if k.low < first:
            found.append(finding("missing", BROKEN, k.low, min(first, k.high), f"{why}, still in Kafka: the sink will not go back"))
    if position < k.low:
        found.append(finding("lost", BROKEN, position, k.low, f"deleted from Kafka (low watermark {k.low}) before the sink stored them"))
    start = max(position, k.low)
    if k.high > start:
        if starts or committed:
            found.append(finding("lag", BEHIND, start, k.high, f"in Kafka, not stored yet (sink at {position}, Kafka ends at {k.high})"))
        else:
            found.append(finding("unstored", BEHIND, start, k.high, "partition never stored; Kafka holds these records"))
    return [f for f in found if f.records > 0]


def problem_findings(problems: Iterable[Problem]) -> list[Finding]:
    """`verify`'s ClickHouse-internal problems as findings (all broken); topic and partition where the subject names them."""
    findings = []
    for p in problems:
        match = _SUBJECT.fullmatch(p.subject)
        topic, partition = (match.group(1), int(match.group(2))) if match else (None, None)
        findings.append(Finding(p.check, BROKEN, topic, partition, None, None, 0, f"{p.subject}: {p.detail}"))
    return findings


@dataclass(frozen=True, slots=True)
class DeadLetterPolicy:
    """When dead letters are a failure: a partition with at least `min_records` of them, over `share_max` of its records."""

    share_max: float = 0.05
    min_records: int = 20
    since_ms: int = 0  # the period the dead letters are reported for, by failure time [since, until)
    until_ms: int = _END_OF_TIME_MS


def dead_letter_findings(rows: Iterable[tuple], sizes: Mapping[tuple[str, int], int], policy: DeadLetterPolicy) -> list[Finding]:
    """Dead letters by topic, stage and reason (noted), and each partition whose share of dead letters passes the policy (broken).

    `rows` are sinks/queries/verify_dead_letters.sql's; `sizes` the records of each original partition (stored raw
    records, or Kafka's log for the case stream). Pure.
    """
    by_reason: dict[tuple[str, str, str], int] = defaultdict(int)
    by_partition: dict[tuple[str, int], int] = defaultdict(int)
    for topic, partition, stage, error_class, reason, records in rows:
        by_reason[(topic, stage, reason or error_class)] += int(records)
        by_partition[(topic, int(partition))] += int(records)
    findings = [Finding("dead_letters", NOTED, topic, None, None, None, records, f"stage {stage}: {why}")
                for (topic, stage, why), records in sorted(by_reason.items())]
    for (topic, partition), dead in sorted(by_partition.items()):
        size = sizes.get((topic, partition), 0)
        if dead >= policy.min_records and size and dead / size > policy.share_max:
            findings.append(Finding("dead_letter_share", BROKEN, topic, partition, None, None, dead,
                                    f"{dead / size:.1%} of its {size} records dead-lettered (more than {policy.share_max:.0%})"))
    return findings


def verify_against_kafka(engine: Engine, database: str, kafka: Iterable[KafkaRange], *, case_stream: Iterable[KafkaRange] = (),
                         dead_letters: DeadLetterPolicy = DeadLetterPolicy(), events_per_pass: int = 200_000) -> list[Finding]:
    """Everything `verify` checks (as broken findings), Kafka's ranges compared with the stored ones, then the dead letters:
    by stage and reason, and failing where a partition's share passes `dead_letters` (against the raw records stored,
    or `case_stream`'s Kafka log for the case stage)."""
    problems = verify(engine, database, events_per_pass=events_per_pass)
    stored = stored_ranges(engine, database)
    sizes = {(s.topic, s.partition): s.offsets for s in stored}
    sizes.update({(k.topic, k.partition): k.high for k in case_stream})
    rows = run_query(engine, database, "verify_dead_letters", {"from_ms": dead_letters.since_ms, "to_ms": dead_letters.until_ms}).rows
    return problem_findings(problems) + compare_ranges(kafka, stored) + dead_letter_findings(rows, sizes, dead_letters)


def status_of(findings: Iterable[Finding]) -> str:
    """broken if any finding is, else behind if any is, else clean (noted findings change nothing)."""
    statuses = {f.status for f in findings}
    return BROKEN if BROKEN in statuses else BEHIND if BEHIND in statuses else CLEAN


def findings_result(findings: Iterable[Finding]) -> Result:
    """Findings as a Result, for the same renderers (offsets inclusive; empty when not about offsets)."""
    return Result("verify", ("status", "kind", "topic", "partition", "first_offset", "last_offset", "records", "detail"),
                  tuple((f.status, f.kind, f.topic, f.partition, f.first, f.last, f.records, f.detail) for f in findings))


def problems_result(problems: Iterable[Problem]) -> Result:
    """`verify`'s findings as a Result, for the same renderers."""
    return Result("verify", ("check", "subject", "detail"), tuple((p.check, p.subject, p.detail) for p in problems))


def render_table(result: Result, title: str | None = None) -> Table:
    """A rich Table of the result (NULL shown as an empty cell)."""
    table = Table(title=title or result.name)
    for column in result.columns:
        table.add_column(column)
    for row in result.rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    return table


def to_csv(result: Result) -> str:
    """CSV with a header row; NULL is an empty field, decimals keep their scale ("97.30")."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if value is None else str(value) for value in row])
    return buffer.getvalue()


def to_json(result: Result) -> str:
    """A JSON array of objects, one per row; decimals as strings so they stay exact ("97.30")."""
    return orjson.dumps(result.as_dicts(), default=_json_default).decode()


# -- inputs ---------------------------------------------------------------------------------------


def month_bounds(month: str, tz: str = LOCAL_TIMEZONE) -> tuple[int, int]:
    """[start, end) of the calendar month 'YYYY-MM' in time zone `tz`, as epoch ms."""
    match = _MONTH.fullmatch(month) if isinstance(month, str) else None
    if match is None:
        raise ValidationError(f"month must be YYYY-MM, got {month!r}", field="month")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"unknown time zone {tz!r}", field="tz") from exc
    year, number = int(match.group(1)), int(match.group(2))
    start = datetime(year, number, 1, tzinfo=zone)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=zone)
    return to_epoch_ms(start, "month"), to_epoch_ms(end, "month")


def _ranking_scope(month: str, by: str, as_of: datetime | None, tz: str) -> dict[str, Any]:
    if by not in RANKING_UNITS:
        raise ValidationError(f"by must be one of {', '.join(RANKING_UNITS)}, got {by!r}", field="by")
    start_ms, end_ms = month_bounds(month, tz)
    as_of_ms = _END_OF_TIME_MS if as_of is None else to_epoch_ms(as_of, "as_of")
    return {"start_ms": start_ms, "end_ms": end_ms, "as_of_ms": as_of_ms, "by": by}


@functools.cache
def query_text(name: str, directory: Path = QUERIES_DIR) -> str:
    """The statement of <directory>/<name>.sql as it is run: full-line comments stripped, and each
    fragment reference `{_fragment}` replaced by <directory>/_fragment.sql (comments stripped too).

    A fragment is a piece of SQL shared by several queries (a rule written once, e.g. _month_holdings.sql,
    who held which case in a ranking); its `{db}` and `%(param)s` are the query's. Fragments are not
    queries (names starting with `_` are refused here); a fragment may use others (_month_holdings.sql reads
    {_case_figures}), but never itself, directly or through another.
    """
    if name.startswith("_"):
        raise ConfigError(f"{name} is a SQL fragment, not an audit query", file=str(directory / f"{name}.sql"))
    path = directory / f"{name}.sql"
    sql = _read_sql(path, f"audit query {name}")

    def spliced(text: str, using: tuple[str, ...]) -> str:
        def splice(match: re.Match) -> str:
            fragment = match.group(1)
            fragment_path = directory / f"{fragment}.sql"
            if fragment in using:
                raise ConfigError(f"SQL fragment {fragment_path.name} (used by {path.name}) references itself "
                                  f"({' -> '.join((*using, fragment))})", file=str(fragment_path))
            if not fragment_path.is_file():
                raise ConfigError(f"{path.name} references unknown SQL fragment {{{fragment}}} (no {fragment_path.name})",
                                  file=str(path), fragment=fragment)
            return spliced(_read_sql(fragment_path, f"SQL fragment {fragment}").strip(), (*using, fragment))

        return _FRAGMENT.sub(splice, text)

    return spliced(sql, ())


def _read_sql(path: Path, what: str) -> str:
    try:
        return strip_comment_lines(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{what} is missing: {exc}", file=str(path)) from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# -- verify ---------------------------------------------------------------------------------------


def _offsets_of(table: str) -> str:
    """Where `table`'s Kafka offsets are accounted: the table itself, or its ledger view (LEDGERED)."""
    return LEDGERED[table][0] if table in LEDGERED else table


def _offset_problems(engine: Engine, database: str, table: str) -> list[Problem]:
    problems = []
    source = _offsets_of(table)
    summary = run_query(engine, database, "verify_offsets", {}, table=source)
    for topic, partition, row_count, offset_count, min_offset, max_offset in summary.rows:
        subject = f"{table} {topic}[{partition}]"
        scope = {"topic": topic, "partition": partition, "limit": _MAX_LISTED}
        missing = max_offset - min_offset + 1 - offset_count
        if missing:
            gaps = run_query(engine, database, "verify_offset_gaps", scope, table=source).rows
            listed = ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in gaps)
            problems.append(Problem("offsets", subject, f"{missing} offset(s) missing between {min_offset} and {max_offset}: {listed}"))
        if row_count > offset_count:
            copies = run_query(engine, database, "verify_offset_duplicates", scope, table=source).rows
            listed = ", ".join(f"{offset} x{count}" for offset, count in copies)
            problems.append(Problem("offsets", subject, f"{row_count - offset_count} duplicate row(s): {listed}"))
    return problems


def _ledger_problems(engine: Engine, database: str, table: str) -> list[Problem]:
    """Offsets the sink stored whose key has no row in the table any more (LEDGERED tables only)."""
    if table not in LEDGERED:
        return []
    offsets, key = LEDGERED[table]
    lost = run_query(engine, database, "verify_ledger_rows", {"limit": _MAX_LISTED}, table=table, offsets=offsets, key=key)
    return [Problem("rows", f"{table} {topic}[{partition}]", f"offset {offset} ({record_key}) was stored, its row is gone")
            for topic, partition, offset, record_key in lost.rows]


def _batch_problems(engine: Engine, database: str, table: str) -> list[Problem]:
    problems = []
    coverage = run_query(engine, database, "verify_batches", {"table": table}, table=_offsets_of(table))
    for topic, partition, first, last, table_rows, table_min, table_max in coverage.rows:
        subject = f"{table} {topic}[{partition}]"
        if not table_rows:
            problems.append(Problem("batches", subject, f"sink recorded offsets {first}-{last} inserted, the table holds none"))
            continue
        if first < table_min:
            problems.append(Problem("batches", subject, f"offsets {first}-{table_min - 1} recorded by the sink are missing"))
        if last > table_max:
            problems.append(Problem("batches", subject, f"offsets {table_max + 1}-{last} recorded by the sink are missing"))
    return problems


def _chain_problems(engine: Engine, database: str, events_per_pass: int) -> list[Problem]:
    if events_per_pass < 1:
        raise ValidationError(f"events_per_pass must be >= 1, got {events_per_pass}", field="events_per_pass")
    total = engine.execute(render_identifiers("SELECT count() FROM {db}.case_events", db=database), name="count case events")[0][0]
    buckets = max(1, -(-total // events_per_pass))
    problems = []
    for bucket in range(buckets):
        rows = run_query(engine, database, "verify_case_events", {"buckets": buckets, "bucket": bucket}).rows
        case_rows: list[tuple] = []
        for row in rows:
            if case_rows and row[1] != case_rows[0][1]:
                problems.extend(_case_chain_problems(case_rows))
                case_rows = []
            case_rows.append(row)
        if case_rows:
            problems.extend(_case_chain_problems(case_rows))
    return problems


def stored_case_event(row: tuple) -> tuple[CaseEvent, tuple[str, int, int]]:
    """A row of `_case_event_rows.sql` as the CaseEvent it stores and the Kafka position it was read at."""
    width = len(_CASE_EVENT_FIELDS)
    values = dict(zip(_CASE_EVENT_FIELDS, row[:width]))
    values["at"] = from_epoch_ms(values["at"])  # the at_ms column
    topic, partition, offset = row[width:width + 3]
    return CaseEvent(**values), (topic, partition, offset)


def _case_chain_problems(rows: list[tuple]) -> list[Problem]:
    """One case's rows (ordered by seq, then Kafka position): copies collapsed, chain verified."""
    case_id = rows[0][1]
    problems = []
    chain: list[CaseEvent] = []
    for row in rows:
        event, (topic, partition, offset) = stored_case_event(row)
        if chain and chain[-1].seq == event.seq:
            if event != chain[-1]:
                altered = "" if event_hash(event) == event.hash else "; its hash does not match its content (altered)"
                problems.append(Problem("chain", f"case {case_id}",
                                        f"{event.event_id}: copy at {topic}[{partition}]@{offset} differs from the first copy{altered}"))
            continue
        chain.append(event)
    problems.extend(Problem("chain", f"case {case_id}", line) for line in verify_chain(chain))
    return problems


def timeline_view(result: Result, tz: str = LOCAL_TIMEZONE) -> Result:
    """`case_timeline` narrowed to five columns for a terminal: when (city time), what, by whom, holder, detail."""
    zone = ZoneInfo(tz)
    rows = []
    for row in result.as_dicts():
        shown = ("source", "report_id") if row["kind"] in ("opened", "report_merged") else ("reason", "note")  # (notes there: the chain)
        detail = " · ".join(str(row[k]) for k in shown if row.get(k))
        if row.get("rating") is not None:
            detail = f"rating {row['rating']}" + (f" · {detail}" if detail else "")
        holder = f"{row['assignee']} ({row['tier']})" if row.get("assignee") else ""
        rows.append((from_epoch_ms(row["at_ms"]).astimezone(zone).strftime("%m-%d %H:%M"),
                     row["kind"] if row["record"] == "case_event" else f"SLA {row['kind']}", row.get("unit_id") or "",
                     holder, detail[:90]))
    return Result(result.name, ("time", "event", "by", "holder after", "detail"), tuple(rows))


def ranking_view(result: Result) -> Result:
    """`ranking` narrowed for a terminal: score, rates, oversight, breaches and average times (CSV/JSON keep every column)."""
    keep = ("unit_id", "rank", "score", "received", "response_rate_pct", "resolution_rate_pct", "on_time_rate_pct",
            "satisfaction_rate_pct", "urgings", "criticisms", "referrals", "breaches_total", "avg_accept_s", "avg_resolve_h")
    names = ("unit", "rank", "score", "cases", "resp %", "resolved %", "on time %", "satisf %", "urged", "criticized", "referred",
             "breaches", "accept s", "resolve h")
    return Result(result.name, names, tuple(tuple(row[k] for k in keep) for row in result.as_dicts()))
