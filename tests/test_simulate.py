"""The simulated district: deterministic, schema-valid, and full of the situations the pipeline must handle."""
from __future__ import annotations

import io
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from schemas.catalog import default_catalog
from schemas.validation import RecordValidator
from streams.domain.enrich import Enricher, case_id_for, common_parent
from streams.domain.merge import MergeIndex
from streams.domain.normalize import normalize_app_report, normalize_camera, normalize_hotline
from streams.domain.reference import load_reference
from whistle.errors import ConfigError
from whistle.simulate import BEIJING, SimConfig, simulate, write_jsonl

START = datetime(2024, 6, 2, 16, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def ref():
    return load_reference()


@pytest.fixture(scope="module")
def events(ref):
    return list(simulate(ref, SimConfig(seed=42, start=START, incidents_per_day=1500)))


@pytest.fixture(scope="module")
def replay(ref, events):
    """Run the pipeline's own rules over the reports in order: case id -> (opened at, channels)."""
    enricher, index = Enricher(ref), MergeIndex(ref.gazetteer.normalize)
    cases: dict[str, dict] = {}
    for event in events:
        if event.record_type == "HandlingAction":
            if event.record["kind"] == "resolve":
                index.remove(event.record["case_id"])
            continue
        report = {"CameraDetection": lambda r: normalize_camera(r, ref),
                  "HotlineTicket": lambda r: normalize_hotline(r, ref, str),
                  "ResidentReport": lambda r: normalize_app_report(r, ref, str)}[event.record_type](event.record)
        enriched = enricher.enrich(report)
        joined = index.find_case_to_join(enriched)
        if joined is None:
            joined = case_id_for(enriched)
            index.add(index.open_case(joined, enriched))
            cases[joined] = {"opened_at": event.at, "channels": set(), "category": report.category}
        else:
            index.touch(joined, report.occurred_at)
        cases[joined]["channels"].add(event.source)
    return cases


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
    assert sum(e.at >= START + timedelta(days=1) for e in reports) < len(reports) * 0.02


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


def test_every_action_names_a_case_opened_earlier_by_a_report_and_a_known_unit(ref, events, replay):
    actions = [e for e in events if e.record_type == "HandlingAction"]
    assert len(actions) > 1000
    for action in actions:
        assert action.record["unit_id"] in ref.units or (action.record["kind"], action.record["unit_id"]) == ("rate", "RESIDENT")
        assert action.record["case_id"] in replay
        assert action.at > replay[action.record["case_id"]]["opened_at"]


def test_one_incident_reported_by_several_channels_makes_one_case(events, replay):
    reports = sum(e.record_type != "HandlingAction" for e in events)
    multi = [c for c in replay.values() if len(c["channels"]) >= 2]
    assert len(replay) < reports * 0.8
    assert len(multi) > 50
    assert any(c["channels"] == {"camera", "hotline", "app"} for c in multi)


def test_each_case_is_handled_in_a_sensible_order(events):
    """Returns, accept, extension, resolve, rating; an unsatisfied rating sends it up a rung to be settled again."""
    order = {"transfer": 0, "accept": 1, "request_extension": 2, "resolve": 3, "rate": 4}
    by_case = defaultdict(list)
    for e in events:
        if e.record_type == "HandlingAction":
            by_case[e.record["case_id"]].append(e.record)
    settled_again = 0
    for actions in by_case.values():
        kinds = [a["kind"] for a in actions]
        first_round = kinds[: kinds.index("rate") + 1] if "rate" in kinds else kinds
        assert [order[k] for k in first_round] == sorted(order[k] for k in first_round)
        assert first_round.count("accept") == 1 and first_round.count("resolve") == 1
        if len(first_round) < len(kinds):
            rating = next(a for a in actions if a["kind"] == "rate")
            accept_again = actions[len(first_round)]
            assert rating["rating"] <= 2 and kinds[len(first_round):] == ["accept", "resolve"]
            assert accept_again["unit_id"] != actions[kinds.index("resolve")]["unit_id"]
            settled_again += 1
    assert settled_again > 5


def test_boundary_grids_return_cases_twice_then_the_common_parent_takes_them(ref, events, replay):
    by_case = defaultdict(list)
    for e in events:
        if e.record_type == "HandlingAction":
            by_case[e.record["case_id"]].append(e.record)
    bounced = {case_id: actions for case_id, actions in by_case.items() if actions[0]["kind"] == "transfer"}
    assert len(bounced) >= 5
    for case_id, (first, second, accept, *rest) in bounced.items():
        assert second["kind"] == "transfer" and first["reason"] and second["reason"]
        returner = ref.grids[first["unit_id"]]
        claimed = ref.grids[first["note"][4:17]]  # "位置属于G-S02-C01-003，..."
        assert claimed.street_id != returner.street_id and len(set(claimed.ring) & set(returner.ring)) >= 2
        assert second["unit_id"] != first["unit_id"]
        category = replay[case_id]["category"]
        assert accept["kind"] == "accept" and accept["unit_id"] == common_parent(ref, first["unit_id"], second["unit_id"], category).unit_id
        first_round = rest[: next((i for i, a in enumerate(rest) if a["kind"] == "rate"), len(rest))]
        assert all(action["unit_id"] == accept["unit_id"] for action in first_round)


def test_some_handlers_are_late_some_residents_unsatisfied_some_cases_extended(events, replay):
    accepts = [e for e in events if e.record_type == "HandlingAction" and e.record["kind"] == "accept"]
    late = [e for e in accepts if e.at - replay[e.record["case_id"]]["opened_at"] > timedelta(hours=4)]
    ratings = Counter(e.record["rating"] for e in events if e.record_type == "HandlingAction" and e.record["kind"] == "rate")
    extensions = [e for e in events if e.record_type == "HandlingAction" and e.record["kind"] == "request_extension"]
    assert len(late) > len(accepts) * 0.01
    assert ratings[1] + ratings[2] > 5 and ratings[5] > ratings[1] + ratings[2]
    assert len(extensions) > 3 and all(e.record["extension_hours"] == 72 for e in extensions)
    unhandled = [c for c, info in replay.items() if not any(e.record.get("case_id") == c for e in accepts)]
    assert unhandled  # some units never act: the SLA engine must escalate these


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
    ({"start": datetime(2024, 6, 3)}, "start"), ({"late_accept_share": 1.5}, "late_accept_share"), ({"days": 0}, "days"),
])
def test_a_bad_configuration_is_refused_naming_the_knob(changes, field):
    with pytest.raises(ConfigError) as caught:
        SimConfig(**changes)
    assert caught.value.context["field"] == field
