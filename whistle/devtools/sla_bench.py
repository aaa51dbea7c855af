"""Micro-benchmark of the case lifecycle and SLA engine: µs per operation and bytes per open case.

WHY: the case processor must keep up with ~20k events/s on 2 cores and hold a million open cases in
about 1 GB per worker. Run `python -m whistle.devtools.sla_bench [--cases 100000]` after changing
case.py, sla.py or calendar.py and compare with the figures in the report.
"""
from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

from streams.domain.calendar import load_calendar
from streams.domain.case import HandlingRules, evolve, handle_action, open_case
from streams.domain.model import ActionKind, EnrichedReport, HandlingAction, Location, Report, Source, Tier, Unit, Urgency
from streams.domain.sla import CaseBook, DeadlineIndex, deadlines_for, load_policies
from whistle.ground.times import to_epoch_ms

START = datetime(2026, 3, 9, 1, 0, tzinfo=UTC)  # a Monday, 09:00 China time
GRIDS = 200


def _chain(grid: int) -> tuple[Unit, ...]:
    community, street = f"C-S0{grid % 4 + 1}-{grid % 10:02d}", f"S0{grid % 4 + 1}"
    return (Unit(f"G-{street}-{grid:03d}", Tier.GRID, "grid"), Unit(community, Tier.COMMUNITY, "community"), Unit(street, Tier.STREET, "street"),
            Unit("DEP-URBAN", Tier.DEPARTMENT, "dept"), Unit("SUP", Tier.SUPERVISION, "sup"), Unit("DIS", Tier.DISCIPLINE, "dis"))


CHAINS = [_chain(grid) for grid in range(GRIDS)]


def _report(n: int, at: datetime) -> EnrichedReport:
    chain = CHAINS[n % GRIDS]
    return EnrichedReport(Report(f"app:{n:012d}", Source.APP, at, "garbage", Urgency.NORMAL, "垃圾堆积"),
                          Location("D01", chain[2].unit_id, chain[1].unit_id, chain[0].unit_id, 28.1, 113.0, "point"), chain)


def _case_id(n: int) -> str:
    return f"S01-20260309-{n:010x}"


def _best_us(label: str, run, operations: int, rounds: int = 5) -> None:
    """Print the best of `rounds` timings of run() in µs per operation (other processes on the box add noise)."""
    best = min(_timed(run) for _ in range(rounds))
    print(f"{label:<50} {best / operations * 1e6:8.2f} µs")


def _timed(run) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000, help="open cases to build for the memory figures")
    parser.add_argument("--batch", type=int, default=20_000, help="operations per timing round")
    args = parser.parse_args()
    calendar, policies = load_calendar(), load_policies()
    rules, batch = policies["policy-v1"].rules, args.batch
    reports = [_report(n, START + timedelta(seconds=n % 3600)) for n in range(max(batch, args.cases))]
    _time_operations(reports, batch, policies, calendar)  # its inputs are garbage before the memory is measured
    _measure_memory(reports, args.cases, policies, calendar, rules)


def _time_operations(reports: list[EnrichedReport], batch: int, policies, calendar) -> None:
    """µs per domain operation, each over `batch` inputs."""
    policy, rules = policies["policy-v1"], policies["policy-v1"].rules
    opened = [open_case(reports[n], _case_id(n), "policy-v1", reports[n].report.occurred_at) for n in range(batch)]
    states = [evolve(evolve(None, events[0]), events[1]) for events in opened]
    actions = [HandlingAction(f"act:{n}", _case_id(n), ActionKind.ACCEPT, CHAINS[n % GRIDS][0].unit_id, START + timedelta(minutes=30))
               for n in range(batch)]
    accepted = [handle_action(state, action, rules) for state, action in zip(states, actions)]
    accepted_states = [evolve(state, events[0]) for state, events in zip(states, accepted)]
    pending = [deadlines_for(state, policy, calendar) for state in accepted_states]

    _best_us("open_case (opened + dispatched, sealed)", lambda: [open_case(reports[n], _case_id(n), "policy-v1", START) for n in range(batch)], batch)
    _best_us("evolve opened + dispatched, per event", lambda: [evolve(evolve(None, events[0]), events[1]) for events in opened], 2 * batch)
    _best_us("evolve accepted", lambda: [evolve(state, events[0]) for state, events in zip(states, accepted)], batch)
    _best_us("handle_action accept (one sealed event)", lambda: [handle_action(s, a, rules) for s, a in zip(states, actions)], batch)
    _best_us("deadlines_for accepted (5 working days + warning)", lambda: [deadlines_for(s, policy, calendar) for s in accepted_states], batch)

    def schedule_and_pop() -> None:
        index = DeadlineIndex()
        for state, deadlines in zip(accepted_states, pending):
            index.schedule(state.case_id, state.seq, deadlines)
        index.pop_due(to_epoch_ms(START + timedelta(days=30)))

    _best_us("DeadlineIndex schedule + pop_due, per deadline", schedule_and_pop, 2 * batch)

    def case_book() -> None:
        book = CaseBook(policies, calendar, lambda a, b, category: CHAINS[0][3])
        for n in range(batch // 4):
            at = START + timedelta(seconds=n)
            unit = CHAINS[n % GRIDS][0].unit_id
            book.advance(at)
            book.open(reports[n], _case_id(n), at)
            book.act(HandlingAction(f"acc:{n}", _case_id(n), ActionKind.ACCEPT, unit, at))
            book.act(HandlingAction(f"res:{n}", _case_id(n), ActionKind.RESOLVE, unit, at))
            book.act(HandlingAction(f"rat:{n}", _case_id(n), ActionKind.RATE, "resident:1", at, rating=5))

    _best_us("CaseBook, per input (open/accept/resolve/rate)", case_book, batch, rounds=3)


def _measure_memory(reports: list[EnrichedReport], count: int, policies, calendar, rules: HandlingRules) -> None:
    """Bytes held per open case: the state (with its case id, digests and times) and its index entries."""
    policy = policies["policy-v1"]
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    states = {}
    for n in range(count):
        events = open_case(reports[n], _case_id(n), "policy-v1", reports[n].report.occurred_at)
        state = evolve(evolve(None, events[0]), events[1])
        state = evolve(state, handle_action(state, HandlingAction(f"act:{n}", state.case_id, ActionKind.ACCEPT, state.assignee.unit_id,
                                                                   START + timedelta(minutes=30)), rules)[0])
        states[state.case_id] = state
    with_states = tracemalloc.get_traced_memory()[0]
    index = DeadlineIndex()
    for state in states.values():
        index.schedule(state.case_id, state.seq, deadlines_for(state, policy, calendar))
    with_index = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_state, per_index = (with_states - baseline) / count, (with_index - with_states) / count
    print(f"{'bytes per accepted CaseState (in a dict)':<44} {per_state:8.0f}")
    print(f"{'bytes per case in the DeadlineIndex':<44} {per_index:8.0f}")
    print(f"{'=> 1,000,000 open cases':<44} {(per_state + per_index) * 1e6 / 2**30:8.2f} GiB")


if __name__ == "__main__":
    main()
