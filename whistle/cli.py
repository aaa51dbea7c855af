"""The `whistle` command. Subcommands parse arguments, build Settings once, and call library code."""
from __future__ import annotations

import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from whistle.ground.errors import ConfigError, WhistleError
from whistle.ground.names import Topics
from whistle.ground.settings import Settings
from whistle.ground.times import to_epoch_ms, utc_now

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="Whistle: the data backbone for city incident handling.")
stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka + ClickHouse stack (development, tests, demo).")
app.add_typer(stack_app, name="stack")
console = Console(stderr=True)


def _settings() -> Settings:
    return Settings.from_env()


def _progress(message: str) -> None:
    console.print(f"[dim]·[/dim] {message}")


BrokersOption = typer.Option(1, "--brokers", help="1 (default) or 3 (RF 3, min ISR 2, for fault drills)")
ReplicasOption = typer.Option(1, "--clickhouse-replicas",
                              help="1 (default): one ClickHouse server; 2 or 3: replicas of one shard with Apache ZooKeeper, tables replicated")


@stack_app.command("up")
def stack_up(brokers: int = BrokersOption, clickhouse_replicas: int = ReplicasOption,
             provision: bool = typer.Option(True, help="create topics and apply migrations")) -> None:
    """Start Kafka and ClickHouse (a no-op when already running), then provision topics and schema."""
    from infra.provision import provision_all
    from infra.stack import LocalStack

    settings = _settings()
    stack = LocalStack(settings, brokers=brokers, clickhouse_replicas=clickhouse_replicas)
    stack.up(progress=_progress)
    if provision:
        for line in provision_all(settings, stack):
            _progress(line)
    _print_status(stack)


@stack_app.command("down")
def stack_down(brokers: int = BrokersOption, clickhouse_replicas: int = ReplicasOption,
               wipe: bool = typer.Option(False, "--wipe", help="also delete Kafka and ClickHouse data")) -> None:
    """Stop the processes this stack started (by PID)."""
    from infra.stack import LocalStack

    LocalStack(_settings(), brokers=brokers, clickhouse_replicas=clickhouse_replicas).down(wipe=wipe, progress=_progress)


@stack_app.command("status")
def stack_status(brokers: int = BrokersOption, clickhouse_replicas: int = ReplicasOption) -> None:
    """Show each service, its PID, address and log."""
    from infra.stack import LocalStack

    _print_status(LocalStack(_settings(), brokers=brokers, clickhouse_replicas=clickhouse_replicas))


@stack_app.command("logs")
def stack_logs(service: str = typer.Argument("kafka-1"), lines: int = typer.Option(50, "-n"), brokers: int = BrokersOption,
               clickhouse_replicas: int = ReplicasOption) -> None:
    """Print the last lines of a service's log."""
    from infra.stack import LocalStack

    print(LocalStack(_settings(), brokers=brokers, clickhouse_replicas=clickhouse_replicas).logs(service, lines))


def _print_status(stack) -> None:
    table = Table(title="Whistle local stack")
    for column in ("service", "pid", "state", "address", "log"):
        table.add_column(column)
    for row in stack.status():
        table.add_row(row.name, str(row.pid or "-"), "[green]running[/green]" if row.running else "[red]stopped[/red]", row.address, str(row.log))
    Console().print(table)


@app.command("provision")
def provision() -> None:
    """Create/converge Kafka topics and apply ClickHouse migrations (idempotent; run on every deploy)."""
    from infra.provision import provision_all

    for line in provision_all(_settings()):
        _progress(line)


@app.command("publish")
def publish(source: str = typer.Option(..., "--source", help="camera | hotline | app"),
            path: Path = typer.Argument(..., help="a JSON-lines file, one record per line")) -> None:
    """Validate and publish a JSON-lines file; exits non-zero if any line was rejected."""
    from whistle.edges.publish import run_publish

    raise typer.Exit(run_publish(_settings(), source, path, Console()))


@app.command("worker")
def worker(loglevel: str = typer.Option("warn", "--loglevel")) -> None:
    """Run a stream-processing worker (set WHISTLE_WORKER_ID, unique per worker)."""
    from streams.app import run_worker

    run_worker(_settings(), loglevel=loglevel)


clock_app = typer.Typer(no_args_is_help=True, help="The case stream's clock.")
app.add_typer(clock_app, name="clock")


@clock_app.command("run")
def clock_run(interval: float = typer.Option(0.2, help="seconds between ticks"),
              start: datetime | None = typer.Option(None, help="pipeline time at start (default: now)"),
              speed: float = typer.Option(1.0, help="pipeline seconds per wall second"),
              beyond_wall_clock: bool = typer.Option(False, "--beyond-wall-clock", help="let ticks run past the wall clock (a sped-up timeline)")) -> None:
    """Write a tick into every case-stream partition every INTERVAL seconds; run two, on two hosts, for no single clock."""
    from whistle.edges.clock import Timeline, run_clock

    settings, stop = _settings(), _stop_flag()
    timeline = Timeline.real_time() if start is None else Timeline(_utc(start), time.time(), speed)
    with _publisher(settings) as publisher:
        run_clock(publisher, publisher.serde, Topics.with_prefix(settings.topic_prefix), _inbox_partitions(settings), timeline,
                  interval_s=interval, should_stop=stop, ahead_s=None if beyond_wall_clock else settings.time.ticks_ahead_s)


@clock_app.command("advance")
def clock_advance(to: datetime = typer.Option(..., "--to", help="the time to move the case stream to (UTC if no zone)"),
                  beyond_wall_clock: bool = typer.Option(False, "--beyond-wall-clock", help="allow a time past the wall clock (recorded as an operator's act)")) -> None:
    """Move the case stream's time forward at once (backfills, tests): due deadlines fire."""
    from whistle.edges.clock import write_ticks

    settings = _settings()
    not_after = None if beyond_wall_clock else utc_now() + timedelta(seconds=settings.time.ticks_ahead_s)
    with _publisher(settings) as publisher:
        write_ticks(publisher, publisher.serde, Topics.with_prefix(settings.topic_prefix), _inbox_partitions(settings), _utc(to),
                    not_after=not_after)
    _progress(f"case stream advanced to {_utc(to).isoformat()}")


@app.command("sink")
def sink(batch_rows: int = typer.Option(20_000), batch_seconds: float = typer.Option(0.5)) -> None:
    """Consume the audited topics into ClickHouse (ClickHouse first, then Kafka offsets)."""
    import logging

    from sinks.sink import build_sink

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    runner = build_sink(_settings(), batch_rows=batch_rows, batch_seconds=batch_seconds)
    _stop_flag(runner.stop)
    runner.run()


@app.command("anchor")
def anchor(max_idle: float | None = typer.Option(None, "--max-idle", help="stop after this many seconds without a case event (backfills)")) -> None:
    """Publish running digests of the case-events topic (whistle.audit.anchors) every WHISTLE_ANCHOR_INTERVAL_S seconds."""
    import logging

    from schemas.serde import Serde
    from sinks.anchor import Anchorer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    settings = _settings()
    anchorer = Anchorer(settings, Serde.from_settings(settings))
    anchorer.run(_stop_flag(), max_idle_s=max_idle)
    _progress(f"anchorer stopped after {anchorer.published} anchors")


@app.command("gateway")
def gateway(host: str | None = typer.Option(None, help="default WHISTLE_GATEWAY_HOST (127.0.0.1)"), port: int | None = typer.Option(None, help="default WHISTLE_GATEWAY_PORT"),
            max_body_bytes: int = typer.Option(65536)) -> None:
    """Serve the HTTP gateway: camera webhooks, the hotline, handling actions and Open311 GeoReport v2 (keys: WHISTLE_KEYS_FILE)."""
    from whistle.edges.gateway import run_gateway

    settings = _settings()
    run_gateway(settings, host or settings.gateway_host, port or settings.gateway_port, max_body_bytes=max_body_bytes)


keys_app = typer.Typer(no_args_is_help=True, help="The key file (WHISTLE_KEYS_FILE): who may send what.")
app.add_typer(keys_app, name="keys")


@keys_app.command("check")
def keys_check() -> None:
    """Parse the key file as the gateway and the workers will, and list who may do what."""
    from streams.domain.credentials import load_credentials
    from streams.domain.reference import load_district

    settings = _settings()
    credentials = load_credentials(settings.keys_file, load_district(settings.reference_dir))
    table = Table(title=f"{settings.keys_file} (sha256 {credentials.digest[:12]})")
    for column in ("integrator", "sources", "acts as", "return visit", "generation"):
        table.add_column(column)
    for credential in credentials.by_integrator.values():
        acting = ", ".join(sorted(credential.units)) + (f" and {len(credentials.acting[credential.integrator]) - len(credential.units)} under them"
                                                        if credential.below else "")
        table.add_row(credential.integrator, ", ".join(sorted(credential.sources)) or "-", acting or "-",
                      "yes" if credential.return_visit else "-", str(credential.generation))
    _wide_console().print(table)


reference_app = typer.Typer(no_args_is_help=True, help="A city's reference data (WHISTLE_REFERENCE_DIR; format: streams/reference/README.md).")
app.add_typer(reference_app, name="reference")


@reference_app.command("check")
def reference_check(directory: Path = typer.Argument(..., help="a reference directory: one district version directory and sla/")) -> None:
    """List every problem of a reference directory (file, line or feature, what is wrong); exit 1 when there is any."""
    from schemas.catalog import default_catalog
    from streams.domain.reference_check import check_reference

    problems = check_reference(directory, default_catalog().categories)
    if not problems:
        typer.echo(f"{directory}: no problems")
        return
    table = Table(title=f"{directory}: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
    for column in ("file", "where", "problem"):
        table.add_column(column, overflow="fold")
    for problem in problems:
        table.add_row(problem.file, problem.where, problem.problem)
    _wide_console().print(table)
    raise typer.Exit(1)


@keys_app.command("signing-secret")
def keys_signing_secret(integrator: str = typer.Option(..., "--integrator")) -> None:
    """Print the record-signing secret to hand to INTEGRATOR (its WHISTLE_INTEGRATOR_SECRET), from the master key."""
    from streams.domain.credentials import issued_secret, load_credentials
    from streams.domain.reference import load_district

    settings = _settings()
    credential = load_credentials(settings.keys_file, load_district(settings.reference_dir)).by_integrator.get(integrator)
    if credential is None:
        raise ConfigError(f"{settings.keys_file} has no integrator {integrator!r}", field="integrator")
    typer.echo(issued_secret(settings.record_signing_key.value, credential))


@app.command("dashboard")
def dashboard(port: int | None = typer.Option(None, help="default WHISTLE_DASHBOARD_PORT (18090)"),
              users: Path = typer.Option(..., "--users", help="users file with password hashes (see infra/dashboard-users.example.yaml)"),
              host: str | None = typer.Option(None, help="default WHISTLE_DASHBOARD_HOST (127.0.0.1); loopback unless that names another")) -> None:
    """Serve the auditors' and command centre's dashboard (read-only auditor user; login required)."""
    from whistle.edges.dashboard import run_dashboard

    settings = _settings()
    run_dashboard(settings, host or settings.dashboard_host, port or settings.dashboard_port, users)


audit_app = typer.Typer(no_args_is_help=True, help="The auditors' queries (read-only user).")
app.add_typer(audit_app, name="audit")
FormatOption = typer.Option("table", "--format", help="table | csv | json")


@audit_app.command("ranking")
def audit_ranking(month: str = typer.Option(..., "--month", help="YYYY-MM (city time)"),
                  by: str = typer.Option("street", "--by", help="grid | community | street | department: the tier of the units ranked"),
                  min_cases: int | None = typer.Option(None, "--min-cases", help="units with fewer cases are listed, not ranked "
                                                                                   "(default: the policy's ranking.min_cases, else 5)"),
                  as_of: str | None = typer.Option(None, "--as-of", help="ISO 8601 with a zone: the ranking as it stood then (default: now)"),
                  fmt: str = FormatOption) -> None:
    """Monthly ranking of the grids, communities, streets or departments that held the month's cases, each charged with the
    failures of its own holding, with its provenance (as-of, offset ranges, policy versions) and the content hashes of the
    rules behind it. The as-of it prints reproduces it: `--as-of` that time gives the same figures whatever came later."""
    from sinks import audit
    from streams.domain.rules import SLA_DIR
    from streams.domain.sla import load_policies

    moment = audit.as_of_from_text(as_of) if as_of is not None else audit.pinned(utc_now())
    policies = load_policies(_settings().reference_dir / SLA_DIR)
    stamp = audit.as_of_text(moment)
    with _auditor() as (engine, db):
        ranking = audit.ranking(engine, db, month, by, min_cases, as_of=moment, policies=policies)
        _emit(audit.ranking_view(ranking) if fmt == "table" else ranking, fmt, f"Ranking by {by}, {month}, as of {stamp}")
        _emit(audit.ranking_provenance(engine, db, month, by, as_of=moment, policies=policies), fmt, f"Provenance (as of {stamp})")
        _emit(audit.ranking_rules(engine, db, month, by, as_of=moment), fmt, "Rules (content hashes from the rules registry)")


@audit_app.command("case")
def audit_case(case_id: str = typer.Argument(...), fmt: str = FormatOption) -> None:
    """A case's full timeline: reports and channels, dispatch, transfers, breaches, rating."""
    from sinks import audit

    with _auditor() as (engine, db):
        timeline = audit.case_timeline(engine, db, case_id)
        _emit(audit.timeline_view(timeline) if fmt == "table" else timeline, fmt, f"Case {case_id}")


@audit_app.command("breaches")
def audit_breaches(tier: str | None = typer.Option(None, "--tier"), unit: str | None = typer.Option(None, "--unit"),
                   since: datetime | None = typer.Option(None, "--from"), until: datetime | None = typer.Option(None, "--to"),
                   warnings: bool = typer.Option(False, "--warnings", help="include warnings"), fmt: str = FormatOption) -> None:
    """Breaches (and referrals), filtered by tier, unit and deadline time."""
    from sinks import audit

    with _auditor() as (engine, db):
        _emit(audit.breaches(engine, db, tier=tier, unit=unit, since=since and _utc(since), until=until and _utc(until),
                             include_warnings=warnings), fmt, "Breaches")


@audit_app.command("trends")
def audit_trends(month: str = typer.Option(..., "--month", help="YYYY-MM (city time)"),
                 months: int = typer.Option(12, "--months", help="months of on-time rates, ending with --month"),
                 bucket: str = typer.Option("day", "--bucket", help="day | week: the p50/p90 durations' period"),
                 fmt: str = FormatOption) -> None:
    """The dashboard's trends: breaches per day and tier, each street's on-time rate month by month, p50/p90 time to
    accept and to resolve per day or week (the same queries as its trends page)."""
    from sinks import audit

    with _auditor() as (engine, db):
        _emit(audit.trend_breaches(engine, db, month), fmt, f"Breaches and referrals per day and tier, {month}")
        _emit(audit.trend_on_time(engine, db, month, months), fmt, f"On-time rate per street, {months} months to {month}")
        _emit(audit.trend_durations(engine, db, month, bucket), fmt, f"Time to accept and to resolve per {bucket}, {month}")


@audit_app.command("verify")
def audit_verify(fmt: str = FormatOption,
                 kafka_timeout: float = typer.Option(10.0, "--kafka-timeout", help="seconds for each Kafka request"),
                 since: datetime | None = typer.Option(None, "--from", help="dead letters reported from (UTC if no zone; default: all)"),
                 until: datetime | None = typer.Option(None, "--to", help="... until"),
                 anchors_file: Path | None = typer.Option(None, "--anchors", help="also hold the store to anchors exported earlier "
                                                                                   "(`audit anchors --format json`), as an outside party kept them")) -> None:
    """ClickHouse against Kafka and itself: every Kafka record stored exactly once, every hash chain intact, every anchored
    digest of the case events recomputed from the store (WHISTLE_ANCHOR_KEY for keyed anchors); dead letters by stage and
    reason, failing where a partition's share passes WHISTLE_VERIFY_DEAD_LETTER_SHARE.

    Exit 0 clean, 2 behind (only the sink's lag), 1 broken (any error; wins over behind), 3 could not verify.
    """
    import orjson

    from schemas.serde import Serde
    from sinks import audit
    from sinks.anchor import read_anchors, verify_all

    if fmt not in ("table", "csv", "json"):
        console.print(f"[bold red]error:[/bold red] --format must be table, csv or json, not {fmt!r}")
        raise typer.Exit(3)
    started = time.monotonic()
    settings = _settings()
    policy = audit.DeadLetterPolicy(settings.verify_dead_letter_share, settings.verify_dead_letter_min,
                                    to_epoch_ms(_utc(since)) if since else 0, to_epoch_ms(_utc(until)) if until else 2**63 - 1)
    try:
        kafka = audit.read_kafka_ranges(settings, timeout_s=kafka_timeout)
        case_stream = audit.read_kafka_ranges(settings, timeout_s=kafka_timeout, topics=[Topics.with_prefix(settings.topic_prefix).inbox])
        anchors = read_anchors(settings, Serde.from_settings(settings), timeout_s=kafka_timeout) + _exported_anchors(anchors_file)
        with _auditor() as (engine, db):
            findings = verify_all(engine, db, kafka, case_stream, policy, anchors, settings.anchor_key.value.encode("utf-8") or None,
                                  Topics.with_prefix(settings.topic_prefix).case_events)
    except WhistleError as exc:  # not exit 2: that is "behind"
        console.print(f"[bold red]error:[/bold red] verify could not run: {exc}")
        raise typer.Exit(3) from exc
    status, seconds = audit.status_of(findings), time.monotonic() - started
    in_kafka = sum(k.high - k.low for k in kafka)
    summary = (f"verify: {status} · {len(kafka)} partitions, {in_kafka} records in Kafka · "
               f"{sum(f.status == audit.BROKEN for f in findings)} broken, {sum(f.status == audit.BEHIND for f in findings)} behind · "
               f"{sum(f.records for f in findings if f.kind == 'dead_letters')} dead letters · {seconds:.1f}s")
    result = audit.findings_result(findings)
    if fmt == "json":
        sys.stdout.write(orjson.dumps({"status": status, "exit_code": audit.EXIT_CODES[status], "partitions": len(kafka),
                                       "records_in_kafka": in_kafka, "findings": result.as_dicts()}).decode() + "\n")
    elif fmt == "csv":
        sys.stdout.write(audit.to_csv(result))
    elif findings:
        _emit(result, fmt, f"verify: {status}")
    colour = {audit.CLEAN: "green", audit.BEHIND: "yellow", audit.BROKEN: "bold red"}[status]
    console.print(f"[{colour}]{summary}[/{colour}]" + (" · every Kafka record stored exactly once; every hash chain is intact; "
                                                      f"{len(anchors)} anchors recomputed" if status == audit.CLEAN else ""))
    raise typer.Exit(audit.EXIT_CODES[status])


def _exported_anchors(path: Path | None) -> list:
    """The anchors of a file `audit anchors --format json` wrote (none without a file); its root must match its anchors."""
    import orjson

    from sinks.anchor import from_export

    if path is None:
        return []
    try:
        document = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not an anchors export (`whistle audit anchors --format json`): {exc}", file=str(path)) from exc
    return from_export(document, str(path))


@audit_app.command("anchors")
def audit_anchors(month: str | None = typer.Option(None, "--month", help="YYYY-MM (city time): the digests as they stood at its end "
                                                                           "(default: the latest)"),
                  fmt: str = FormatOption, kafka_timeout: float = typer.Option(10.0, "--kafka-timeout")) -> None:
    """The latest anchored digest of every case-events partition and their root, for an outside party to keep
    (`audit verify --anchors FILE` holds the store to them later). Read from Kafka, not from the audit store."""
    from dataclasses import astuple

    import orjson

    from schemas.serde import Serde
    from sinks import audit
    from sinks.anchor import EXPORT_COLUMNS, anchors_root, export, latest_anchors, read_anchors

    settings = _settings()
    before_ms = audit.month_bounds(month)[1] if month else None
    try:
        latest = latest_anchors(read_anchors(settings, Serde.from_settings(settings), timeout_s=kafka_timeout), before_ms)
    except WhistleError as exc:
        console.print(f"[bold red]error:[/bold red] could not read the anchors: {exc}")
        raise typer.Exit(3) from exc
    if fmt == "json":
        sys.stdout.write(orjson.dumps(export(latest, month)).decode() + "\n")
        return
    result = audit.Result("anchors", EXPORT_COLUMNS, tuple(astuple(a) for a in latest))
    _emit(result, fmt, f"anchors{' at the end of ' + month if month else ''} · root {anchors_root(latest)}")


@audit_app.command("replay")
def audit_replay(since: datetime | None = typer.Option(None, "--from", help="compare records from (UTC if no zone; default: all)"),
                 until: datetime | None = typer.Option(None, "--to", help="... until"), fmt: str = FormatOption,
                 kafka_timeout: float = typer.Option(30.0, "--kafka-timeout", help="seconds any Kafka wait may take")) -> None:
    """Re-derive case events and breaches from the case stream alone and diff the period against the audit store; then
    recompute the period's monthly rankings from them (a scratch chdb store) and diff those against the audit store's.

    Exit 0 identical (rankings included, or said not recomputed and why), 1 differences, 3 could not run.
    """
    from sinks import audit
    from sinks.replay import replay

    settings = _settings()
    from_ms, to_ms = (to_epoch_ms(_utc(since)) if since else 0), (to_epoch_ms(_utc(until)) if until else 2**63 - 1)
    try:
        with _auditor() as (engine, db):
            report = replay(settings, engine, db, from_ms, to_ms, timeout_s=kafka_timeout,
                            progress=lambda n: console.print(f"[dim]replayed {n:,} case-stream records[/dim]"))
    except WhistleError as exc:
        console.print(f"[bold red]error:[/bold red] replay could not run: {exc}")
        raise typer.Exit(3) from exc
    summary = audit.Result("replay summary", ("table", "derived", "stored", "missing", "extra", "differs"),
                           tuple((table, report.derived[table], report.stored[table], *report.counts[table].values()) for table in report.counts))
    _emit(summary, fmt, "Replay: the case stream against the audit store")
    if report.listed:
        _emit(report.differences(), fmt, "First differences")
    if report.rankings_not_recomputed:
        console.print(f"[bold yellow]rankings NOT recomputed: {report.rankings_not_recomputed}[/]")
    verdict = "identical" if report.identical else "DIFFERENT"
    ranked = (f"rankings of {', '.join(report.months) or 'no month'} recomputed" if not report.rankings_not_recomputed
              else "rankings not recomputed")
    console.print(f"[{'green' if report.identical else 'bold red'}]replay: {verdict} · {report.inbox_records:,} case-stream records "
                  f"re-derived · {ranked} · {report.seconds:.1f}s[/]")
    raise typer.Exit(0 if report.identical else 1)


class _auditor:
    """The read-only auditor connection, closed on exit."""

    def __enter__(self):
        from dataclasses import replace

        from sinks.clickhouse import ServerEngine

        ch = _settings().clickhouse
        self.engine = ServerEngine.from_settings(replace(ch, user=ch.auditor_user, password=ch.auditor_password))
        return self.engine, ch.database

    def __exit__(self, *exc) -> None:
        self.engine.close()


def _wide_console() -> Console:
    """A console as wide as the terminal, or 140 columns when the output goes to a file or a pipe."""
    return Console() if sys.stdout.isatty() else Console(width=140)


def _emit(result, fmt: str, title: str) -> None:
    from sinks import audit

    if fmt == "csv":
        sys.stdout.write(audit.to_csv(result))
    elif fmt == "json":
        sys.stdout.write(audit.to_json(result) + "\n")
    elif fmt == "table":
        _wide_console().print(audit.render_table(result, title))
    else:
        raise typer.BadParameter(f"--format must be table, csv or json, not {fmt!r}")


@app.command("demo")
def demo(incidents: int = typer.Option(600, help="incidents in the simulated day"),
         speed: float = typer.Option(1200.0, help="simulated seconds per wall second")) -> None:
    """Run a simulated day of the sample district through the real pipeline and print the auditors' view."""
    from whistle.devtools.demo import run_demo

    raise typer.Exit(run_demo(_settings(), _wide_console(), incidents=incidents, speed=speed))


@app.command("simulate")
def simulate_command(out: Path = typer.Option(..., "--out", help="a folder: one JSON-lines file per channel, for `whistle publish`"),
                     seed: int = typer.Option(7), days: float = typer.Option(1.0), incidents: float = typer.Option(2000.0, "--incidents"),
                     start: datetime | None = typer.Option(None, help="first simulated instant (UTC if no zone)")) -> None:
    """Write a deterministic simulated period (same seed, same bytes) as camera/hotline/app JSON-lines files."""
    from streams.domain.rules import Rules
    from whistle.devtools.feed import write_channel_files
    from whistle.devtools.simulate import SimConfig, simulate

    config = SimConfig(seed=seed, days=days, incidents_per_day=incidents, **({"start": _utc(start)} if start else {}))
    rules = Rules.load(_settings().reference_dir)
    for channel, count in write_channel_files(simulate(rules.reference, config, policies=rules.policies, calendar=rules.calendar), out).items():
        _progress(f"{out / (channel + '.jsonl')}: {count:,} records")


@app.command("bench")
def bench(events: int = typer.Option(50_000, help="simulated events, generated and encoded once, used by every phase"),
          workers: int = typer.Option(1, help="`whistle worker` processes"),
          phase: list[str] = typer.Option([], "--phase", help="only these phases (repeatable): pipeline, e2e, backlog, latency, breach, recovery, rebalance, history"),
          latency_seconds: float = typer.Option(20.0, help="how long the half-rate latency phase publishes"),
          latency_rate: float | None = typer.Option(None, help="events/s of the latency phase (default: half the e2e rate)"),
          breach_cases: int = typer.Option(200, help="emergency cases whose accept deadline falls during the breach phase"),
          open_cases: int = typer.Option(100_000, help="open cases held by the recovered worker"),
          million: bool = typer.Option(False, "--million", help="the recovered worker holds 1,000,000 open cases"),
          history_days: float = typer.Option(365.0, help="simulated days of the history phase (archived vs kept closed cases)"),
          history_incidents: float = typer.Option(150.0, help="incidents per day of the history phase"),
          json_path: Path | None = typer.Option(None, "--json", help="where to write the figures (default: .whistle/bench/<run id>.json)"),
          keep: bool = typer.Option(False, "--keep", help="keep the bench's topics and databases")) -> None:
    """Measure throughput, latency, breach timeliness, per-process CPU/RSS and recovery against the running local stack."""
    from whistle.devtools.bench.options import MILLION, PHASES, BenchOptions
    from whistle.devtools.bench.phases import run_bench

    options = BenchOptions(events=events, workers=workers, phases=tuple(phase) or PHASES, latency_seconds=latency_seconds,
                           latency_rate=latency_rate, breach_cases=breach_cases, open_cases=MILLION if million else open_cases,
                           history_days=history_days, history_incidents_per_day=history_incidents, json_path=json_path, keep=keep)
    report = run_bench(_settings(), options, _wide_console())
    raise typer.Exit(1 if report["errors"] else 0)


alerts_app = typer.Typer(no_args_is_help=True, help="Consumers of the breach topic.")
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("tail")
def alerts_tail(tier: list[str] = typer.Option([], "--tier", help="only these tiers (repeatable)"),
                unit: list[str] = typer.Option([], "--unit", help="only breaches of / escalated to these units"),
                from_beginning: bool = typer.Option(False, "--from-beginning")) -> None:
    """Print breaches and warnings as they happen."""
    from whistle.edges.alerts import tail

    tail(_settings(), set(tier) or None, set(unit) or None, Console(), from_beginning=from_beginning)


@alerts_app.command("webhook")
def alerts_webhook(url: str = typer.Argument(...), tier: list[str] = typer.Option([], "--tier"),
                   unit: list[str] = typer.Option([], "--unit"),
                   group: str | None = typer.Option(None, "--group", help="this receiver's consumer group (prefixed); "
                                                    "default: derived from the URL and filters"),
                   secret_file: Path | None = typer.Option(None, "--secret-file", help="file holding the receiver's signing "
                                                           "secret (else $WHISTLE_ALERTS_WEBHOOK_SECRET)")) -> None:
    """POST each breach as signed JSON; its offset is committed only after a 2xx, so nothing is lost while the receiver is down."""
    import threading

    from whistle.edges.alerts import run_webhook, webhook_group, webhook_secret

    settings, tiers, units = _settings(), set(tier) or None, set(unit) or None
    secret = webhook_secret(secret_file)
    _progress(f"consumer group {webhook_group(settings, url, tiers, units, group)}")
    stop = threading.Event()
    _stop_flag(stop.set)
    report = run_webhook(settings, url, secret=secret, group=group, tiers=tiers, units=units, stop=stop)
    _progress(f"delivered {report.delivered}, dead-lettered {report.dead_lettered}, skipped {report.skipped}, retries {report.retries}")


def _publisher(settings: Settings):
    from whistle.edges.sdk import Publisher

    return Publisher(settings)


def _inbox_partitions(settings: Settings) -> int:
    from infra.topics import partitions_of

    return partitions_of(Topics.with_prefix(settings.topic_prefix).inbox, settings.topic_prefix)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _stop_flag(on_stop=None):
    """Install SIGTERM/SIGINT handlers that ask a loop to stop; returns a `should_stop()` callable."""
    stopped = []

    def handle(signum, frame) -> None:
        stopped.append(signum)
        if on_stop is not None:
            on_stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return lambda: bool(stopped)


def main() -> None:
    """Entry point: any WhistleError becomes one clear line and exit code 2, never a traceback."""
    try:
        app()
    except WhistleError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(2)
