"""The `whistle` command. Subcommands parse arguments, build Settings once, and call library code."""
from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from whistle.errors import WhistleError
from whistle.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="Whistle: the data backbone for city incident handling.")
stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka + ClickHouse stack (development, tests, demo).")
app.add_typer(stack_app, name="stack")
console = Console(stderr=True)


def _settings() -> Settings:
    return Settings.from_env()


def _progress(message: str) -> None:
    console.print(f"[dim]·[/dim] {message}")


BrokersOption = typer.Option(1, "--brokers", help="1 (default) or 3 (RF 3, min ISR 2, for fault drills)")


@stack_app.command("up")
def stack_up(brokers: int = BrokersOption, provision: bool = typer.Option(True, help="create topics and apply migrations")) -> None:
    """Start Kafka and ClickHouse (a no-op when already running), then provision topics and schema."""
    from infra.provision import provision_all
    from infra.stack import LocalStack

    settings = _settings()
    stack = LocalStack(settings, brokers=brokers)
    stack.up(progress=_progress)
    if provision:
        for line in provision_all(settings, stack):
            _progress(line)
    _print_status(stack)


@stack_app.command("down")
def stack_down(brokers: int = BrokersOption, wipe: bool = typer.Option(False, "--wipe", help="also delete Kafka and ClickHouse data")) -> None:
    """Stop the processes this stack started (by PID)."""
    from infra.stack import LocalStack

    LocalStack(_settings(), brokers=brokers).down(wipe=wipe, progress=_progress)


@stack_app.command("status")
def stack_status(brokers: int = BrokersOption) -> None:
    """Show each service, its PID, address and log."""
    from infra.stack import LocalStack

    _print_status(LocalStack(_settings(), brokers=brokers))


@stack_app.command("logs")
def stack_logs(service: str = typer.Argument("kafka-1"), lines: int = typer.Option(50, "-n"), brokers: int = BrokersOption) -> None:
    """Print the last lines of a service's log."""
    from infra.stack import LocalStack

    print(LocalStack(_settings(), brokers=brokers).logs(service, lines))


def _print_status(stack) -> None:
    table = Table(title="Whistle local stack")
    for column in ("service", "pid", "state", "address", "log"):
        table.add_column(column)
    for row in stack.status():
        table.add_row(row.name, str(row.pid or "-"), "[green]running[/green]" if row.running else "[red]stopped[/red]", row.address, str(row.log))
    Console().print(table)


def main() -> None:
    """Entry point: any WhistleError becomes one clear line and exit code 2, never a traceback."""
    try:
        app()
    except WhistleError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(2)
