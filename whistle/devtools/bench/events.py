"""The bench's messages: simulated events, validated and encoded as the SDK sends them, and the breach phase's
emergency reports, re-dated so that their accept deadlines fall during the run."""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from schemas.catalog import default_catalog
from schemas.serde import Serde, from_record
from streams.domain.calendar import load_calendar
from streams.domain.enrich import Enricher
from streams.domain.model import CameraDetection, EnrichedReport, HotlineTicket, ResidentReport, scoped_report_id
from streams.domain.normalize import normalize_app_report, normalize_camera, normalize_hotline
from streams.domain.reference import DistrictReference
from streams.domain.sla import load_policies, policy_in_force
from whistle.devtools.bench.options import BenchOptions
from whistle.devtools.feed import Signers, source_record
from whistle.devtools.simulate import SimConfig, SimEvent, simulate
from whistle.ground.errors import ConfigError
from whistle.ground.times import to_epoch_ms

# The simulated period starts on a Monday (city time) inside the business calendar's published years.
SIM_START = datetime(2026, 1, 4, 16, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Message:
    """One pre-encoded raw record, as the SDK sends it, and the cause id its case events will name."""

    source: str
    key: bytes
    value: bytes
    cause_id: str
    headers: tuple[tuple[str, bytes], ...]  # the sender's signature (streams.domain.credentials)


def generate_events(reference: DistrictReference, options: BenchOptions) -> Iterator[SimEvent]:
    """The first `options.events` simulated events (of the realistic district load, as many days as needed)."""
    per_day = 2_800 if options.reports_only else 6_200  # events a simulated day of 2,000 incidents yields
    config = SimConfig(seed=options.seed, start=SIM_START, days=options.events / per_day * 1.5 + 1)
    events = simulate(reference, config)
    if options.reports_only:
        events = (e for e in events if e.record_type != "HandlingAction")
    return itertools.islice(events, options.events)


def encode_event(serde: Serde, signers: Signers, event: SimEvent) -> Message:
    """Validate, encode and sign a simulated event exactly as `Publisher.submit` does."""
    spec = serde.catalog.topic_for_source(event.source)
    checked = serde.validate(spec.schema, source_record(event))
    key = spec.key_for(checked)
    key_bytes = key.encode() if isinstance(key, str) else key
    value = serde.encode(spec.schema, checked, validate=False)
    record_id = event.record[serde.catalog.record_facts(event.record_type).id_field]
    # A case event names a handling action by its id, a report by its sender-scoped report id.
    cause_id = record_id if event.record_type == "HandlingAction" else scoped_report_id(event.source, event.integrator, record_id)
    return Message(event.source, key_bytes, value, cause_id, tuple(signers.headers(event, spec.name, key_bytes, value)))


def _enriched(reference: DistrictReference, enricher: Enricher, event: SimEvent) -> EnrichedReport:
    """A simulated report through the pipeline's own normalize and enrich functions."""
    if event.source == "camera":
        report = normalize_camera(from_record(CameraDetection, event.record), reference, event.integrator)
    elif event.source == "hotline":
        report = normalize_hotline(from_record(HotlineTicket, event.record), reference, lambda phone: phone, event.integrator)
    else:
        report = normalize_app_report(from_record(ResidentReport, event.record), reference, lambda reporter: reporter, event.integrator)
    return enricher.enrich(report)


def emergency_accept_limit(at: datetime) -> timedelta:
    """The accept limit of an emergency case opened at `at`, by the policy in force then; a limit counted in
    working time cannot be placed on the wall clock by re-dating a report, and is refused."""
    policy = policy_in_force(load_policies(), at)
    limit = policy.limits["initial"]["emergency"].accept
    if limit.on_working_time:
        raise ConfigError(f"{policy.file}: the emergency accept limit {limit} counts working time; a breach drill needs elapsed time",
                          field="limits.initial.emergency.accept")
    base_ms = to_epoch_ms(at)
    return timedelta(milliseconds=load_calendar().add(base_ms, limit) - base_ms)


def emergency_reports(reference: DistrictReference, events: list[SimEvent], wanted: int, pipeline_start: datetime,
                      spread_s: float) -> list[SimEvent]:
    """Emergency reports re-dated so that their accept deadlines fall 2 s .. 2 s + `spread_s` after `pipeline_start`.

    The accept limit is the policy's (`emergency_accept_limit`).
    """
    policy = policy_in_force(load_policies(), pipeline_start)
    limit = emergency_accept_limit(pipeline_start)
    enricher = Enricher(reference)
    chosen = []
    for event in events:
        if event.record_type == "HandlingAction":
            continue
        report = _enriched(reference, enricher, event).report
        if policy.class_of(report.category, report.urgency.value) == "emergency":
            chosen.append(event)
        if len(chosen) == wanted:
            break
    catalog = default_catalog()
    redated = []
    for n, event in enumerate(chosen):
        due = pipeline_start + timedelta(seconds=2 + spread_s * n / max(1, len(chosen) - 1))
        at = due - limit
        redated.append(replace(event, at=at, record={**event.record, catalog.record_facts(event.record_type).event_time_field: at}))
    return redated
