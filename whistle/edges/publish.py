"""`whistle publish --source camera|hotline|app FILE.jsonl`: validate each line, publish it, report.

Every line is one record in the topic's JSON form (see schemas/topics/<topic>.yaml for examples),
signed as the integrator the settings name (WHISTLE_INTEGRATOR, WHISTLE_INTEGRATOR_SECRET).
A line is *sent* once Kafka acknowledged it; otherwise it is *rejected* with its line number and
why (bad JSON, a field the schema or its value rules refuse, or Kafka not acknowledging it).
Valid lines are published even when others are rejected; the exit code is 1 if any line was
rejected, 2 if the file or source cannot be used at all, else 0.
"""
from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.serde import Serde
from whistle.edges.sdk import Delivery, Publisher
from whistle.ground.errors import ConfigError, DeliveryError, ValidationError
from whistle.ground.settings import Settings

SHOWN_REJECTIONS = 200  # the summary lists this many rejected lines; the count covers them all
_PROGRESS_EVERY = 500


def run_publish(settings: Settings, source: str, path: Path, console: Console) -> int:
    """Publish a JSONL file to the topic of `source`; print progress and a summary; the exit code."""
    try:
        size = path.stat().st_size
        serde = Serde.from_settings(settings)
        spec = serde.catalog.topic_for_source(source)
        publisher = Publisher(settings, serde=serde)
        if publisher.signer is None:
            publisher.close()
            raise ConfigError("no integrator identity: set WHISTLE_INTEGRATOR and WHISTLE_INTEGRATOR_SECRET "
                              "(`whistle keys signing-secret --integrator NAME` prints the secret)", field="integrator")
    except (OSError, ConfigError) as exc:
        console.print(f"[red]cannot publish {path}: {exc}[/red]")
        return 2
    delivered: list[int] = []  # appended on the delivery thread (list.append is atomic)
    rejected: list[tuple[int, str]] = []
    lines_read = 0
    with path.open("rb") as lines, Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=console,
    ) as progress:
        task = progress.add_task(f"{source} -> {publisher.topic(spec.name)}", total=size)
        for line_number, line in enumerate(lines, start=1):
            if line.strip():
                lines_read += 1
                _publish_line(publisher, source, line, line_number, delivered, rejected)
            if line_number % _PROGRESS_EVERY == 0:
                progress.update(task, completed=lines.tell())
        try:
            publisher.close()
        except DeliveryError:
            pass  # the dropped records' futures failed and are listed as rejected
        progress.update(task, completed=size)
    _print_summary(console, publisher.topic(spec.name), lines_read, len(delivered), rejected)
    return 1 if rejected else 0


def _publish_line(publisher: Publisher, source: str, line: bytes, line_number: int, delivered: list[int], rejected: list[tuple[int, str]]) -> None:
    """Send one line; record it as delivered or rejected (now, or when Kafka answers)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        rejected.append((line_number, f"invalid JSON: {exc}"))
        return
    if not isinstance(record, dict):
        rejected.append((line_number, f"expected a JSON object, got {type(record).__name__}"))
        return
    try:
        future = publisher.submit(source, record)
    except (ValidationError, DeliveryError) as exc:
        rejected.append((line_number, exc.message))
        return

    def on_done(done: Future[Delivery]) -> None:
        error = done.exception()
        if error is None:
            delivered.append(line_number)
        else:
            rejected.append((line_number, getattr(error, "message", str(error))))

    future.add_done_callback(on_done)


def _print_summary(console: Console, topic: str, lines_read: int, sent: int, rejected: list[tuple[int, str]]) -> None:
    summary = Table(title="Publish summary")
    summary.add_column("topic")
    summary.add_column("records", justify="right")
    summary.add_column("sent", justify="right", style="green")
    summary.add_column("rejected", justify="right", style="red" if rejected else "green")
    summary.add_row(topic, str(lines_read), str(sent), str(len(rejected)))
    console.print(summary)
    if not rejected:
        return
    listing = Table(title="Rejected lines")
    listing.add_column("line", justify="right")
    listing.add_column("reason", overflow="fold")
    for line_number, reason in sorted(rejected)[:SHOWN_REJECTIONS]:
        listing.add_row(str(line_number), reason)
    console.print(listing)
    if len(rejected) > SHOWN_REJECTIONS:
        console.print(f"... and {len(rejected) - SHOWN_REJECTIONS} more rejected lines (first {SHOWN_REJECTIONS} shown)")
