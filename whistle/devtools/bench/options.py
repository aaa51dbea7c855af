"""What `whistle bench` measures and how much: its options and the names of its phases."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from whistle.ground.errors import ConfigError

PHASES = ("pipeline", "e2e", "backlog", "latency", "breach", "recovery", "rebalance", "history")
MILLION = 1_000_000


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how much. `whistle bench --million` sets open_cases=MILLION."""

    events: int = 50_000  # pre-generated simulated events, used by every phase
    reports_only: bool = False  # leave out the handling units' actions
    workers: int = 1  # `whistle worker` processes in the e2e, backlog, latency and breach phases
    latency_seconds: float = 20.0  # how long the half-rate phase publishes (capped by `events`)
    latency_rate: float | None = None  # events/s for the latency phase; default: half the e2e rate
    breach_cases: int = 200  # emergency reports whose accept deadline falls during the breach phase
    breach_spread_s: float = 20.0  # their deadlines spread over this many seconds of the run
    open_cases: int = 100_000  # open cases in the recovered worker's changelog (and the rebalanced workers')
    probe_interval_s: float = 0.2  # the rebalance phase's accept probe to every partition: its resolution, and the cases it uses
    history_days: float = 365.0  # the simulated period of the history phase (memory and recovery with and without archiving)
    history_incidents_per_day: float = 150.0
    seed: int = 7
    phases: tuple[str, ...] = PHASES
    json_path: Path | None = None  # default: <state dir>/bench/<run id>.json
    keep: bool = False  # keep the bench's topics and databases (default: deleted at the end)
    timeout_s: float | None = None  # bound of every wait; None: `wait_s`, which grows with `events`

    @property
    def wait_s(self) -> float:
        """The bound of every wait: `timeout_s`, else 600 s or 4 ms per event, whichever is longer (500,000 events:
        2,000 s), so that a large run at a few thousand events/s is not cut short by a bound made for the default."""
        return self.timeout_s or max(600.0, self.events * 0.004)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.phases) - set(PHASES))
        if unknown:
            raise ConfigError(f"unknown bench phase {unknown[0]!r}; phases are {', '.join(PHASES)}", field="phases")
        if self.events < 1 or self.workers < 1 or self.open_cases < 1 or self.breach_cases < 1:
            raise ConfigError("events, workers, open_cases and breach_cases must be at least 1", field="events")
