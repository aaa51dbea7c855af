"""End to end: scripted inputs with known outcomes, and a simulated day replayed from the log, through real
worker and sink processes, real Kafka and real ClickHouse."""
from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from confluent_kafka import KafkaException

from infra.processes import wait_until
from infra.provision import provision_all
from schemas.serde import Serde
from sinks import audit
from sinks.clickhouse import ServerEngine
from streams.domain.case_id import case_id_for
from streams.domain.credentials import RETURN_VISIT
from streams.domain.enrich import Enricher
from streams.domain.model import Report, Source, Urgency
from streams.domain.reference import load_reference
from whistle.devtools.feed import SdkWay, Signers, feed
from whistle.devtools.harness import Pipeline, read_all, sink_caught_up
from whistle.devtools.simulate import CHANNEL_INTEGRATORS, HANDLING_SYSTEM, RETURN_VISITS, SimConfig, simulate
from whistle.edges.clock import write_ticks
from whistle.edges.sdk import Publisher
from whistle.ground.errors import StackError
from whistle.ground.names import Topics

T0 = datetime(2026, 11, 2, 1, 30, tzinfo=UTC)  # Monday 09:30 in the city
TRANSIENT = (KafkaException, StackError)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def app_report(report_id: str, at: datetime, lat: float, lon: float, category: str) -> dict:
    return {"event": ("org.whistle.v1.ResidentReport", {
        "report_id": report_id, "reporter_id": f"resident-{report_id}", "reporter_role": "resident", "reported_at": at,
        "lat": lat, "lon": lon, "category": category, "description": "", "photo_refs": []})}


def action(action_id: str, case_id: str, kind: str, unit_id: str, at: datetime, **fields) -> dict:
    record = {"action_id": action_id, "case_id": case_id, "kind": kind, "unit_id": unit_id, "at": at,
              "reason": None, "note": None, "rating": None, "extension_hours": None, **fields}
    return {"event": ("org.whistle.v1.HandlingAction", record)}


def holder_and_id(report_id: str, at: datetime, lat: float, lon: float, category: str, source: Source = Source.APP):
    """What an integrator's app knows: the case id the first report opens and the unit it is dispatched to."""
    reference = load_reference()
    enriched = Enricher(reference).enrich(Report(report_id, source, at, category, reference.categories[category].default_urgency
                                                 if category in reference.categories else Urgency.NORMAL, "", lat, lon))
    return case_id_for(enriched), enriched.chain[0].unit_id, enriched.chain[1]


def send_day(settings, day, judged_at: datetime) -> None:
    """A simulated period through the SDK, each record signed by its sender, then the case stream's clock to `judged_at`."""
    with Publisher(settings) as publisher:
        sdk = SdkWay(publisher, Signers(settings))
        feed(day, {"camera": sdk, "hotline": sdk, "app": sdk, "actions": sdk}, None, speed=20_000, max_gap_s=0.05)
        write_ticks(publisher, publisher.serde, Topics.with_prefix(settings.topic_prefix), 6, judged_at)


def wait_for_sink(settings, pipeline) -> None:
    wait_until(lambda: pipeline.supervise() or sink_caught_up(settings), 120, "the sink to store every record", 1.0, TRANSIENT)


def test_scripted_cases_merge_breach_and_rank_as_computed_by_hand(isolated, tmp_path):
    reference = load_reference()
    camera = reference.cameras["CAM-046"]  # in grid G-S01-C02-003, street S01
    near_lat, near_lon = camera.lat + 0.0004, camera.lon  # ~45 m north of it
    lat_b, lon_b = reference.cameras["CAM-047"].lat, reference.cameras["CAM-047"].lon  # ~570 m east, grid G-S01-C02-006
    case_a, grid_team, _ = holder_and_id("camera:camera-platform:det-a1", T0, camera.lat, camera.lon, "garbage", Source.CAMERA)
    case_b, fire_holder, above_fire = holder_and_id("app:resident-app:b1", minutes(1), lat_b, lon_b, "fire_smoke")
    case_c, road_holder, above_road = holder_and_id("app:resident-app:c1", minutes(2), lat_b, lon_b, "road_damage")
    assert {case_a[:3], case_b[:3], case_c[:3]} == {"S01"}
    pipeline = Pipeline(isolated, tmp_path / "logs").wait_ready()
    try:
        topics = Topics.with_prefix(isolated.topic_prefix)
        signers = Signers(isolated)
        with Publisher(isolated) as publisher:
            def step(source: str, record: dict, case_events_after: int) -> None:
                """Publish as its sender would, then wait until it is applied: handlers act on cases they have been dispatched."""
                if source != "app":
                    sender = CHANNEL_INTEGRATORS[source]
                elif record["event"][0].endswith("ResidentReport"):
                    sender = CHANNEL_INTEGRATORS["app"]
                else:
                    sender = RETURN_VISITS if record["event"][1]["kind"] == "rate" else HANDLING_SYSTEM
                publisher.publish(source, record, signer=signers(sender))
                wait_until(lambda: len(read_all(isolated, [topics.case_events])) >= case_events_after, 60,
                           f"{case_events_after} case events", 0.5, TRANSIENT)

            step("camera", {"detection_id": "det-a1", "camera_id": "CAM-046", "detected_at": T0, "category": "garbage",
                            "confidence": 0.93, "lat": None, "lon": None, "snapshot_ref": "s3://cam/a1.jpg", "model_version": "v7"}, 2)
            step("app", app_report("b1", minutes(1), lat_b, lon_b, "fire_smoke"), 4)
            step("app", app_report("c1", minutes(2), lat_b, lon_b, "road_damage"), 6)
            step("app", app_report("a2", minutes(5), near_lat, near_lon, "garbage"), 7)  # the same pile: joins case A
            step("app", action("a-acc", case_a, "accept", grid_team, minutes(10)), 8)
            step("app", action("c-acc", case_c, "accept", road_holder, minutes(12)), 9)
            step("app", action("a-res", case_a, "resolve", grid_team, minutes(20), note="cleared"), 10)
            step("app", action("c-res", case_c, "resolve", road_holder, minutes(22), note="patched"), 11)
            step("app", action("a-rate", case_a, "rate", RETURN_VISIT, minutes(25), rating=5), 13)  # rated 5 at 09:55: closed
            step("app", action("c-rate", case_c, "rate", RETURN_VISIT, minutes(30), rating=2), 15)  # rated 2: escalated
            write_ticks(publisher, publisher.serde, topics, 6, minutes(35))  # 10:05: case B's accept deadline (09:31 + 30 min) has passed
        serde = Serde()
        wait_until(lambda: len(read_all(isolated, [topics.breaches])) >= 3, 60, "the three breaches", 1.0, TRANSIENT)
        wait_for_sink(isolated, pipeline)

        breaches = [serde.decode(r.value()).record for r in read_all(isolated, [topics.breaches])]
        assert sorted((b["case_id"], b["kind"], b["breach_type"], b["tier"], b["deadline"], b["fired_at"], b["escalation_target_unit_id"])
                      for b in breaches) == sorted([
            # B, an emergency dispatched to the fire department at 09:31 and never accepted: warned at 75 % of its
            # 30 minutes when the 09:55 rating moved the clock past 09:53:30; overdue at 10:01, fired by the 10:05 tick.
            (case_b, "warning", "accept_overdue", "department", minutes(31), minutes(25), None),
            # B's department is the top of the handling tiers: policy-v2's supervision office urges it, and it keeps the case.
            (case_b, "urging", "accept_overdue", above_fire.tier.value, minutes(31), minutes(35), above_fire.unit_id),
            # C rated 2 (unsatisfied) at 10:00: urged at once, back to its department to handle again.
            (case_c, "urging", "unsatisfied_rating", above_road.tier.value, minutes(30), minutes(30), above_road.unit_id)])
        engine = ServerEngine.from_settings(isolated.clickhouse)
        db = isolated.clickhouse.database
        try:
            kinds = defaultdict(list)
            for case_id, kind, source in engine.execute(f"SELECT case_id, kind, source FROM {db}.case_events FINAL ORDER BY case_id, seq"):
                kinds[case_id].append((kind, source))
            assert kinds[case_a][:6] == [("opened", "camera"), ("dispatched", None), ("report_merged", "app"), ("accepted", None),
                                         ("resolved", None), ("rated", None)]
            assert len(kinds) == 3
            assert [k for k, _ in kinds[case_b]] == ["opened", "dispatched", "urged"]
            assert [k for k, _ in kinds[case_c]] == ["opened", "dispatched", "accepted", "resolved", "rated", "urged"]
            assert above_fire.unit_id == above_road.unit_id == "SUP"
            stored = engine.execute(f"SELECT case_id, breach_type, tier FROM {db}.breaches FINAL WHERE kind = 'urging'")
            assert sorted(stored) == sorted([(case_b, "accept_overdue", above_fire.tier.value),
                                             (case_c, "unsatisfied_rating", above_road.tier.value)])
            ranked = {by: {r["unit_id"]: r for r in audit.ranking(engine, db, "2026-11", by, min_cases=1).as_dicts()}
                      for by in audit.RANKING_UNITS}
            # All three lie in street S01, but each is ranked for the unit that held it: A for its grid team (accepted
            # 09:30 -> 09:40, resolved 09:50, rated 5), B and C (departmental categories) for their departments.
            assert {by: list(units) for by, units in ranked.items()} == {
                "grid": [grid_team], "community": [], "street": [], "department": [road_holder, fire_holder]}  # in rank order: C's responded
            a = ranked["grid"][grid_team]
            assert (a["received"], a["responded"], a["resolved"], a["resolved_on_time"], a["rated"], a["satisfied"]) == (1, 1, 1, 1, 1, 1)
            assert a["avg_accept_s"] == 600 and a["avg_resolve_h"] == Decimal("0.33") and a["breaches_total"] == 0
            # B, never accepted: its accept_overdue urging is charged to the fire department that held it and holds it still.
            b = ranked["department"][fire_holder]
            assert (b["received"], b["responded"], b["resolved"], b["breaches_total"], b["urgings"]) == (1, 0, 0, 1, 1)
            # C, accepted after 600 s and resolved, then rated 2: unsatisfied (its urging is its holder's) and urged
            # after its resolution, so not resolved. Score (policy-v2's weights over the rates it has): 0.2 x 100 % = 20.00 for
            # C, 0 for B (no rating, no satisfaction term): C ranks first.
            c = ranked["department"][road_holder]
            assert (c["received"], c["responded"], c["resolved"], c["rated"], c["satisfied"], c["unsatisfied"]) == (1, 1, 0, 1, 0, 1)
            assert c["avg_accept_s"] == 600 and c["breaches_total"] == 1 and c["satisfaction_rate_pct"] == Decimal("0.00")
            assert (c["urgings"], c["score"], b["score"]) == (1, Decimal("20.00"), Decimal("0.00"))
            assert audit.verify(engine, db) == []
        finally:
            engine.close()
    finally:
        pipeline.stop()


def test_a_simulated_day_replayed_from_the_log_gives_identical_breaches_and_rankings(isolated, tmp_path):
    """Decisions are a pure function of the case stream (whistle.cases.inbox, kept forever): copying it
    record for record into a fresh deployment and replaying it yields byte-identical breaches and the same
    rankings. (Across source topics Kafka defines no order, so replay starts from the case stream.)"""
    day = list(simulate(load_reference(), SimConfig(seed=5, start=T0 - timedelta(hours=1, minutes=30), days=1.0, incidents_per_day=120)))
    first = Pipeline(isolated, tmp_path / "first").wait_ready()
    topics = Topics.with_prefix(isolated.topic_prefix)
    try:
        send_day(isolated, day, T0 + timedelta(days=10))
        wait_for_sink(isolated, first)
    finally:
        first.stop()

    tag = uuid.uuid4().hex[:8]
    replay = dataclasses.replace(isolated, topic_prefix=f"r{tag}.",
                                 clickhouse=dataclasses.replace(isolated.clickhouse, database=f"r_{tag}"))
    provision_all(replay)
    replay_topics = Topics.with_prefix(replay.topic_prefix)
    log = sorted(read_all(isolated, [topics.inbox]), key=lambda m: (m.partition(), m.offset()))
    with Publisher(replay) as publisher:
        copies = [publisher.produce_raw(replay_topics.inbox, m.key(), m.value(), partition=m.partition()) for m in log]
        for copy in copies:
            copy.result(timeout=60)
    second = Pipeline(replay, tmp_path / "second").wait_ready()
    try:
        wait_for_sink(replay, second)
        wait_until(lambda: len(read_all(replay, [replay_topics.case_events])) >= len(read_all(isolated, [topics.case_events])),
                   120, "the replayed case events", 1.0, TRANSIENT)
        wait_for_sink(replay, second)
    finally:
        second.stop()

    def breach_bytes(settings, name):
        return sorted(m.value() for m in read_all(settings, [name]))

    first_breaches = breach_bytes(isolated, topics.breaches)
    assert first_breaches and first_breaches == breach_bytes(replay, replay_topics.breaches)
    assert sorted(m.value() for m in read_all(isolated, [topics.case_events])) == \
        sorted(m.value() for m in read_all(replay, [replay_topics.case_events]))
    rankings = []
    for settings in (isolated, replay):
        engine = ServerEngine.from_settings(settings.clickhouse)
        try:
            rankings.append([audit.ranking(engine, settings.clickhouse.database, "2026-11", by, min_cases=1).rows
                             for by in audit.RANKING_UNITS])
            assert audit.verify(engine, settings.clickhouse.database) == []
        finally:
            engine.close()
    assert rankings[0] == rankings[1] and rankings[0][0]  # the grids' ranking (every tier's) identical, and not empty
