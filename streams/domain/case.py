"""The case lifecycle, event-sourced: a case is the fold of its events; deciders turn inputs into events.

WHY event sourcing: the case events topic is the system of record. Auditors replay it to re-derive
every figure, so the state must be nothing but `evolve` folded over the events, and every decision
must be a pure function of (state, input) that emits the events recording it. Events are
hash-chained per case so a changed, dropped or reordered event is detectable (`verify_chain`).

Shapes:
- `open_case(enriched, case_id, policy_version, at)`  -> [opened, dispatched]
- `merge_report(state, enriched, at)`                -> [report_merged] (or [] when already applied)
- `handle_action(state, action, rules)`              -> [accepted | transferred | extension_granted |
                                                        resolved | rated (+closed) | reopened | late_action]
- `escalate(state, target, at, breach_id, ...)` / `close_unrated(state, at, ...)`: the time-driven
  events, decided by `streams.domain.sla.fire`.

Idempotency under at-least-once delivery: the state keeps an 8-byte BLAKE2b digest of every cause id
(report id, action id, breach id) its events recorded, in one `bytes` value. A decider handed an input
whose id is already there returns no events, so a redelivered report or action is a no-op. The set is
exact (not a recent window), so a burst of redelivered duplicate camera reports cannot slip through;
it costs 8 bytes per applied input.

Memory: a million open cases must fit in about 1 GB next to the deadline index, so `CaseState` holds
ints, interned strings and shared tuples only. Escalation chains and places are interned: all cases of
one grid and category point at the same tuple.

Chain of custody: the `note` of `opened` and `report_merged` events carries the report's escalation
chain, machine-readable ("G-S01-C02-007@grid>C-S01-02@community>...>DIS@discipline"), so that the
state, including where each breach escalates to, can be rebuilt from the events alone.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import Any, NamedTuple

import orjson

from streams.domain.model import ActionKind, EnrichedReport, HandlingAction, Tier, Urgency
from streams.domain.trusted_time import flagged_note
from whistle.ground.errors import DomainError, TransitionError, ValidationError
from whistle.ground.times import from_epoch_ms, iso_ms, to_epoch_ms

GENESIS_HASH = "0" * 64


class Kind(StrEnum):
    """Case event kinds (the contract's vocabulary)."""

    OPENED = "opened"
    REPORT_MERGED = "report_merged"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"
    TRANSFERRED = "transferred"
    ESCALATED = "escalated"
    EXTENSION_GRANTED = "extension_granted"
    RESOLVED = "resolved"
    RATED = "rated"
    REOPENED = "reopened"
    CLOSED = "closed"
    LATE_ACTION = "late_action"
    URGED = "urged"  # 督办: the supervision office urges the holder, which keeps the case
    CRITICIZED = "criticized"  # a written criticism of a holder that let an urging lapse
    REFERRED = "referred"  # 问责: referred to the discipline commission, naming the accountable units
    EXTENSION_REQUESTED = "extension_requested"
    EXTENSION_DENIED = "extension_denied"
    RESUMED = "resumed"


OVERSIGHT_KINDS = (Kind.URGED, Kind.CRITICIZED, Kind.REFERRED)


class Status(StrEnum):
    """What a case is waiting for.

    RATED and REOPENED are waiting for the SLA engine to escalate (an unsatisfied rating or a reopened
    case is a breach by the unit that resolved it); a satisfied rating closes the case at once.
    """

    OPENED = "opened"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"
    RESOLVED = "resolved"
    RATED = "rated"
    REOPENED = "reopened"
    CLOSED = "closed"


# The extension reason that pauses the resolve clock (the unit waits on the resident) instead of
# granting a fixed extension. The pause ends at the case's next event or at the policy's maximum.
WAITING_ON_RESIDENT = "waiting_on_resident"
# The escalated event's reason when two units returned the case: the target arbitrates and cannot return it.
TRANSFER_LIMIT = "transfer_limit"
# Extension events carry the hours asked or granted in their note, machine-readable: "hours=<n>".
_HOURS = "hours="

_URGENCY_RANK = {u.value: rank for rank, u in enumerate(Urgency)}
_TIER_RANK = {t.value: rank for rank, t in enumerate(Tier)}


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """One hash-chained case lifecycle event (contract: schemas/avro/CaseEvent.avsc, schemas/topics/whistle.cases.events.yaml)."""

    event_id: str
    case_id: str
    seq: int
    kind: str
    at: datetime
    cause_id: str
    actor_unit_id: str | None
    assignee_unit_id: str
    assignee_tier: str
    category: str
    urgency: str
    district_id: str
    street_id: str | None
    community_id: str | None
    grid_id: str | None
    department_id: str | None
    source: str | None
    report_id: str | None
    reason: str | None
    note: str | None
    rating: int | None
    policy_version: str
    prev_hash: str
    hash: str


_HASHED_FIELDS = tuple(f.name for f in fields(CaseEvent) if f.name != "hash")


class Link(NamedTuple):
    """One rung of an escalation chain."""

    unit_id: str
    tier: str


Chain = tuple[Link, ...]


class Place(NamedTuple):
    """Where the case is and which department owns its category (copied onto every event)."""

    district_id: str
    street_id: str | None
    community_id: str | None
    grid_id: str | None
    department_id: str | None


@dataclass(frozen=True, slots=True)
class HandlingRules:
    """The part of an SLA policy that decides handling actions (the rest of it decides deadlines)."""

    transfers_before_escalation: int = 2
    unsatisfied_rating_max: int = 2
    max_extensions: int = 1
    max_pauses: int = 1
    extension_approval: bool = False  # an extension is asked and the holder's superior decides it (else granted when asked)
    max_extension_hours: int = 0  # with approval: the most hours a stage may be extended by in all
    first_receiver: bool = False  # 首接负责制: the first unit to receive a case stays responsible; it cannot return it
    oversight: bool = False  # breaches past the handling tiers urge the holder instead of taking the case from it


@dataclass(frozen=True, slots=True)
class CaseState:
    """A case as the fold of its events. Compact on purpose: see the module docstring."""

    case_id: str
    seq: int
    head: bytes  # sha256 digest of the last event: the next event's prev_hash
    status: str
    category: str
    urgency: str
    policy_version: str
    place: Place
    chains: tuple[Chain, ...]  # the first report's chain, then chains of merged reports with another first unit
    assignee: Link
    stage_start_ms: int  # the current tier got the case: first dispatch or last escalation
    holder_since_ms: int  # the current holder got the case, or last returned it
    status_since_ms: int  # the status was entered (acceptance time while accepted)
    escalations: int
    arbitration: bool  # the holder got the case as common parent of a boundary dispute: it cannot return it
    rejected_by: tuple[str, ...]  # units that returned the case as not theirs in this stage, in order
    lost_by_breach: tuple[str, ...]  # units that lost the case to an SLA breach: their actions are late
    extensions: int  # extensions granted in this stage
    pauses: tuple[tuple[int, int | None], ...]  # waiting-on-resident pauses in this stage; None = still open
    rating: int | None
    seen: bytes  # 8-byte digests of the applied cause ids
    last_at_ms: int  # the latest event's time: no later event may be recorded before it
    oversight: tuple[str, ...] = ()  # oversight events so far (urged, criticized, referred), in order
    oversight_since_ms: int = 0  # the latest oversight event: the holder's fresh limits count from it
    extension_request: int | None = None  # hours asked in an extension request awaiting the superior
    granted_hours: int = 0  # hours granted by approvals in this stage

    def has_applied(self, cause_id: str) -> bool:
        """True when an event of this case already recorded `cause_id` (redelivery: decide nothing)."""
        digest = _digest(cause_id)
        at = self.seen.find(digest)
        while at != -1 and at % 8:
            at = self.seen.find(digest, at + 1)
        return at != -1


def _positional_constructor(cls):
    """A constructor taking every field in order, for the hot path of a frozen slots dataclass.

    WHY: the generated frozen __init__ goes through object.__setattr__ for every field; setting the
    slots through their descriptors costs about half as much. The result is
    an ordinary instance: equality, hashing, repr and immutability are the dataclass's own.
    """
    setters = tuple(cls.__dict__[f.name].__set__ for f in fields(cls))
    new = object.__new__

    def construct(values):
        instance = new(cls)
        for setter, value in zip(setters, values):
            setter(instance, value)
        return instance

    return construct


_new_state = _positional_constructor(CaseState)
_new_event = _positional_constructor(CaseEvent)
_read_state = attrgetter(*CaseState.__slots__)
_STATE_POSITION = {name: position for position, name in enumerate(CaseState.__slots__)}
_STORED_BEFORE_OVERSIGHT = _STATE_POSITION["oversight"]  # how many fields a state stored before oversight had
_OVERSIGHT_DEFAULTS = ((), 0, None, 0)  # oversight, oversight_since_ms, extension_request, granted_hours of such a state


def last_event_ms(state: CaseState) -> int:
    """The time of the case's latest event: no later event may be recorded before it."""
    return state.last_at_ms


def _latest_lifecycle_ms(values: list) -> int:
    """For a state stored before `last_at_ms` existed: its latest lifecycle time (merges and extensions left no time)."""
    position = _STATE_POSITION
    latest = max(values[position["stage_start_ms"]], values[position["holder_since_ms"]], values[position["status_since_ms"]])
    for start, end in values[position["pauses"]]:
        latest = max(latest, start, end or start)
    return latest


BACKDATED = "backdated"


def _backdated(claimed: datetime) -> str:
    return f"{BACKDATED}:claimed={iso_ms(claimed)}"


def escalation_target(state: CaseState) -> Link | None:
    """The unit above the holder: next on the first chain holding it; None at the top of that chain.

    A holder on none of the chains (an arbiter from outside them) escalates to the lowest unit of a
    higher tier on the case's first chain.
    """
    holder = state.assignee
    for chain in state.chains:
        for position, link in enumerate(chain):
            if link.unit_id == holder.unit_id:
                return chain[position + 1] if position + 1 < len(chain) else None
    return next((link for link in state.chains[0] if _TIER_RANK[link.tier] > _TIER_RANK[holder.tier]), None)


def find_link(state: CaseState, unit_id: str) -> Link | None:
    """The unit's rung on one of the case's chains (chains in order), None if no chain has it."""
    for chain in state.chains:
        for link in chain:
            if link.unit_id == unit_id:
                return link
    return None


# -- evolve ---------------------------------------------------------------------------------------


def evolve(state: CaseState | None, event: CaseEvent) -> CaseState:
    """The state after `event`. Refuses an event that does not continue the case's chain (seq and prev_hash)."""
    kind = event.kind
    at = to_epoch_ms(event.at)
    if state is None:
        if kind != Kind.OPENED or event.seq != 1 or event.prev_hash != GENESIS_HASH:
            raise DomainError(f"case {event.case_id} must start with an opened event at seq 1, got {kind} at seq {event.seq}",
                              case_id=event.case_id, event_id=event.event_id)
        chain = decode_chain(event.note, event.event_id)
        return CaseState(
            case_id=event.case_id, seq=1, head=bytes.fromhex(event.hash), status=Status.OPENED,
            category=_intern(event.category), urgency=_intern(event.urgency), policy_version=_intern(event.policy_version),
            place=_place(event), chains=(chain,), assignee=chain[0], stage_start_ms=at, holder_since_ms=at,
            status_since_ms=at, escalations=0, arbitration=False, rejected_by=(), lost_by_breach=(), extensions=0,
            pauses=(), rating=None, seen=_digest(event.cause_id), last_at_ms=at, oversight=(), oversight_since_ms=0,
            extension_request=None, granted_hours=0,
        )
    if event.seq != state.seq + 1 or bytes.fromhex(event.prev_hash) != state.head:
        raise DomainError(f"event {event.event_id} does not continue case {state.case_id} (at seq {state.seq})",
                          case_id=state.case_id, event_id=event.event_id, field="seq")
    evolver = _EVOLVERS.get(kind)
    if evolver is None:
        raise DomainError(f"unknown case event kind {kind!r}", case_id=state.case_id, event_id=event.event_id, field="kind")
    seen = state.seen
    digest = _digest(event.cause_id)
    if not seen.endswith(digest):
        seen += digest
    changes: dict = {"seq": event.seq, "head": bytes.fromhex(event.hash), "seen": seen, "last_at_ms": max(state.last_at_ms, at)}
    pauses = state.pauses
    if pauses and pauses[-1][1] is None and kind not in _PAUSE_GOES_ON:
        pauses = changes["pauses"] = pauses[:-1] + ((pauses[-1][0], at),)  # any handling ends a waiting-on-resident pause
    changes.update(evolver(state, event, at, pauses))
    values = list(_read_state(state))
    for name, value in changes.items():
        values[_STATE_POSITION[name]] = value
    return _new_state(values)


# A waiting-on-resident pause ends at the case's next handling event, except these (they change no handling).
_PAUSE_GOES_ON = frozenset((Kind.REPORT_MERGED, Kind.LATE_ACTION, Kind.EXTENSION_REQUESTED, Kind.EXTENSION_DENIED))


# One small function per event kind: what the event changes, given the state before it, the event's
# epoch ms and the pauses as the common step left them.

def _accepted(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {"status": Status.ACCEPTED, "status_since_ms": at, "rejected_by": ()}


def _resolved(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {"status": Status.RESOLVED, "status_since_ms": at}


def _report_merged(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    chain = decode_chain(event.note, event.event_id)
    changes: dict = {"urgency": _intern(event.urgency)}
    if not any(c[0].unit_id == chain[0].unit_id for c in state.chains):
        changes["chains"] = state.chains + (chain,)
    return changes


def _dispatched(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {"status": Status.DISPATCHED, "assignee": _link(state, event), "stage_start_ms": at, "holder_since_ms": at, "status_since_ms": at}


def _transferred(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    assert event.actor_unit_id is not None  # handle_action records the returning unit as the actor of every transferred event
    if state.arbitration:  # the arbiter assigned the case: the unit it chose cannot return it either
        return {"assignee": _link(state, event), "holder_since_ms": at}
    return {"assignee": _link(state, event), "holder_since_ms": at, "rejected_by": state.rejected_by + (_intern(event.actor_unit_id),)}


def _escalated(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    lost = state.lost_by_breach
    if event.reason != TRANSFER_LIMIT and state.assignee.unit_id not in lost:
        lost = lost + (state.assignee.unit_id,)
    return {"status": Status.DISPATCHED, "assignee": _link(state, event), "stage_start_ms": at, "holder_since_ms": at, "status_since_ms": at,
            "escalations": state.escalations + 1, "arbitration": event.reason == TRANSFER_LIMIT, "rejected_by": (), "lost_by_breach": lost,
            "extensions": 0, "pauses": (), "rating": None, "extension_request": None, "granted_hours": 0}


def _oversight(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    """Urged, criticized or referred: the holder keeps the case and its fresh limits count from now.

    An unsatisfied rating or a reopening that led here sends the case back to the holder to handle again.
    """
    changes: dict = {"oversight": state.oversight + (_intern(event.kind),), "oversight_since_ms": at, "extension_request": None}
    if state.status in (Status.RATED, Status.REOPENED):
        changes.update(status=Status.ACCEPTED, status_since_ms=at, rating=None)
    return changes


def _extension_requested(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {"extension_request": extension_hours(event)}


def _extension_granted(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    if event.reason == WAITING_ON_RESIDENT:
        return {"pauses": pauses + ((at, None),)}
    return {"extensions": state.extensions + 1, "granted_hours": state.granted_hours + (extension_hours(event) or 0), "extension_request": None}


def _extension_denied(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {"extension_request": None}


def extension_hours(event: CaseEvent) -> int | None:
    """The hours an extension event asked or granted (its note "hours=<n>"); None for an immediate grant of the policy's fixed length."""
    note = event.note or ""
    if not note.startswith(_HOURS):
        return None
    return int(note[len(_HOURS):].partition(";")[0])


def _rated(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {"status": Status.RATED, "status_since_ms": at, "rating": event.rating}


def _reopened(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {"status": Status.REOPENED, "status_since_ms": at, "rating": None}


def _closed(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {"status": Status.CLOSED, "status_since_ms": at}


def _late_action(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {}  # recorded for the auditors; it changes nothing


def _resumed(state: CaseState, event: CaseEvent, at: int, pauses: tuple) -> dict:
    return {}  # the common step ended the pause


_EVOLVERS: dict[str, Callable[[CaseState, CaseEvent, int, tuple], dict]] = {  # keyed by Kind, looked up by an event's kind (a str)
    Kind.ACCEPTED: _accepted, Kind.RESOLVED: _resolved, Kind.REPORT_MERGED: _report_merged, Kind.DISPATCHED: _dispatched,
    Kind.TRANSFERRED: _transferred, Kind.ESCALATED: _escalated, Kind.EXTENSION_GRANTED: _extension_granted, Kind.RATED: _rated,
    Kind.REOPENED: _reopened, Kind.CLOSED: _closed, Kind.LATE_ACTION: _late_action, Kind.URGED: _oversight, Kind.CRITICIZED: _oversight,
    Kind.REFERRED: _oversight, Kind.EXTENSION_REQUESTED: _extension_requested, Kind.EXTENSION_DENIED: _extension_denied, Kind.RESUMED: _resumed,
}


def fold(events) -> dict[str, CaseState]:
    """Every case's state from its events in log order (recovery, audits, tests)."""
    states: dict[str, CaseState] = {}
    for event in events:
        states[event.case_id] = evolve(states.get(event.case_id), event)
    return states


# -- deciders -------------------------------------------------------------------------------------


def open_case(enriched: EnrichedReport, case_id: str, policy_version: str, at: datetime) -> list[CaseEvent]:
    """A new case for the first report of an incident: opened, then dispatched to the first unit of its chain."""
    report = enriched.report
    at_ms = to_epoch_ms(at)
    chain, chain_text, department = _chain_of(enriched, case_id)
    location = enriched.location
    place = Place(location.district_id, location.street_id, location.community_id, location.grid_id, department)
    writer = _EventWriter(case_id, 0, GENESIS_HASH, report.category, report.urgency.value, policy_version, place)
    writer.emit(Kind.OPENED, at_ms, report.report_id, chain[0], source=report.source.value, report_id=report.report_id,
                reason=",".join(enriched.flags) or None, note=chain_text)
    writer.emit(Kind.DISPATCHED, at_ms, report.report_id, chain[0])
    return writer.events


def merge_report(state: CaseState | None, enriched: EnrichedReport, at: datetime) -> list[CaseEvent]:
    """Record another report of the same incident. A more urgent report raises the case's urgency.

    A merged report whose first responsible unit differs from the case's (a report from across a
    street boundary) adds its chain: that unit is where the case goes if the holder returns it.
    """
    report = enriched.report
    at_ms = to_epoch_ms(at)
    if state is None:
        raise TransitionError("report merged into a case that does not exist", reason="unknown_case", report_id=report.report_id)
    if state.has_applied(report.report_id):
        return []
    if state.status == Status.CLOSED:
        raise TransitionError(f"report merged into closed case {state.case_id}: a closed case takes no reports",
                              reason="case_closed", case_id=state.case_id, report_id=report.report_id)
    _, chain_text, _ = _chain_of(enriched, state.case_id)
    urgency = max(state.urgency, report.urgency.value, key=_URGENCY_RANK.__getitem__)
    flags = enriched.flags
    previous = last_event_ms(state)
    if at_ms < previous:  # a case's log never runs backwards: the report's time is kept, flagged, as evidence
        flags, at_ms = (*flags, _backdated(at)), previous
    writer = _EventWriter.after(state, urgency=urgency)
    writer.emit(Kind.REPORT_MERGED, at_ms, report.report_id, state.assignee, source=report.source.value,
                report_id=report.report_id, reason=",".join(flags) or None, note=chain_text)
    return writer.events


def handle_action(state: CaseState | None, action: HandlingAction, rules: HandlingRules,
                  units: Mapping[str, str] | None = None) -> list[CaseEvent]:
    """The events a handling unit's (or the reporter's) action causes, or TransitionError saying why it cannot.

    An action by a unit that lost the case to an SLA breach is recorded as late_action: the breach
    stands and the case stays where the breach sent it. `units` (unit id -> tier, the reference's
    organisation) names the units a return or an arbiter's assignment may send the case to.
    """
    at = to_epoch_ms(action.at)
    if state is None:
        raise _refuse(None, action, "unknown_case", "action on a case that does not exist")
    if state.has_applied(action.action_id):
        return []
    previous = last_event_ms(state)
    if at < previous:  # a case's log never runs backwards: the claim is kept, flagged, as evidence
        action = replace(action, note=flagged_note(action.note, _backdated(action.at)))
        at = previous
    kind = action.kind
    if kind in (ActionKind.RATE, ActionKind.REOPEN):
        return _reporter_action(state, action, rules, at)
    if kind in (ActionKind.APPROVE_EXTENSION, ActionKind.DENY_EXTENSION):
        return _superior_decision(state, action, rules, at)
    writer = _EventWriter.after(state)
    if action.unit_id != state.assignee.unit_id:
        if action.unit_id in state.lost_by_breach:
            writer.emit(Kind.LATE_ACTION, at, action.action_id, state.assignee, actor=action.unit_id,
                        reason=f"{kind.value} after the case was escalated away by an SLA breach", note=action.note)
            return writer.events
        raise _refuse(state, action, "not_assignee", f"{action.unit_id} is not assigned case {state.case_id} (held by {state.assignee.unit_id})", "unit_id")
    status = state.status
    if kind == ActionKind.ACCEPT:
        if status != Status.DISPATCHED:
            raise _refuse(state, action, "not_dispatched", f"cannot accept a case that is {status}")
        writer.emit(Kind.ACCEPTED, at, action.action_id, state.assignee, actor=action.unit_id, note=action.note)
    elif kind == ActionKind.TRANSFER:
        if status != Status.DISPATCHED:
            raise _refuse(state, action, "not_dispatched", f"cannot return a case that is {status}: only an unaccepted case can be returned")
        if not action.reason:
            raise _refuse(state, action, "reason_missing", "returning a case as not ours needs a reason", "reason")
        writer.emit(Kind.TRANSFERRED, at, action.action_id, _next_holder(state, action, rules, units), actor=action.unit_id,
                    reason=action.reason, note=action.note)
    elif kind == ActionKind.RESOLVE:
        if status != Status.ACCEPTED:
            raise _refuse(state, action, "not_accepted", f"cannot resolve a case that is {status}: accept it first")
        writer.emit(Kind.RESOLVED, at, action.action_id, state.assignee, actor=action.unit_id, reason=action.reason, note=action.note)
    elif kind == ActionKind.REQUEST_EXTENSION:
        _request_extension(state, action, rules, at, writer)
    elif kind == ActionKind.RESUME:
        if not (state.pauses and state.pauses[-1][1] is None):
            raise _refuse(state, action, "not_paused", f"case {state.case_id} is not waiting on the resident: there is nothing to resume")
        writer.emit(Kind.RESUMED, at, action.action_id, state.assignee, actor=action.unit_id, reason=action.reason, note=action.note)
    else:
        raise _refuse(state, action, "unknown_action", f"unknown action kind {kind!r}", "kind")
    return writer.events


def _request_extension(state: CaseState, action: HandlingAction, rules: HandlingRules, at: int, writer: _EventWriter) -> None:
    """An extension asked (for the superior to decide, when the policy wants approval) or a waiting-on-resident pause.

    The accept clock is never paused or extended: only an accepted, unresolved case can be.
    """
    status = state.status
    if status != Status.ACCEPTED:
        raise _refuse(state, action, "not_accepted", f"cannot extend a case that is {status}: only an accepted, unresolved case can")
    hours = action.extension_hours
    if hours is not None and hours <= 0:
        raise _refuse(state, action, "extension_hours_invalid", f"extension_hours must be positive, got {hours}", "extension_hours")
    if action.reason == WAITING_ON_RESIDENT:
        if len(state.pauses) >= rules.max_pauses:
            raise _refuse(state, action, "pause_limit", f"the policy allows {rules.max_pauses} waiting-on-resident pause(s) per stage")
        writer.emit(Kind.EXTENSION_GRANTED, at, action.action_id, state.assignee, actor=action.unit_id, reason=action.reason, note=action.note)
        return
    if state.extensions >= rules.max_extensions:
        raise _refuse(state, action, "extension_limit", f"the policy allows {rules.max_extensions} extension(s) per stage")
    if not rules.extension_approval:  # a policy that grants its fixed extension when asked
        requested = f"requested {hours} h" if hours else None
        writer.emit(Kind.EXTENSION_GRANTED, at, action.action_id, state.assignee, actor=action.unit_id, reason=action.reason,
                    note="; ".join(filter(None, (requested, action.note))) or None)
        return
    if hours is None:
        raise _refuse(state, action, "extension_hours_missing", "an extension request names the hours asked", "extension_hours")
    if not action.reason:
        raise _refuse(state, action, "reason_missing", "an extension request names its reason", "reason")
    if state.extension_request is not None:
        raise _refuse(state, action, "request_pending", f"an extension of {state.extension_request} h awaits the superior's decision")
    _within_maximum(state, action, rules, hours)
    writer.emit(Kind.EXTENSION_REQUESTED, at, action.action_id, state.assignee, actor=action.unit_id, reason=action.reason, note=f"{_HOURS}{hours}")


def _superior_decision(state: CaseState, action: HandlingAction, rules: HandlingRules, at: int) -> list[CaseEvent]:
    """The holder's superior (the unit above it on the case's chain) approves an extension, for at most the hours asked, or denies it.

    Only a request still pending can be decided: a deadline that passes first ends the stage, and the request with it.
    """
    superior = escalation_target(state)
    if superior is None or action.unit_id != superior.unit_id:
        who = "no unit" if superior is None else superior.unit_id
        raise _refuse(state, action, "not_superior", f"{action.unit_id} is not the superior of {state.assignee.unit_id}, the holder ({who} is)", "unit_id")
    asked = state.extension_request
    if asked is None:
        raise _refuse(state, action, "no_pending_request", f"case {state.case_id} has no extension request awaiting a decision")
    writer = _EventWriter.after(state)
    if action.kind == ActionKind.DENY_EXTENSION:
        writer.emit(Kind.EXTENSION_DENIED, at, action.action_id, state.assignee, actor=action.unit_id, reason=action.reason, note=f"{_HOURS}{asked}")
        return writer.events
    granted = action.extension_hours
    if granted is None or granted <= 0:
        raise _refuse(state, action, "extension_hours_missing", "an approval names the hours granted", "extension_hours")
    if granted > asked:
        raise _refuse(state, action, "more_than_requested", f"{granted} h granted, but only {asked} h were asked", "extension_hours")
    _within_maximum(state, action, rules, granted)
    writer.emit(Kind.EXTENSION_GRANTED, at, action.action_id, state.assignee, actor=action.unit_id, reason=action.reason, note=f"{_HOURS}{granted}")
    return writer.events


def _within_maximum(state: CaseState, action: HandlingAction, rules: HandlingRules, hours: int) -> None:
    if state.granted_hours + hours > rules.max_extension_hours:
        raise _refuse(state, action, "extension_past_maximum", f"{hours} h more would extend this stage by {state.granted_hours + hours} h: "
                      f"the policy allows at most {rules.max_extension_hours} h", "extension_hours")


def oversee(state: CaseState, kind: str, overseer: Link, at: datetime, breach_id: str, breach_type: str, summary: str) -> list[CaseEvent]:
    """The oversight event of a breach past the handling tiers: urged, criticized or referred by `overseer`.

    The holder keeps the case and stays responsible until it is resolved and rated. A referral names the
    accountable units: the holder and every unit that lost the case to a breach before it.
    """
    if state.has_applied(breach_id):
        return []
    note = summary
    if kind == Kind.REFERRED:
        accountable = dict.fromkeys((state.assignee.unit_id, *state.lost_by_breach))
        note = f"accountable: {','.join(accountable)}; {summary}"
    writer = _EventWriter.after(state)
    writer.emit(kind, to_epoch_ms(at), breach_id, state.assignee, actor=overseer.unit_id, reason=breach_type, note=note)
    return writer.events


def escalate(state: CaseState, target: Link, at: datetime, breach_id: str, breach_type: str, summary: str) -> list[CaseEvent]:
    """The escalated event of an SLA breach: `target` now holds the case and must accept it afresh.

    The holder that lost the case is remembered: its later actions become late_action events.
    """
    if state.has_applied(breach_id):
        return []
    writer = _EventWriter.after(state)
    writer.emit(Kind.ESCALATED, to_epoch_ms(at), breach_id, target, reason=breach_type, note=summary)
    return writer.events


def close_unrated(state: CaseState, at: datetime, cause_id: str, reason: str) -> list[CaseEvent]:
    """The closed event of a resolved case nobody rated in time."""
    if state.status != Status.RESOLVED or state.has_applied(cause_id):
        return []
    writer = _EventWriter.after(state)
    writer.emit(Kind.CLOSED, to_epoch_ms(at), cause_id, state.assignee, reason=reason)
    return writer.events


def _reporter_action(state: CaseState, action: HandlingAction, rules: HandlingRules, at: int) -> list[CaseEvent]:
    writer = _EventWriter.after(state)
    # nothing above: under oversight, once the case was referred; else at the top of the holder's chain
    nothing_above = Kind.REFERRED in state.oversight if rules.oversight else escalation_target(state) is None
    if action.report_id is not None and not state.has_applied(action.report_id):  # the reporter acts through a report of this case
        raise _refuse(state, action, "not_this_case_reporter", f"report {action.report_id} is not one of case {state.case_id}'s reports", "report_id")
    if action.kind == ActionKind.RATE:
        if state.status != Status.RESOLVED:
            raise _refuse(state, action, "not_resolved", f"cannot rate a case that is {state.status}: only a resolved, unrated case can be rated")
        if _handled(state, action.unit_id):
            raise _refuse(state, action, "self_rating", f"{action.unit_id} handled the case and cannot rate it", "unit_id")
        if not isinstance(action.rating, int) or isinstance(action.rating, bool) or not 1 <= action.rating <= 5:
            raise _refuse(state, action, "rating_out_of_range", f"rating must be a whole number 1..5, got {action.rating!r}", "rating")
        writer.emit(Kind.RATED, at, action.action_id, state.assignee, actor=action.unit_id, rating=action.rating, note=action.note)
        if action.rating > rules.unsatisfied_rating_max or nothing_above:
            writer.emit(Kind.CLOSED, at, action.action_id, state.assignee, reason="rated")
        return writer.events
    if state.status not in (Status.RESOLVED, Status.CLOSED):
        raise _refuse(state, action, "not_resolved", f"cannot reopen a case that is {state.status}")
    writer.emit(Kind.REOPENED, at, action.action_id, state.assignee, actor=action.unit_id, reason=action.reason, note=action.note)
    if nothing_above:
        writer.emit(Kind.DISPATCHED, at, action.action_id, state.assignee, reason="reopened at the top of the chain")
    return writer.events


def _handled(state: CaseState, unit_id: str) -> bool:
    """Whether `unit_id` is one of the case's handling units: on its chains, its holder, or one that held it."""
    return (unit_id == state.assignee.unit_id or unit_id in state.lost_by_breach or unit_id in state.rejected_by
            or find_link(state, unit_id) is not None)


def _next_holder(state: CaseState, action: HandlingAction, rules: HandlingRules, units: Mapping[str, str] | None) -> Link:
    """Who gets a returned case: the unit the returner names, else another first responsible unit from a
    merged report, else the unit above.

    When this return reaches the policy's transfer limit the holder keeps the case: the SLA engine
    escalates it at once to the common parent of the units that returned it. An arbiter (the common
    parent) cannot return the case: its transfer assigns it to the unit it names. Under the first-receiver
    rule (首接负责制) the first unit to receive the case stays responsible and cannot return it.
    """
    returning = action.unit_id
    named = _named_unit(state, action, units)
    if state.arbitration:
        if named is None:
            raise _refuse(state, action, "arbiter_cannot_return", f"{returning} received this boundary dispute as common parent and must "
                          "assign it: name the unit (target_unit_id)", "target_unit_id")
        return named
    if rules.first_receiver and returning == state.chains[0][0].unit_id:
        raise _refuse(state, action, "first_receiver", f"{returning} received the case first and stays responsible under the first-receiver "
                      "rule (首接负责制): it coordinates the units concerned instead of returning the case")
    if len(state.rejected_by) + 1 >= rules.transfers_before_escalation:
        return state.assignee
    if named is not None:
        return named
    if state.escalations == 0:
        for chain in state.chains:
            first = chain[0]
            if first.unit_id != returning and first.unit_id not in state.rejected_by:
                return first
    above = escalation_target(state)
    if above is None:
        raise _refuse(state, action, "no_unit_above", f"{returning} is at the top of the chain: there is no one to return the case to")
    return above


def _named_unit(state: CaseState, action: HandlingAction, units: Mapping[str, str] | None) -> Link | None:
    """The unit a transfer names (target_unit_id) as a Link, refusing an unknown unit or the sender itself."""
    unit_id = action.target_unit_id
    if unit_id is None:
        return None
    if unit_id == action.unit_id:
        raise _refuse(state, action, "target_is_sender", f"{unit_id} cannot return the case to itself", "target_unit_id")
    link = find_link(state, unit_id)
    if link is not None:
        return link
    tier = None if units is None else units.get(unit_id)
    if tier is None:
        raise _refuse(state, action, "unknown_unit", f"target_unit_id {unit_id!r} is not a unit of the district's organisation", "target_unit_id")
    return Link(_intern(unit_id), _intern(tier))


def _refuse(state: CaseState | None, action: HandlingAction, reason: str, message: str, field: str = "kind") -> TransitionError:
    return TransitionError(f"{action.kind.value} refused: {message}", reason=reason, case_id=action.case_id if state is None else state.case_id,
                           action_id=action.action_id, field=field)


# -- events and the hash chain ---------------------------------------------------------------------


class _EventWriter:
    """Appends sealed events to one case: next seq, previous hash, and the case's copied fields."""

    __slots__ = ("case_id", "seq", "prev_hash", "category", "urgency", "policy_version", "place", "events", "_at_ms", "_at")

    def __init__(self, case_id: str, seq: int, prev_hash: str, category: str, urgency: str, policy_version: str, place: Place) -> None:
        self.case_id, self.seq, self.prev_hash = case_id, seq, prev_hash
        self.category, self.urgency, self.policy_version, self.place = category, urgency, policy_version, place
        self.events: list[CaseEvent] = []
        self._at_ms: int | None = None
        self._at: datetime | None = None

    @classmethod
    def after(cls, state: CaseState, urgency: str | None = None) -> _EventWriter:
        return cls(state.case_id, state.seq, state.head.hex(), state.category, urgency or state.urgency, state.policy_version, state.place)

    def emit(self, kind: str, at_ms: int, cause_id: str, assignee: Link, *, actor: str | None = None, source: str | None = None,
             report_id: str | None = None, reason: str | None = None, note: str | None = None, rating: int | None = None) -> CaseEvent:
        self.seq += 1
        place = self.place
        record = {
            "event_id": f"{self.case_id}:{self.seq}", "case_id": self.case_id, "seq": self.seq, "kind": kind, "at": at_ms,
            "cause_id": cause_id, "actor_unit_id": actor, "assignee_unit_id": assignee.unit_id, "assignee_tier": assignee.tier,
            "category": self.category, "urgency": self.urgency, "district_id": place.district_id, "street_id": place.street_id,
            "community_id": place.community_id, "grid_id": place.grid_id, "department_id": place.department_id,
            "source": source, "report_id": report_id, "reason": reason, "note": note, "rating": rating,
            "policy_version": self.policy_version, "prev_hash": self.prev_hash,
        }
        digest = chain_hash(self.prev_hash, record)
        if at_ms != self._at_ms:
            self._at_ms, self._at = at_ms, from_epoch_ms(at_ms)
        record["at"] = self._at
        record["hash"] = digest
        event = _new_event(record.values())  # the record is built in field order
        self.prev_hash = digest
        self.events.append(event)
        return event


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """What an event's hash covers: its record without `hash`, `at` as epoch ms, keys sorted, as JSON (orjson).

    The one canonical form: `_EventWriter.emit` seals new events with it and verification recomputes it,
    so anyone holding the record (the Avro message, a ClickHouse row) can check
    hash = sha256(bytes.fromhex(prev_hash) + canonical_bytes(record)).
    """
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """The hash of an event whose hashed record is `record`, following the event whose hash is `prev_hash`."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_bytes(record)).hexdigest()


def hashed_record(event: CaseEvent) -> dict[str, Any]:
    """The fields of `event` its hash covers, in the canonical form's types (`at` as epoch ms)."""
    record = {name: getattr(event, name) for name in _HASHED_FIELDS}
    record["at"] = to_epoch_ms(event.at)
    return record


def event_hash(event: CaseEvent) -> str:
    """The hash `event` must carry given its content and prev_hash."""
    return chain_hash(event.prev_hash, hashed_record(event))


def verify_chain(events) -> list[str]:
    """Problems in per-case hash chains, one line each naming the event; [] when every chain is intact.

    Detects an altered event (hash does not match content), a dropped or reordered event (seq gap or
    order, prev_hash not the previous hash) and a wrong event_id. Events of several cases may be
    interleaved, each case's in log order. A dropped *last* event is invisible without an outside
    anchor (compare the last hash with the one the processor published).
    """
    problems: list[str] = []
    last: dict[str, tuple[int, str]] = {}
    for event in events:
        seq, prev = last.get(event.case_id, (0, GENESIS_HASH))
        name = event.event_id
        if event.event_id != f"{event.case_id}:{event.seq}":
            problems.append(f"{name}: event_id should be {event.case_id}:{event.seq}")
        if event.seq != seq + 1:
            problems.append(f"{name}: seq {event.seq} follows seq {seq} (missing or reordered events)")
        elif event.prev_hash != prev:
            problems.append(f"{name}: prev_hash is not the hash of event seq {seq}")
        try:
            recomputed = event_hash(event)
        except (ValueError, ValidationError) as exc:
            problems.append(f"{name}: cannot be hashed: {exc}")
        else:
            if recomputed != event.hash:
                problems.append(f"{name}: hash does not match the event's content (altered)")
        last[event.case_id] = (event.seq, event.hash)
    return problems


def encode_chain(chain: Chain) -> str:
    """The machine-readable chain carried in opened/report_merged notes: unit@tier joined by '>'."""
    return ">".join(f"{link.unit_id}@{link.tier}" for link in chain)


_CHAINS: dict[str, Chain] = {}
_CHAIN_TEXTS: dict[int, str] = {}  # id of an interned chain (interned chains live for the process) -> its text
_STRINGS: dict[str, str] = {}
_PLACES: dict[Place, Place] = {}
_CHAIN_SETS: dict[tuple[str, ...], tuple[Chain, ...]] = {}  # a stored state's chain texts -> its chains, one shared tuple
_TIME_POSITIONS = tuple(_STATE_POSITION[name] for name in ("stage_start_ms", "holder_since_ms", "status_since_ms", "last_at_ms"))


def decode_chain(text: str | None, event_id: str = "") -> Chain:
    """The chain an opened/report_merged note carries, interned: equal chains are one shared tuple."""
    chain = _CHAINS.get(text) if text else None
    if chain is not None:
        return chain
    links = []
    for part in (text or "").split(">"):
        unit_id, _, tier = part.rpartition("@")
        if not unit_id or tier not in _TIER_RANK:
            raise DomainError(f"event {event_id} note is not an escalation chain (unit@tier>...): {text!r}", event_id=event_id, field="note")
        links.append(Link(_intern(unit_id), _intern(tier)))
    chain = tuple(links)
    assert text  # an empty or missing note has no unit@tier part: refused above
    _CHAINS[text] = chain
    _CHAIN_TEXTS[id(chain)] = text
    return chain


_REPORT_CHAINS: dict[tuple[str, ...], tuple[Chain, str, str | None]] = {}


def _chain_of(enriched: EnrichedReport, case_id: str) -> tuple[Chain, str, str | None]:
    """The report's chain as shared Links, its note text and its department; cached by unit ids (reference data)."""
    key = tuple([unit.unit_id for unit in enriched.chain])
    cached = _REPORT_CHAINS.get(key)
    if cached is not None:
        return cached
    if not key:
        raise ValidationError(f"report {enriched.report.report_id} has an empty escalation chain", field="chain", case_id=case_id)
    for unit_id in key:
        if not unit_id or "@" in unit_id or ">" in unit_id:
            raise ValidationError(f"unit id {unit_id!r} cannot be recorded in a chain ('@' and '>' are separators)", field="chain", case_id=case_id)
    text = encode_chain(tuple(Link(u.unit_id, Tier(u.tier).value) for u in enriched.chain))
    chain = decode_chain(text)
    department = next((link.unit_id for link in chain if link.tier == Tier.DEPARTMENT.value), None)
    cached = _REPORT_CHAINS[key] = (chain, text, department)
    return cached


def stored_values(state: CaseState) -> tuple:
    """The state's fields in order, for storing: chains as their text, place and assignee as plain tuples."""
    values = list(_read_state(state))
    values[_STATE_POSITION["chains"]] = tuple(_CHAIN_TEXTS[id(chain)] for chain in state.chains)
    values[_STATE_POSITION["place"]] = tuple(state.place)
    values[_STATE_POSITION["assignee"]] = tuple(state.assignee)
    return tuple(values)


def state_from_stored(values: tuple) -> CaseState:
    """The state from `stored_values`, with its chains (and their tuple), place, assignee and strings interned again,
    and its equal times one object, so that a million recovered cases share one copy of each chain and name."""
    row: list[Any] = list(values)
    position = _STATE_POSITION
    if len(row) == _STORED_BEFORE_OVERSIGHT - 1:  # stored by a release before last_at_ms
        row.append(_latest_lifecycle_ms(row))
    if len(row) == _STORED_BEFORE_OVERSIGHT:  # stored by a release before oversight and approved extensions
        row.extend(_OVERSIGHT_DEFAULTS)
    texts = tuple(row[position["chains"]])
    chains = _CHAIN_SETS.get(texts)
    if chains is None:
        chains = _CHAIN_SETS[texts] = tuple(decode_chain(text) for text in texts)
    row[position["chains"]] = chains
    district_id, *parts = row[position["place"]]
    place = Place(_intern(district_id), *(None if part is None else _intern(part) for part in parts))
    row[position["place"]] = _PLACES.setdefault(place, place)
    unit_id, tier = row[position["assignee"]]
    row[position["assignee"]] = next((link for chain in chains for link in chain if link == (unit_id, tier)), None) or Link(_intern(unit_id), _intern(tier))
    for name in ("status", "category", "urgency", "policy_version"):
        row[position[name]] = _intern(row[position[name]])
    for name in ("rejected_by", "lost_by_breach", "oversight"):
        row[position[name]] = tuple(_intern(unit) for unit in row[position[name]])
    times: dict[int, int] = {}  # a state's times are mostly equal (opened, dispatched, accepted at once): one int object each
    for at in _TIME_POSITIONS:
        row[at] = times.setdefault(row[at], row[at])
    return _new_state(row)


def _link(state: CaseState, event: CaseEvent) -> Link:
    """The event's assignee as the shared Link from the case's chains (a fresh one only if no chain has it)."""
    link = find_link(state, event.assignee_unit_id)
    if link is not None and link.tier == event.assignee_tier:
        return link
    return Link(_intern(event.assignee_unit_id), _intern(event.assignee_tier))


def _place(event: CaseEvent) -> Place:
    place = Place(_intern(event.district_id), _opt_intern(event.street_id), _opt_intern(event.community_id),
                  _opt_intern(event.grid_id), _opt_intern(event.department_id))
    return _PLACES.setdefault(place, place)


def _intern(text: str) -> str:
    return _STRINGS.setdefault(text, text)


def _opt_intern(text: str | None) -> str | None:
    return None if text is None else _STRINGS.setdefault(text, text)


def _digest(cause_id: str) -> bytes:
    return hashlib.blake2b(cause_id.encode(), digest_size=8).digest()
