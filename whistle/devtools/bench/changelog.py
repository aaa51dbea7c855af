"""The recovery phase's changelog: M open cases made by the domain functions the case processor uses, written
as the records `CaseProcessor` writes when it opens a case (see `whistle.devtools.bench.phases`)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer

from streams.changelog import case_key, clock_key, encode_case_state, encode_clock, encode_open_case, open_key
from streams.domain.case import Status, evolve, handle_action, open_case
from streams.domain.case_id import case_id_for
from streams.domain.enrich import Enricher, case_partition_key
from streams.domain.merge import MergeIndex
from streams.domain.model import ActionKind, HandlingAction
from streams.domain.reference import DistrictReference
from streams.domain.sla import load_policies, policy_in_force
from streams.pipeline import partition_for_key
from whistle.devtools.bench.events import _enriched
from whistle.devtools.simulate import SimEvent
from whistle.ground.errors import ConfigError, StackError
from whistle.ground.settings import Settings
from whistle.ground.times import to_epoch_ms

# Open cases of the recovery phase are opened within this window of pipeline time (Monday 10:00 city
# time onwards): shorter than any accept warning, so recovering them fires no deadline.
RECOVERY_START = datetime(2026, 3, 9, 2, 0, tzinfo=UTC)
RECOVERY_WINDOW = timedelta(minutes=10)


@dataclass
class Loaded:
    records: int = 0
    bytes: int = 0
    probes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # partition -> an accept action for each of its dispatched cases


def open_case_writes(reference: DistrictReference, events: list[SimEvent], count: int,
                     partitions: int) -> Iterator[tuple[int, bytes, bytes, dict[str, Any] | None]]:
    """(partition, key, value, probe) changelog records of `count` open cases, as `CaseProcessor` writes them when it opens a case.

    States are made by the domain functions the case processor uses (open_case, evolve, handle_action,
    MergeIndex.open_case), without the merge lookup: every case is distinct. Reports come from the simulated events (normalized and enriched by the pipeline's functions),
    renamed so that every case is distinct; every other case is accepted as well, so the states
    mix dispatched and accepted cases. `probe` is an accept action for the (dispatched) case, or None.
    """
    enricher = Enricher(reference)
    pool = [_enriched(reference, enricher, e) for e in events if e.record_type != "HandlingAction"][:10_000]
    if not pool:
        raise ConfigError("the simulated events hold no report to open cases from: raise --events", field="events")
    policy = policy_in_force(load_policies(), RECOVERY_START)
    merge = MergeIndex(reference.gazetteer.normalize)
    step = RECOVERY_WINDOW / count
    probe_at = RECOVERY_START + RECOVERY_WINDOW
    for n in range(count):
        base = pool[n % len(pool)]
        at = RECOVERY_START + step * n
        enriched = replace(base, report=replace(base.report, report_id=f"bench:{n:08d}", occurred_at=at))
        case_id = case_id_for(enriched)
        state = None
        for event in open_case(enriched, case_id, policy.version, at):
            state = evolve(state, event)
        if n % 2:
            accept = HandlingAction(f"bench-accept:{n}", case_id, ActionKind.ACCEPT, state.assignee.unit_id, at)
            for event in handle_action(state, accept, policy.rules):
                state = evolve(state, event)
        partition = partition_for_key(case_partition_key(enriched), partitions)
        probe = None
        if state.status == Status.DISPATCHED:
            probe = {"action_id": f"bench-probe:{n}", "case_id": case_id, "kind": "accept", "unit_id": state.assignee.unit_id,
                     "at": probe_at, "reason": None, "note": None, "rating": None, "extension_hours": None}
        yield partition, open_key(case_id).encode(), encode_open_case(merge.open_case(case_id, enriched)), None
        yield partition, case_key(case_id).encode(), encode_case_state(state), probe
        yield partition, clock_key(partition).encode(), encode_clock(to_epoch_ms(at)), None


def write_open_cases(settings: Settings, changelog: str, writes: Iterable[tuple[int, bytes, bytes, dict | None]],
                     progress: Callable[[int], None]) -> Loaded:
    """Produce the changelog records (acks=all); returns what was written and the probes of each partition."""
    failures: list[str] = []

    def delivered(error, message) -> None:
        if error is not None:
            failures.append(error.str())

    producer = Producer(settings.kafka.producer())
    loaded = Loaded()
    for partition, key, value, probe in writes:
        while True:
            try:
                producer.produce(changelog, key=key, value=value, partition=partition, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        loaded.records += 1
        loaded.bytes += len(key) + len(value)
        if probe is not None:
            loaded.probes.setdefault(partition, []).append(probe)
        if loaded.records % 30_000 == 0:
            producer.poll(0)
            progress(loaded.records // 3)
    if producer.flush(120) or failures:
        raise StackError(f"writing the changelog {changelog} failed: {failures[:1] or 'records left unacknowledged'}")
    return loaded
