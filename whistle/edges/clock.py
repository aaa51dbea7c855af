"""The clock service: ticks written into every partition of the case stream.

Breaches must fire on time even when no event arrives, yet be a pure function of the log. So time
is part of the log: each case-stream partition's time is the largest event or tick time it has
seen, and this service appends a tick to every partition every `interval` (the worker that owns a
partition fires what is due when it reads the tick). Replaying the log replays the same ticks.

`Timeline` maps wall-clock time to the pipeline's time: identity in production; a start and a
speed-up for the demo's compressed day; `advance_to` jumps forward for tests and backfills.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.serde import Serde
from whistle.edges.sdk import Publisher
from whistle.ground.errors import ConfigError
from whistle.ground.names import Topics

TICK = "org.whistle.v1.ClockTick"


@dataclass(frozen=True)
class Timeline:
    """pipeline time = start + (wall - wall_start) × speed."""

    start: datetime
    wall_start: float
    speed: float = 1.0

    @classmethod
    def real_time(cls, wall: Callable[[], float] = time.time) -> Timeline:
        now = wall()
        return cls(datetime.fromtimestamp(now, UTC), now)

    def at(self, wall: float) -> datetime:
        return self.start + timedelta(seconds=(wall - self.wall_start) * self.speed)

    def wall_for(self, moment: datetime) -> float:
        return self.wall_start + (moment - self.start).total_seconds() / self.speed


def tick_value(serde: Serde, partition: int, at: datetime) -> bytes:
    ms = int(at.timestamp() * 1000)
    return serde.encode("CaseInboxEvent", {"event": (TICK, {"tick_id": f"tick:{partition}:{ms}", "at": at})}, validate=False)


def write_ticks(publisher: Publisher, serde: Serde, topics: Topics, partitions: int, at: datetime, *,
                not_after: datetime | None = None) -> None:
    """One tick at `at` into every case-stream partition, acknowledged by Kafka before returning.

    `not_after`: the latest time a tick may carry (the wall clock plus the configured bound); a tick past
    it is refused, naming both times, so no mistake can fire every open case's deadlines at once.
    None: the caller (an operator's explicit `--beyond-wall-clock`, a test, a simulation) takes responsibility.
    """
    if not_after is not None and at > not_after:
        raise ConfigError(f"a tick at {at.isoformat()} would move the case stream past {not_after.isoformat()} "
                          "(the wall clock plus WHISTLE_TIME_TICKS_AHEAD_S); to do it on purpose, say --beyond-wall-clock", field="at")
    futures = [publisher.produce_raw(topics.inbox, b"__clock__", tick_value(serde, p, at), partition=p) for p in range(partitions)]
    for future in futures:
        future.result(timeout=30)


def run_clock(publisher: Publisher, serde: Serde, topics: Topics, partitions: int, timeline: Timeline, *,
              interval_s: float = 0.2, wall: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
              should_stop: Callable[[], bool] = lambda: False, ahead_s: float | None = 60.0) -> None:
    """Tick every `interval_s` of wall time until `should_stop()`, never more than `ahead_s` past the wall clock
    (None: no bound, an operator's explicit choice for a sped-up timeline)."""
    while not should_stop():
        started = wall()
        not_after = None if ahead_s is None else datetime.fromtimestamp(started + ahead_s, UTC)
        write_ticks(publisher, serde, topics, partitions, timeline.at(started), not_after=not_after)
        sleep(max(0.0, interval_s - (wall() - started)))
