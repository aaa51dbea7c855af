"""The clock service: ticks written into every partition of the case stream.

Breaches must fire on time even when no event arrives, yet be a pure function of the log. So time
is part of the log: each case-stream partition's time is the largest event or tick time it has
seen, and this service appends a tick to every partition every `interval` (the worker that owns a
partition fires what is due when it reads the tick). Replaying the log replays the same ticks.

No single clock: run two (or more) `whistle clock run`, on different hosts, all ticking all the time.
Ticks need no coordination because a partition's time only moves forward: a tick no later than it (the
other clock's duplicate, or its slightly older tick interleaved after a newer one) fires nothing, and
whichever tick first passes a deadline decides its breach, recorded in the log, so a replay of any
interleaving is byte-identical (tests/test_clock.py). While one clock lives, a breach is published at
most one interval (plus one tick's produce → consume → fire) after its deadline, as with a single clock;
a clock killed with -9 changes nothing for the others (tests/test_drills.py checks the bound, 1 s at 0.2 s).

Why not elect one ticking clock (a consumer group of clocks, the holder of a coordination partition
ticks)? A dead leader is noticed only after the group's session timeout (the broker's minimum
`group.min.session.timeout.ms` is 6 s, clients default to 45 s), then a rebalance: every breach due
meanwhile would be late by seconds, past the 1 s bound, and the election is code that can fail too.
The price of all clocks ticking is records: each clock appends a tick per partition per interval to a
topic kept forever, and a worker reads each (README, "The clock service", has the figures). To keep one
clock's volume, run two at twice the interval: the bound with one left alive is then that interval.

Clocks on several hosts must agree on the wall clock (NTP): the partition's time is the fastest clock's,
so a clock Δ ahead fires breaches Δ early (at most `WHISTLE_TIME_TICKS_AHEAD_S`, which it refuses beyond).
Only real time is shared: two clocks on a sped-up `Timeline` each start their own, so run one for a demo.

`Timeline` maps wall-clock time to the pipeline's time: identity in production; a start and a
speed-up for the demo's compressed day; `write_ticks` (`whistle clock advance`) jumps forward for tests and backfills.
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
