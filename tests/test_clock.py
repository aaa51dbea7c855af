"""Two clocks at once: their ticks interleave in every case-stream partition, and decide nothing twice.

A partition's time is the largest time it has seen (`CaseBook.advance`), so a tick no later than that time
(a duplicate, or the slower clock's slightly older tick) fires nothing; a replay of the log, whatever the
interleaving it recorded, reproduces every output byte for byte.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from test_case import T0, report
from test_transactions import _inbox

from schemas.serde import Serde
from streams.domain.calendar import load_calendar
from streams.domain.reference import load_reference
from streams.domain.sla import load_policies
from streams.pipeline import ENRICHED, CaseProcessor
from whistle.edges.clock import tick_value
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics

SERDE, TOPICS = Serde(), Topics()
STEP = timedelta(minutes=10)


def two_clocks_log() -> list[tuple[bytes, datetime | None]]:
    """Three reports, then two days of ticks from two clocks, each record with its tick's time (None: a report).
    B ticks 3 minutes after A and reaches the partition one tick late, so every B tick lands after a newer
    A tick (older than the partition's time); A's ticks come twice."""
    log: list[tuple[bytes, datetime | None]] = [
        (_inbox(SERDE, ENRICHED, report(f"app:two-clocks-{n}", category=category, at=T0 + timedelta(minutes=n))), None)
        for n, category in enumerate(("garbage", "fire_smoke", "drainage_blockage"))]
    a = [T0 + STEP * k for k in range(1, 289)]
    for k, at in enumerate(a):
        log.append((tick_value(SERDE, 0, at), at))
        if k:
            b = a[k - 1] + timedelta(minutes=3)
            log += [(tick_value(SERDE, 0, b), b), (tick_value(SERDE, 0, at), at)]
    return log


def run(values: list[bytes]) -> list[list[tuple[str, bytes | None, bytes | None]]]:
    """Each record's outputs (topic, key, value), through a fresh case processor."""
    cases = CaseProcessor(SERDE, load_reference(), load_policies(), load_calendar(), TOPICS, 1)
    result = []
    for offset, value in enumerate(values):
        outputs, _ = cases.process(Position(TOPICS.inbox, 0, offset), b"k", value, T0)
        result.append([(o.topic, o.key, o.value) for o in outputs])
    return result


def forward(log: list[tuple[bytes, datetime | None]]) -> list[bool]:
    """For each record, whether it may move the partition's time: a report, or a tick later than every tick before it."""
    moves, latest = [], T0
    for _, at in log:
        moves.append(at is None or at > latest)
        latest = max(latest, at or latest)
    return moves


def test_a_replay_of_two_interleaved_clocks_is_byte_identical():
    values = [value for value, _ in two_clocks_log()]
    first = run(values)
    assert sum(1 for outputs in first for topic, _, _ in outputs if topic == TOPICS.breaches) >= 3
    assert run(values) == first


def test_duplicate_and_older_ticks_decide_nothing():
    log = two_clocks_log()
    moves = forward(log)
    assert moves.count(False) == 2 * 287  # every B tick and every second copy of A's
    every = run([value for value, _ in log])
    assert all(outputs == [] for outputs, moved in zip(every, moves, strict=True) if not moved)
    alone = run([value for (value, _), moved in zip(log, moves, strict=True) if moved])
    assert [o for outputs in every for o in outputs] == [o for outputs in alone for o in outputs]
