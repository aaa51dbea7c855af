"""Offices as they work, end to end: real Kafka, a real `whistle worker`, time driven by clock ticks.

Tuesday 1 December 2026 (policy-v2), office hours 09:00-12:00 and 13:30-18:00. The outcomes are the ones
tests/test_offices.py computes by hand on the pure case book."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from test_streams_integration import Pipeline, pipeline, resident_report, spread_spots  # noqa: F401  (pipeline: fixture)

from streams.domain.calendar import load_calendar
from streams.domain.case import Kind
from whistle.ground.times import to_epoch_ms

T = datetime.fromisoformat("2026-12-01T09:00:00+08:00")
MINUTE = timedelta(minutes=1)


def local(value: datetime) -> str:
    return load_calendar().local_time(to_epoch_ms(value)).strftime("%H:%M")


@pytest.mark.kafka
def test_the_boundary_drain_is_urged_criticised_and_referred_while_the_arbiter_keeps_it(pipeline: Pipeline):
    pipeline.start("worker-1")
    reference = pipeline.reference
    spot = next(s for s in spread_spots(reference, 8)  # a grid team's drain (not a property manager's: exceptions.geojson)
                if s.grid.street_id == "S01" and reference.exception_at(s.lat, s.lon, "drainage_blockage") is None)
    other = next(g.grid_id for g in sorted(reference.grids.values(), key=lambda g: g.grid_id) if g.street_id == "S02")
    drain = pipeline.report("app", resident_report("rep-drain", spot, category="drainage_blockage", at=T))
    pipeline.wait_for_events(2)
    pipeline.act(drain.case_id, "transfer", drain.holder, T + 20 * MINUTE, reason="the drain is on the S02 side", target_unit_id=other)
    pipeline.act(drain.case_id, "transfer", other, T + 40 * MINUTE, reason="the drain is on the S01 side", target_unit_id=drain.holder)
    unknown = pipeline.act(drain.case_id, "transfer", "DEP-WATER", T + 45 * MINUTE, reason="not ours")  # the arbiter must assign it
    pipeline.wait_for_events(5)
    pipeline.tick(*(T + n * 10 * MINUTE for n in range(5, 49)))  # every 10 minutes to 17:00
    pipeline.wait_for_events(8)
    pipeline.settle()

    events = [event for _, event in pipeline.case_events()[drain.case_id]]
    assert [(e.kind, e.actor_unit_id, e.assignee_unit_id) for e in events] == [
        (Kind.OPENED, None, drain.holder), (Kind.DISPATCHED, None, drain.holder), (Kind.TRANSFERRED, drain.holder, other),
        (Kind.TRANSFERRED, other, other), (Kind.ESCALATED, None, "DEP-WATER"),
        (Kind.URGED, "SUP", "DEP-WATER"), (Kind.CRITICIZED, "SUP", "DEP-WATER"), (Kind.REFERRED, "DIS", "DEP-WATER")]
    breaches = [(b.kind, b.breach_type, b.responsible_unit_id, local(b.fired_at)) for _, b in pipeline.breaches() if b.kind != "warning"]
    assert breaches == [("breach", "transfer_limit", other, "09:40"), ("urging", "accept_overdue", "DEP-WATER", "10:40"),
                        ("criticism", "accept_overdue", "DEP-WATER", "14:10"), ("referral", "final_overdue", "DEP-WATER", "16:10")]
    letters = {dict(m.headers())["whistle.error.action_id"].decode(): dict(m.headers())["whistle.error.reason"].decode()
               for m in pipeline.records(pipeline.topics.deadletter)}
    assert letters == {unknown: "arbiter_cannot_return"}


@pytest.mark.kafka
def test_an_extension_is_applied_only_as_the_superior_approves_it(pipeline: Pipeline):
    pipeline.start("worker-1")
    spots = spread_spots(pipeline.reference, 2)
    approved, denied = (pipeline.report("app", resident_report(f"rep-ext-{n}", spot, at=T)) for n, spot in enumerate(spots))
    pipeline.wait_for_events(4)
    superior = {case: case.chain[1] for case in (approved, denied)}
    for case in (approved, denied):
        pipeline.act(case.case_id, "accept", case.holder, T + 10 * MINUTE)
        pipeline.act(case.case_id, "request_extension", case.holder, T + 60 * MINUTE, extension_hours=72, reason="waiting for a pump")
    wrong = pipeline.act(approved.case_id, "approve_extension", approved.holder, T + 90 * MINUTE, extension_hours=72)  # not its own superior
    pipeline.act(approved.case_id, "approve_extension", superior[approved], T + 120 * MINUTE, extension_hours=48, reason="two days")
    pipeline.act(denied.case_id, "deny_extension", superior[denied], T + 120 * MINUTE, reason="no")
    pipeline.wait_for_events(10)
    pipeline.settle()
    kinds = {case: [(e.kind, e.actor_unit_id, e.note) for _, e in pipeline.case_events()[case.case_id]][3:] for case in (approved, denied)}
    assert kinds[approved] == [(Kind.EXTENSION_REQUESTED, approved.holder, "hours=72"), (Kind.EXTENSION_GRANTED, superior[approved], "hours=48")]
    assert kinds[denied] == [(Kind.EXTENSION_REQUESTED, denied.holder, "hours=72"), (Kind.EXTENSION_DENIED, superior[denied], "hours=72")]
    letters = {dict(m.headers())["whistle.error.action_id"].decode(): dict(m.headers())["whistle.error.reason"].decode()
               for m in pipeline.records(pipeline.topics.deadletter)}
    assert letters == {wrong: "not_superior"}
