"""Whether a run through Kafka produced what the pure pipeline produces on the same messages.

A rate counts only if the work measured is the real work: a worker that dead-letters actions it should
have applied emits fewer case events and breaches, so it is cheaper per event. After the e2e phase and
the backlog phase's drain the bench reads the phase's case events, breaches and dead letters back from
Kafka and compares them with the pure pipeline's outputs (`inprocess.pipeline_rate`) on the same messages:

- case events and breaches by their id (`event_id`, `breach_id`), their content as encoded bytes: both
  runs encode the same canonical record with the same serde, and no field of them is read from a wall
  clock (times are the records' decided times; a breach's `fired_at` is the partition's pipeline clock);
- dead letters by the input message they carry (a raw record's bytes, or the cause id of the case-stream
  record), with the stage, the error's class, field, message and context.

Left out as stamps of the run itself: a dead letter's `failed_at` (the worker's wall clock), its original
partition and offset and the error's topic/partition/offset context (Kafka positions, which the pure run
numbers on its own). Arrival times decide nothing here: a record is decided at its device's time while
that lies within the skew bounds of its arrival (`streams.domain.trusted_time`), and the bench's bounds
cover the whole simulated period, whether the arrival is the raw topic's LogAppendTime (the worker) or
`utc_now()` (the pure run). Identical copies of an output (at-least-once redelivery; consumers drop them
by id) are counted as duplicates, not as differences.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.serde import Serde
from streams.pipeline import ACTION, ENRICHED
from whistle.devtools.bench.events import Message
from whistle.ground.names import Topics

KINDS = ("case_events", "breaches", "dead_letters")
EXAMPLES = 5
# error headers not compared as context: a Kafka position (each run numbers its own), and what the record's fields carry
_NOT_CONTEXT = frozenset({"whistle.error.topic", "whistle.error.partition", "whistle.error.offset", "whistle.error.stage",
                          "whistle.error.class", "whistle.error.message"})

Record = tuple[str, bytes | None, Sequence[tuple[str, bytes]]]  # topic, value, headers


@dataclass
class RunOutputs:
    """One run's outputs, keyed for comparison: every copy's bytes by output id, dead letters' contents by their input."""

    case_events: dict[str, list[bytes]] = field(default_factory=dict)
    breaches: dict[str, list[bytes]] = field(default_factory=dict)
    dead_letters: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)  # "<stage> <input>" -> (stage, class, field, message, context)


class OutputReader:
    """Turns a run's output records into `RunOutputs`, naming each dead letter's input by the message it came from."""

    def __init__(self, serde: Serde, topics: Topics, messages: list[Message]) -> None:
        self.serde, self.topics, self.messages = serde, topics, messages
        self._by_value = {m.value: n for n, m in enumerate(messages)}
        self._by_cause: dict[str, int] = {}
        for n, m in enumerate(messages):
            self._by_cause.setdefault(m.cause_id, n)

    def read(self, records: Iterable[Record]) -> RunOutputs:
        out = RunOutputs()
        topics = self.topics
        for topic, value, headers in records:
            if value is None:
                continue
            if topic == topics.case_events:
                out.case_events.setdefault(self.serde.decode(value, validate=False).record["event_id"], []).append(value)
            elif topic == topics.breaches:
                out.breaches.setdefault(self.serde.decode(value, validate=False).record["breach_id"], []).append(value)
            elif topic == topics.deadletter:
                letter = self.serde.decode(value, validate=False).record
                error = {k: v.decode("utf-8", "replace") for k, v in headers if k.startswith("whistle.error.")}
                context = ",".join(f"{k[len('whistle.error.'):]}={v}" for k, v in sorted(error.items()) if k not in _NOT_CONTEXT)
                content = (letter["stage"], letter["error_class"], letter["field"] or "",
                           error.get("whistle.error.message", letter["error_message"]), context)
                out.dead_letters.setdefault(self._input_of(letter), []).append(content)
        return out

    def _input_of(self, letter: dict[str, Any]) -> str:
        """The input a dead letter carries: `ingest #n` / `cases #n` (the nth message), or what it is when no message."""
        topic, value = letter["original_topic"], letter["original_value"]
        if topic in self.topics.sources:
            n = self._by_value.get(value)
            return f"ingest #{n}" if n is not None else "ingest (bytes of no bench message)"
        if topic == self.topics.inbox:
            try:
                branch, record = self.serde.decode(value, validate=False).record["event"]
            except Exception:  # an undecodable case-stream record is an input of its own
                return "cases (undecodable record)"
            cause = record["report"]["report_id"] if branch == ENRICHED else record["action_id"] if branch == ACTION else None
            n = self._by_cause.get(cause) if cause is not None else None
            return f"cases #{n}" if n is not None else f"cases ({branch.rsplit('.', 1)[-1]} of no bench message)"
        return f"{topic.rsplit('.', 1)[-1]} record"

    def describe(self, input_name: str) -> str:
        """`cases #12` -> `cases #12 (app HandlingAction act-…)`: the message behind a dead letter, for examples."""
        number = input_name.rpartition("#")[2]
        if not number.isdigit():
            return input_name
        message = self.messages[int(number)]
        return f"{input_name} ({message.source} {message.cause_id})"


def compare_outputs(serde: Serde, expected: RunOutputs, got: RunOutputs, describe: Callable[[str], str]) -> dict[str, Any]:
    """Per kind: identical, differing, missing (in the pure run only), extra (in the Kafka run only), duplicates,
    and up to `EXAMPLES` examples of what differs; `outputs_match` when no kind differs, misses or adds anything."""
    result: dict[str, Any] = {"case_events": _compare_ids(serde, expected.case_events, got.case_events, "event_id"),
                              "breaches": _compare_ids(serde, expected.breaches, got.breaches, "breach_id"),
                              "dead_letters": _compare_letters(expected.dead_letters, got.dead_letters, describe)}
    result["outputs_match"] = all(result[kind][n] == 0 for kind in KINDS for n in ("differing", "missing", "extra"))
    return result


def _counts() -> dict[str, Any]:
    return {"expected": 0, "identical": 0, "differing": 0, "missing": 0, "extra": 0, "duplicates": 0, "examples": []}


def _compare_ids(serde: Serde, expected: dict[str, list[bytes]], got: dict[str, list[bytes]], id_field: str) -> dict[str, Any]:
    counts = _counts()
    counts["expected"] = len(expected)
    examples: list[str] = counts["examples"]

    def show(value: bytes) -> dict[str, Any]:
        return serde.decode(value, validate=False).record

    for key in sorted(expected.keys() | got.keys()):
        want, copies = expected.get(key), got.get(key, [])
        counts["duplicates"] += max(0, len(copies) - 1)  # further copies of the id; one that differs makes the id differ
        if want is None:
            counts["extra"] += 1
            if len(examples) < EXAMPLES:
                examples.append(f"extra {id_field} {key}: {_brief(show(copies[0]))}")
        elif not copies:
            counts["missing"] += 1
            if len(examples) < EXAMPLES:
                examples.append(f"missing {id_field} {key}: {_brief(show(want[0]))}")
        elif set(copies) == {want[0]}:
            counts["identical"] += 1
        else:
            counts["differing"] += 1
            if len(examples) < EXAMPLES:
                pure, other = show(want[0]), show(next(c for c in copies if c != want[0]))
                fields = ", ".join(f"{name}: {pure.get(name)!r} -> {other.get(name)!r}" for name in pure if pure.get(name) != other.get(name))
                examples.append(f"differing {id_field} {key}: {fields}")
    return counts


def _compare_letters(expected: dict[str, list[tuple[str, ...]]], got: dict[str, list[tuple[str, ...]]],
                     describe: Callable[[str], str]) -> dict[str, Any]:
    counts = _counts()
    counts["expected"] = sum(len(v) for v in expected.values())
    examples: list[str] = counts["examples"]
    for key in sorted(expected.keys() | got.keys()):
        want, have = Counter(expected.get(key, [])), Counter(got.get(key, []))
        counts["identical"] += sum((want & have).values())
        counts["duplicates"] += sum(n - want[c] for c, n in have.items() if c in want and n > want[c])
        unmatched = sum((want - have).values())
        added = sum(n for c, n in (have - want).items() if c not in want)
        paired = min(unmatched, added)
        counts["differing"] += paired
        counts["missing"] += unmatched - paired
        counts["extra"] += added - paired
        if (unmatched or added) and len(examples) < EXAMPLES:
            pure = "; ".join(_letter(c) for c in want - have) or "none"
            other = "; ".join(_letter(c) for c in have - want if c not in want) or "none"
            examples.append(f"{describe(key)}: pure run {pure}; Kafka run {other}")
    return counts


def _brief(record: dict[str, Any]) -> str:
    return ", ".join(f"{name} {record[name]}" for name in ("case_id", "kind", "breach_type", "cause_id", "deadline") if record.get(name) is not None)


def _letter(content: tuple[str, ...]) -> str:
    stage, error_class, field_name, message, context = content
    return f"{stage}/{error_class}{f' [{field_name}]' if field_name else ''}: {message}{f' ({context})' if context else ''}"
