"""The bench report: the design targets judged, and the figures printed as tables."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from whistle.devtools.bench.options import MILLION

TARGETS = {"e2e_events_per_s": 20_000, "latency_p99_ms": 2_000, "breach_p99_ms": 1_000, "recovery_rss_mb": 1_536, "recovery_s": 60}


def judge_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The design targets next to what this run measured. `met` is None where the run cannot tell
    (a phase not run is left out; the recovery targets are stated for a million cases)."""
    judged = []

    def judge(target: str, measured: Any, unit: str, met: bool | None) -> None:
        judged.append({"target": target, "measured": f"{measured} {unit}", "met": met})

    if "e2e" in report:
        rate = report["e2e"]["events_per_s"]
        judge(f"{TARGETS['e2e_events_per_s']:,} events/s sustained end to end", f"{rate:,}", "events/s", rate >= TARGETS["e2e_events_per_s"])
    if "latency" in report:
        p99 = report["latency"]["case_events_visible_ms"]["p99"]
        judge(f"p99 produced -> visible <= {TARGETS['latency_p99_ms']} ms at half rate", p99, "ms (case events)",
              p99 is not None and p99 <= TARGETS["latency_p99_ms"])
    if "breach" in report:
        p99 = report["breach"]["breach_after_deadline_ms"]["p99"]
        judge(f"breach published <= {TARGETS['breach_p99_ms']} ms after its deadline, p99", p99, "ms",
              p99 is not None and p99 <= TARGETS["breach_p99_ms"])
    if "recovery" in report:
        recovery = report["recovery"]
        full_size = recovery["open_cases"] >= MILLION
        rss = recovery["rss_after_mb"]
        judge(f"{MILLION:,} open cases in <= {TARGETS['recovery_rss_mb']} MB per worker", f"{rss:,} MB for {recovery['open_cases']:,} cases", "",
              rss <= TARGETS["recovery_rss_mb"] if full_size else None)
        judge(f"{MILLION:,} open cases recovered in <= {TARGETS['recovery_s']} s", f"{recovery['recovery_s']} s for {recovery['open_cases']:,} cases", "",
              recovery["recovery_s"] <= TARGETS["recovery_s"] if full_size else None)
    return judged


def print_report(report: dict[str, Any], console: Console) -> None:
    machine = report["machine"]
    console.print(f"\n[bold]Whistle bench {report['run_id']}[/bold] on {machine['cpu_model']}, {machine['cores']} cores, "
                  f"{machine['ram_gb']} GB RAM (load {machine['load_average_1m']} at start); Kafka {machine['kafka_version']}, "
                  f"ClickHouse {machine['clickhouse_version']}, Python {machine['python']}")
    messages = report["messages"]
    console.print(f"{messages['events']:,} simulated events ({', '.join(f'{n:,} {t}' for t, n in sorted(messages['by_type'].items()))}), "
                  f"{messages['mean_bytes']} bytes each on average")
    rates = Table(title="Throughput (events/s)")
    for column in ("measure", "events/s", "seconds", "notes"):
        rates.add_column(column, justify="right" if column in ("events/s", "seconds") else "left")
    if "pipeline" in report:
        p = report["pipeline"]
        rates.add_row("pure pipeline functions, one process, no Kafka", f"{p['events_per_s']:,}", "",
                      f"ingest {p['ingest_us_per_event']} µs/event, cases {p['cases_us_per_record']} µs/record")
    if "e2e" in report:
        e = report["e2e"]
        rates.add_row("SDK publish (full speed, acked)", f"{e['publish_events_per_s']:,}", f"{e['publish_s']}", "")
        rates.add_row("end to end: first produce -> last row visible", f"[bold]{e['events_per_s']:,}[/bold]", f"{e['visible_s']}",
                      f"{e['workers']} worker(s) + sink; {sum(e['rows'].values()):,} rows, {e['rows_per_s']:,} rows/s")
        rates.add_row("  stream stage within it (-> last case event)", f"{e['stream_events_per_s']:,}", f"{e['stream_s']}", "")
    if "backlog" in report:
        b = report["backlog"]
        rates.add_row("stream stage alone (backlog: raw -> case events)", f"{b['stream_events_per_s']:,}", f"{b['stream_s']}",
                      f"{b['workers']} worker(s); {b['stream_events_per_cpu_s'] or '-'} events per worker CPU-second")
        pt = b["passthrough"]
        rates.add_row("plain confluent-kafka passthrough (1 process)", f"{pt['events_per_s']:,}", f"{pt['seconds']}",
                      f"{pt['events_per_cpu_s'] or '-'} events per CPU-second")
        rates.add_row("ratio whistle stream stage / passthrough", f"{b['ratio']:.3f}", "",
                      f"per CPU-second: {_fmt(b['cpu_ratio'])}")
    console.print(rates)
    if "latency" in report or "breach" in report:
        latency = Table(title="Latency (ms)")
        for column in ("measure", "count", "p50", "p90", "p99", "max"):
            latency.add_column(column, justify="left" if column == "measure" else "right")
        if "latency" in report:
            lat = report["latency"]
            for label, key in (("raw row visible in ClickHouse", "raw_row_visible_ms"),
                               ("its case events appended in Kafka (stream stage)", "case_events_in_kafka_ms"),
                               ("its case events visible in ClickHouse", "case_events_visible_ms")):
                figures = lat[key]
                latency.add_row(f"{label} @ {lat['achieved_rate_per_s']:,}/s", *(_fmt(figures[k]) for k in ("count", "p50", "p90", "p99", "max")))
        if "breach" in report:
            figures = report["breach"]["breach_after_deadline_ms"]
            latency.add_row("breach published after its deadline (ticks 0.2 s)", *(_fmt(figures[k]) for k in ("count", "p50", "p90", "p99", "max")))
        console.print(latency)
        if "latency" in report:
            series = report["latency"]["case_events_visible_p50_ms_by_second"]
            console.print(f"[dim]visibility polled every {report['latency']['poll_s'] * 1000:.0f} ms (mean query "
                          f"{report['latency']['mean_poll_query_ms']} ms): latencies include up to one poll interval. "
                          f"Case events p50 by second of the run: {', '.join(f'{v:,.0f}' for v in series)}[/dim]")
    if "recovery" in report:
        r = report["recovery"]
        recovery = Table(title=f"A worker holding {r['open_cases']:,} open cases")
        recovery.add_column("measure")
        recovery.add_column("value", justify="right")
        for label, value in (("changelog records (MB)", f"{r['changelog_records']:,} ({r['changelog_mb']:,} MB)"),
                             ("writing them (bench)", f"{r['load_s']} s"),
                             ("recovery: start -> new record processed on every partition", f"[bold]{r['recovery_s']} s[/bold]"),
                             ("RSS idle worker", f"{r['rss_idle_mb']:,} MB"), ("RSS after recovery", f"[bold]{r['rss_after_mb']:,} MB[/bold]"),
                             ("peak RSS", f"{r['peak_rss_mb']:,} MB"), ("bytes per open case", f"{r['bytes_per_case']:,}")):
            recovery.add_row(label, value)
        console.print(recovery)
    if "rebalance" in report:
        r = report["rebalance"]
        rebalance = Table(title=f"Two workers sharing {r['open_cases']:,} open cases ({r['partitions']} partitions, "
                                f"{r['moved_partitions']} moved): longest wait of a probe, by partition")
        for column in ("when", "partitions moved", "partitions kept", "read back from the changelog"):
            rebalance.add_column(column, justify="left" if column == "when" else "right")
        join, leave = r["join"], r["leave"]
        rebalance.add_row("steady, one worker", "", f"{r['steady_wait_max_s']} s", "")
        rebalance.add_row("a second worker joins", f"[bold]{join['moved_max_s']} s[/bold]", f"[bold]{join['kept_max_s']} s[/bold]",
                          f"joiner {join['second_worker_read_back']}, first worker {sorted(join['first_worker_read_back']) or 'none'}")
        rebalance.add_row("it leaves (killed)", f"[bold]{leave['moved_max_s']} s[/bold]", f"[bold]{leave['kept_max_s']} s[/bold]",
                          f"first worker {leave['first_worker_read_back']}")
        console.print(rebalance)
        console.print(f"[dim]{r['probes_accepted_once']:,} probes (one per partition every {r['probe_interval_s']} s), each accepted exactly once; "
                      f"per partition: join {join['pause_s_by_partition']}, leave {leave['pause_s_by_partition']}[/dim]")
    if "history" in report:
        h = report["history"]
        history = Table(title=f"{h['days']:g} simulated days ({h['incidents_per_day']:g} incidents/day, {h['events']:,} events): "
                              f"closed cases archived after {h['archive_after']}, or kept")
        for column in ("measure", "archived", "kept"):
            history.add_column(column, justify="left" if column == "measure" else "right")
        a, k = h["archive"], h["keep"]
        for label, key in (("cases in the worker's memory", "cases_in_memory"), ("  of them open", "open_cases"),
                           ("retained bytes of the case state", "retained_bytes"), ("changelog live keys", "changelog_live_keys"),
                           ("changelog live bytes", "changelog_bytes"), ("case stage (s)", "case_stage_s"), ("recovery of every partition (s)", "recovery_s")):
            history.add_row(label, f"{a[key]:,}", f"{k[key]:,}")
        history.add_row("same case events and breaches", "[green]yes[/green]" if h["outputs_identical"] else "[red]NO: the figures do not count[/red]", "")
        history.add_row("bytes per case held (archived run)", f"{h['bytes_per_open_case']:,}", "")
        history.add_row("bytes per year of history, kept", "", f"{h['bytes_per_year_of_history']:,}")
        console.print(history)
    usage = Table(title="Processes (CPU seconds, % of one core, peak RSS MB) per phase")
    for column in ("phase", "process", "CPU s", "CPU %", "peak RSS MB"):
        usage.add_column(column, justify="left" if column in ("phase", "process") else "right")
    for phase in ("e2e", "backlog", "latency", "breach", "recovery"):
        if phase not in report:
            continue
        processes = dict(report[phase]["processes"])
        if phase == "backlog":
            processes.update({f"{name} (passthrough run)": v for name, v in report[phase]["passthrough"]["processes"].items()})
        for name, figures in processes.items():
            usage.add_row(phase, name, f"{figures['cpu_s']}", _fmt(figures["cpu_pct"]), f"{figures['peak_rss_mb']:,}")
    console.print(usage)
    for phase, error in report.get("errors", {}).items():
        console.print(f"[red]phase {phase} did not complete: {error}[/red]")
    targets = Table(title="Targets")
    for column in ("target", "measured", "met"):
        targets.add_column(column)
    for row in report["targets"]:
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[dim]not at this size (--million)[/dim]"}[row["met"]]
        targets.add_row(row["target"], row["measured"], met)
    console.print(targets)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, (int, float)) else str(value)
