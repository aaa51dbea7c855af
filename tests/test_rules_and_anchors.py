"""Rules by content and the anchored chain on real Kafka and ClickHouse: a worker refuses a rule whose version name the log
knows with other content; `audit verify` catches a case rewritten consistently and a deleted last event, which every
per-case hash chain lets pass (issue 16, items 3 and 4)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from confluent_kafka import Producer
from test_end_to_end import TRANSIENT, send_day, wait_for_sink

from infra.processes import wait_until
from infra.provision import provision_all
from schemas.serde import Serde
from sinks.anchor import latest_anchors, read_anchors
from sinks.audit import stored_case_event
from sinks.clickhouse import ServerEngine
from sinks.sink import CASE_EVENT_COLUMNS
from streams.domain.case import event_hash
from streams.domain.reference import load_reference
from streams.domain.rules import Rules
from streams.domain.sla import load_policies
from streams.rules import check_rules, read_registry
from whistle.devtools.harness import Pipeline, end_offsets, read_all, spawn_worker, wait_for_group
from whistle.devtools.simulate import SimConfig, simulate
from whistle.ground.errors import ConfigError
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings
from whistle.ground.times import to_epoch_ms, utc_now

START = datetime(2026, 11, 9, 0, 0, tzinfo=UTC)


def _cli(settings, *args: str) -> tuple[int, dict]:
    env = {**os.environ, **settings.to_env()}
    done = subprocess.run([sys.executable, "-m", "whistle", "audit", *args], env=env, capture_output=True, text=True, timeout=300)
    first = done.stdout.splitlines()[0] if done.stdout.strip() else "{}"
    return done.returncode, orjson.loads(first)


def test_a_worker_registers_its_rules_then_one_whose_policy_differs_from_the_logs_refuses_to_start(isolated, tmp_path):
    serde = Serde.from_settings(isolated)
    worker = spawn_worker(isolated, "worker-1", tmp_path / "logs")
    try:
        wait_for_group(isolated, Groups.with_prefix(isolated.topic_prefix).cases, 1, 90)
    finally:
        worker.stop()
    policy = load_policies()["policy-v1"]
    registry = read_registry(isolated, serde)
    assert registry["policy:policy-v1"].sha256 == policy.sha256 and "calendar_year:cn-mainland/2026" in registry

    other = dataclasses.replace(isolated, topic_prefix=isolated.topic_prefix + "edited.")
    provision_all(other)
    producer = Producer(other.kafka.librdkafka())
    producer.produce(Topics.with_prefix(other.topic_prefix).rules, serde.encode("RuleFile", {
        "rule_id": "policy:policy-v1", "kind": "policy", "name": "policy-v1", "file": "policy-v1.yaml", "sha256": "0" * 64,
        "content": b"version: policy-v1\n# as an earlier deployment had it\n", "in_force_from": None, "registered_at": utc_now(),
        "registered_by": "worker-1"}), b"policy:policy-v1", partition=0)
    assert producer.flush(10) == 0
    refused = spawn_worker(other, "worker-1", tmp_path / "logs-edited")
    try:
        wait_until(lambda: not refused.alive(), 60, "the worker to refuse to start", 0.5)
    finally:
        refused.stop()
    log = refused.log.read_text(encoding="utf-8", errors="replace").replace("\n", "")  # the console wraps long lines
    assert refused.popen.returncode == 2
    assert "policy-v1.yaml" in log and "0" * 64 in log and policy.sha256 in log and "new version name" in log
    files = Rules.load(Settings().reference_dir).files()
    with pytest.raises(ConfigError, match=r"policy-v1.yaml: policy 'policy-v1' is in the log with content sha256 0{64}"):
        check_rules(other, serde, files, to_epoch_ms(utc_now()))  # nor would replay re-derive with it (sinks.replay checks the same)
    check_rules(isolated, serde, files, to_epoch_ms(utc_now()))  # control: the log the worker registered its own files in


def _anchored_day(settings, logs) -> None:
    day = list(simulate(load_reference(), SimConfig(seed=5, start=START, days=1.0, incidents_per_day=40)))
    pipeline = Pipeline(settings, logs, anchor=True).wait_ready()
    topics = Topics.with_prefix(settings.topic_prefix)
    serde = Serde.from_settings(settings)

    def anchored() -> bool:
        ends = end_offsets(settings, topics.case_events)
        latest = {a.partition: a.last_offset for a in latest_anchors(read_anchors(settings, serde))}
        return all(latest.get(p, -1) == end - 1 for p, end in ends.items() if end)

    try:
        send_day(settings, day, START + timedelta(days=3))
        wait_until(lambda: len(read_all(settings, [topics.breaches])) > 0, 60, "the day's breaches", 1.0, TRANSIENT)
        time.sleep(2)  # the last ticks' events
        wait_until(anchored, 60, "anchors through the last case event of every partition", 1.0, TRANSIENT)
        wait_for_sink(settings, pipeline)
    finally:
        pipeline.stop()


def test_verify_holds_the_store_to_the_anchors_a_rewritten_case_and_a_deleted_last_event_are_found(isolated, tmp_path):
    settings = dataclasses.replace(isolated, anchor_interval_s=1.0)
    _anchored_day(settings, tmp_path / "logs")
    code, clean = _cli(settings, "verify", "--format", "json")
    assert code == 0 and clean["status"] == "clean", clean
    assert not [f for f in clean["findings"] if f["kind"] == "anchor"]  # every partition anchored and recomputed
    exported = tmp_path / "anchors.json"
    code, export = _cli(settings, "anchors", "--format", "json")
    assert code == 0 and len(export["anchors"]) == 6 and len(export["root"]) == 64
    exported.write_text(orjson.dumps(export).decode(), encoding="utf-8")
    assert _cli(settings, "verify", "--format", "json", "--anchors", str(exported))[0] == 0  # negative control for what follows

    ch, db = settings.clickhouse, settings.clickhouse.database
    admin = ServerEngine.from_settings(ch)
    try:
        # A whole case re-sealed: its first event's note changed and every hash of its chain recomputed.
        rows = admin.execute(f"SELECT {', '.join(CASE_EVENT_COLUMNS)} FROM {db}.case_events WHERE case_id = "
                             f"(SELECT case_id FROM {db}.case_events GROUP BY case_id HAVING count() >= 3 ORDER BY case_id LIMIT 1) ORDER BY seq")
        events = [stored_case_event(row)[0] for row in rows]
        rewritten, prev = [], events[0].prev_hash
        for i, event in enumerate(events):
            changed = dataclasses.replace(event, prev_hash=prev, note="rewritten by hand" if i == 0 else event.note, hash="")
            changed = dataclasses.replace(changed, hash=event_hash(changed))
            rewritten.append(changed)
            prev = changed.hash
        note, prev_at, hash_at = (CASE_EVENT_COLUMNS.index(c) for c in ("note", "prev_hash", "hash"))
        new_rows = []
        for row, event in zip(rows, rewritten):
            values = list(row)
            values[note], values[prev_at], values[hash_at] = event.note, event.prev_hash, event.hash
            new_rows.append(tuple(values))
        admin.insert(f"{db}.case_events", CASE_EVENT_COLUMNS, new_rows)
        admin.execute(f"OPTIMIZE TABLE {db}.case_events FINAL")
        rewritten_partition = rows[0][CASE_EVENT_COLUMNS.index("kafka_partition")]
    finally:
        admin.close()
    code, broken = _cli(settings, "verify", "--format", "json")
    assert code == 1 and broken["status"] == "broken"
    kinds = {(f["kind"], f["partition"]) for f in broken["findings"] if f["status"] == "broken"}
    assert kinds == {("anchor", rewritten_partition)}  # the per-case chain verifies: only the anchor sees the rewrite
    assert _cli(settings, "verify", "--format", "json", "--anchors", str(exported))[0] == 1

    admin = ServerEngine.from_settings(ch)
    try:
        # The last event of another partition deleted, with its ledger row.
        other = next(p for p in range(6) if p != rewritten_partition)
        (offset, key), = admin.execute(f"SELECT kafka_offset, record_key FROM {db}.case_event_offsets WHERE kafka_partition = {other} "
                                       f"ORDER BY kafka_offset DESC LIMIT 1")
        admin.execute(f"ALTER TABLE {db}.case_events DELETE WHERE event_id = %(key)s", {"key": key})
        admin.execute(f"ALTER TABLE {db}.offset_ledger DELETE WHERE table_name = 'case_events' AND kafka_partition = {other} "
                      f"AND kafka_offset = {offset}")
        wait_until(lambda: admin.execute(f"SELECT count() FROM {db}.offset_ledger WHERE kafka_partition = {other} AND kafka_offset = {offset} "
                                         f"AND table_name = 'case_events'") == [(0,)]
                   and admin.execute(f"SELECT count() FROM {db}.case_events WHERE event_id = %(key)s", {"key": key}) == [(0,)],
                   60, "the deletions", 0.5)
    finally:
        admin.close()
    code, deleted = _cli(settings, "verify", "--format", "json")
    found = [f for f in deleted["findings"] if f["kind"] == "anchor" and f["partition"] == other]
    assert code == 1 and found and f"offset {offset} is anchored" in found[0]["detail"]
