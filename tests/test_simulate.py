"""The simulated district: deterministic, schema-valid, full of the situations the pipeline must handle,
and handled the way the pipeline's case engine allows."""
from __future__ import annotations

import io
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from schemas.catalog import default_catalog
from schemas.serde import Serde
from schemas.validation import RecordValidator
from streams.domain.calendar import load_calendar
from streams.domain.credentials import RETURN_VISIT
from streams.domain.enrich import common_parent
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.pipeline import CaseProcessor, Ingestor, Senders, partition_for_key
from whistle.devtools.feed import Signers, ingest_event
from whistle.devtools.simulate import BEIJING, SimConfig, simulate, write_jsonl
from whistle.edges.clock import tick_value
from whistle.ground.deadletter import Position
from whistle.ground.errors import ConfigError
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

START = datetime(2026, 6, 7, 16, 0, tzinfo=UTC)  # Monday 2026-06-08 00:00 Beijing time
PARTITIONS = 6
SIGNERS = Signers(Settings())  # each simulated integrator signs what it sends
TICK_EVERY = timedelta(minutes=4)  # the demo's feed: a tick every 0.2 s at 1,200 simulated seconds per second


@pytest.fixture(scope="module")
def ref():
    return load_reference()


@pytest.fixture(scope="module")
def events(ref):
    return list(simulate(ref, SimConfig(seed=42, start=START, incidents_per_day=1500)))


@pytest.fixture(scope="module")
def day(ref, events):
    """The simulated day through the real pipeline in-process (Ingestor, then CaseProcessor on 6 partitions),
    its clock ticking as the demo's feed ticks it: every few simulated minutes, at the time of the event
    being sent; then a tick a month later judges every deadline left."""
    serde, topics = Serde(), Topics()
    ingest = Ingestor(serde, ref, PersonalDataHasher("test-key"), topics, Senders.from_settings(Settings(), ref))
    cases = CaseProcessor(serde, ref, load_policies(), load_calendar(), topics, PARTITIONS)
    out = {topics.deadletter: [], topics.case_events: [], topics.breaches: []}
    offsets = [0] * PARTITIONS

    def apply(partition: int, key: bytes | None, value: bytes, now: datetime) -> None:
        produced, _ = cases.process(Position(topics.inbox, partition, offsets[partition]), key, value, now)
        offsets[partition] += 1
        for record in produced:
            out[record.topic].append(serde.decode(record.value).record)

    def tick(at: datetime) -> None:
        for partition in range(PARTITIONS):
            apply(partition, None, tick_value(serde, partition, at), at)

    raw = {"camera": (topics.camera, "CameraDetection"), "hotline": (topics.hotline, "HotlineTicket"), "app": (topics.app, "AppEvent")}
    ticked = None
    for offset, event in enumerate(events):
        if ticked is None or event.at - ticked >= TICK_EVERY:
            tick(event.at)
            ticked = event.at
        topic, schema = raw[event.source]
        routed = ingest_event(ingest, SIGNERS, Position(topic, 0, offset), event, event.at)
        if routed.topic == topics.deadletter:
            out[topics.deadletter].append(serde.decode(routed.value).record)
        else:
            apply(partition_for_key(routed.key.decode(), PARTITIONS), routed.key, routed.value, event.at)
    tick(events[-1].at + timedelta(days=30))
    by_case = defaultdict(list)
    for case_event in out[topics.case_events]:
        by_case[case_event["case_id"]].append(case_event)
    return SimpleNamespace(dead_letters=out[topics.deadletter], cases=by_case, breaches=out[topics.breaches])


def actions_by_case(events) -> dict[str, list[dict]]:
    by_case = defaultdict(list)
    for e in events:
        if e.record_type == "HandlingAction":
            by_case[e.record["case_id"]].append(e.record)
    return by_case


def jsonl(ref, **config) -> bytes:
    out = io.BytesIO()
    write_jsonl(simulate(ref, SimConfig(start=START, incidents_per_day=300, **config)), out)
    return out.getvalue()


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes(ref):
    first = jsonl(ref, seed=9)
    assert first == jsonl(ref, seed=9)
    assert first != jsonl(ref, seed=10)
    assert first.count(b"\n") > 500


def test_every_record_is_valid_for_its_avro_schema(events):
    catalog = default_catalog()
    validators = {name: RecordValidator(catalog.schema(name).definition, catalog.vocabularies())
                  for name in ("CameraDetection", "HotlineTicket", "ResidentReport", "HandlingAction")}
    for event in events:
        validators[event.record_type].validate(event.record)
    assert {e.record_type for e in events} == set(validators)


def test_events_come_in_time_order_and_reports_arrive_within_the_day(events):
    assert all(a.at <= b.at for a, b in zip(events, events[1:]))
    reports = [e for e in events if e.record_type != "HandlingAction"]
    assert START <= reports[0].at and reports[-1].at < START + timedelta(days=1, hours=8)  # follow-up calls come hours later
    assert sum(e.at >= START + timedelta(days=1) for e in reports) < len(reports) * 0.03


def test_keys_are_what_the_topics_are_keyed_by(events):
    key_field = {"CameraDetection": "camera_id", "HotlineTicket": "ticket_id", "ResidentReport": "report_id", "HandlingAction": "case_id"}
    assert all(e.key == e.record[key_field[e.record_type]] for e in events)
    assert {e.source for e in events if e.record_type == "HandlingAction"} == {"app"}


def test_the_scale_knob_scales_the_arrivals(ref):
    def reports(per_day: float) -> int:
        return sum(e.record_type != "HandlingAction" for e in simulate(ref, SimConfig(seed=1, start=START, incidents_per_day=per_day)))

    assert 1.7 < reports(1200) / reports(600) < 2.3


def test_arrivals_follow_the_day(events):
    hours = Counter(e.at.astimezone(BEIJING).hour for e in events if e.record_type != "HandlingAction")
    assert sum(hours[h] for h in (9, 10, 11)) > 4 * sum(hours[h] for h in (2, 3, 4))


def test_the_pipeline_refuses_no_action_of_the_day(events, day):
    actions = [e for e in events if e.record_type == "HandlingAction"]
    assert len(actions) > 2000
    assert [d["error_message"] for d in day.dead_letters if d["stage"] == "transition"] == []
    late = [e for events in day.cases.values() for e in events if e["kind"] == "late_action"]
    assert len(late) > 20  # units acting after a breach took the case from them: recorded, not refused


def test_every_action_names_a_case_opened_earlier_by_a_report_and_a_known_unit(ref, events, day):
    for action in (e for e in events if e.record_type == "HandlingAction"):
        assert action.record["unit_id"] in ref.units or (action.record["kind"], action.record["unit_id"]) == ("rate", RETURN_VISIT)
        assert action.record["case_id"] in day.cases
        opened = day.cases[action.record["case_id"]][0]
        assert opened["kind"] == "opened" and opened["at"] < action.at


def test_one_incident_reported_by_several_channels_makes_one_case(events, day):
    reports = sum(e.record_type != "HandlingAction" for e in events)
    channels = [{e["source"] for e in case if e["kind"] in ("opened", "report_merged")} for case in day.cases.values()]
    assert len(channels) < reports * 0.8
    assert sum(len(c) >= 2 for c in channels) > 50
    assert {"camera", "hotline", "app"} in channels


def test_boundary_grids_return_cases_twice_then_the_common_parent_takes_them(ref, events, day):
    actions = actions_by_case(events)
    bounced = [b for b in day.breaches if (b["kind"], b["breach_type"]) == ("breach", "transfer_limit")]
    assert len(bounced) >= 5
    assigned = 0
    for breach in bounced:
        first, second = actions[breach["case_id"]][:2]
        assert first["kind"] == second["kind"] == "transfer" and first["reason"] and second["reason"]
        returner, claimed = ref.grids[first["unit_id"]], ref.grids[first["note"][4:17]]  # "位置属于G-S02-C01-003，..."
        assert claimed.street_id != returner.street_id and len(set(claimed.ring) & set(returner.ring)) >= 2
        parent = common_parent(ref, first["unit_id"], second["unit_id"], breach["category"]).unit_id
        assert breach["escalation_target_unit_id"] == parent
        case = day.cases[breach["case_id"]]
        accepted = next(e for e in case if e["kind"] == "accepted")
        assigned += accepted["actor_unit_id"] == parent
    assert assigned >= 0.9 * len(bounced)


def test_a_missed_resolve_deadline_hands_the_case_up_where_it_is_settled_and_often_rated_unsatisfied(day):
    settled_and_unsatisfied = 0
    missed = [b for b in day.breaches if (b["kind"], b["breach_type"]) == ("breach", "resolve_overdue")]
    assert len(missed) > 20
    for breach in missed:
        after = [e for e in day.cases[breach["case_id"]] if e["at"] >= breach["fired_at"]]
        kinds = [e["kind"] for e in after]
        late_resolve = any(e["kind"] == "late_action" and e["actor_unit_id"] == breach["responsible_unit_id"] for e in after)
        if "resolved" in kinds and "rated" in kinds[kinds.index("resolved"):]:
            resolved = after[kinds.index("resolved")]
            rated = after[kinds.index("rated", kinds.index("resolved"))]
            assert resolved["actor_unit_id"] != breach["responsible_unit_id"] and late_resolve
            settled_and_unsatisfied += rated["rating"] <= 2
    assert settled_and_unsatisfied >= 2


def test_some_handlers_are_late_some_residents_unsatisfied_some_cases_extended(events, day):
    accepts = [e for e in events if e.record_type == "HandlingAction" and e.record["kind"] == "accept"]
    late = [e for e in accepts if e.at - day.cases[e.record["case_id"]][0]["at"] > timedelta(hours=4)]
    ratings = Counter(e.record["rating"] for e in events if e.record_type == "HandlingAction" and e.record["kind"] == "rate")
    extensions = [e for e in events if e.record_type == "HandlingAction" and e.record["kind"] == "request_extension"]
    assert len(late) > len(accepts) * 0.01
    assert ratings[1] + ratings[2] > 5 and ratings[5] > ratings[1] + ratings[2]
    assert len(extensions) > 3 and all(e.record["extension_hours"] == 72 for e in extensions)
    referred = {b["case_id"] for b in day.breaches if b["breach_type"] == "final_overdue"}
    assert any(all(e["kind"] != "accepted" for e in day.cases[case_id]) for case_id in referred)  # nobody ever acted


def test_raw_records_carry_the_quirks_the_pipeline_must_absorb(ref, events):
    addresses = [e.record["address_text"] for e in events if e.record_type == "HotlineTicket"]
    assert any("號" in a for a in addresses) and any(any("０" <= ch <= "９" for ch in a) for a in addresses)
    assert any(a.startswith("清河区") for a in addresses) and any(" " in a for a in addresses)
    assert any(ref.gazetteer.lookup(a) is None for a in addresses)
    detections = [e.record for e in events if e.record_type == "CameraDetection"]
    assert any(d["camera_id"] not in ref.cameras for d in detections)
    assert any(d["confidence"] < ref.categories[d["category"]].camera_min_confidence for d in detections)
    assert any(d["lat"] is not None for d in detections) and any(d["lat"] is None for d in detections)
    apps = [e.record for e in events if e.record_type == "ResidentReport"]
    assert any((a["lat"], a["lon"]) == (0.0, 0.0) for a in apps) and any(ref.locate(a["lat"], a["lon"]) is None for a in apps)
    phones = [e.record["caller_phone"] for e in events if e.record_type == "HotlineTicket"]
    assert None in phones and any(p and p.startswith("+86") for p in phones)


@pytest.mark.parametrize("changes, field", [
    ({"start": datetime(2026, 6, 8)}, "start"), ({"late_accept_share": 1.5}, "late_accept_share"), ({"days": 0}, "days"),  # noqa: DTZ001 (a naive datetime is the input under test)
])
def test_a_bad_configuration_is_refused_naming_the_knob(changes, field):
    with pytest.raises(ConfigError) as caught:
        SimConfig(**changes)
    assert caught.value.context["field"] == field


def test_a_period_no_sla_policy_judges_is_refused(ref):
    with pytest.raises(ConfigError) as caught:
        simulate(ref, SimConfig(start=datetime(2024, 6, 2, 16, 0, tzinfo=UTC)))
    assert caught.value.context["field"] == "effective_from"
