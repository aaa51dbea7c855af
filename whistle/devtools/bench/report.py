"""The bench report: the design targets judged, and the figures printed as tables."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from whistle.devtools.bench.options import MILLION
from whistle.devtools.bench.outputs import KINDS

# The targets of issue 15, on this kind of machine (2 vCPU, Kafka and ClickHouse on the same box).
TARGETS = {"e2e_events_per_s": 8_000, "e2e_events": 500_000, "latency_p99_ms": 1_000, "breach_p99_ms": 500, "open_cases_rss_mb": 1_024}


def judge_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets next to what this run measured; `met` is False where the run did not measure it at the scale the
    target names (fewer events, a lower rate, fewer cases), and a rate whose outputs differ from the pure pipeline's
    meets nothing. A phase not run is left out."""
    judged = []

    def judge(target: str, measured: str, met: bool) -> None:
        judged.append({"target": target, "measured": measured, "met": met})

    wanted_rate, wanted_events = TARGETS["e2e_events_per_s"], TARGETS["e2e_events"]
    if "e2e" in report:
        e = report["e2e"]
        scale = "" if e["events"] >= wanted_events else f"; not measured at {wanted_events:,}"
        measured = (f"{e['events_per_s']:,} events/s over {e['events']:,} events (steady {_fmt(e['steady_events_per_s'])}), outputs identical"
                    if e["outputs_match"] else f"FAILED: outputs differ from the pure pipeline ({e['events']:,} events)")
        judge(f">= {wanted_rate:,} events/s end to end over >= {wanted_events:,} events, outputs identical to the pure pipeline",
              measured + scale, e["outputs_match"] and e["events"] >= wanted_events and e["events_per_s"] >= wanted_rate)
    if "backlog" in report:
        b = report["backlog"]
        same = b["same_topology"]
        judge("ratio to the same-topology passthrough printed",
              f"stream stage {b['stream_events_per_s']:,} / {same['events_per_s']:,} events/s = {same['ratio']:.3f} "
              f"(per CPU-second {_fmt(same['cpu_ratio'])})" if b["outputs_match"] else "FAILED: the backlog drain's outputs differ from the pure pipeline",
              b["outputs_match"])
    if "latency" in report:
        lat = report["latency"]
        p99, rate = lat["case_events_visible_ms"]["p99"], lat["achieved_rate_per_s"]
        half = wanted_rate // 2
        judge(f"p99 produced -> visible <= {TARGETS['latency_p99_ms']:,} ms at {half:,} events/s (half the rate target)",
              f"{_fmt(p99)} ms at {rate:,} events/s{'' if rate >= half else f'; not measured at {half:,}/s'}",
              p99 is not None and p99 <= TARGETS["latency_p99_ms"] and rate >= half)
    if "breach" in report:
        p99 = report["breach"]["breach_after_deadline_ms"]["p99"]
        judge(f"breach <= {TARGETS['breach_p99_ms']} ms after its deadline, p99", f"{_fmt(p99)} ms",
              p99 is not None and p99 <= TARGETS["breach_p99_ms"])
    if "recovery" in report:
        recovery = report["recovery"]
        rss, cases = recovery["rss_after_mb"], recovery["open_cases"]
        judge(f"{MILLION:,} open cases <= {TARGETS['open_cases_rss_mb']:,} MB per worker",
              f"{rss:,} MB for {cases:,} cases{'' if cases >= MILLION else f'; not measured at {MILLION:,} (--million)'}",
              cases >= MILLION and rss <= TARGETS["open_cases_rss_mb"])
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
        failed = "" if e["outputs_match"] else "; outputs differ from the pure pipeline's (below): not a rate"
        rates.add_row("SDK publish (full speed, acked)", f"{e['publish_events_per_s']:,}", f"{e['publish_s']}", "")
        rates.add_row("end to end: first produce -> last row visible", _rate(e["events_per_s"], e["outputs_match"]), f"{e['visible_s']}",
                      f"{e['workers']} worker(s) + sink; {sum(e['rows'].values()):,} rows, {e['rows_per_s']:,} rows/s{failed}")
        rates.add_row("  steady slope, 10 % -> 90 % of the rows visible", _rate(e["steady_events_per_s"], e["outputs_match"]), "",
                      f"{_fmt(e['steady_rows_per_s'])} rows/s (ClickHouse polled every {e['poll_s']} s)")
        rates.add_row("  stream stage within it (-> last case event)", _rate(e["stream_events_per_s"], e["outputs_match"]), f"{e['stream_s']}", "")
    if "backlog" in report:
        b = report["backlog"]
        failed = "" if b["outputs_match"] else "; outputs differ from the pure pipeline's (below): not a rate"
        rates.add_row("stream stage alone (backlog: raw -> case events)", _rate(b["stream_events_per_s"], b["outputs_match"]), f"{b['stream_s']}",
                      f"{b['workers']} worker(s); {_fmt(b['stream_events_per_cpu_s'])} events per worker CPU-second{failed}")
        for label, copier in (("plain confluent-kafka passthrough, 1 read + 1 write (1 process)", b["passthrough"]),
                              ("same-topology passthrough, zero compute (1 process)", b["same_topology"])):
            rates.add_row(label, f"{copier['events_per_s']:,}", f"{copier['seconds']}", f"{_fmt(copier['events_per_cpu_s'])} events per CPU-second")
        for label, copier in (("ratio stream stage / plain passthrough", b), ("ratio stream stage / same-topology passthrough", b["same_topology"])):
            rates.add_row(label, f"{copier['ratio']:.3f}" if b["outputs_match"] else "[red]FAILED[/red]", "",
                          f"per CPU-second: {_fmt(copier['cpu_ratio'])}")
        if "e2e" in report:
            e = report["e2e"]
            for label, copier in (("ratio end to end / plain passthrough", b["passthrough"]),
                                  ("ratio end to end / same-topology passthrough", b["same_topology"])):
                ratio = e["events_per_s"] / copier["events_per_s"]
                rates.add_row(label, f"{ratio:.3f}" if e["outputs_match"] else "[red]FAILED[/red]", "",
                              "the copiers have no sink and no ClickHouse")
    console.print(rates)
    _print_outputs(report, console)
    _print_topology(report, console)
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
            for copier in ("passthrough", "same_topology"):
                processes.update({f"{name} ({copier.replace('_', '-')} run)": v for name, v in report[phase][copier]["processes"].items()})
        for name, figures in processes.items():
            usage.add_row(phase, name, f"{figures['cpu_s']}", _fmt(figures["cpu_pct"]), f"{figures['peak_rss_mb']:,}")
    console.print(usage)
    _print_cpu_per_event(report, console)
    for phase, error in report.get("errors", {}).items():
        console.print(f"[red]phase {phase} did not complete: {error}[/red]")
    targets = Table(title="Targets")
    for column in ("target", "measured", "met"):
        targets.add_column(column)
    for row in report["targets"]:
        targets.add_row(row["target"], row["measured"], "[green]yes[/green]" if row["met"] else "[red]no[/red]")
    console.print(targets)


def _print_outputs(report: dict[str, Any], console: Console) -> None:
    checked = [phase for phase in ("e2e", "backlog") if phase in report]
    if not checked:
        return
    table = Table(title="Outputs against the pure pipeline on the same input (the phase's raw topics in append order)")
    for column in ("phase", "output", "pure run", "identical", "differing", "missing", "extra", "duplicates"):
        table.add_column(column, justify="left" if column in ("phase", "output") else "right")
    for phase in checked:
        check = report[phase]["outputs"]
        for kind in KINDS:
            c = check[kind]
            table.add_row(phase, kind.replace("_", " "), f"{c['expected']:,}", f"{c['identical']:,}",
                          *(f"[red]{c[k]:,}[/red]" if c[k] else "0" for k in ("differing", "missing", "extra")), f"{c['duplicates']:,}")
        verdict = "[green]identical[/green]" if check["outputs_match"] else "[red]FAILED: outputs differ[/red]"
        table.add_row(phase, verdict, "", "", "", "", "", "")
    console.print(table)
    for phase in checked:
        ref = report[phase]["outputs"]["reference"]
        why = ("; at full speed the broker appends partitions apart by more simulated time than early actions are held"
               if ref["dead_letters"] != ref["dead_letters_in_the_simulators_order"] else "")
        console.print(f"{phase}: the pure run on the append order dead-lettered {ref['dead_letters']:,} and emitted {ref['case_events']:,} case "
                      f"events; on the simulator's order {ref['dead_letters_in_the_simulators_order']:,} and "
                      f"{ref['case_events_in_the_simulators_order']:,} ({ref['events_in_order_of_the_simulator']:,} of the events kept their "
                      f"place{why})", highlight=False)
    for phase in checked:
        for kind in KINDS:
            for example in report[phase]["outputs"][kind]["examples"]:
                console.print(f"[dim]{phase} {kind.replace('_', ' ')}: {example}[/dim]", highlight=False)


def _print_topology(report: dict[str, Any], console: Console) -> None:
    measured = [phase for phase in ("e2e", "backlog") if phase in report]
    if not measured:
        return
    table = Table(title="Kafka records per input event, counted from the topics each phase wrote")
    table.add_column("topic")
    for phase in measured:
        table.add_column(phase, justify="right")
    table.add_column("mean value bytes", justify="right")
    topologies = [report[phase]["topology"] for phase in measured]
    for name in sorted({name for t in topologies for name in t["per_event"]}):
        sizes = [t["mean_bytes"][name] for t in topologies if name in t["mean_bytes"]]
        table.add_row(f"write {name}", *(_fmt(t["per_event"].get(name)) for t in topologies), _fmt(sizes[-1] if sizes else None))
    table.add_row("read by the worker(s)", *(_fmt(t["worker_reads_per_event"]) for t in topologies), "")
    table.add_row("read by the sink (e2e)", *(_fmt(t["sink_reads_per_event"]) if phase == "e2e" else "-" for phase, t in zip(measured, topologies)), "")
    console.print(table)


def _print_cpu_per_event(report: dict[str, Any], console: Console) -> None:
    runs = []
    if "e2e" in report:
        runs.append(("e2e", report["e2e"]["cpu_us_per_event"]))
    if "backlog" in report:
        b = report["backlog"]
        runs += [("backlog: whistle drain", b["cpu_us_per_event"]), ("plain passthrough", b["passthrough"]["cpu_us_per_event"]),
                 ("same-topology passthrough", b["same_topology"]["cpu_us_per_event"])]
    if not runs:
        return
    table = Table(title="CPU µs per input event, by process")
    table.add_column("process")
    for label, _ in runs:
        table.add_column(label, justify="right")
    by_role = [{_role(name): us for name, us in figures.items()} for _, figures in runs]
    for role in dict.fromkeys(role for figures in by_role for role in figures):
        table.add_row(role, *(_fmt(figures.get(role)) for figures in by_role))
    table.add_row("[bold]all[/bold]", *(f"[bold]{sum(figures.values()):,.1f}[/bold]" for _, figures in runs))
    console.print(table)


def _role(process: str) -> str:
    """A watched process by what it does: `bench-e2e-1` is worker 1, `sink-e2e` the sink, a copier is the copier."""
    if process.startswith("bench ("):
        return "publisher and pollers (the bench)"
    if process.startswith("bench-"):
        return f"worker {process.rsplit('-', 1)[1]}"
    if process.startswith("sink-"):
        return "sink"
    return "copier" if process in ("passthrough", "same-topology") else process


def _rate(value: int | None, outputs_match: bool) -> str:
    """A rate as printed: FAILED when the run's outputs differ from the pure pipeline's (it measured other work; the JSON keeps the figure)."""
    return f"[bold]{_fmt(value)}[/bold]" if outputs_match else "[red]FAILED[/red]"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, (int, float)) else str(value)
