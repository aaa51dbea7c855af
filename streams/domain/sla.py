"""SLA engine: versioned time-limit policies, pending deadlines, and what happens when one falls due.

WHY: a unit that does not accept, resolve or satisfy in time must be chased and then escalated up its
chain (grid -> community -> street -> department -> supervision -> discipline commission), and every
such breach must be provable from the log. So everything here is a pure function of the case state and
the partition's event time, never of the wall clock: replaying the same inputs yields byte-identical
breaches and escalation events, with deterministic breach ids.

- `load_policies()` / `policy_in_force()`: policies are data files (streams/reference/sla/policy-*.yaml),
  validated at start. A case is judged by the version in force when it opened (`CaseState.policy_version`).
- `deadlines_for(state, policy, calendar)`: what is pending for a case. Time limits (accept after
  dispatch, resolve after acceptance, auto-close after resolution) and their warnings, plus immediate
  triggers (transfer limit reached, unsatisfied rating, reopened) due at the triggering event's time.
- `DeadlineIndex`: every case's pending deadlines in (due, case_id, kind) order, lazily invalidated.
- `fire(state, deadline, now_ms, ...)`: the breach records and case events (escalated / closed) for one
  due deadline. Each breach escalates the case one rung up its chain, where the new holder gets fresh
  limits; the breach into the discipline commission is a referral.
- `CaseBook`: one partition's states and index, wired in the order that keeps replays identical.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from heapq import heapify, heappop, heappush
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from streams.domain.calendar import SLA_REFERENCE_DIR, BusinessCalendar, Duration
from streams.domain.case import (
    TRANSFER_LIMIT,
    CaseEvent,
    CaseState,
    HandlingRules,
    Kind,
    Link,
    Status,
    close_unrated,
    escalate,
    escalation_target,
    evolve,
    find_link,
    handle_action,
    merge_report,
    open_case,
    oversee,
)
from streams.domain.model import EnrichedReport, HandlingAction, Tier, Unit, Urgency
from whistle.ground.datafiles import config_error, file_sha256, read_yaml
from whistle.ground.errors import ConfigError
from whistle.ground.times import from_epoch_ms, to_epoch_ms

INITIAL_STAGE = "initial"
ESCALATION_STAGES = (Tier.COMMUNITY.value, Tier.STREET.value, Tier.DEPARTMENT.value, Tier.SUPERVISION.value)
TRANSFER_CLOCKS = ("keep", "restart")
RANKED_RATES = ("response", "resolution", "satisfaction", "on_time")  # the rates a policy's `ranking` section may weight



class DeadlineKind(StrEnum):
    """What a pending deadline checks. The overdue kinds and the immediate triggers are also breach types."""

    ACCEPT_WARNING = "accept_warning"
    RESOLVE_WARNING = "resolve_warning"
    ACCEPT_OVERDUE = "accept_overdue"
    RESOLVE_OVERDUE = "resolve_overdue"
    UNSATISFIED_RATING = "unsatisfied_rating"
    REOPENED = "reopened"
    AUTO_CLOSE = "auto_close"
    TRANSFER_LIMIT = TRANSFER_LIMIT
    ARCHIVE = "archive"  # a case closed for the policy's archive_after leaves the worker (the audit store keeps it)


class BreachKind(StrEnum):
    """What a breach record is: a warning before the deadline, a breach, or a referral to the discipline commission."""

    WARNING = "warning"
    BREACH = "breach"  # the case moves up for handling
    URGING = "urging"  # 督办: the holder is urged and keeps the case
    CRITICISM = "criticism"  # a written criticism of a holder that let an urging lapse
    REFERRAL = "referral"  # 问责: the discipline commission is asked to hold the accountable units to account


FINAL_OVERDUE = "final_overdue"  # breach type of an overdue case escalating into the discipline commission
_WARNED = {DeadlineKind.ACCEPT_WARNING: DeadlineKind.ACCEPT_OVERDUE, DeadlineKind.RESOLVE_WARNING: DeadlineKind.RESOLVE_OVERDUE}

# common_parent(unit_a_id, unit_b_id, category) -> the unit that settles their dispute
# (streams.domain.enrich.common_parent with the reference bound).
CommonParent = Callable[[str, str, str], Unit]


# -- policy ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Oversight:
    """How the oversight offices act on breaches past the handling tiers (督办 -> 通报批评 -> 问责).

    A breach whose type is in `handling_escalation`, while the next rung of the holder's chain is a
    handling tier, moves the case up for handling. Every other breach leaves the case with its holder:
    the first is an urging from the supervision office, then `criticisms` written criticisms, then a
    referral to the discipline commission. After each, the holder's limits are the `supervision`
    table's, counted from that event.
    """

    handling_escalation: frozenset[str]
    criticisms: int


@dataclass(frozen=True, slots=True)
class Limits:
    accept: Duration  # after dispatch to the unit
    resolve: Duration  # after the unit accepted


@dataclass(frozen=True, slots=True)
class RankingRules:
    """A policy's optional `ranking` section: how the monthly ranking (sinks/queries/ranking.sql) scores units.

    `weights_bp` gives each rate of RANKED_RATES its weight in basis points (exact integers summing to 10000; a rate the
    file leaves out weighs 0); `min_cases` is the minimum-case rule's default (units with fewer cases are not ranked).
    """

    weights_bp: Mapping[str, int]
    min_cases: int


@dataclass(frozen=True, slots=True, eq=False)
class SlaPolicy:
    """One version of the SLA policy, as validated from its file."""

    version: str
    effective_from_ms: int
    file: str
    classes: tuple[str, ...]  # strictest first
    category_classes: Mapping[str, str]
    default_class: str
    urgency_classes: Mapping[str, str]
    limits: Mapping[str, Mapping[str, Limits]]  # stage ("initial" or a tier) -> class -> limits
    warning_fraction: float
    transfer_clock: str
    auto_close_after: Duration
    extension_grant: Duration | None  # granted when asked (None: the superior approves the hours it grants)
    max_pause: Duration
    rules: HandlingRules
    early_action_hold: Duration = Duration(1, "hours")  # how long an action for a case not opened yet is held
    archive_after: Duration | None = None  # how long a closed case may still be reopened; then it leaves the worker (None: never)
    oversight: Oversight | None = None  # None: every breach moves the case one rung up its chain (policy-v1)
    ranking: RankingRules | None = None  # the ranking's composite score and minimum-case rule (None: no score, ranked as before)
    sha256: str = ""  # the file's content hash (`sha256sum`), bound to `version` by the rules registry (streams.domain.rules)

    def class_of(self, category: str, urgency: str) -> str:
        """The stricter of the category's class and the urgency's class."""
        by_category = self.category_classes.get(category, self.default_class)
        by_urgency = self.urgency_classes.get(urgency)
        if by_urgency is None or self.classes.index(by_category) <= self.classes.index(by_urgency):
            return by_category
        return by_urgency

    def limits_for(self, state: CaseState) -> Limits | None:
        """The holder's limits: the initial table before any escalation, else its tier's table (None: no limits, e.g. discipline).

        Under oversight, the supervision table's, until a referral (then the discipline commission's procedure, not an SLA, follows).
        """
        if state.oversight:
            stage = None if state.oversight[-1] == Kind.REFERRED else Tier.SUPERVISION.value
        else:
            stage = INITIAL_STAGE if state.escalations == 0 else state.assignee.tier
        table = self.limits.get(stage) if stage is not None else None
        return None if table is None else table[self.class_of(state.category, state.urgency)]


def load_policies(directory: Path | str = SLA_REFERENCE_DIR) -> dict[str, SlaPolicy]:
    """Every policy-*.yaml in `directory`, validated, by version in effective_from order."""
    directory = Path(directory)
    files = sorted(directory.glob("policy-*.yaml"))
    if not files:
        raise ConfigError(f"no SLA policy files (policy-*.yaml) in {directory}", file=str(directory))
    policies = sorted((_load_policy(path) for path in files), key=lambda p: p.effective_from_ms)
    for earlier, later in zip(policies, policies[1:]):
        if earlier.effective_from_ms == later.effective_from_ms:
            raise config_error(Path(later.file), "effective_from", f"same as {earlier.file}: two policies cannot take effect at once")
    return {policy.version: policy for policy in policies}


def policy_in_force(policies: Mapping[str, SlaPolicy], at: datetime | int) -> SlaPolicy:
    """The policy with the latest effective_from at or before `at` (a datetime or epoch ms)."""
    at_ms = at if isinstance(at, int) else to_epoch_ms(at)
    chosen = None
    for policy in policies.values():
        if policy.effective_from_ms <= at_ms and (chosen is None or policy.effective_from_ms > chosen.effective_from_ms):
            chosen = policy
    if chosen is None:
        raise ConfigError(f"no SLA policy is in force at {from_epoch_ms(at_ms).isoformat()}", field="effective_from")
    return chosen


def _load_policy(path: Path) -> SlaPolicy:
    doc = read_yaml(path)
    reader = _PolicyReader(path, doc)
    return replace(reader.policy(), sha256=file_sha256(path))


class _PolicyReader:
    """Reads one policy file; every problem is a ConfigError naming the file and the field path."""

    KEYS = {"version", "effective_from", "classes", "categories", "default_class", "urgency_classes", "limits", "warning_fraction",
            "transfers_before_escalation", "transfer_clock", "unsatisfied_rating_max", "auto_close_after", "extension", "waiting_on_resident"}
    OPTIONAL = {"early_action_hold", "archive_after"}  # optional durations
    SECTIONS = {"oversight", "dispute_rule", "ranking"}  # optional, read by their own methods

    def __init__(self, path: Path, doc: Any) -> None:
        self.path = path
        if not isinstance(doc, dict):
            raise self.fail("-", "must be a mapping")
        unknown = sorted(set(doc) - self.KEYS - self.OPTIONAL - self.SECTIONS)
        if unknown:
            raise self.fail(unknown[0], f"unknown key (expected one of {sorted(self.KEYS)})")
        missing = sorted(self.KEYS - set(doc))
        if missing:
            raise self.fail(missing[0], "is missing")
        self.doc = doc

    def fail(self, field: str, message: str) -> ConfigError:
        return config_error(self.path, field, message)

    def policy(self) -> SlaPolicy:
        doc = self.doc
        version = doc["version"]
        if version != self.path.stem:
            raise self.fail("version", f"must match the file name {self.path.stem!r}, got {version!r}")
        effective = doc["effective_from"]
        if not isinstance(effective, datetime) or effective.utcoffset() is None:
            raise self.fail("effective_from", f"must be a timestamp with a UTC offset like 2026-01-01T00:00:00+08:00, got {effective!r}")
        classes = doc["classes"]
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
            raise self.fail("classes", "must be a non-empty list of distinct class names, strictest first")
        urgencies = [u.value for u in Urgency]

        def urgency_class(urgency: Any, cls: Any, field: str) -> None:
            self.one_of(urgency, urgencies, field)
            self.one_of(cls, classes, field)

        category_classes = self.mapping("categories", lambda category, cls, field: self.one_of(cls, classes, field))
        urgency_classes = self.mapping("urgency_classes", urgency_class)
        default_class = self.one_of(doc["default_class"], classes, "default_class")
        limits = self.limits(classes)
        fraction = doc["warning_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise self.fail("warning_fraction", f"must be a number between 0 and 1 (exclusive), got {fraction!r}")
        transfer_clock = doc["transfer_clock"]
        if transfer_clock == "pause":
            raise self.fail("transfer_clock", "'pause' is not offered: a returned case is re-dispatched at once, so pausing equals 'restart'")
        self.one_of(transfer_clock, list(TRANSFER_CLOCKS), "transfer_clock")
        approval = isinstance(doc["extension"], dict) and "approval" in doc["extension"]
        extension = self.section("extension", {"approval", "max_hours", "max_per_stage"} if approval else {"grant", "max_per_stage"})
        if approval:
            self.one_of(extension["approval"], ["superior"], "extension.approval")
        waiting = self.section("waiting_on_resident", {"max_pause", "max_per_stage"})
        oversight = self.oversight()
        rules = HandlingRules(
            transfers_before_escalation=self.whole(doc["transfers_before_escalation"], "transfers_before_escalation", 1, 10),
            unsatisfied_rating_max=self.whole(doc["unsatisfied_rating_max"], "unsatisfied_rating_max", 1, 4),
            max_extensions=self.whole(extension["max_per_stage"], "extension.max_per_stage", 0, 10),
            max_pauses=self.whole(waiting["max_per_stage"], "waiting_on_resident.max_per_stage", 0, 10),
            extension_approval=approval,
            max_extension_hours=self.whole(extension["max_hours"], "extension.max_hours", 1, 720) if approval else 0,
            first_receiver=self.one_of(doc.get("dispute_rule", "arbitration"), ["arbitration", "first_receiver"], "dispute_rule") == "first_receiver",
            oversight=oversight is not None,
        )
        optional: dict[str, Any] = {name: self.duration(doc[name], name) for name in sorted(self.OPTIONAL) if name in doc}
        if "ranking" in doc:
            optional["ranking"] = self.ranking(doc["ranking"])
        return SlaPolicy(
            version=version, effective_from_ms=to_epoch_ms(effective), file=str(self.path), classes=tuple(classes),
            category_classes=MappingProxyType(category_classes), default_class=default_class,
            urgency_classes=MappingProxyType(urgency_classes), limits=MappingProxyType({stage: MappingProxyType(table) for stage, table in limits.items()}),
            warning_fraction=float(fraction), transfer_clock=transfer_clock,
            auto_close_after=self.duration(doc["auto_close_after"], "auto_close_after"),
            extension_grant=None if approval else self.duration(extension["grant"], "extension.grant"),
            max_pause=self.duration(waiting["max_pause"], "waiting_on_resident.max_pause"), rules=rules, oversight=oversight,
            **optional,
        )

    def oversight(self) -> Oversight | None:
        if "oversight" not in self.doc:
            return None
        raw = self.section("oversight", {"handling_escalation", "criticisms"})
        escalating = raw["handling_escalation"]
        types = [kind.value for kind in (DeadlineKind.ACCEPT_OVERDUE, DeadlineKind.RESOLVE_OVERDUE, DeadlineKind.UNSATISFIED_RATING, DeadlineKind.REOPENED)]
        if not isinstance(escalating, list):
            raise self.fail("oversight.handling_escalation", f"must be a list of breach types from {types}")
        for position, breach_type in enumerate(escalating):
            self.one_of(breach_type, types, f"oversight.handling_escalation[{position}]")
        return Oversight(frozenset(escalating), self.whole(raw["criticisms"], "oversight.criticisms", 0, 5))

    def ranking(self, raw: Any) -> RankingRules:
        """`ranking: {weights: {rate: w, ...}, min_cases: n}`: weights >= 0 with at most 4 decimals (whole basis points), summing to 1."""
        if not isinstance(raw, dict) or set(raw) != {"weights", "min_cases"}:
            raise self.fail("ranking", "must be a mapping with exactly ['min_cases', 'weights']")
        weights = raw["weights"]
        if not isinstance(weights, dict) or not weights:
            raise self.fail("ranking.weights", f"must map rates (some of {list(RANKED_RATES)}) to weights")
        unknown = sorted(set(weights) - set(RANKED_RATES))
        if unknown:
            raise self.fail(f"ranking.weights.{unknown[0]}", f"unknown rate (expected some of {list(RANKED_RATES)})")
        weights_bp = {}
        for rate in RANKED_RATES:
            value = weights.get(rate, 0)
            bp = Decimal(str(value)) * 10000 if not isinstance(value, bool) and isinstance(value, (int, float)) else None
            if bp is None or not bp.is_finite() or bp < 0 or bp != bp.to_integral_value():
                raise self.fail(f"ranking.weights.{rate}", f"must be a number >= 0 with at most 4 decimals, got {value!r}")
            weights_bp[rate] = int(bp)
        if sum(weights_bp.values()) != 10000:
            raise self.fail("ranking.weights", f"must sum to 1, got {sum(weights_bp.values()) / 10000}")
        return RankingRules(MappingProxyType(weights_bp), self.whole(raw["min_cases"], "ranking.min_cases", 0, 1_000_000))

    def limits(self, classes: list[str]) -> dict[str, dict[str, Limits]]:
        raw = self.doc["limits"]
        stages = (INITIAL_STAGE, *ESCALATION_STAGES)
        if not isinstance(raw, dict):
            raise self.fail("limits", "must map stages to class tables")
        extra = sorted(set(raw) - set(stages))
        if extra:
            raise self.fail(f"limits.{extra[0]}", f"unknown stage (expected {list(stages)})")
        tables: dict[str, dict[str, Limits]] = {}
        for stage in stages:
            table = raw.get(stage)
            if not isinstance(table, dict):
                raise self.fail(f"limits.{stage}", "is missing or not a mapping of class -> {accept, resolve}")
            extra = sorted(set(table) - set(classes))
            if extra:
                raise self.fail(f"limits.{stage}.{extra[0]}", f"unknown class (classes are {classes})")
            tables[stage] = {}
            for cls in classes:
                entry = table.get(cls)
                where = f"limits.{stage}.{cls}"
                if not isinstance(entry, dict) or set(entry) != {"accept", "resolve"}:
                    raise self.fail(where, "must be {accept: <duration>, resolve: <duration>}")
                tables[stage][cls] = Limits(self.duration(entry["accept"], f"{where}.accept"), self.duration(entry["resolve"], f"{where}.resolve"))
        return tables

    def mapping(self, key: str, check: Callable[[Any, Any, str], Any]) -> dict[str, str]:
        raw = self.doc[key]
        if not isinstance(raw, dict):
            raise self.fail(key, "must be a mapping")
        for name, value in raw.items():
            check(name, value, f"{key}.{name}")
        return dict(raw)

    def section(self, key: str, keys: set[str]) -> dict:
        raw = self.doc[key]
        if not isinstance(raw, dict) or set(raw) != keys:
            raise self.fail(key, f"must be a mapping with exactly {sorted(keys)}")
        return raw

    def one_of(self, value: Any, allowed: list[str], field: str) -> str:
        if value not in allowed:
            raise self.fail(field, f"must be one of {allowed}, got {value!r}")
        return value

    def whole(self, value: Any, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(field, f"must be a whole number {low}..{high}, got {value!r}")
        return value

    def duration(self, value: Any, field: str) -> Duration:
        try:
            return Duration.parse(value)
        except ValueError as exc:
            raise self.fail(field, str(exc)) from exc


# -- deadlines ------------------------------------------------------------------------------------


class Deadline(NamedTuple):
    """A pending SLA check of one case. A tuple (compact, and heap-ordered by due, case_id, kind).

    `seq` is the case state it was computed from: once the case has moved on, the entry is stale.
    `deadline_ms` is the deadline itself; for a warning, the deadline it warns of.
    """

    due_ms: int
    case_id: str
    kind: DeadlineKind
    seq: int
    deadline_ms: int


def deadlines_for(state: CaseState, policy: SlaPolicy, calendar: BusinessCalendar) -> list[Deadline]:
    """What is pending for the case now, soonest first.

    - dispatched: accept warning and accept_overdue. The clock starts at dispatch to the tier; with
      transfer_clock=restart, at the latest (re)assignment. At the transfer limit: transfer_limit now.
    - accepted: resolve warning and resolve_overdue, from acceptance, plus granted extensions,
      pushed back by waiting-on-resident pauses (an open pause counts up to the policy maximum).
    - resolved: auto_close. rated (unsatisfied) / reopened: the breach is due at once.
    - closed: archive, once the policy's archive_after has passed (reopening is allowed until then).
    Warnings fall at `warning_fraction` of the way to the deadline, on the limit's own time axis.
    """
    calendar = calendar.edition_at(state.last_at_ms)  # the case's deadlines as the calendar stood at its latest event
    status = state.status
    case_id, seq = state.case_id, state.seq
    if status == Status.DISPATCHED:
        if len(state.rejected_by) >= policy.rules.transfers_before_escalation:
            return [Deadline(state.holder_since_ms, case_id, DeadlineKind.TRANSFER_LIMIT, seq, state.holder_since_ms)]
        limits = policy.limits_for(state)
        if limits is None:
            return []
        start = state.holder_since_ms if policy.transfer_clock == "restart" else state.stage_start_ms
        if state.oversight:
            start = state.oversight_since_ms
        due = calendar.add(start, limits.accept)
        warn = calendar.fraction_point(start, due, policy.warning_fraction, limits.accept.on_working_time)
        return [Deadline(warn, case_id, DeadlineKind.ACCEPT_WARNING, seq, due), Deadline(due, case_id, DeadlineKind.ACCEPT_OVERDUE, seq, due)]
    if status == Status.ACCEPTED:
        limits = policy.limits_for(state)
        if limits is None:
            return []
        start = max(state.status_since_ms, state.oversight_since_ms)
        pauses = []
        for pause_start, pause_end in state.pauses:
            longest = calendar.add(pause_start, policy.max_pause)
            pauses.append((pause_start, longest if pause_end is None else min(pause_end, longest)))
        due = calendar.add_paused(start, limits.resolve, pauses)
        if policy.extension_grant is None:
            due += state.granted_hours * 3_600_000  # approved hours, round the clock
        else:
            for _ in range(state.extensions):
                due = calendar.add(due, policy.extension_grant)
        warn = calendar.fraction_point(start, due, policy.warning_fraction, limits.resolve.on_working_time)
        return [Deadline(warn, case_id, DeadlineKind.RESOLVE_WARNING, seq, due), Deadline(due, case_id, DeadlineKind.RESOLVE_OVERDUE, seq, due)]
    if status == Status.RESOLVED:
        due = calendar.add(state.status_since_ms, policy.auto_close_after)
        return [Deadline(due, case_id, DeadlineKind.AUTO_CLOSE, seq, due)]
    if status == Status.RATED:
        return [Deadline(state.status_since_ms, case_id, DeadlineKind.UNSATISFIED_RATING, seq, state.status_since_ms)]
    if status == Status.REOPENED:
        return [Deadline(state.status_since_ms, case_id, DeadlineKind.REOPENED, seq, state.status_since_ms)]
    if status == Status.CLOSED and policy.archive_after is not None:
        due = calendar.add(state.status_since_ms, policy.archive_after)
        return [Deadline(due, case_id, DeadlineKind.ARCHIVE, seq, due)]
    return []


class DeadlineIndex:
    """Pending deadlines of many cases, soonest first: pop_due(now) costs O(due + stale) heap pops.

    A heap of Deadline tuples, plus the seq each case's current deadlines were computed from.
    Re-scheduling a case makes its older entries stale; they are dropped when they surface, and the
    heap is compacted when it has grown to twice its size after the last compaction. `clock_ms` is the
    latest `now` popped: a warning already behind it is not scheduled (it fired, or it is moot).
    """

    __slots__ = ("_heap", "_current", "clock_ms", "_compact_at", "_undo")

    def __init__(self, clock_ms: int = -(2**62)) -> None:
        self._heap: list[Deadline] = []
        self._current: dict[str, int] = {}
        self.clock_ms = clock_ms
        self._compact_at = 1024
        self._undo: _IndexUndo | None = None

    def begin(self) -> None:
        """Start recording what changes, so that `rollback` can put the index back as it is now."""
        self._undo = _IndexUndo(self.clock_ms)

    def commit(self) -> None:
        """Keep the changes since `begin`."""
        self._undo = None
        if len(self._heap) > self._compact_at:
            self._compact()

    def rollback(self) -> None:
        """Undo every change since `begin`: the clock, each case's current seq, every push and every pop."""
        undo, self._undo = self._undo, None
        if undo is None:
            return
        self.clock_ms = undo.clock_ms
        for case_id, seq in undo.current.items():
            if seq is None:
                self._current.pop(case_id, None)
            else:
                self._current[case_id] = seq
        pushed = {id(deadline) for deadline in undo.pushed}
        if pushed:
            self._heap = [deadline for deadline in self._heap if id(deadline) not in pushed]
            heapify(self._heap)
        for deadline in undo.popped:
            if id(deadline) not in pushed:  # one pushed and popped within the transaction never existed before it
                heappush(self._heap, deadline)

    def schedule(self, case_id: str, seq: int, deadlines: Iterable[Deadline]) -> None:
        """Replace the case's pending deadlines with `deadlines` (computed from its state at `seq`). Idempotent per seq."""
        if self._current.get(case_id) == seq:
            return
        undo = self._undo
        if undo is not None and case_id not in undo.current:
            undo.current[case_id] = self._current.get(case_id)
        self._current.pop(case_id, None)
        heap, clock = self._heap, self.clock_ms
        for deadline in deadlines:
            if deadline.kind in _WARNED and deadline.due_ms <= clock:
                continue
            heappush(heap, deadline)
            self._current[case_id] = seq
            if undo is not None:
                undo.pushed.append(deadline)
        if undo is None and len(heap) > self._compact_at:  # compaction waits for the commit: a rollback may revive entries
            self._compact()

    def pop_due(self, now_ms: int) -> list[Deadline]:
        """The live deadlines due at or before `now_ms`, in (due, case_id, kind) order; they leave the index."""
        if now_ms > self.clock_ms:
            self.clock_ms = now_ms
        heap, current, due, undo = self._heap, self._current, [], self._undo
        while heap and heap[0].due_ms <= now_ms:
            deadline = heappop(heap)
            if undo is not None:
                undo.popped.append(deadline)
            if current.get(deadline.case_id) == deadline.seq:
                due.append(deadline)
        return due

    def pending(self, case_id: str) -> list[Deadline]:
        """The case's live deadlines, soonest first (inspection and tests; O(heap))."""
        seq = self._current.get(case_id)
        return sorted(d for d in self._heap if d.case_id == case_id and d.seq == seq)

    def __len__(self) -> int:
        return len(self._heap)

    def _compact(self) -> None:
        current = self._current
        self._heap = [d for d in self._heap if current.get(d.case_id) == d.seq]
        heapify(self._heap)
        self._compact_at = max(1024, 2 * len(self._heap))


class _IndexUndo:
    """What a DeadlineIndex transaction changed: the clock before it, each touched case's seq before it, pushes and pops."""

    __slots__ = ("clock_ms", "current", "pushed", "popped")

    def __init__(self, clock_ms: int) -> None:
        self.clock_ms = clock_ms
        self.current: dict[str, int | None] = {}
        self.pushed: list[Deadline] = []
        self.popped: list[Deadline] = []


def rebuild_index(states: Iterable[CaseState], policies: Mapping[str, SlaPolicy], calendar: BusinessCalendar, clock_ms: int) -> DeadlineIndex:
    """The index for recovered states (after a restart or rebalance), with the partition clock at `clock_ms`."""
    index = DeadlineIndex(clock_ms)
    for state in states:
        index.schedule(state.case_id, state.seq, deadlines_for(state, policy_of(policies, state), calendar))
    return index


# -- firing ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Breach:
    """An SLA warning, breach or referral (contract: schemas/avro/Breach.avsc, schemas/topics/whistle.sla.breaches.yaml)."""

    breach_id: str
    case_id: str
    kind: BreachKind
    breach_type: str
    tier: str  # the tier the case escalates to (a warning: the current tier)
    deadline: datetime
    fired_at: datetime
    overdue_ms: int
    responsible_unit_id: str
    escalation_target_unit_id: str | None
    policy_version: str
    category: str
    urgency: str
    street_id: str | None
    department_id: str | None
    summary: str
    policy_sha256: str | None = None  # the content of the rules that counted the deadline (None: a record from before they were recorded)
    calendar_sha256: str | None = None


def breach_id(case_id: str, breach_type: str, tier: str, deadline_ms: int) -> str:
    """Deterministic: the same breach found again on replay has the same id (sinks deduplicate on it)."""
    return hashlib.sha256(f"{case_id}|{breach_type}|{tier}|{deadline_ms}".encode()).hexdigest()[:32]


def fire(state: CaseState | None, deadline: Deadline, now_ms: int, policy: SlaPolicy, calendar: BusinessCalendar,
         common_parent: CommonParent) -> tuple[list[CaseEvent], list[Breach]]:
    """What a due deadline produces: case events and breach records (in CaseBook's order); nothing if the deadline is stale.

    Warnings produce a breach record of kind warning only (none once the deadline itself has passed,
    e.g. when catching up after downtime). auto_close produces a closed event.
    Every breach escalates the case one rung up the holder's chain (transfer_limit: to the common
    parent of the first two units that returned it, which must then assign it); escalating into the
    discipline commission is a referral, and an overdue case doing so is final_overdue.
    """
    if state is None or state.seq != deadline.seq or state.case_id != deadline.case_id:
        return [], []
    calendar = calendar.edition_at(state.last_at_ms)  # the edition `deadlines_for` counted this deadline on
    kind = deadline.kind
    holder = state.assignee
    if kind == DeadlineKind.AUTO_CLOSE:
        return close_unrated(state, from_epoch_ms(now_ms), f"{DeadlineKind.AUTO_CLOSE}:{state.case_id}:{deadline.deadline_ms}",
                                 f"{DeadlineKind.AUTO_CLOSE}: not rated within {policy.auto_close_after}"), []
    if kind in _WARNED:
        if deadline.deadline_ms <= now_ms:
            return [], []  # the breach itself is due now: a warning would only be noise
        breach_type: str = _WARNED[kind]
        left_min = (deadline.deadline_ms - now_ms) // 60_000
        summary = (f"warning: {holder.unit_id} ({holder.tier}) has {left_min} min left before {breach_type} "
                   f"at {_local(calendar, deadline.deadline_ms)} on case {state.case_id}{_provisional_note(calendar, deadline.deadline_ms)}")
        return [], [_breach(state, BreachKind.WARNING, breach_type, holder.tier, deadline.deadline_ms, now_ms, None, policy, calendar, summary)]
    target = _arbiter(state, common_parent) if kind == DeadlineKind.TRANSFER_LIMIT else escalation_target(state)
    if policy.oversight is not None and kind != DeadlineKind.TRANSFER_LIMIT and _overseen(state, kind, target, policy.oversight):
        return _oversee(state, deadline, now_ms, policy, calendar)
    referral = target is not None and target.tier == Tier.DISCIPLINE.value
    breach_type = FINAL_OVERDUE if referral and kind in (DeadlineKind.ACCEPT_OVERDUE, DeadlineKind.RESOLVE_OVERDUE) else kind
    tier = target.tier if target is not None else holder.tier
    where = f"escalated to {target.unit_id} ({target.tier})" if target is not None else "no unit above to escalate to"
    summary = (f"{breach_type}: {holder.unit_id} ({holder.tier}), due {_local(calendar, deadline.deadline_ms)}, case {state.case_id}; {where}"
               f"{_provisional_note(calendar, deadline.deadline_ms)}")
    breach = _breach(state, BreachKind.REFERRAL if referral else BreachKind.BREACH, breach_type, tier, deadline.deadline_ms, now_ms, target, policy,
                     calendar, summary)
    if target is None:
        return [], [breach]
    return escalate(state, target, from_epoch_ms(now_ms), breach.breach_id, breach_type, summary), [breach]


_OVERSIGHT_TIERS = (Tier.SUPERVISION.value, Tier.DISCIPLINE.value)


def _overseen(state: CaseState, kind: str, target: Link | None, oversight: Oversight) -> bool:
    """Whether a breach goes to oversight (the holder keeps the case) rather than up to a handling tier."""
    return bool(state.oversight) or kind not in oversight.handling_escalation or target is None or target.tier in _OVERSIGHT_TIERS


def _oversee(state: CaseState, deadline: Deadline, now_ms: int, policy: SlaPolicy, calendar: BusinessCalendar) -> tuple[list[CaseEvent], list[Breach]]:
    """The next oversight step for a breach the holder keeps: urging, then the policy's criticisms, then the referral.

    After the referral a further breach is recorded against the holder, with nothing more to issue.
    """
    assert policy.oversight is not None
    kind, holder = deadline.kind, state.assignee
    done = state.oversight
    if not done:
        step, record = Kind.URGED, BreachKind.URGING
    elif done.count(Kind.CRITICIZED) < policy.oversight.criticisms:
        step, record = Kind.CRITICIZED, BreachKind.CRITICISM
    elif Kind.REFERRED not in done:
        step, record = Kind.REFERRED, BreachKind.REFERRAL
    else:
        step, record = None, BreachKind.BREACH
    tier = Tier.DISCIPLINE.value if step == Kind.REFERRED else Tier.SUPERVISION.value
    overseer = next((link for link in state.chains[0] if link.tier == tier), None)
    breach_type = FINAL_OVERDUE if step == Kind.REFERRED and kind in (DeadlineKind.ACCEPT_OVERDUE, DeadlineKind.RESOLVE_OVERDUE) else kind
    what = {Kind.URGED: "urged by", Kind.CRITICIZED: "criticized by", Kind.REFERRED: "referred for accountability to"}
    where = f"{what[step]} {overseer.unit_id}" if step is not None and overseer is not None else "already referred: nothing more to issue"
    summary = (f"{breach_type}: {holder.unit_id} ({holder.tier}), due {_local(calendar, deadline.deadline_ms)}, case {state.case_id}; {where}; "
               f"{holder.unit_id} keeps the case{_provisional_note(calendar, deadline.deadline_ms)}")
    breach = _breach(state, record, breach_type, tier, deadline.deadline_ms, now_ms, overseer, policy, calendar, summary)
    if step is None or overseer is None:
        return [], [breach]
    return oversee(state, step, overseer, from_epoch_ms(now_ms), breach.breach_id, breach_type, summary), [breach]


def _arbiter(state: CaseState, common_parent: CommonParent) -> Link | None:
    """The common parent of the first two distinct units that returned the case (one unit: the unit above it).

    The parent is taken as the rung of the case's chains it occupies when it has one, so that
    escalation from it continues up that chain.
    """
    returned = tuple(dict.fromkeys(state.rejected_by))
    if len(returned) < 2:
        return escalation_target(state)
    parent = common_parent(returned[0], returned[1], state.category)
    return find_link(state, parent.unit_id) or Link(parent.unit_id, Tier(parent.tier).value)


def _provisional_note(calendar: BusinessCalendar, deadline_ms: int) -> str:
    """What a summary says of a deadline counted on the provisional rule (Monday-Friday minus fixed-date holidays)."""
    if not calendar.is_provisional(deadline_ms):
        return ""
    year = calendar.local_time(deadline_ms).year
    return f"; deadline provisional: no published holiday schedule for {year}, counted Monday-Friday minus fixed-date holidays"


def _breach(state: CaseState, kind: BreachKind, breach_type: str, tier: str, deadline_ms: int, now_ms: int, target: Link | None,
            policy: SlaPolicy, calendar: BusinessCalendar, summary: str) -> Breach:
    return Breach(
        breach_id=breach_id(state.case_id, breach_type, tier, deadline_ms), case_id=state.case_id, kind=kind, breach_type=breach_type,
        tier=tier, deadline=from_epoch_ms(deadline_ms), fired_at=from_epoch_ms(now_ms),
        overdue_ms=0 if kind == BreachKind.WARNING else max(0, now_ms - deadline_ms), responsible_unit_id=state.assignee.unit_id,
        escalation_target_unit_id=None if target is None else target.unit_id, policy_version=policy.version,
        category=state.category, urgency=state.urgency, street_id=state.place.street_id, department_id=state.place.department_id,
        summary=summary, policy_sha256=policy.sha256, calendar_sha256=calendar.sha256,
    )


def _local(calendar: BusinessCalendar, ms: int) -> str:
    return calendar.local_time(ms).isoformat(timespec="minutes")


def policy_of(policies: Mapping[str, SlaPolicy], state: CaseState) -> SlaPolicy:
    """The policy a case is judged by (the one in force when it opened), or ConfigError when it is not loaded."""
    policy = policies.get(state.policy_version)
    if policy is None:
        raise ConfigError(f"case {state.case_id} is judged by SLA policy {state.policy_version}, which is not loaded",
                          case_id=state.case_id, field="policy_version")
    return policy


# -- one partition --------------------------------------------------------------------------------


class CaseBook:
    """One partition's case states and deadlines, driven in the order that makes replays identical.

    For each inbox message at event time t: `advance(t)` first (fire everything due by then), then the
    message's decider (`open`, `merge`, `act`), which also fires what its own events made due at once
    (transfer limit, unsatisfied rating, reopened). The partition clock is the largest event time seen,
    so a late event never moves time backwards. A decider raises TransitionError for a refused input
    and leaves the book unchanged: dead-letter the input. Not pure (it holds the partition's state) but
    deterministic: the same calls in the same order give byte-identical events and breaches.

    One input, one transaction: between `begin` and `commit` the book records what it changes, and
    `rollback` puts states, deadlines and the partition clock back exactly as they were, so an input
    whose processing fails half-way (a bug, or deadline arithmetic outside the calendar) leaves no trace.
    """

    __slots__ = ("policies", "calendar", "common_parent", "units", "states", "index", "archived", "_saved")

    def __init__(self, policies: Mapping[str, SlaPolicy], calendar: BusinessCalendar, common_parent: CommonParent,
                 states: MutableMapping[str, CaseState] | None = None, clock_ms: int | None = None,
                 units: Mapping[str, str] | None = None) -> None:
        self.policies, self.calendar, self.common_parent = policies, calendar, common_parent
        self.units = units  # unit id -> tier: where a return or an arbiter's assignment may send a case
        self.states: MutableMapping[str, CaseState] = {} if states is None else states
        self.index = rebuild_index(self.states.values(), policies, calendar, clock_ms if clock_ms is not None else -(2**62))
        self.archived: list[str] = []  # cases archived since `begin`: the caller drops what it keeps of them and tombstones their keys
        self._saved: dict[str, CaseState | None] | None = None

    def begin(self) -> None:
        self._saved = {}
        self.archived = []
        self.index.begin()

    def commit(self) -> None:
        self._saved = None
        self.index.commit()

    def rollback(self) -> None:
        self.archived = []
        saved, self._saved = self._saved, None
        for case_id, state in (saved or {}).items():
            if state is None:
                self.states.pop(case_id, None)
            else:
                self.states[case_id] = state
        self.index.rollback()

    def advance(self, now: datetime) -> tuple[list[CaseEvent], list[Breach]]:
        """Fire every deadline due by max(clock, now), including those the firing itself makes due."""
        return self._advance_ms(to_epoch_ms(now))

    def open(self, enriched: EnrichedReport, case_id: str, at: datetime) -> tuple[list[CaseEvent], list[Breach]]:
        """Open a case at `at`, or at the partition clock if that is later (a late report is dispatched now,
        not back in time with its time limit already spent), judged by the policy in force then."""
        if to_epoch_ms(at) < self.index.clock_ms:
            at = from_epoch_ms(self.index.clock_ms)
        return self._decided(open_case(enriched, case_id, policy_in_force(self.policies, at).version, at), at)

    def merge(self, case_id: str, enriched: EnrichedReport, at: datetime) -> tuple[list[CaseEvent], list[Breach]]:
        return self._decided(merge_report(self.states.get(case_id), enriched, at), at)

    def act(self, action: HandlingAction) -> tuple[list[CaseEvent], list[Breach]]:
        state = self.states.get(action.case_id)
        rules = policy_of(self.policies, state).rules if state is not None else HandlingRules()
        return self._decided(handle_action(state, action, rules, self.units), action.at)

    def _decided(self, events: list[CaseEvent], at: datetime) -> tuple[list[CaseEvent], list[Breach]]:
        self._apply(events)
        fired_events, breaches = self._advance_ms(to_epoch_ms(at))
        return events + fired_events, breaches

    def _advance_ms(self, now_ms: int) -> tuple[list[CaseEvent], list[Breach]]:
        now_ms = max(now_ms, self.index.clock_ms)
        events: list[CaseEvent] = []
        breaches: list[Breach] = []
        due = self.index.pop_due(now_ms)
        while due:
            for deadline in due:
                state = self.states.get(deadline.case_id)
                if state is None:
                    continue
                if deadline.kind == DeadlineKind.ARCHIVE:
                    if state.seq == deadline.seq:
                        self._archive(state)
                    continue
                fired_events, fired_breaches = fire(state, deadline, now_ms, policy_of(self.policies, state), self.calendar, self.common_parent)
                breaches.extend(fired_breaches)
                events.extend(self._apply(fired_events))
            due = self.index.pop_due(now_ms)
        return events, breaches

    def _archive(self, state: CaseState) -> None:
        self._remember(state.case_id)
        del self.states[state.case_id]
        self.archived.append(state.case_id)

    def _remember(self, case_id: str) -> None:
        """Within a transaction, keep the case's state as it was before its first change (rollback restores it)."""
        saved = self._saved
        if saved is not None and case_id not in saved:
            saved[case_id] = self.states.get(case_id)

    def _apply(self, events: list[CaseEvent]) -> list[CaseEvent]:
        if not events:
            return events
        state = evolve(self.states.get(events[0].case_id), events[0])
        for event in events[1:]:
            state = evolve(state, event)
        deadlines = deadlines_for(state, policy_of(self.policies, state), self.calendar)  # before anything changes
        self._remember(state.case_id)
        self.states[state.case_id] = state
        self.index.schedule(state.case_id, state.seq, deadlines)
        return events
