"""`whistle bench` at a tiny size: every phase runs against the real stack and reports figures that hang together.

Nothing here judges speed: the assertions are the ones that hold on any machine (every event counted
once, latencies ordered and positive, no breach before its deadline, the recovered worker knows its cases,
the output check's counts add up to what the pure run and the topics hold, a rate whose outputs differ is
never a target met), and the worker's outputs are the pure pipeline's on the same input (a phase that differs
is also one of the run's errors, so `whistle bench` exits 1). That the check catches a difference is
`test_the_output_check_catches_a_difference`.
"""
from __future__ import annotations

import io
import json

from confluent_kafka.admin import AdminClient
from rich.console import Console

from schemas.serde import Serde
from sinks.clickhouse import ServerEngine
from streams.domain.reference import load_reference
from whistle.devtools.bench.events import encode_event, generate_events
from whistle.devtools.bench.inprocess import pipeline_rate
from whistle.devtools.bench.options import BenchOptions
from whistle.devtools.bench.outputs import KINDS, OutputReader, compare_outputs
from whistle.devtools.bench.phases import run_bench
from whistle.devtools.feed import Signers
from whistle.ground.names import Topics

EVENTS = 600


def test_a_tiny_bench_reports_consistent_figures_and_cleans_up(isolated, tmp_path):
    options = BenchOptions(events=EVENTS, latency_rate=100, latency_seconds=3, breach_cases=8, breach_spread_s=3,
                           open_cases=1000, probe_interval_s=3.0, history_days=200, history_incidents_per_day=4, json_path=tmp_path / "bench.json", timeout_s=180)
    output = io.StringIO()
    report = run_bench(isolated, options, Console(file=output, width=200))
    assert report["errors"] == {}, report["errors"]  # every phase ran to its end

    pipeline = report["pipeline"]
    assert pipeline["events"] == EVENTS and pipeline["events_per_s"] > 0
    e2e = report["e2e"]
    assert e2e["rows"]["raw_events"] == EVENTS and e2e["rows"]["case_events"] > 0
    assert 0 < e2e["publish_s"] <= e2e["visible_s"] and e2e["stream_s"] <= e2e["visible_s"]
    backlog = report["backlog"]
    assert backlog["passthrough"]["events"] == backlog["same_topology"]["events"] == EVENTS
    assert backlog["ratio"] > 0 and backlog["same_topology"]["ratio"] > 0
    # the zero-compute copier does at least the plain copy's Kafka work per event
    assert backlog["topology"]["worker_reads_per_event"] >= 2 and backlog["topology"]["per_event"]["whistle.cases.inbox"] == 1.0
    assert set(e2e["cpu_us_per_event"]) >= {"bench-e2e-1", "sink-e2e", "kafka broker", "clickhouse server"}

    # the output check: every pure output is identical, differing or missing; every record read back is one of
    # identical, differing, extra, or a further copy; the verdict follows from the counts
    for phase in (e2e, backlog):
        check = phase["outputs"]
        reference = check["reference"]  # the pure run on the phase's raw topics in append order
        assert (check["case_events"]["expected"], check["dead_letters"]["expected"]) == (reference["case_events"], reference["dead_letters"])
        assert reference["dead_letters_in_the_simulators_order"] == pipeline["dead_letters"]
        for kind in KINDS:
            c = check[kind]
            wrong = c["differing"] + c["missing"] + c["extra"]
            assert c["identical"] + c["differing"] + c["missing"] == c["expected"]
            assert (len(c["examples"]) == min(5, wrong)) if kind != "dead_letters" else (bool(c["examples"]) == bool(wrong))
        assert phase["outputs_match"] == all(check[kind][n] == 0 for kind in KINDS for n in ("differing", "missing", "extra"))
        # the worker decides exactly what the pure functions decide on its input
        assert phase["outputs_match"], [check[kind]["examples"] for kind in KINDS]
    for kind in KINDS:
        c = e2e["outputs"][kind]
        assert c["identical"] + c["differing"] + c["extra"] + c["duplicates"] == e2e["rows"][kind]
    (rate_target,) = [t for t in report["targets"] if "end to end" in t["target"]]
    assert rate_target["met"] is False  # 600 events: not measured at 500,000, and only identical outputs could count
    if not e2e["outputs_match"]:
        assert "FAILED" in rate_target["measured"] and "FAILED" in output.getvalue()

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
    (cases_target,) = [t for t in report["targets"] if "open cases" in t["target"]]
    assert cases_target["met"] is False and "not measured at 1,000,000" in cases_target["measured"]

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
    for title in ("Throughput", "Outputs against the pure pipeline", "Kafka records per input event", "CPU µs per input event", "Targets"):
        assert title in output.getvalue()

    prefix = f"{isolated.topic_prefix}bench{report['run_id']}"
    topics = AdminClient(isolated.kafka.librdkafka()).list_topics(timeout=30).topics
    assert not [name for name in topics if name.startswith(prefix)]
    engine = ServerEngine.from_settings(isolated.clickhouse, database="default")
    try:
        assert engine.execute(f"SELECT count() FROM system.databases WHERE name LIKE 'bench_{report['run_id']}_%'") == [(0,)]
    finally:
        engine.close()


def test_the_output_check_catches_a_difference(settings):
    """The comparison the bench's e2e and backlog phases rely on: the pure run against itself matches; with one
    message left out, one case event altered, or one dead letter added, it does not, and says which."""
    reference, serde = load_reference(), Serde.from_settings(settings)
    signers = Signers(settings)
    messages = [encode_event(serde, signers, event) for event in generate_events(reference, BenchOptions(events=400))]
    reader = OutputReader(serde, Topics(), messages)

    def outputs(chosen):
        return reader.read((out.topic, out.value, out.headers) for out in pipeline_rate(settings, reference, chosen)[1])

    pure = outputs(messages)
    assert compare_outputs(serde, pure, outputs(messages), reader.describe)["outputs_match"]

    report = next(n for n, m in enumerate(messages) if m.source != "app")
    fewer = compare_outputs(serde, pure, outputs(messages[:report] + messages[report + 1:]), reader.describe)
    assert not fewer["outputs_match"] and fewer["case_events"]["missing"] > 0

    altered = outputs(messages)
    event_id = sorted(altered.case_events)[0]
    altered.case_events[event_id] = [altered.case_events[sorted(altered.case_events)[1]][0]]
    check = compare_outputs(serde, pure, altered, reader.describe)
    assert not check["outputs_match"] and check["case_events"]["differing"] == 1 and event_id in check["case_events"]["examples"][0]

    letters = outputs(messages)
    letters.dead_letters["cases #3"] = [("transition", "TransitionError", "case_id", "unknown case", "")]
    check = compare_outputs(serde, pure, letters, reader.describe)
    assert not check["outputs_match"] and check["dead_letters"]["extra"] == 1 and messages[3].cause_id in check["dead_letters"]["examples"][0]
