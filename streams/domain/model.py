"""The shared vocabulary of Whistle's domain: frozen dataclasses, no Kafka, no Faust.

Every domain rule (normalize, enrich, route, merge, evolve, SLA) takes and returns
these values. They become dicts only at the serializer (`schemas.serde`).
All datetimes are timezone-aware UTC.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class Source(StrEnum):
    CAMERA = "camera"
    HOTLINE = "hotline"
    APP = "app"


class Urgency(StrEnum):
    NORMAL = "normal"
    URGENT = "urgent"
    EMERGENCY = "emergency"


class Tier(StrEnum):
    """Rungs of the escalation ladder, lowest first."""

    GRID = "grid"
    COMMUNITY = "community"
    STREET = "street"
    DEPARTMENT = "department"
    SUPERVISION = "supervision"
    DISCIPLINE = "discipline"


LADDER: tuple[Tier, ...] = tuple(Tier)


@dataclass(frozen=True, slots=True)
class Unit:
    """An organisation that can be assigned a case: a grid worker team, a community, a street office, a department..."""

    unit_id: str
    tier: Tier
    name: str


@dataclass(frozen=True, slots=True)
class Location:
    """Where a report is, down to the grid when it can be resolved.

    `resolved_by` says how: "point" (lat/lon in a grid polygon), "camera" (camera registry),
    "gazetteer" (hotline address text), or "dispatch_desk" (could not be resolved: routed to
    the street or district dispatch desk and flagged, never dropped).
    """

    district_id: str
    street_id: str | None
    community_id: str | None
    grid_id: str | None
    lat: float | None
    lon: float | None
    resolved_by: str


@dataclass(frozen=True, slots=True)
class CameraDetection:
    """An AI camera's detection as it arrived (whistle.raw.camera): the fields the domain reads.

    Raw records are typed once, at the serializer (`schemas.serde.from_record`); the values are what
    the channel sent, and `streams.domain.normalize` judges them (a wrong value is the channel's error,
    named by field, not a crash).
    """

    detection_id: Any
    camera_id: Any
    detected_at: Any
    category: Any
    confidence: Any
    snapshot_ref: Any
    model_version: Any
    lat: Any = None
    lon: Any = None
    coord_system: Any = "wgs84"


@dataclass(frozen=True, slots=True)
class HotlineTicket:
    """A 12345 hotline ticket as it arrived (whistle.raw.hotline); `caller_phone` is personal data."""

    ticket_id: Any
    received_at: Any
    operator_category: Any
    caller_phone: Any = None
    address_text: Any = None
    description: Any = None
    urgency: Any = None


@dataclass(frozen=True, slots=True)
class ResidentReport:
    """A resident's or grid worker's app report as it arrived (ResidentReport in whistle.raw.app); `reporter_id` is personal data."""

    report_id: Any
    reporter_id: Any
    reporter_role: Any
    reported_at: Any
    category: Any
    lat: Any = None
    lon: Any = None
    description: Any = None
    photo_refs: Any = ()
    address_text: Any = None
    coord_system: Any = "wgs84"


def scoped_report_id(source: str, integrator: str, record_id: str) -> str:
    """A report's Whistle id: its channel, the integrator that sent it (from its credential) and that integrator's own id.

    Ids live in the sender's namespace: one integrator reusing another's id names another report.
    Integrator names hold no ':', so the three parts are never ambiguous.
    """
    return f"{source}:{integrator}:{record_id}"


@dataclass(frozen=True, slots=True)
class Report:
    """One canonical report, whatever channel it came by.

    `report_id` is globally unique: channel, sending integrator and its id (`scoped_report_id`).
    `reporter_hash` is the keyed hash (HMAC) of the caller phone / reporter identity: personal
    data never leaves the input topics in clear.
    """

    report_id: str
    source: Source
    occurred_at: datetime
    category: str
    urgency: Urgency
    description: str
    lat: float | None = None
    lon: float | None = None
    address_text: str | None = None
    camera_id: str | None = None
    reporter_hash: str | None = None
    reporter_role: str | None = None
    media: tuple[str, ...] = ()
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class EnrichedReport:
    """A report placed on the map and routed: who is responsible and who is above them.

    `chain` is the escalation chain, lowest tier first, starting with the unit first responsible
    (grid worker team for territorial categories, else the owning department) and ending at the
    discipline commission. `flags` records anything an auditor should see (e.g. "outside_grid",
    "address_unresolved", "camera_unknown").
    """

    report: Report
    location: Location
    chain: tuple[Unit, ...]
    flags: tuple[str, ...] = ()

    @property
    def responsible(self) -> Unit:
        return self.chain[0]


class ActionKind(StrEnum):
    ACCEPT = "accept"
    TRANSFER = "transfer"  # returned as not ours, with a reason
    RESOLVE = "resolve"
    RATE = "rate"
    REOPEN = "reopen"
    REQUEST_EXTENSION = "request_extension"  # with reason waiting_on_resident: pause the resolve clock
    APPROVE_EXTENSION = "approve_extension"  # the holder's superior grants (at most) the hours asked
    DENY_EXTENSION = "deny_extension"
    RESUME = "resume"  # the resident answered: the resolve clock runs again


@dataclass(frozen=True, slots=True)
class HandlingAction:
    """A handling unit's (or the reporter's, for ratings) action on a case, from the app topic."""

    action_id: str
    case_id: str
    kind: ActionKind
    unit_id: str
    at: datetime
    reason: str | None = None
    note: str | None = None
    rating: int | None = None
    extension_hours: int | None = None
    report_id: str | None = None  # a reporter's rating or reopening: the report (of this case) they act through
    evidence: tuple[str, ...] = ()  # references to photos or documents of what was done
    target_unit_id: str | None = None  # a return: the unit believed responsible; an arbiter's transfer: the unit assigned
    actor: str | None = None  # the integrator whose credential sent it: set by Whistle's ingest, never by the sender
