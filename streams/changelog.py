"""The case-state changelog: a compacted topic the cases agent writes, and reads back when it is given a partition.

Why not a Faust table: Faust's recovery feeds every changelog record through its event machinery and
keeps a second, pickled copy of every case in the table's dict, which made recovering a million open
cases several times slower and larger than reading the changelog here with librdkafka and decoding it as
it streams into `CaseProcessor.recover` (figures: README, `whistle bench --phase recovery --million`).
The live objects are the only copy.

Changelog partition p holds the state of case-stream partition p (records are written with an explicit
partition), so a worker given partition p reads exactly one changelog partition. The topic is internal
to the workers, like a Faust changelog: created by them at start with the deployment's replication, and
never read by anyone else.

Keys and values (this module is their one definition):
- `case:<case id>` -> the case's `CaseState`; `open:<case id>` -> its merge-index `OpenCase` (deleted when
  the case resolves); `held:<case id>` -> actions for a case not opened yet (deleted when released);
  `report:<report id>` -> the case a report was recorded in and its content fingerprint;
  `refused:<action id>` -> an action refused once (its redelivery is not decided again);
  `clock:<partition>` -> the partition's clock, epoch ms as ASCII digits.
- A state value is a version byte, then Avro binary of that version's schema (`schemas/state/*.v1.avsc`).
  Version 1 is the current one. Version 0 is what releases before it wrote (Python pickles): it is still
  read, so a deployment keeps its state across the upgrade, by `_LegacyReader`, which interprets only the
  data opcodes those pickles hold and builds the five kinds of value they contain itself. Nothing a
  changelog record says is imported or called: a record crafted to run code is refused like any other
  bad record.
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import io
import struct
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

import fastavro
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.catalog import SCHEMAS_DIR
from schemas.codec import Codec
from streams.domain.case import CaseState, Status, state_from_stored, stored_values
from streams.domain.merge import OpenCase, open_case_from_stored
from whistle.ground.datafiles import read_json
from whistle.ground.errors import ConfigError, ContractError, StackError, WhistleError
from whistle.ground.names import Groups
from whistle.ground.settings import Settings


def changelog_topic(settings: Settings) -> str:
    return Groups.with_prefix(settings.topic_prefix).changelog


def ensure_changelog(settings: Settings, partitions: int, timeout_s: float = 30.0) -> str:
    """Create the compacted changelog if it is missing; refuse one whose partition count differs from the case stream's."""
    kafka, name = settings.kafka, changelog_topic(settings)
    admin = AdminClient({**kafka.librdkafka(), "log_level": 0})
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
        if name not in existing:
            config = {"cleanup.policy": "compact", "min.insync.replicas": str(kafka.min_insync_replicas)}
            future = admin.create_topics([NewTopic(name, partitions, kafka.replication_factor, config=config)])[name]
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another worker starting at the same time
                    raise
            except TimeoutError as exc:
                raise StackError(f"Kafka did not create the changelog within {timeout_s:.0f} s", topic=name) from exc
        elif len(existing[name].partitions) != partitions:
            raise ConfigError(f"the changelog has {len(existing[name].partitions)} partitions, the case stream {partitions}: "
                              "a case's state would be read from the wrong partition", topic=name)
    except KafkaException as exc:
        raise StackError(f"cannot create the changelog on {kafka.bootstrap_servers}: {exc}", topic=name) from exc
    return name


def read_partition(settings: Settings, partition: int, timeout_s: float) -> Iterator[tuple[int, str, bytes | None]]:
    """Changelog partition `partition` as (offset, key, value) in log order (None: deleted), from the beginning to its end."""
    for offset, key, value in read_log(settings, changelog_topic(settings), partition, timeout_s):
        assert key is not None  # changelog records are always keyed
        yield offset, key.decode("utf-8", "replace"), value


def watermarks(consumer: Consumer, partition: TopicPartition, timeout_s: float) -> tuple[int, int]:
    """A partition's (low, high) watermarks, asking the broker until it answers or `timeout_s` passes (then KafkaException).

    WHY the retries: a topic created a moment ago may not be in this client's metadata yet (unknown partition), and a
    partition whose leader is being elected or moved answers NOT_LEADER_FOR_PARTITION for a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_log(settings: Settings, topic: str, partition: int, timeout_s: float) -> Iterator[tuple[int, bytes | None, bytes | None]]:
    """One partition of `topic` as (offset, key, value) in log order, from the beginning to the end it had when asked.

    Without a consumer group (nothing is committed). Transient errors (a broker restarting) are waited out;
    StackError on a fatal one, or if the end is not reached within `timeout_s`.
    """
    consumer = Consumer({**settings.kafka.librdkafka(), "group.id": f"{topic}-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": True})
    deadline, last = time.monotonic() + timeout_s, -1
    try:
        low, end = watermarks(consumer, TopicPartition(topic, partition), timeout_s)
        if end <= low:
            return
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        while last + 1 < end:  # or until the end of the partition is reported (compaction may leave holes at the end)
            if time.monotonic() > deadline:
                raise StackError(f"reading {topic} timed out at offset {last} of {end}", topic=topic, partition=partition)
            for message in consumer.consume(10_000, timeout=0.5):
                error = message.error()
                if error is None:
                    offset = message.offset()
                    assert offset is not None  # a consumed record without error has its offset
                    yield offset, message.key(), message.value()
                    last = offset
                elif error.code() == KafkaError._PARTITION_EOF:
                    return
                elif error.fatal():
                    raise StackError(f"reading {topic} failed: {error}", topic=topic, partition=partition)
    except KafkaException as exc:
        raise StackError(f"Kafka did not answer reading {topic} within {timeout_s:.0f}s: {exc}", topic=topic, partition=partition) from exc
    finally:
        consumer.close()
        _release_freed_memory()


def _release_freed_memory() -> None:
    """Hand the memory freed by a read-back back to the system (glibc's malloc_trim; elsewhere nothing).

    WHY: librdkafka's prefetch queue and the records decoded and dropped along the way are freed into malloc's
    arenas, which keep them: without this a worker that read back many open cases stays well above what its cases
    hold (figures: README, `whistle bench --phase recovery --million`).
    """
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


# -- keys and values ------------------------------------------------------------------------------

CURRENT_VERSION = 1
_LEGACY_PICKLE = 0x80  # the first byte of every pickle (its PROTO opcode): version 0
_CASE, _OPEN, _HELD, _REPORT, _REFUSED, _CLOCK = "case", "open", "held", "report", "refused", "clock"


class ChangelogError(ContractError):
    """A changelog record that cannot be decoded: unknown key kind, unknown version, or bytes that are not a state."""

    stage = "changelog"


def case_key(case_id: str) -> str:
    return f"{_CASE}:{case_id}"


def open_key(case_id: str) -> str:
    return f"{_OPEN}:{case_id}"


def report_key(report_id: str) -> str:
    return f"{_REPORT}:{report_id}"


def refused_key(action_id: str) -> str:
    return f"{_REFUSED}:{action_id}"


def held_key(case_id: str) -> str:
    return f"{_HELD}:{case_id}"


class HeldAction(NamedTuple):
    """A case-stream record holding an action whose case has not opened yet, kept as read (for applying it
    later, or dead-lettering it with its original bytes and position)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    held_until_ms: int


def clock_key(partition: int) -> str:
    return f"{_CLOCK}:{partition}"


def _schema(name: str, version: int = CURRENT_VERSION) -> Codec:
    definition = read_json(SCHEMAS_DIR / "state" / f"{name}.v{version}.avsc")
    return Codec(definition, fastavro.parse_schema(copy.deepcopy(definition)))


CASE_STATE_VERSION = 2  # case states gained oversight and approved extensions; version-1 records are read with its defaults
_CASE_STATE_SCHEMA = _schema("CaseState", CASE_STATE_VERSION)
_CASE_STATE_WRITERS = {CURRENT_VERSION: _schema("CaseState"), CASE_STATE_VERSION: _CASE_STATE_SCHEMA}
_OPEN_CASE_SCHEMA = _schema("OpenCase")
_HELD_ACTIONS_SCHEMA = _schema("HeldActions")
_REPORT_SEEN_SCHEMA = _schema("ReportSeen")
_REFUSED_ACTION_SCHEMA = _schema("RefusedAction")
_CASE_STATE_FIELDS = tuple(CaseState.__slots__)
_STATUSES = frozenset(Status)
_OPEN_CASE_FIELDS = tuple(OpenCase.__slots__)
_VERSION_BYTE = bytes([CURRENT_VERSION])


def _encode(schema: Codec, record: dict[str, Any], version: bytes = _VERSION_BYTE) -> bytes:
    return version + schema.write(record)


def encode_case_state(state: CaseState) -> bytes:
    record = dict(zip(_CASE_STATE_FIELDS, stored_values(state)))
    record["place"] = dict(zip(("district_id", "street_id", "community_id", "grid_id", "department_id"), record["place"]))
    record["assignee"] = {"unit_id": record["assignee"][0], "tier": record["assignee"][1]}
    record["pauses"] = [{"start_ms": start, "end_ms": end} for start, end in record["pauses"]]
    return _encode(_CASE_STATE_SCHEMA, record, bytes([CASE_STATE_VERSION]))


def encode_open_case(entry: OpenCase) -> bytes:
    return _encode(_OPEN_CASE_SCHEMA, {name: getattr(entry, name) for name in _OPEN_CASE_FIELDS})


def encode_held(case_id: str, actions: list[HeldAction]) -> bytes:
    return _encode(_HELD_ACTIONS_SCHEMA, {"case_id": case_id, "actions": [held._asdict() for held in actions]})


def decode_held(value: bytes) -> list[HeldAction]:
    record = _decode(value, _HELD_ACTIONS_SCHEMA, since_pickles=True)
    return [HeldAction(**held) for held in record["actions"]]


def encode_report_seen(case_id: str, content: bytes) -> bytes:
    return _encode(_REPORT_SEEN_SCHEMA, {"case_id": case_id, "content": content})


def decode_report_seen(value: bytes) -> tuple[str, bytes]:
    record = _decode(value, _REPORT_SEEN_SCHEMA, since_pickles=True)
    return sys.intern(record["case_id"]), record["content"]


def encode_refused(case_id: str, reason: str) -> bytes:
    return _encode(_REFUSED_ACTION_SCHEMA, {"case_id": case_id, "reason": reason})


def decode_refused(value: bytes) -> tuple[str, str]:
    record = _decode(value, _REFUSED_ACTION_SCHEMA, since_pickles=True)
    return record["case_id"], record["reason"]


def encode_clock(clock_ms: int) -> bytes:
    return str(clock_ms).encode()


def decode_case_state(value: bytes) -> CaseState:
    record = _decode(value, _CASE_STATE_SCHEMA, writers=_CASE_STATE_WRITERS)
    if isinstance(record, dict):
        place = record["place"]
        record["place"] = (place["district_id"], place["street_id"], place["community_id"], place["grid_id"], place["department_id"])
        record["assignee"] = (record["assignee"]["unit_id"], record["assignee"]["tier"])
        record["pauses"] = tuple((pause["start_ms"], pause["end_ms"]) for pause in record["pauses"])
        for name in ("chains", "rejected_by", "lost_by_breach", "oversight"):
            record[name] = tuple(record[name])
        try:
            record = state_from_stored(tuple(record[name] for name in _CASE_STATE_FIELDS))
        except (WhistleError, TypeError, ValueError) as exc:
            raise ChangelogError(f"a case record does not hold a case state: {exc}") from exc
    if not isinstance(record, CaseState):  # version 0 hands back the state itself
        raise ChangelogError(f"a case record holds a {type(record).__name__}, not a case state")
    return _checked(record)


def _checked(state: CaseState) -> CaseState:
    """A decoded state whose fields have the types the case book computes with (a version-0 record is typed
    only by what its pickle said), so that a bad record is refused here, not met as a crash later."""
    ints = (state.seq, state.stage_start_ms, state.holder_since_ms, state.status_since_ms, state.escalations, state.extensions,
            state.oversight_since_ms, state.granted_hours, 0 if state.extension_request is None else state.extension_request)
    pauses_ok = all(isinstance(start, int) and (end is None or isinstance(end, int)) for start, end in state.pauses)
    if (not all(isinstance(n, int) and not isinstance(n, bool) for n in ints) or not pauses_ok or not isinstance(state.arbitration, bool)
            or not (state.rating is None or isinstance(state.rating, int)) or not isinstance(state.head, bytes) or len(state.head) != 32
            or not isinstance(state.seen, bytes) or len(state.seen) % 8 or state.status not in _STATUSES or not state.chains):
        raise ChangelogError(f"a case record for {state.case_id!r} has fields of the wrong type or value")
    return state


def decode_open_case(value: bytes) -> OpenCase:
    record = _decode(value, _OPEN_CASE_SCHEMA)
    if isinstance(record, dict):
        record = open_case_from_stored(tuple(record[name] for name in _OPEN_CASE_FIELDS))
    if not isinstance(record, OpenCase):
        raise ChangelogError(f"an open record holds a {type(record).__name__}, not an open case")
    coordinates = (record.lat, record.lon)
    if (not all(isinstance(t, datetime) and t.tzinfo is not None for t in (record.opened_at, record.last_reported_at))
            or not all(c is None or isinstance(c, float) for c in coordinates) or not isinstance(record.category, str)):
        raise ChangelogError(f"an open record for {record.case_id!r} has fields of the wrong type")
    return record


def decode_clock(value: bytes) -> int:
    try:
        return int(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChangelogError(f"a clock record must be epoch ms in ASCII digits, got {value[:40]!r}") from exc


def _decode(value: bytes, schema: Codec, *, since_pickles: bool = False, writers: dict[int, Codec] | None = None) -> Any:
    """The record a value holds, as `schema` reads it. `since_pickles`: a kind of value the pickle releases never
    wrote (version 1 only). `writers`: the schema each version byte was written with, when there are several."""
    if not value:
        raise ChangelogError("empty changelog value")
    version = value[0]
    writers = writers or {CURRENT_VERSION: schema}
    try:
        if version in writers:
            writer = writers[version]
            if writer is schema:
                return schema.read(io.BytesIO(value[1:]))
            return fastavro.schemaless_reader(io.BytesIO(value[1:]), writer.parsed, schema.parsed)  # schema resolution: fastavro's
        if version == _LEGACY_PICKLE and not since_pickles:
            return _LegacyReader(value).read()
    except ChangelogError:
        raise
    except Exception as exc:  # truncated or garbage bytes under a valid version byte
        raise ChangelogError(f"undecodable version-{0 if version == _LEGACY_PICKLE else version} changelog value: {type(exc).__name__}: {exc}") from exc
    versions = " and ".join(map(str, sorted(writers)))
    readable = versions if since_pickles else f"0 and {versions}"
    raise ChangelogError(f"unknown changelog value version {version} (this release reads {readable} for this kind of value)")


# -- version 0: the pickles earlier releases wrote, read as data ----------------------------------------


class _NewObject:
    """An object the stream has created but not yet given its state (NEWOBJ, then BUILD)."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self.build = build


class _Mark:
    """The MARK opcode's place on the stack."""


_MARK = _Mark()


def _open_case_object(cls_args: tuple) -> _NewObject:
    return _NewObject(lambda state: open_case_from_stored(tuple(state)))


def _legacy_datetime(data: bytes, tz: timezone | None = None) -> datetime:
    if not isinstance(data, bytes) or len(data) != 10 or tz is not UTC:
        raise ChangelogError("a version-0 datetime must be a UTC datetime")
    return datetime(data, tz)  # type: ignore[call-arg, arg-type]  # noqa: DTZ001 (datetime's own pickle form: 10 bytes, then the UTC tzinfo; typeshed does not describe it)


def _legacy_timezone(offset: timedelta) -> timezone:
    if offset != timedelta(0):
        raise ChangelogError("a version-0 time zone must be UTC")
    return UTC


def _legacy_timedelta(days: int, seconds: int = 0, microseconds: int = 0) -> timedelta:
    return timedelta(days, seconds, microseconds)


# The only names a version-0 record may refer to, and what stands for each. Calling them builds data.
_LEGACY_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("streams.domain.case", "_revive_state"): lambda values: state_from_stored(tuple(values)),
    ("datetime", "datetime"): _legacy_datetime,
    ("datetime", "timezone"): _legacy_timezone,
    ("datetime", "timedelta"): _legacy_timedelta,
}
_LEGACY_CLASSES: dict[tuple[str, str], Callable[[tuple], _NewObject]] = {("streams.domain.merge", "OpenCase"): _open_case_object}


class _LegacyReader:
    """A stack machine over the opcodes of a version-0 record (pickle protocols 4 and 5, data opcodes only).

    Strings, numbers, bytes, tuples and lists are built as they are; the globals are looked up in
    `_LEGACY_GLOBALS` and `_LEGACY_CLASSES` by name and nothing else; any other opcode is refused.
    """

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0
        self.stack: list[Any] = []
        self.memo: list[Any] = []

    def read(self) -> Any:
        while True:
            opcode = self._take(1)[0]
            handler = _LEGACY_OPCODES.get(opcode)
            if handler is None:
                raise ChangelogError(f"version-0 opcode {opcode:#04x} at byte {self.at - 1} is not one a state record holds")
            if handler(self):
                return self.stack.pop()

    def _take(self, count: int) -> bytes:
        if self.at + count > len(self.data):
            raise ChangelogError("version-0 record ends early")
        chunk = self.data[self.at:self.at + count]
        self.at += count
        return chunk

    def _unsigned(self, size: int) -> int:
        return int.from_bytes(self._take(size), "little")

    def _pop_mark(self) -> list[Any]:
        for position in range(len(self.stack) - 1, -1, -1):
            if self.stack[position] is _MARK:
                items = self.stack[position + 1:]
                del self.stack[position:]
                return items
        raise ChangelogError("version-0 record has no MARK")

    def proto(self) -> None:
        self._take(1)

    def frame(self) -> None:
        self._take(8)

    def stop(self) -> bool:
        return True

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def short_text(self) -> None:
        self.push(self._take(self._unsigned(1)).decode("utf-8"))

    def text(self) -> None:
        self.push(self._take(self._unsigned(4)).decode("utf-8"))

    def short_bytes(self) -> None:
        self.push(self._take(self._unsigned(1)))

    def long_bytes(self) -> None:
        self.push(self._take(self._unsigned(4)))

    def int1(self) -> None:
        self.push(self._unsigned(1))

    def int2(self) -> None:
        self.push(self._unsigned(2))

    def int4(self) -> None:
        self.push(int.from_bytes(self._take(4), "little", signed=True))

    def long1(self) -> None:
        self.push(int.from_bytes(self._take(self._unsigned(1)), "little", signed=True))

    def float8(self) -> None:
        self.push(struct.unpack(">d", self._take(8))[0])

    def memoize(self) -> None:
        self.memo.append(self.stack[-1])

    def get(self) -> None:
        self.push(self.memo[self._unsigned(1)])

    def long_get(self) -> None:
        self.push(self.memo[self._unsigned(4)])

    def tuple_n(self, count: int) -> None:
        if len(self.stack) < count:
            raise ChangelogError("version-0 record's stack runs out")
        items = tuple(self.stack[len(self.stack) - count:]) if count else ()
        del self.stack[len(self.stack) - count:]
        self.push(items)

    def tuple_marked(self) -> None:
        self.push(tuple(self._pop_mark()))

    def appends(self) -> None:
        items = self._pop_mark()
        self.stack[-1].extend(items)

    def append(self) -> None:
        item = self.stack.pop()
        self.stack[-1].append(item)

    def stack_global(self) -> None:
        name, module = self.stack.pop(), self.stack.pop()
        found = _LEGACY_GLOBALS.get((module, name)) or _LEGACY_CLASSES.get((module, name))
        if found is None:
            raise ChangelogError(f"version-0 record refers to {module}.{name}, which is not part of a case state: refused")
        self.push(("global", module, name))

    def reduce(self) -> None:
        args, target = self.stack.pop(), self.stack.pop()
        function = _LEGACY_GLOBALS.get(target[1:]) if isinstance(target, tuple) and target[:1] == ("global",) else None
        if function is None or not isinstance(args, tuple):
            raise ChangelogError("version-0 record calls something that is not a known constructor")
        self.push(function(*args))

    def new_object(self) -> None:
        args, target = self.stack.pop(), self.stack.pop()
        make = _LEGACY_CLASSES.get(target[1:]) if isinstance(target, tuple) and target[:1] == ("global",) else None
        if make is None:
            raise ChangelogError("version-0 record creates an object of an unknown class")
        self.push(make(args))

    def build(self) -> None:
        state, target = self.stack.pop(), self.stack.pop()
        if not isinstance(target, _NewObject) or not isinstance(state, list):
            raise ChangelogError("version-0 record sets the state of something that is not an open case")
        self.push(target.build(state))


_LEGACY_OPCODES: dict[int, Callable[[_LegacyReader], bool | None]] = {
    0x80: _LegacyReader.proto, 0x95: _LegacyReader.frame, ord("."): _LegacyReader.stop,
    0x8C: _LegacyReader.short_text, ord("X"): _LegacyReader.text, ord("C"): _LegacyReader.short_bytes, ord("B"): _LegacyReader.long_bytes,
    ord("K"): _LegacyReader.int1, ord("M"): _LegacyReader.int2, ord("J"): _LegacyReader.int4, 0x8A: _LegacyReader.long1,
    ord("G"): _LegacyReader.float8, ord("N"): lambda r: r.push(None), 0x88: lambda r: r.push(True), 0x89: lambda r: r.push(False),
    0x94: _LegacyReader.memoize, ord("h"): _LegacyReader.get, ord("j"): _LegacyReader.long_get,
    ord(")"): lambda r: r.tuple_n(0), 0x85: lambda r: r.tuple_n(1), 0x86: lambda r: r.tuple_n(2), 0x87: lambda r: r.tuple_n(3),
    ord("("): lambda r: r.push(_MARK), ord("t"): _LegacyReader.tuple_marked, ord("]"): lambda r: r.push([]),
    ord("e"): _LegacyReader.appends, ord("a"): _LegacyReader.append, 0x93: _LegacyReader.stack_global,
    ord("R"): _LegacyReader.reduce, 0x81: _LegacyReader.new_object, ord("b"): _LegacyReader.build,
}
