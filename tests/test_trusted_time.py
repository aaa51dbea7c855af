"""Trusted time: a device's clock decides nothing beyond the configured skew of the record's arrival.

The story from the field: one camera's clock is three years ahead. Believed, its report moves its
street's case clock three years forward; every correctly dated report after it is then outside the
business calendar (dead-lettered) and every open case of the street breaches at once. Decided at its
arrival, it is one flagged report among others, and the street is served as before.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.serde import Serde
from streams.domain.calendar import load_calendar
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.domain.trusted_time import SkewBounds, decided_time
from streams.pipeline import CaseProcessor, Ingestor, Senders, partition_for_key
from whistle.devtools.feed import Signers, source_record
from whistle.devtools.simulate import SimConfig, simulate
from whistle.edges.clock import tick_value
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

ARRIVED = datetime(2026, 6, 8, 2, 0, tzinfo=UTC)  # Monday 10:00 in the city
BOUNDS = SkewBounds.of_seconds(300, 86_400)
SCHEMAS = {"camera": ("whistle.raw.camera", "CameraDetection"), "hotline": ("whistle.raw.hotline", "HotlineTicket"),
           "app": ("whistle.raw.app", "AppEvent")}
START = datetime(2026, 6, 7, 16, 0, tzinfo=UTC)


@pytest.mark.parametrize("offset, believed", [
    (timedelta(0), True), (timedelta(seconds=299), True), (timedelta(seconds=301), False), (timedelta(days=3 * 365), False),
    (-timedelta(hours=23), True), (-timedelta(days=2), False), (-timedelta(days=3 * 365), False)])
def test_a_claim_is_believed_only_within_the_bounds_of_its_arrival(offset, believed):
    claimed = ARRIVED + offset
    at, flag = decided_time(claimed, ARRIVED, BOUNDS)
    if believed:
        assert (at, flag) == (claimed, None)
    else:
        assert at == ARRIVED and flag == f"clock_skew:device={claimed.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}"


def _street_morning(serde: Serde, topics: Topics):
    """A simulated morning of the sample district as raw records with their arrival times (= their own times)."""
    reference = load_reference()
    for offset, event in enumerate(simulate(reference, SimConfig(seed=3, start=START, incidents_per_day=400))):
        if event.at > START + timedelta(hours=14):
            break
        topic, schema = SCHEMAS[event.source]
        yield offset, topic, event, serde.encode(schema, source_record(event))


def _run(bounds: SkewBounds, years_ahead: int):
    """The morning through the pipeline, with the first camera detection's device clock `years_ahead` years ahead."""
    serde, topics, reference = Serde(), Topics(), load_reference()
    ingest = Ingestor(serde, reference, PersonalDataHasher("k"), topics, Senders.from_settings(Settings(), reference), bounds)
    signers = Signers(Settings())
    cases = CaseProcessor(serde, reference, load_policies(), load_calendar(), topics, 3)
    outputs, skewed_street = [], None
    inbox = []
    for offset, topic, event, value in _street_morning(serde, topics):
        if skewed_street is None and event.source == "camera":
            record = {**source_record(event), "detected_at": event.at.replace(year=event.at.year + years_ahead)}
            value = serde.encode("CameraDetection", record)
        routed = ingest.process(Position(topic, 0, offset), event.key.encode(), value, event.at, arrived=event.at,
                                headers=signers.headers(event, topic, event.key.encode(), value))
        outputs.append(routed)
        if routed.topic == topics.inbox:
            if skewed_street is None and event.source == "camera":
                skewed_street = routed.key
            inbox.append((partition_for_key(routed.key.decode(), 3), routed, event.at))
    end = START + timedelta(hours=14)
    for partition in range(3):
        inbox.append((partition, None, end))
    for offset, (partition, routed, at) in enumerate(inbox):
        value = tick_value(serde, partition, at) if routed is None else routed.value
        produced, _ = cases.process(Position(topics.inbox, partition, offset), b"" if routed is None else routed.key, value, at)
        outputs += produced
    decoded = [(o.topic, serde.decode(o.value).record) for o in outputs]
    return decoded, skewed_street, topics


def test_a_camera_three_years_ahead_is_decided_at_its_arrival_and_its_street_is_served():
    decoded, street, topics = _run(BOUNDS, 3)
    assert [r for t, r in decoded if t == topics.deadletter] == []
    events = [r for t, r in decoded if t == topics.case_events]
    flagged = [r for r in events if r["reason"] and "clock_skew:device=2029" in r["reason"]]  # opened or merged: the report's event
    assert len(flagged) == 1 and flagged[0]["at"].year == 2026 and flagged[0]["kind"] in ("opened", "report_merged")
    opened = [r for r in events if r["kind"] == "opened"]
    assert sum(1 for r in opened if r["street_id"] == flagged[0]["street_id"]) > 1  # the street's later reports open cases
    breaches = [r for t, r in decoded if t == topics.breaches]
    assert breaches and all(b["fired_at"] >= b["deadline"] for b in breaches if b["kind"] != "warning")
    assert all(b["fired_at"].year == 2026 for b in breaches)


def test_negative_control_a_believed_clock_three_years_ahead_breaks_the_street():
    """Bounds wide enough to believe the camera: its street's clock jumps to 2029 and the street's later,
    correctly dated reports are dead-lettered or breach at once."""
    decoded, street, topics = _run(SkewBounds.of_seconds(10 * 365 * 86_400, 86_400), 3)
    dead = [r for t, r in decoded if t == topics.deadletter]
    breaches_2029 = [r for t, r in decoded if t == topics.breaches and r["fired_at"].year >= 2029]
    assert dead or breaches_2029


def test_the_decided_time_is_in_the_case_stream_so_replay_does_not_depend_on_the_bounds():
    """The ingest stage writes the decided time into the case stream: the same inbox records decided again
    by a processor give the same case events, whatever bounds a later release is configured with."""
    first, _, topics = _run(BOUNDS, 3)
    again, _, _ = _run(BOUNDS, 3)
    assert [r for t, r in first if t == topics.case_events] == [r for t, r in again if t == topics.case_events]


def test_the_clock_command_refuses_a_tick_past_the_wall_clock_unless_the_operator_says_so(isolated):
    """`whistle clock advance` a day ahead is refused, naming the bound, and writes nothing; with
    --beyond-wall-clock (an operator's explicit act) it writes one tick into every case-stream partition."""
    import os
    import subprocess
    import sys

    from whistle.devtools.harness import end_offsets

    inbox = Topics.with_prefix(isolated.topic_prefix).inbox
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    env = {**os.environ, **isolated.to_env()}
    refused = subprocess.run([sys.executable, "-m", "whistle", "clock", "advance", "--to", tomorrow], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--beyond-wall-clock" in refused.stderr + refused.stdout
    assert sum(end_offsets(isolated, inbox).values()) == 0
    done = subprocess.run([sys.executable, "-m", "whistle", "clock", "advance", "--to", tomorrow, "--beyond-wall-clock"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    offsets = end_offsets(isolated, inbox)
    assert sum(offsets.values()) == len(offsets) > 0
