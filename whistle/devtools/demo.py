"""`make demo`: a simulated working day of the sample district through the real pipeline, then the auditors' view.

Steps (each shown as it runs): clear an earlier demo's stack (a demo starts from nothing), start the
local stack and provision it; start a worker, the sink and
the gateway as separate processes; replay a simulated Monday of this month — camera detections through
the HTTP gateway, hotline tickets through `whistle publish`, app reports and handling actions through
the SDK — compressed to a few minutes, with the case stream's clock following the simulated time; move
the clock on to now (every deadline that has passed since is judged); wait until ClickHouse holds
every record; then print the month's rankings, a breach summary by tier, three case timelines and
`audit verify`. The stack, the worker, the sink, the gateway and a real-time clock keep running.
"""
from __future__ import annotations

import io
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from rich.console import Console
from rich.panel import Panel

from infra.processes import WhistleProcess, record_pids, spawn, wait_until
from infra.provision import provision_all
from infra.stack import LocalStack
from infra.topics import partitions_of
from sinks import audit
from sinks.clickhouse import ServerEngine
from streams.domain.reference import load_reference
from whistle.devtools.feed import GatewayWay, PublishWay, SdkWay, Signers, SimulatedClock, feed, settings_as, write_dev_key_file
from whistle.devtools.harness import sink_caught_up, spawn_worker, wait_for_group
from whistle.devtools.simulate import CHANNEL_INTEGRATORS, SimConfig, simulate
from whistle.edges.clock import write_ticks
from whistle.edges.publish import run_publish
from whistle.edges.sdk import Publisher
from whistle.ground.names import Groups, Topics
from whistle.ground.settings import Settings
from whistle.ground.times import utc_now

CITY = ZoneInfo("Asia/Shanghai")


BACKFILL_WINDOW_S = 35 * 86_400.0


def demo_day(now: datetime) -> datetime:
    """Midnight (city time) of the Monday 14-20 days before `now`: a full working day, in this month when it can be."""
    day = (now.astimezone(CITY) - timedelta(days=14)).date()
    monday = day - timedelta(days=day.weekday())
    if monday.month != now.astimezone(CITY).month and (monday + timedelta(days=7)) < now.astimezone(CITY).date():
        monday += timedelta(days=7)
    return datetime(monday.year, monday.month, monday.day, tzinfo=CITY)


def run_demo(settings: Settings, console: Console, *, incidents: int = 600, speed: float = 1200.0, seed: int = 2026,
             now: Callable[[], datetime] = utc_now) -> int:
    step = _Steps(console)
    stack = LocalStack(settings)
    step("Clearing an earlier demo (its processes, topics and tables)", lambda: stack.down(wipe=True, progress=step.detail))
    step("Starting Kafka and ClickHouse", lambda: stack.up(progress=step.detail))
    # The demo replays a day two to three weeks ago: a backfill, so the workers believe devices' times up to 35 days old.
    settings = replace(settings, kafka=replace(settings.kafka, bootstrap_servers=stack.bootstrap_servers),
                       time=replace(settings.time, device_behind_s=max(settings.time.device_behind_s, BACKFILL_WINDOW_S)))
    for line in step("Provisioning topics and ClickHouse schema", lambda: provision_all(settings, stack)):
        step.detail(line)
    topics = Topics.with_prefix(settings.topic_prefix)
    logs = settings.stack.state_dir / "demo"
    api_keys = write_dev_key_file(logs / "gateway-keys.yaml")
    settings = replace(settings, keys_file=logs / "gateway-keys.yaml")  # every process reads the same key file
    dashboard_password = _dashboard_users(logs / "dashboard-users.yaml")

    processes = step("Starting a worker, the sink, the anchorer, the gateway and the dashboard", lambda: _start(settings, logs))
    step("Waiting for the worker and the sink to join their groups", lambda: (
        wait_for_group(settings, Groups.with_prefix(settings.topic_prefix).cases, 1),
        wait_for_group(settings, Groups.with_prefix(settings.topic_prefix).sink, 1),
        wait_until(lambda: _gateway_up(settings), 30, "the gateway")))

    start = demo_day(now())
    # Handling of the day runs on for days after it; what would happen after now has not happened yet and is
    # not replayed, so neither the simulated clock nor any record moves the case stream past the wall clock.
    replayed_until = now()
    simulated = list(simulate(load_reference(), SimConfig(seed=seed, start=start.astimezone(UTC), days=1.0, incidents_per_day=incidents,
                                                          boundary_drain_at=(start + timedelta(hours=9)).astimezone(UTC))))
    events = [event for event in simulated if event.at <= replayed_until]
    partitions = partitions_of(topics.inbox, settings.topic_prefix)
    quiet = Console(file=io.StringIO())
    signers = Signers(settings)
    hotline_system = settings_as(settings, CHANNEL_INTEGRATORS["hotline"])
    with Publisher(settings) as publisher:
        ways = {"camera": GatewayWay(f"http://127.0.0.1:{settings.gateway_port}", api_keys),
                "hotline": PublishWay(lambda source, path: run_publish(hotline_system, source, path, quiet), "hotline", chunk=5),
                "app": SdkWay(publisher, signers), "actions": SdkWay(publisher, signers)}
        ticks = lambda at: write_ticks(publisher, publisher.serde, topics, partitions, at)  # noqa: E731
        step.note(f"Simulated day: {start:%A %Y-%m-%d} (city time), {len(events):,} events from {incidents} incidents, "
                  f"replayed at {speed:.0f}x ({len(simulated) - len(events):,} later ones would fall after now: not replayed)")
        with SimulatedClock(ticks) as clock, step.bar("Replaying the day", len(events)) as advance:
            report = feed(events, ways, clock, speed=speed, max_gap_s=0.2, progress=lambda r: advance(sum(r.sent.values())))
            advance(len(events))
        step.detail("sent " + ", ".join(f"{n:,} {kind}" for kind, n in sorted(report.sent.items())) + f" in {report.wall_s:.0f}s")
        step(f"Moving the case stream's clock to now ({now():%Y-%m-%d %H:%M} UTC): deadlines since the day are judged",
             lambda: (time.sleep(clock.lag_s), ticks(now())))  # after the last reports are through ingestion
    processes.append(spawn(settings, "clock", ["clock", "run"], logs))
    record_pids(logs / "pids", processes)
    step("Waiting until ClickHouse holds every record", lambda: _wait_for_sink(settings))

    auditor = replace(settings.clickhouse, user=settings.clickhouse.auditor_user, password=settings.clickhouse.auditor_password)
    engine = ServerEngine.from_settings(auditor)
    try:
        return _auditors_view(console, engine, settings.clickhouse.database, start, now())
    finally:
        engine.close()
        _how_to_go_on(console, settings, processes, dashboard_password)


def _start(settings: Settings, logs: Path) -> list[WhistleProcess]:
    return [spawn_worker(settings, "worker-1", logs), spawn(settings, "sink", ["sink"], logs), spawn(settings, "anchor", ["anchor"], logs),
            spawn(settings, "gateway", ["gateway"], logs),
            spawn(settings, "dashboard", ["dashboard", "--users", str(logs / "dashboard-users.yaml")], logs)]


DASHBOARD_USER = "demo"


def _dashboard_users(path: Path) -> str:
    """A fresh users file for the demo's dashboard: one user with a random password (kept only as its scrypt hash)."""
    from whistle.edges.dashboard import hash_password

    password = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"users": [{"username": DASHBOARD_USER, "password_scrypt": hash_password(password)}]}))
    return password


def _gateway_up(settings: Settings) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{settings.gateway_port}/open311/v2/services.json", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for_sink(settings: Settings) -> None:
    time.sleep(3)  # let the worker finish the last ticks' breaches before judging "caught up"
    wait_until(lambda: sink_caught_up(settings), 180, "the sink to store every record", 1.0)


def _auditors_view(console: Console, engine, db: str, day: datetime, now: datetime) -> int:
    month = f"{day:%Y-%m}"
    console.rule(f"[bold]The auditors' view (ClickHouse, read-only user) — {month}")
    for by in ("street", "department"):
        console.print(audit.render_table(audit.ranking_view(audit.ranking(engine, db, month, by, min_cases=5)),
                                         f"Ranking of {by}s, {month} (fewer than 5 cases: listed, not ranked)"))
    console.print(audit.render_table(audit.ranking_provenance(engine, db, month, "street"), "Provenance of the rankings"))
    summary = audit.run_query(engine, db, "breach_summary", {"from_ms": 0, "to_ms": int(now.timestamp() * 1000) + 86_400_000})
    console.print(audit.render_table(summary, "Warnings, breaches, urgings, criticisms and referrals by tier"))
    titles = {"merged": "A case merged from several channels", "bounced": "A case bounced at a street boundary and escalated",
              "late": "A case resolved late and rated unsatisfied",
              "referred": "The boundary drain: returned by both streets, never assigned, urged, criticised and referred (问责)"}
    for example, case_id in audit.run_query(engine, db, "example_cases", {}).rows:
        if case_id:
            console.print(audit.render_table(audit.timeline_view(audit.case_timeline(engine, db, case_id)),
                                             f"{titles[example]}: {case_id}"))
        else:
            console.print(f"[yellow]{titles[example]}: none in this run[/yellow]")
    problems = audit.verify(engine, db)
    if problems:
        console.print(audit.render_table(audit.problems_result(problems), f"audit verify: {len(problems)} problem(s)"))
        return 1
    console.print("[green]audit verify: every audited Kafka offset is in ClickHouse exactly once; every hash chain is intact[/green]")
    return 0


def _how_to_go_on(console: Console, settings: Settings, processes: list[WhistleProcess], dashboard_password: str) -> None:
    running = ", ".join(f"{p.name} (pid {p.popen.pid})" for p in processes if p.alive())
    ch = settings.clickhouse
    console.print(Panel.fit(
        f"Still running: Kafka at {settings.kafka.bootstrap_servers}, ClickHouse at 127.0.0.1:{settings.stack.clickhouse_tcp_port}, {running}.\n"
        f"Logs: {settings.stack.state_dir / 'demo'}\n\n"
        f"Dashboard (审计与指挥中心看板):   http://127.0.0.1:{settings.dashboard_port}/   user {DASHBOARD_USER}, password {dashboard_password}\n"
        f"Query ClickHouse as an auditor:  clickhouse-client --port {settings.stack.clickhouse_tcp_port} --user {ch.auditor_user} "
        f"--database {ch.database}\n"
        f"  e.g. SELECT tier, count() FROM breaches FINAL GROUP BY tier\n"
        f"Tail breaches as they happen:     .venv/bin/whistle alerts tail   (--tier discipline for referrals only)\n"
        f"Rankings and timelines:           .venv/bin/whistle audit ranking --month {datetime.now(CITY):%Y-%m} --by street\n"
        f"Stop everything:                  .venv/bin/whistle stack down",
        title="Whistle demo"))


class _Steps:
    """Numbered progress lines for a long command."""

    def __init__(self, console: Console) -> None:
        self.console, self.number = console, 0

    def __call__(self, title: str, action: Callable):
        self.number += 1
        started = time.monotonic()
        with self.console.status(f"[bold]{self.number}. {title}…"):
            result = action()
        self.console.print(f"[green]✓[/green] {self.number}. {title} [dim]({time.monotonic() - started:.1f}s)[/dim]")
        return result

    def detail(self, message: str) -> None:
        self.console.print(f"   [dim]{message}[/dim]")

    def note(self, message: str) -> None:
        self.console.print(f"   {message}")

    def bar(self, title: str, total: int):
        from contextlib import contextmanager

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        @contextmanager
        def running():
            self.number += 1
            with Progress(f"{self.number}. {title}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.console) as progress:
                task = progress.add_task(title, total=total)
                yield lambda done: progress.update(task, completed=done)

        return running()
