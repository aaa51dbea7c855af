"""Hostile input for the pure pipeline: generated case streams, mutated, checked against six invariants.

A scenario starts from a small simulated period (`whistle.devtools.simulate`) as raw source records, one
sequence per raw topic partition (6 each, keyed as the producers key them), and mutates it:

- interleaving: Kafka orders nothing across partitions, so the partitions are merged in a drawn order
  (each partition delayed by a drawn number of records, plus jitter; order within a partition kept);
- `duplicate`: a record delivered again later in its partition, at its own position (at-least-once);
- `skew`: a device clock off by seconds to years, either way (the record's time field is edited; the
  arrival passed to `Ingestor.process` stays the simulated time); `calendar`: a date outside every
  calendar (year 1, 1900, 2100, 9999);
- `spoof`: an action naming a unit of another street, sent by a key of one street (refused at ingest), by the
  district's handling system (refused by the case: not its holder), with a forged signature, or unsigned;
  `rating_by_handler`: a rating sent by the handling units' key (units never rate);
- `invalid`: transitions the lifecycle refuses (reopen before resolution, ratings outside 1..5, an
  action on a case that never opens);
- `garbage`: random bytes; `truncated`: a valid record cut short; `wrong_schema`: valid Avro of another topic's schema.

Invariants (`check`): (1) no exception escapes `Ingestor.process` / `CaseProcessor.process`; (2) the valid
records' case events and breaches are those of the same interleaving without the hostile records (each
hostile record that reached the case stream stands there as a clock tick at its decided time: a refused
record's time still counts; the clock-skew flag of a skewed record is not compared); (3) no breach fires
before its deadline in trusted time (warnings before it), nor after the latest trusted time; (4) the same
input gives byte-identical outputs and state writes; (5) every refused input is dead-lettered with a
reason, its original bytes and position; (6) every case's hash chain verifies.

`python -m whistle.devtools.hostile --inputs 100000` generates scenarios (hypothesis) until that many raw
records were delivered, and prints what it tried, what it checked and what it found, with a reduced
reproducer for each violation.
"""
from __future__ import annotations

import argparse
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from random import Random
from typing import Any

from rich.console import Console
from rich.table import Table

from schemas.catalog import default_catalog
from schemas.serde import Serde, from_record
from streams.domain.calendar import load_calendar
from streams.domain.case import CaseEvent, verify_chain
from streams.domain.credentials import INTEGRATOR_HEADER, RETURN_VISIT, RecordSigner
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.domain.trusted_time import DEFAULT_SKEW, decided_time
from streams.pipeline import ACTION, ENRICHED, TICK, CaseProcessor, Ingestor, Output, Senders, partition_for_key
from whistle.devtools.feed import Signers
from whistle.devtools.simulate import HANDLING_SYSTEM, RETURN_VISITS, SimConfig, simulate
from whistle.edges.clock import tick_value
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

START = datetime(2026, 6, 7, 16, 0, tzinfo=UTC)  # Monday 2026-06-08 00:00 Beijing time
RAW_PARTITIONS = 6
CASE_PARTITIONS = 6
SEEDS = (1, 2, 3)
SIZES = (50, 120, 200)  # incidents of the simulated period
END_TICK = timedelta(days=10)  # after the last record: every deadline and hold of the period is judged
SOURCES = {"camera": ("whistle.raw.camera", "CameraDetection"), "hotline": ("whistle.raw.hotline", "HotlineTicket"),
           "app": ("whistle.raw.app", "AppEvent")}
KINDS = ("duplicate", "skew", "calendar", "spoof", "rating_by_handler", "invalid", "garbage", "truncated", "wrong_schema")
INVARIANTS = ("no_exception", "valid_unchanged", "breach_not_early", "deterministic", "dead_lettered", "chains_verify")
SKEWS_S = (1, 59, 299, 300, 301, 3_600, 86_399, 86_400, 86_401, 30 * 86_400, 3 * 365 * 86_400, 80 * 365 * 86_400)
CALENDAR_YEARS = (1, 1900, 1969, 1990, 2098, 2100, 9999)  # in and out of the contract's 1970..2099, all outside the business calendar
NAMESPACE = "org.whistle.v1"
SERDE, TOPICS = Serde(), Topics()
SPOOFING_OFFICE, SPOOFING_STREET = "office-s01", "S01"  # a street office's key (infra/gateway-keys.example.yaml): S01 and the units under it


# -- the base period ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Raw:
    """One raw source record of the base period (its record before encoding, for mutations)."""

    index: int  # in the base period's time order
    source: str
    record_type: str
    key: str
    integrator: str  # its sender
    record: dict[str, Any] = field(hash=False)
    at: datetime  # simulated time: the arrival


@dataclass(frozen=True, slots=True)
class Base:
    raws: tuple[Raw, ...]
    actions_by_case: dict[str, list[int]]  # case id -> indexes of its actions, in order
    foreign_grids: tuple[str, ...]  # every grid, for spoofed actors (one of another street is picked)
    grid_street: dict[str, str]


@cache
def base_period(seed: int, incidents: int) -> Base:
    reference = load_reference()
    raws = tuple(Raw(n, e.source, e.record_type, e.key, e.integrator, e.record, e.at)
                 for n, e in enumerate(simulate(reference, SimConfig(seed=seed, start=START, incidents_per_day=incidents))))
    actions: dict[str, list[int]] = defaultdict(list)
    for raw in raws:
        if raw.record_type == "HandlingAction":
            actions[raw.record["case_id"]].append(raw.index)
    grids = tuple(sorted(reference.grids))
    return Base(raws, dict(actions), grids, {g: reference.grids[g].street_id for g in grids})


@cache
def _shapes() -> dict[str, str]:
    """record type -> its event-time field."""
    catalog = default_catalog()
    return {name: catalog.record_facts(name).event_time_field for name in ("CameraDetection", "HotlineTicket", "ResidentReport", "HandlingAction")}


def encode_raw(raw: Raw, record: dict[str, Any] | None = None, *, validate: bool = True) -> bytes:
    record = raw.record if record is None else record
    _, schema = SOURCES[raw.source]
    value = {"event": (f"{NAMESPACE}.{raw.record_type}", record)} if raw.source == "app" else record
    return SERDE.encode(schema, value, validate=validate)


# -- scenarios ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    kind: str
    target: int  # picks the record the mutation is about (modulo what fits)
    param: Any = None


@dataclass(frozen=True)
class Scenario:
    seed: int
    incidents: int
    order_seed: int
    delays: tuple[int, ...]  # per raw partition (18 = 3 topics x 6), in records
    mutations: tuple[Mutation, ...]

    def without(self, index: int) -> Scenario:
        return Scenario(self.seed, self.incidents, self.order_seed, self.delays, self.mutations[:index] + self.mutations[index + 1:])


@dataclass
class Item:
    """One delivery to the ingest stage."""

    where: Position
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]  # the sender's signature (or a forged or missing one)
    arrived: datetime
    order: float  # sort key of the interleaving
    hostile: str | None = None  # the mutation kind; None: a valid record
    clean_value: bytes | None = None  # for an out-of-bounds skew: the record as the device should have sent it


def _topic_index(topic: str) -> int:
    return [t for t, _ in SOURCES.values()].index(topic)


def build(scenario: Scenario) -> list[Item]:
    """The deliveries of a scenario, in the drawn interleaving."""
    base = base_period(scenario.seed, scenario.incidents)
    raws = base.raws
    lanes: dict[tuple[str, int], list[Item]] = defaultdict(list)
    items: list[Item] = []
    for raw in raws:
        topic, _ = SOURCES[raw.source]
        value = encode_raw(raw)
        item = Item(Position(topic, partition_for_key(raw.key, RAW_PARTITIONS), 0), raw.key.encode(), value,
                    signed(raw.integrator, topic, raw.key.encode(), value), raw.at, float(raw.index))
        items.append(item)
    inserts: list[tuple[int, int, Item]] = []  # (base index it goes before (or after, +0.5 duplicates), tie, item)
    replaced: dict[int, Item] = {}
    time_field = _shapes()
    actions = [raw.index for raw in raws if raw.record_type == "HandlingAction"]
    rates = [i for i in actions if raws[i].record["kind"] == "rate"]
    firsts = [indexes[0] for indexes in base.actions_by_case.values()]
    ordered = sorted(enumerate(scenario.mutations), key=lambda nm: nm[1].kind not in ("skew", "calendar"))  # edits first
    for n, m in ordered:
        kind = m.kind
        if kind == "duplicate":
            items = [replaced.get(i, item) for i, item in enumerate(items)]
            replaced = {}
            original = items[m.target % len(items)]
            copy = Item(original.where, original.key, original.value, original.headers, original.arrived, 0.0, "duplicate")
            inserts.append((m.target % len(items), 1 + int(m.param), copy))
        elif kind in ("skew", "calendar"):
            index = m.target % len(raws)
            raw = raws[index]
            name = time_field[raw.record_type]
            claimed = raw.record[name] + timedelta(seconds=m.param) if kind == "skew" else _in_year(raw.record[name], m.param)
            if claimed is None:
                continue
            mutated = encode_raw(raw, {**raw.record, name: claimed}, validate=False)
            old = replaced.get(index, items[index])
            headers = signed(raw.integrator, old.where.topic, old.key, mutated)  # the device's clock is wrong, its sender is not
            if not 1970 <= claimed.year <= 2099:  # outside the contract's range: refused at decode, so sent as an extra copy
                inserts.append((index, 0, Item(old.where, old.key, mutated, headers, raw.at, 0.0, kind)))
                continue
            believed = kind == "skew" and decided_time(claimed, raw.at, DEFAULT_SKEW)[1] is None
            # the clean run sends what the device should have sent: the base record, whatever earlier edits made of it
            replaced[index] = Item(old.where, old.key, mutated, headers, raw.at, old.order, None if believed else kind,
                                   None if believed else encode_raw(raw))
        elif kind in ("spoof", "rating_by_handler", "invalid"):
            pool = actions if kind == "spoof" else rates if kind == "rating_by_handler" else firsts
            if not pool:
                continue
            raw = raws[pool[m.target % len(pool)]]
            record = dict(raw.record, action_id=f"hostile-{n}", note=None)
            case_id = record["case_id"]
            sender = raw.integrator
            if kind == "spoof":
                street = case_id.split("-")[0]
                others = [g for g in base.foreign_grids if base.grid_street[g] != street and base.grid_street[g] != SPOOFING_STREET]
                record["unit_id"] = others[int(m.param) % len(others)]
                sender = SPOOFING_OFFICE if int(m.param) % 4 == 0 else HANDLING_SYSTEM
            elif kind == "rating_by_handler":
                handlers = [raws[i].record["unit_id"] for i in base.actions_by_case[case_id] if raws[i].record["kind"] not in ("rate", "reopen")]
                if not handlers:
                    continue
                record["unit_id"] = handlers[int(m.param) % len(handlers)]
                record["rating"] = 5
                sender = HANDLING_SYSTEM
            else:
                variant = int(m.param) % 4
                record.update(unit_id=RETURN_VISIT, reason=None, extension_hours=None)
                sender = RETURN_VISITS
                if variant == 0:
                    record.update(kind="reopen", rating=None, reason="not fixed")
                elif variant in (1, 2):
                    record.update(kind="rate", rating=(0, 6)[variant - 1])
                else:  # a case that never opens: held, then dead-lettered as unknown
                    head, _, _ = case_id.rpartition("-")
                    record.update(case_id=f"{head}-ffffffffff", kind="accept", rating=None, unit_id=raws[pool[0]].record["unit_id"])
                    sender = HANDLING_SYSTEM
            value = encode_raw(raw, record, validate=False)  # a hostile sender does not validate
            where, key = items[raw.index].where, record["case_id"].encode()
            headers = signed(sender, where.topic, key, value)
            if kind == "spoof" and int(m.param) % 4 == 2:  # forged: the handling system's name, a secret it does not hold
                headers = RecordSigner(HANDLING_SYSTEM, 1, b"not-the-secret").headers(where.topic, key, value)
            elif kind == "spoof" and int(m.param) % 4 == 3:  # unsigned
                headers = ()
            inserts.append((raw.index, 0, Item(where, key, value, tuple(headers), raw.at, 0.0, kind)))
        elif kind in ("garbage", "truncated", "wrong_schema"):
            index = m.target % len(raws)
            raw, neighbour = raws[index], items[index]
            topics = [t for t, _ in SOURCES.values()]
            if kind == "garbage":
                value, where_topic = bytes(m.param), topics[m.target % 3]
            elif kind == "truncated":
                whole = neighbour.value
                value, where_topic = whole[: int(m.param) % max(1, len(whole))], neighbour.where.topic
            else:  # valid Avro of a schema the topic does not carry
                wrong = {"whistle.raw.camera": "whistle.raw.hotline", "whistle.raw.hotline": "whistle.raw.app", "whistle.raw.app": "whistle.raw.camera"}
                value, where_topic = neighbour.value, wrong[neighbour.where.topic]
                if int(m.param) % 2:
                    value = tick_value(SERDE, 0, raw.at)  # a case-stream record on a raw topic
            where = Position(where_topic, partition_for_key(raw.key, RAW_PARTITIONS), 0)
            inserts.append((index, 0, Item(where, raw.key.encode(), value, signed(raw.integrator, where_topic, raw.key.encode(), value),
                                           raw.at, 0.0, kind)))
    for index, item in replaced.items():
        items[index] = item
    # lay the records and insertions into their partitions: an insertion goes right before its target
    # record (a duplicate: `param` records after it), in its own partition
    before: dict[int, list[tuple[int, Item]]] = defaultdict(list)
    for index, tie, item in inserts:
        before[index].append((tie, item))
    for item in items:
        lanes[(item.where.topic, item.where.partition)]  # every valid record's partition exists
    pending_dups: dict[tuple[str, int], list[list]] = defaultdict(list)
    for index, item in enumerate(items):
        for tie, extra in sorted(before.get(index, ()), key=lambda p: p[0]):
            if extra.hostile == "duplicate":
                pending_dups[(extra.where.topic, extra.where.partition)].append([tie, extra])
            else:
                lanes[(extra.where.topic, extra.where.partition)].append(extra)
        lane_key = (item.where.topic, item.where.partition)
        lane = lanes[lane_key]
        lane.append(item)
        still = []
        for entry in pending_dups[lane_key]:
            entry[0] -= 1
            if entry[0] <= 0:
                lane.append(entry[1])
            else:
                still.append(entry)
        pending_dups[lane_key] = still
    for lane_key, entries in pending_dups.items():
        lanes[lane_key].extend(entry[1] for entry in entries)
    # positions: offsets in order within each partition (a duplicate keeps its original's position)
    rng = Random(scenario.order_seed)
    delivered: list[Item] = []
    for lane_key in sorted(lanes):
        lane = lanes[lane_key]
        topic, partition = lane_key
        delay = scenario.delays[(_topic_index(topic) * RAW_PARTITIONS + partition) % len(scenario.delays)] if scenario.delays else 0
        offset, order, last_base = 0, float("-inf"), 0.0
        positions: dict[int, Position] = {}
        for item in lane:
            if item.hostile == "duplicate":
                item.where = positions.get(id(item.value), item.where)
            else:
                item.where = Position(topic, partition, offset)
                positions.setdefault(id(item.value), item.where)
                offset += 1
            last_base = item.order if item.hostile is None or item.order else last_base
            order = max(order, last_base + delay + rng.random() * 3)
            item.order = order
            delivered.append(item)
    delivered.sort(key=lambda item: item.order)
    return delivered


def _in_year(at: datetime, year: int) -> datetime | None:
    try:
        return at.replace(year=year, month=1 if at.month == 2 and at.day == 29 else at.month)
    except ValueError:
        return None


# -- one run --------------------------------------------------------------------------------------------


@dataclass
class Run:
    ingest_out: list[Output]
    inbox: list[tuple[Position, bytes, bytes, datetime, Item | None]]  # with the delivery it came from (None: a tick)
    case_out: list[list[Output]]
    writes: list[list[Any]]
    error: str | None = None


@cache
def _signers() -> Signers:
    return Signers(Settings())


@cache
def _senders() -> Senders:
    return Senders.from_settings(Settings(), load_reference())


def signed(integrator: str, topic: str, key: bytes, value: bytes) -> tuple[tuple[str, bytes], ...]:
    """The headers `integrator` puts on the record (the topics here carry no prefix: the spec name is the topic)."""
    return tuple(_signers()(integrator).headers(topic, key, value))


def signed_for_clean(item: Item, value: bytes) -> tuple[tuple[str, bytes], ...]:
    """The clean run's record as its sender would have signed it."""
    integrator = dict(item.headers).get(INTEGRATOR_HEADER, b"").decode()
    return signed(integrator, item.where.topic, item.key, value) if integrator else item.headers


@cache
def _static():
    return load_reference(), load_policies(), load_calendar()


def run(items: list[Item], *, clean: bool = False, make_ingestor: Callable[[], Ingestor] | None = None,
        make_processor: Callable[[], CaseProcessor] | None = None) -> Run:
    """Deliver `items` to a fresh Ingestor, then the case stream it wrote to a fresh CaseProcessor (plus the closing ticks).

    clean: the comparison run of invariant 2: hostile deliveries are left out, except that one which reached
    the case stream stands there as a tick at its decided time; an out-of-bounds skewed record is sent as the device should have.
    """
    reference, policies, calendar = _static()
    ingest = make_ingestor() if make_ingestor else Ingestor(SERDE, reference, PersonalDataHasher("hostile-key"), TOPICS, _senders())
    aside = make_ingestor() if make_ingestor else Ingestor(SERDE, reference, PersonalDataHasher("hostile-key"), TOPICS, _senders())
    cases = make_processor() if make_processor else CaseProcessor(SERDE, reference, policies, calendar, TOPICS, CASE_PARTITIONS)
    result = Run([], [], [], [])
    offsets = [0] * CASE_PARTITIONS
    last = START
    try:
        for item in items:
            value = item.value
            if clean and item.clean_value is not None:
                value = item.clean_value
            # the clean run never shows its ingest stage a hostile record: a separate instance says where it would have gone
            stage = aside if clean and item.hostile is not None and item.clean_value is None else ingest
            headers = signed_for_clean(item, value) if value is not item.value else item.headers
            routed = stage.process(item.where, item.key, value, item.arrived, arrived=item.arrived, headers=headers)
            last = max(last, item.arrived)
            result.ingest_out.append(routed)
            if routed.topic != TOPICS.inbox:
                continue
            assert routed.key is not None and routed.value is not None
            partition = partition_for_key(routed.key.decode(), CASE_PARTITIONS)
            if clean and item.hostile is not None and item.clean_value is None:
                value, key = tick_value(SERDE, partition, decided_at(routed.value)), b""
            else:
                value, key = routed.value, routed.key
            result.inbox.append((Position(TOPICS.inbox, partition, offsets[partition]), key, value, item.arrived, item))
            offsets[partition] += 1
        for partition in range(CASE_PARTITIONS):
            at = last + END_TICK
            result.inbox.append((Position(TOPICS.inbox, partition, offsets[partition]), b"", tick_value(SERDE, partition, at), at, None))
            offsets[partition] += 1
        for where, key, value, at, _ in result.inbox:
            produced, writes = cases.process(where, key, value, at)
            result.case_out.append(produced)
            result.writes.append(writes)
    except Exception as exc:  # invariant 1: nothing may escape
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def decided_at(inbox_value: bytes) -> datetime:
    branch, record = SERDE.decode(inbox_value, expect="CaseInboxEvent").record["event"]
    if branch == ENRICHED:
        return record["occurred_at"]
    return record["at"]


# -- the invariants --------------------------------------------------------------------------------------


def _decoded(outputs: list[Output], topic: str) -> list[dict]:
    return [SERDE.decode(o.value).record for o in outputs if o.topic == topic and o.value is not None]


def _all_case_outputs(r: Run) -> list[Output]:
    return [o for produced in r.case_out for o in produced]


_SKEW_NOTE = re.compile(r"(?:;? )?\[clock_skew:device=[^\]]*\]")  # the flag, and the separator that joined it to a note


def comparable(event: dict) -> tuple:
    """A case event as invariant 2 compares it: without its hashes, with no clock-skew flag."""
    reason = event["reason"]
    if reason:
        reason = ",".join(part for part in reason.split(",") if not part.startswith("clock_skew:")) or None
    note = event["note"]
    if note:
        note = _SKEW_NOTE.sub("", note).strip() or None
    return tuple((k, v) for k, v in {**event, "reason": reason, "note": note}.items() if k not in ("hash", "prev_hash"))


def valid_view(r: Run) -> tuple[list[tuple], list[tuple]]:
    outputs = _all_case_outputs(r)
    events = [comparable(e) for e in _decoded(outputs, TOPICS.case_events)]
    breaches = [tuple(sorted(b.items())) for b in _decoded(outputs, TOPICS.breaches)]
    return events, breaches


def _bytes_of(r: Run) -> tuple:
    return ([(o.topic, o.key, o.value, o.headers) for o in r.ingest_out], [[(o.topic, o.key, o.value, o.headers) for o in p] for p in r.case_out],
            [[(w.partition, w.key, w.value) for w in ws] for ws in r.writes], r.error)


def check(scenario: Scenario, *, items: list[Item] | None = None, runner: Callable[..., Run] = run,
          compare: Callable[[Any, Any], bool] = lambda a, b: a == b) -> dict[str, str]:
    """The violated invariants of `scenario` (name -> what was seen); {} when all six hold."""
    items = build(scenario) if items is None else items
    found: dict[str, str] = {}
    hostile, again, clean = runner(items), runner(items), runner(items, clean=True)
    for name, r in (("hostile", hostile), ("clean", clean)):
        if r.error:
            found.setdefault("no_exception", f"{name} run: {r.error}")
    if not compare(_bytes_of(hostile), _bytes_of(again)):
        found["deterministic"] = "two runs of the same input differ"
    if hostile.error or clean.error:
        return found
    # 2: the valid records decide as without the hostile ones
    h_events, h_breaches = valid_view(hostile)
    c_events, c_breaches = valid_view(clean)
    if not compare(h_events, c_events) or not compare(h_breaches, c_breaches):
        found["valid_unchanged"] = _first_difference(h_events, c_events) if h_events != c_events else _first_difference(h_breaches, c_breaches)
    outputs = _all_case_outputs(hostile)
    # 3: breaches in trusted time
    latest = max((at for _, _, _, at, _ in hostile.inbox), default=START) + timedelta(milliseconds=DEFAULT_SKEW.ahead_ms)
    for b in _decoded(outputs, TOPICS.breaches):
        early = b["fired_at"] >= b["deadline"] if b["kind"] == "warning" else b["fired_at"] < b["deadline"]
        if early or b["fired_at"] > latest:
            found["breach_not_early"] = f"{b['kind']} {b['breach_type']} of {b['case_id']}: deadline {b['deadline']}, fired {b['fired_at']}"
            break
    # 5: every refused input dead-lettered with a reason, its bytes and position
    problem = _dead_letter_problem(items, hostile)
    if problem:
        found["dead_lettered"] = problem
    # 6: hash chains
    events = [from_record(CaseEvent, e) for e in _decoded(outputs, TOPICS.case_events)]
    chain = verify_chain(events)
    if chain:
        found["chains_verify"] = chain[0]
    return found


def _first_difference(a: list, b: list) -> str:
    for n, (x, y) in enumerate(zip(a, b)):
        if x != y:
            dx, dy = dict(x), dict(y)
            fields = {k: (dx.get(k), dy.get(k)) for k in dx.keys() | dy.keys() if dx.get(k) != dy.get(k)}
            return f"output {n}: with hostile input {fields} (with / without); case {dx.get('case_id')}"
    return f"{len(a)} outputs with the hostile input, {len(b)} without"


def _dead_letter_problem(items: list[Item], r: Run) -> str | None:
    fed: dict[tuple[str, int, int], set[bytes]] = defaultdict(set)
    for item in items:
        fed[(item.where.topic, item.where.partition, item.where.offset)].add(item.value)
    for where, _, value, _, _ in r.inbox:
        fed[(where.topic, where.partition, where.offset)].add(value)
    letters = _decoded(r.ingest_out, TOPICS.deadletter) + _decoded(_all_case_outputs(r), TOPICS.deadletter)
    lettered = set()
    for letter in letters:
        place = (letter["original_topic"], letter["original_partition"], letter["original_offset"])
        lettered.add(place)
        if not letter["error_message"]:
            return f"dead letter of {place} has no reason"
        if letter["original_value"] not in fed.get(place, ()):
            return f"dead letter of {place} does not carry the bytes delivered there"
    for item, routed in zip(items, r.ingest_out):
        if routed.topic == TOPICS.deadletter:
            letter = SERDE.decode(routed.value).record
            if (letter["original_topic"], letter["original_partition"], letter["original_offset"]) != (item.where.topic, item.where.partition, item.where.offset):
                return f"ingest dead letter of {item.where} names another position"
            if letter["original_value"] != item.value:
                return f"ingest dead letter of {item.where} does not carry its bytes"
        elif routed.topic != TOPICS.inbox:
            return f"ingest sent {item.where} to {routed.topic}"
        elif item.hostile in ("garbage", "truncated", "wrong_schema"):
            return f"{item.hostile} record at {item.where} was not refused"
    causes = {e["cause_id"] for e in _decoded(_all_case_outputs(r), TOPICS.case_events)}
    for where, _, value, _, _ in r.inbox:
        branch, record = SERDE.decode(value, expect="CaseInboxEvent").record["event"]
        if branch == TICK:
            continue
        cause = record["action_id"] if branch == ACTION else record["report_id"]
        if cause not in causes and (where.topic, where.partition, where.offset) not in lettered:
            return f"case-stream record {cause} at {where} was neither applied nor dead-lettered"
    return None


# -- hypothesis strategies --------------------------------------------------------------------------------


def scenarios(max_mutations: int = 30, sizes: tuple[int, ...] = SIZES, min_mutations: int = 1):
    from hypothesis import strategies as st

    skews = st.sampled_from(SKEWS_S).flatmap(lambda s: st.sampled_from((s, -s)))
    param = {
        "duplicate": st.integers(0, 400), "skew": skews, "calendar": st.sampled_from(CALENDAR_YEARS),
        "spoof": st.integers(0, 10**6), "rating_by_handler": st.integers(0, 10), "invalid": st.integers(0, 3),
        "garbage": st.binary(max_size=80), "truncated": st.integers(0, 10**6), "wrong_schema": st.integers(0, 1),
    }
    mutation = st.sampled_from(KINDS).flatmap(lambda k: st.builds(Mutation, st.just(k), st.integers(0, 10**6), param[k]))
    return st.builds(Scenario, st.sampled_from(SEEDS), st.sampled_from(sizes), st.integers(0, 2**32 - 1),
                     st.lists(st.integers(0, 40), min_size=0, max_size=3 * RAW_PARTITIONS).map(tuple),
                     st.lists(mutation, min_size=min_mutations, max_size=max_mutations).map(tuple))


def shrink(scenario: Scenario, invariant: str, still: Callable[[Scenario], bool] | None = None) -> Scenario:
    """The scenario with every mutation removed that the violation of `invariant` does not need (greedy, one pass per size)."""
    holds = still or (lambda s: invariant in check(s))
    changed = True
    while changed:
        changed = False
        for n in range(len(scenario.mutations) - 1, -1, -1):
            smaller = scenario.without(n)
            if holds(smaller):
                scenario, changed = smaller, True
    if scenario.delays and holds(Scenario(scenario.seed, scenario.incidents, scenario.order_seed, (), scenario.mutations)):
        scenario = Scenario(scenario.seed, scenario.incidents, scenario.order_seed, (), scenario.mutations)
    for incidents in sorted(SIZES):
        if incidents < scenario.incidents:
            smaller = Scenario(scenario.seed, incidents, scenario.order_seed, scenario.delays, scenario.mutations)
            if holds(smaller):
                return shrink(smaller, invariant, holds)
    return scenario


# -- the command ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m whistle.devtools.hostile", description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="raw records to deliver in total (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    parser.add_argument("--max-mutations", type=int, default=60)
    args = parser.parse_args(argv)
    from hypothesis import HealthCheck, Phase, given, seed, settings

    console = Console()
    tried: Counter = Counter()
    violations: dict[str, tuple[Scenario, str]] = {}
    violation_counts: Counter = Counter()
    stats = {"inputs": 0, "scenarios": 0, "checks": 0}
    started = time.monotonic()

    class Enough(Exception):
        pass

    @seed(args.seed)
    @settings(max_examples=10**9, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(scenarios(args.max_mutations, min_mutations=args.max_mutations // 3))
    def explore(scenario: Scenario) -> None:
        if stats["inputs"] >= args.inputs:
            raise Enough
        items = build(scenario)
        stats["inputs"] += len(items)
        stats["scenarios"] += 1
        tried["interleaving"] += 1
        tried.update(m.kind for m in scenario.mutations)
        found = check(scenario, items=items)
        stats["checks"] += len(INVARIANTS)
        for name, detail in found.items():
            violation_counts[name] += 1
            violations.setdefault(name, (scenario, detail))
        if stats["scenarios"] % 50 == 0:
            console.print(f"  … {stats['scenarios']} scenarios, {stats['inputs']} inputs, {time.monotonic() - started:.0f}s", style="dim")

    try:
        explore()
    except Enough:
        pass
    elapsed = time.monotonic() - started

    table = Table(title=f"hostile input: {stats['inputs']:,} inputs in {stats['scenarios']:,} scenarios")
    table.add_column("what")
    table.add_column("kind")
    table.add_column("count", justify="right")
    table.add_row("tried", "raw records delivered", f"{stats['inputs']:,}")
    for kind in ("interleaving", *KINDS):
        table.add_row("tried", kind if kind != "interleaving" else "interleavings (scenarios)", f"{tried[kind]:,}")
    for name in INVARIANTS:
        table.add_row("checked", name, f"{stats['scenarios']:,}")
    for name in INVARIANTS:
        table.add_row("violated", name, f"{violation_counts[name]:,}", style="red" if violation_counts[name] else None)
    table.add_row("time", "seconds", f"{elapsed:.1f}")
    table.add_row("rate", "inputs/s", f"{stats['inputs'] / elapsed:,.0f}")
    console.print(table)
    for name, (scenario, detail) in violations.items():
        small = shrink(scenario, name)
        console.print(f"[red]{name}[/red]: {detail}")
        console.print(f"  minimal reproducer: {small!r}")
        console.print(f"  now: {check(small).get(name)}")
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
