"""`whistle bench` at a tiny size: every phase runs against the real stack and reports figures that hang together.

Nothing here judges speed: the assertions are the ones that hold on any machine (every event counted
once, latencies ordered and positive, no breach before its deadline, the recovered worker knows its cases).
"""
from __future__ import annotations

import io
import json

from confluent_kafka.admin import AdminClient
from rich.console import Console

from sinks.clickhouse import ServerEngine
from whistle.devtools.bench.options import BenchOptions
from whistle.devtools.bench.phases import run_bench

EVENTS = 600


def test_a_tiny_bench_reports_consistent_figures_and_cleans_up(isolated, tmp_path):
    options = BenchOptions(events=EVENTS, latency_rate=100, latency_seconds=3, breach_cases=8, breach_spread_s=3,
                           open_cases=1000, probe_interval_s=3.0, history_days=200, history_incidents_per_day=4, json_path=tmp_path / "bench.json", timeout_s=180)
    output = io.StringIO()
    report = run_bench(isolated, options, Console(file=output, width=200))
    assert report["errors"] == {}, report["errors"]  # every phase ran to its end

    assert report["pipeline"]["events"] == EVENTS and report["pipeline"]["events_per_s"] > 0
    e2e = report["e2e"]
    assert e2e["rows"]["raw_events"] == EVENTS and e2e["rows"]["case_events"] > 0
    assert 0 < e2e["publish_s"] <= e2e["visible_s"] and e2e["stream_s"] <= e2e["visible_s"]
    assert report["backlog"]["passthrough"]["events"] == EVENTS and report["backlog"]["ratio"] > 0

    latency = report["latency"]
    assert latency["raw_row_visible_ms"]["count"] == latency["events"] == latency["rows"]["raw_events"]
    for key in ("raw_row_visible_ms", "case_events_in_kafka_ms", "case_events_visible_ms"):
        figures = latency[key]
        assert 0 < figures["min"] <= figures["p50"] <= figures["p90"] <= figures["p99"] <= figures["max"]
    for p in ("p50", "p99"):  # a case event is visible in ClickHouse only after Kafka has it
        assert latency["case_events_in_kafka_ms"][p] <= latency["case_events_visible_ms"][p]

    breach = report["breach"]
    assert breach["breaches"] == breach["cases_opened"] > 0
    assert breach["breach_after_deadline_ms"]["min"] >= 0  # never published before the pipeline clock reached the deadline

    recovery = report["recovery"]
    assert recovery["open_cases"] == 1000 and recovery["changelog_records"] == 3000 and recovery["recovery_s"] > 0
    assert {t["met"] for t in report["targets"] if "open cases" in t["target"]} == {None}  # not judged below a million

    rebalance = report["rebalance"]  # the joiner read back only what it took; the first worker only what came back to it
    assert rebalance["moved_partitions"] and rebalance["join"]["second_worker_read_back"] == rebalance["moved_partitions"]
    assert rebalance["join"]["first_worker_read_back"] == {} and rebalance["leave"]["first_worker_read_back"] == rebalance["moved_partitions"]
    assert rebalance["probes_accepted_once"] > 0 and rebalance["join"]["kept_max_s"] > 0

    history = report["history"]  # 200 days: the cases closed in the first weeks are past archive_after (180 days) and gone
    assert history["outputs_identical"] and history["archive"]["open_cases"] == history["keep"]["open_cases"]
    assert history["archive"]["cases_in_memory"] < history["keep"]["cases_in_memory"]
    assert history["archive"]["changelog_live_keys"] < history["keep"]["changelog_live_keys"]
    assert history["archive"]["retained_bytes"] < history["keep"]["retained_bytes"] and history["bytes_per_year_of_history"] > 0

    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["e2e"]["rows"] == e2e["rows"] and written["run_id"] == report["run_id"]
    assert "Throughput" in output.getvalue() and "Targets" in output.getvalue()

    prefix = f"{isolated.topic_prefix}bench{report['run_id']}"
    topics = AdminClient(isolated.kafka.librdkafka()).list_topics(timeout=30).topics
    assert not [name for name in topics if name.startswith(prefix)]
    engine = ServerEngine.from_settings(isolated.clickhouse, database="default")
    try:
        assert engine.execute(f"SELECT count() FROM system.databases WHERE name LIKE 'bench_{report['run_id']}_%'") == [(0,)]
    finally:
        engine.close()
