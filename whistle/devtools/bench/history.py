"""A simulated year through the pure pipeline, twice: with the policy's archive_after, and keeping every closed case.

What it shows is whether the workers' memory and recovery follow open work or history: the cases each
processor holds at the end, their retained bytes, the changelog's live keys and bytes, and the time to
recover the partitions from that changelog. Both runs must emit the same case events and breaches (the
archive window is longer than any reopening in the simulation), or the figures do not count.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import sys
import time
import types
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from infra.topics import partitions_of
from schemas.serde import Serde
from streams.domain.calendar import load_calendar
from streams.domain.case import Status
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import DistrictReference
from streams.domain.sla import load_policies
from streams.domain.trusted_time import SkewBounds
from streams.pipeline import CaseProcessor, Ingestor, Senders, partition_for_key
from whistle.devtools.bench.events import SIM_START
from whistle.devtools.feed import Signers, ingest_event
from whistle.devtools.simulate import SimConfig, simulate
from whistle.edges.clock import tick_value
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

DAY = timedelta(days=1)


def history_phase(settings: Settings, reference: DistrictReference, days: float, incidents_per_day: float, seed: int,
                  progress: Callable[[str, int, int], None]) -> dict[str, Any]:
    """Simulate `days` of the district, ingest it once, then run the case stage with and without archiving."""
    serde, topics = Serde.from_settings(settings), Topics()
    partitions = partitions_of(topics.inbox)
    events = list(simulate(reference, SimConfig(seed=seed, start=SIM_START, days=days, incidents_per_day=incidents_per_day)))
    ingestor = Ingestor(serde, reference, PersonalDataHasher(settings.pii_hmac_key), topics, Senders.from_settings(settings, reference),
                        SkewBounds.of_seconds(300, (days + 400) * 86_400))  # a backfill: every device time is believed
    signers, inbox, raw = Signers(settings), [], {"camera": topics.camera, "hotline": topics.hotline, "app": topics.app}
    for n, event in enumerate(events):
        routed = ingest_event(ingestor, signers, Position(raw[event.source], 0, n), event, event.at, event.at)
        if routed.topic == topics.inbox:
            inbox.append((partition_for_key(routed.key.decode(), partitions), routed.key, routed.value, event.at))
        if n % 20_000 == 0:
            progress("history: ingesting the simulated period", n, len(events))
    end = events[-1].at + timedelta(days=10)
    policies = load_policies()
    runs = {}
    for name, variant in (("archive", policies), ("keep", {v: dataclasses.replace(p, archive_after=None) for v, p in policies.items()})):
        runs[name] = _run(serde, reference, variant, topics, partitions, inbox, end,
                          lambda done, total, name=name: progress(f"history: the case stage, {name}", done, total))
    archive, keep = runs["archive"], runs["keep"]
    return {"days": days, "incidents_per_day": incidents_per_day, "events": len(events), "inbox_records": len(inbox),
            "archive_after": str(next(iter(policies.values())).archive_after), "archive": archive, "keep": keep,
            "outputs_identical": archive.pop("outputs_sha256") == keep.pop("outputs_sha256"),
            "bytes_per_open_case": round(archive["retained_bytes"] / max(1, archive["cases_in_memory"])),
            "bytes_per_year_of_history": round((keep["retained_bytes"] - archive["retained_bytes"]) * 365 / days)}


def _run(serde: Serde, reference: DistrictReference, policies, topics: Topics, partitions: int, inbox: list, end,
         progress: Callable[[int, int], None]) -> dict[str, Any]:
    cases = CaseProcessor(serde, reference, policies, load_calendar(), topics, partitions)
    offsets = [0] * partitions
    digest = hashlib.sha256()
    changelog: dict[tuple[int, str], bytes | None] = {}
    began = time.perf_counter()

    def feed(partition: int, key: bytes | None, value: bytes, at) -> None:
        produced, writes = cases.process(Position(topics.inbox, partition, offsets[partition]), key, value, at)
        offsets[partition] += 1
        for output in produced:
            digest.update(output.topic.encode() + (output.value or b""))
        for write in writes:
            changelog[(write.partition, write.key)] = write.value

    ticked = None
    for n, (partition, key, value, at) in enumerate(inbox):
        if ticked is None or at - ticked >= DAY:  # the clock service's ticks, daily here: deadlines and archiving fire between reports
            for p in range(partitions):
                feed(p, None, tick_value(serde, p, at), at)
            ticked = at
        feed(partition, key, value, at)
        if n % 20_000 == 0:
            progress(n, len(inbox))
    for p in range(partitions):
        feed(p, None, tick_value(serde, p, end), end)
    processed_s = time.perf_counter() - began
    states = [state for part in cases.held() for state in part.book.states.values()]
    live = {key: value for key, value in changelog.items() if value is not None}
    recovered = CaseProcessor(serde, reference, policies, load_calendar(), topics, partitions)
    began = time.perf_counter()
    for partition in range(partitions):
        recovered.recover(partition, ((n, key, value) for n, ((p, key), value) in enumerate(changelog.items()) if p == partition))
    recovery_s = time.perf_counter() - began
    return {"cases_in_memory": len(states), "open_cases": sum(state.status != Status.CLOSED for state in states),
            "retained_bytes": retained_bytes(cases.held()), "changelog_live_keys": len(live),
            "changelog_bytes": sum(len(key) + len(value) for (_, key), value in live.items()),
            "case_stage_s": round(processed_s, 1), "recovery_s": round(recovery_s, 2), "outputs_sha256": digest.hexdigest()}


def retained_bytes(parts: Iterable[Any]) -> int:
    """The bytes a worker holds for its partitions' cases (each object once, by id): states, deadlines, the merge
    index, recorded reports, refused actions and holds; shared reference data and code are not followed."""
    stack: list[Any] = []
    for part in parts:
        stack += [part.book.states, part.book.index, part.merge, part.reports, part.refused, part.tied, part.held, part.hold_ends]
    seen: set[int] = set()
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _NOT_STATE):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif not isinstance(obj, (str, bytes, int, float)):
            stack.extend(value for name in _slot_names(type(obj)) if (value := getattr(obj, name, None)) is not None)
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
    return total


_NOT_STATE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial)


def _slot_names(cls: type) -> list[str]:
    return [name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ()) if isinstance(name, str)]
