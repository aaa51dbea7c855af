"""A deterministic simulated district: raw channel records and handling actions, in time order.

`simulate(reference, config)` yields SimEvents: camera detections, hotline tickets and app reports
(dicts with the Avro fields of CameraDetection, HotlineTicket, ResidentReport) and the handling
units' actions (HandlingAction). Same reference, same config (seed) -> the same events, byte for
byte in `write_jsonl`.

What it models:
- arrivals: a Poisson process per channel with an hourly (Beijing time) profile: cameras follow
  traffic, the hotline office hours, the app mornings and evenings;
- one incident reported by several channels within minutes (camera + hotline + app), and callers
  who ring again hours later: these must merge into one case;
- quirks the pipeline must absorb: address variants (district prefix, full-width digits, spaces,
  號, "附近"), vague addresses, road-only addresses, unknown cameras, low-confidence detections,
  GPS outside the district or (0, 0);
- handling: units that accept or resolve late (the SLA engine escalates the case, the unit's late
  action is recorded as such, and the unit above takes the case over, possibly late again), units
  that never act, grid teams on a street boundary that return the case as the other street's ("not
  ours"), the next holder returning it too, until the unit both answer to (enrich.common_parent)
  takes it; extensions for complex cases; residents who rate unsatisfied, more often when the case
  missed its resolve deadline, after which the unit above settles the case again.

Who acts, and when: the simulator runs the pipeline's own case engine (streams.domain.sla.CaseBook
with the SLA policies and the business calendar, and the merge index) over its reports and actions
in event-time order, as streams.pipeline.CaseProcessor does, so it knows at every instant which unit
holds each case and what the case waits for. Each case's next action is decided from that state and
scheduled for the unit holding the case; when a breach escalates the case, the new holder's actions
are planned afresh. So every action is one the engine accepts, or (a unit acting after losing the
case to a breach) one it records as a late action.

Both engines judge a deadline at the first event after it falls due, but the pipeline's clock may run
up to CLOCK_TOLERANCE behind or ahead of the simulator's, so a breach may escalate the case a little
sooner or later there, and the next holder's deadline follows; near a lunch break or the end of the
working day, on working time, minutes become hours. So the simulator keeps for each holder the
earliest and the latest time the pipeline may put its deadline at: steps meant to be in time come
CLOCK_TOLERANCE before the earliest, late steps (and the first step of a unit a breach gave the case)
CLOCK_TOLERANCE after the latest, and the pipeline judges every step as the simulator did. It also
takes each street's records to reach the case processor in event-time order: an incident's report
overtaken by a later one opens no case of its own there, and the actions naming that case are refused.

Incidents arrive during [start, start + days); their handling may run past the end.
Pacing (speed) is the send loop's business: every event carries its event time `at`.
"""
from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from random import Random
from typing import Any, BinaryIO

import orjson

from schemas.catalog import Catalog, default_catalog
from schemas.serde import from_record
from streams.domain.calendar import BusinessCalendar, load_calendar
from streams.domain.case import CaseEvent, CaseState, Kind, Status
from streams.domain.case_id import case_id_for
from streams.domain.credentials import RETURN_VISIT
from streams.domain.enrich import Enricher, common_parent, haversine_m
from streams.domain.merge import MergeIndex
from streams.domain.model import ActionKind, CameraDetection, EnrichedReport, HandlingAction, HotlineTicket, ResidentReport, Source, Urgency
from streams.domain.normalize import normalize_app_report, normalize_camera, normalize_hotline
from streams.domain.reference import DistrictReference, Grid
from streams.domain.sla import FINAL_OVERDUE, CaseBook, DeadlineKind, SlaPolicy, deadlines_for, load_policies, policy_in_force
from whistle.ground.errors import ConfigError
from whistle.ground.times import from_epoch_ms, to_epoch_ms

BEIJING = timezone(timedelta(hours=8))
_HOUR_MS = 3_600_000
_MINUTE_MS = 60_000
# How far the pipeline's case-stream clock may run behind or ahead of the simulator's: in a replay its
# ticks carry the times of the events sent (whistle.devtools.feed) a few simulated minutes apart, and can overtake
# records still on their way through ingestion.
CLOCK_TOLERANCE = timedelta(minutes=5)
REACTION_TIME = timedelta(minutes=3)  # the least time between a change of a case and its next step
# Who sends what in the simulated district: integrators of infra/gateway-keys.example.yaml (the demo writes the same names).
CHANNEL_INTEGRATORS = {"camera": "camera-platform", "hotline": "hotline-12345", "app": "resident-app"}
HANDLING_SYSTEM = "district-command"  # the district command centre's case-handling system: every handling unit
OVERSIGHT_SYSTEM = "oversight-offices"  # the supervision office and the discipline commission
RETURN_VISITS = "hotline-12345"  # ratings come from the hotline's return visit (回访), never from a handling unit
HOURLY_PROFILE = {
    "camera": (0.3, 0.2, 0.2, 0.2, 0.3, 0.5, 0.9, 1.6, 2.0, 1.6, 1.3, 1.2, 1.1, 1.1, 1.2, 1.3, 1.5, 1.9, 2.0, 1.5, 1.0, 0.8, 0.6, 0.4),
    "hotline": (0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.9, 1.8, 2.2, 2.2, 1.8, 1.2, 1.4, 1.9, 2.0, 1.8, 1.4, 1.0, 0.9, 0.8, 0.6, 0.5, 0.4),
    "app": (0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 0.8, 1.5, 1.6, 1.4, 1.3, 1.2, 1.0, 1.0, 1.1, 1.2, 1.3, 1.6, 1.9, 2.0, 1.7, 1.2, 0.7, 0.4),
}
CHANNEL_SHARE = {"camera": 0.35, "hotline": 0.35, "app": 0.30}
CAMERA_CATEGORIES = {"garbage": 35, "illegal_parking": 35, "road_damage": 8, "illegal_construction": 7, "fire_smoke": 5,
                     "drainage_blockage": 5, "ebike_charging_hazard": 5}
PEOPLE_CATEGORIES = {"garbage": 20, "noise": 14, "illegal_parking": 10, "road_damage": 8, "drainage_blockage": 8,
                     "ebike_charging_hazard": 7, "neighbour_dispute": 7, "elderly_assistance": 6, "illegal_construction": 6,
                     "illegal_lpg_refilling": 4, "fire_smoke": 5, "gas_leak": 5}
DESCRIPTIONS = {
    "garbage": ("路边垃圾堆积多日无人清运，气味很大。", "小区门口建筑垃圾乱倒。"),
    "drainage_blockage": ("下水道堵塞，污水漫到路面。", "雨水井堵了，门口积水。"),
    "illegal_construction": ("楼顶正在违章加盖房屋。", "一楼住户私自扩建围墙。"),
    "illegal_parking": ("车辆长期占用消防通道。", "人行道上停满了车。"),
    "illegal_lpg_refilling": ("有人在门面里私自给液化气罐充气。", "疑似黑气站，晚上偷偷充装。"),
    "ebike_charging_hazard": ("楼道里有人给电动车充电。", "窗口飞线给电动车充电。"),
    "fire_smoke": ("看到浓烟冒出，疑似着火。", "垃圾桶着火了。"),
    "road_damage": ("路面塌陷一个大坑。", "井盖缺失，很危险。"),
    "noise": ("夜间施工噪音扰民。", "广场舞音响声音太大。"),
    "neighbour_dispute": ("楼上漏水，与邻居协商不成。", "邻居占用公共楼道堆放杂物，发生争吵。"),
    "elderly_assistance": ("独居老人几天没出门，请社区看看。", "高龄老人行动不便，需要帮助购买生活用品。"),
    "gas_leak": ("楼道里闻到很浓的煤气味。", "燃气管道接口漏气。"),
}
RESOLUTION_NOTES = ("已现场处置完毕。", "已协调相关单位处理，问题已解决。", "已整改到位，拍照留档。")
VAGUE_ADDRESSES = ("菜市场旁边", "我家楼下", "公交站附近那个小区后门", "老街拐角")
ADDRESS_DETAILS = ("附近", "门口", "3栋2单元", "旁边巷子里", "对面")



@dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs of a simulated run. Shares are probabilities in [0, 1]. The period must lie where an SLA
    policy is in force and the business calendar has the year's holidays (2025 and 2026 as shipped)."""

    seed: int = 7
    start: datetime = datetime(2026, 5, 31, 16, 0, tzinfo=UTC)  # Monday 2026-06-01 00:00 Beijing time
    days: float = 1.0
    incidents_per_day: float = 2000.0
    multi_channel_share: float = 0.3  # incidents also reported by one or two other channels within minutes
    repeat_call_share: float = 0.1  # incidents a second caller reports hours later
    late_accept_share: float = 0.03  # of holders: accept after the deadline (breach, escalation, then their late action)
    late_resolve_share: float = 0.06
    silent_share: float = 0.005  # no unit ever acts on the case: it escalates rung by rung to discipline
    boundary_bounce_share: float = 0.1  # of territorial cases in a grid on a street boundary
    returns_name_the_unit: bool = True  # a return names the grid across the boundary (False: as releases before target_unit_id)
    extension_share: float = 0.2  # of complex cases
    rated_share: float = 0.7  # of cases reported by people (return visit after resolution)
    unsatisfied_share: float = 0.08
    late_unsatisfied_share: float = 0.5  # of ratings of a case that missed a resolve deadline
    unknown_camera_share: float = 0.01
    outside_gps_share: float = 0.01  # app reports with a bad fix, often outside the district
    no_gps_fix_share: float = 0.01  # app reports sent with (0, 0) and a typed address
    vague_address_share: float = 0.04
    # The seeds' failure story, when set: at this time a blocked drain is reported in a grid on the boundary of two
    # streets; both grids return it, each naming the other; the department both answer to never assigns it.
    boundary_drain_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ConfigError(f"simulation start {self.start.isoformat()} has no time zone; give a UTC-aware datetime", field="start")
        if not (self.days > 0 and self.incidents_per_day > 0):
            raise ConfigError("days and incidents_per_day must be positive", field="days")
        for name in self.__dataclass_fields__:
            if name.endswith("_share") and not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must lie in [0, 1]", field=name)


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One record to send: `record` holds exactly the fields of the Avro `record_type`.

    `source` is the channel (camera | hotline | app) and so the raw topic; HandlingActions travel on
    the app topic (in the AppEvent envelope) keyed by case id.
    """

    at: datetime
    source: str
    record_type: str  # CameraDetection | HotlineTicket | ResidentReport | HandlingAction
    key: str
    integrator: str  # who sends it (the record is signed as this integrator)
    record: dict[str, Any] = field(hash=False)


def simulate(reference: DistrictReference, config: SimConfig, *, policies: Mapping[str, SlaPolicy] | None = None,
             calendar: BusinessCalendar | None = None) -> Iterator[SimEvent]:
    """All events of the simulated period, in event-time order (ties in generation order).

    `policies` and `calendar` are the case engine's (default: the shipped SLA policies and calendar);
    they must be the pipeline's for its verdicts to match the simulator's.
    """
    return _Simulation(reference, config, load_policies() if policies is None else policies,
                       load_calendar() if calendar is None else calendar).run()


def write_jsonl(events: Iterable[SimEvent], out: BinaryIO) -> int:
    """Write events as JSON lines ({at, source, record_type, key, integrator, record}, times RFC 3339 UTC); returns the count."""
    count = 0
    for event in events:
        out.write(orjson.dumps({"at": event.at, "source": event.source, "record_type": event.record_type, "key": event.key,
                                "integrator": event.integrator, "record": event.record}, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


_PACE = {"emergency": 0.1, "ordinary": 1.0, "complex": 3.0}  # handling-time scale by complexity class
_TOLERANCE_MS = CLOCK_TOLERANCE // timedelta(milliseconds=1)
_REACTION_MS = REACTION_TIME // timedelta(milliseconds=1)
_OVERDUE = (DeadlineKind.ACCEPT_OVERDUE, DeadlineKind.RESOLVE_OVERDUE)
_DEADLINE_BREACHES = (DeadlineKind.ACCEPT_OVERDUE, DeadlineKind.RESOLVE_OVERDUE, FINAL_OVERDUE)  # escalations a deadline caused (not an input)
_MOVED_BY_DEADLINES = (Kind.ESCALATED, Kind.URGED, Kind.CRITICIZED, Kind.REFERRED)  # events a deadline's breach records


@dataclass(frozen=True, slots=True)
class _Step:
    """One action planned for a case. `token` None: a deliberately late action, carried out whatever
    happens to the case meanwhile (the engine records it as late); otherwise the step is dropped once
    the case's plan has moved on (`_Handling.token`)."""

    case_id: str
    kind: ActionKind
    unit_id: str
    at_ms: int
    token: int | None
    reason: str | None = None
    note: str | None = None
    rating: int | None = None
    extension_hours: int | None = None
    target_unit_id: str | None = None


@dataclass(slots=True)
class _Handling:
    """How the people around one case behave, drawn when it opens; acted out one step at a time
    against the case's state in the engine."""

    pace: float  # handling-time scale
    silent: bool  # nobody ever acts
    bounce_to: str | None  # the grid across the street boundary that the first holder says the case belongs to
    extension: bool  # the holder asks once for more time (complex cases)
    rating_due: bool  # the reporter rates the first resolution (people-reported cases only)
    arbiter_silent: bool = False  # the common parent handed the boundary dispute never acts on it
    resolve_breached: bool = False  # a holder missed the resolve deadline: the reporter is likelier unsatisfied
    token: int = 0  # the plan's current version; in-time steps of older versions are dropped
    pending: _Step | None = None  # the in-time step of the current version, if one is scheduled
    late: _Step | None = None  # a deliberately late step not carried out yet
    earliest_ms: int = 0  # the current version's steps come no sooner
    lead_ms: int = 0  # the pipeline may have started the holder's clock this much sooner than the simulator
    lag_ms: int = _TOLERANCE_MS  # ... or this much later
    window: tuple[int, int] | None = None  # the earliest and the latest deadline of the holder in the pipeline; None: no limit


@dataclass(slots=True)
class _Incident:
    """What happened where; `grid` is None when the spot is outside every grid."""

    category: str
    lat: float
    lon: float
    grid: Grid | None


class _Simulation:
    """One run's state: the random stream, the pending-event heap, the case engine and its merge index."""

    def __init__(self, reference: DistrictReference, config: SimConfig, policies: Mapping[str, SlaPolicy],
                 calendar: BusinessCalendar) -> None:
        self.ref = reference
        self.config = config
        self.rng = Random(config.seed)
        self.enricher = Enricher(reference)
        self.merge = MergeIndex(reference.gazetteer.normalize)
        self.policies, self.calendar = policies, calendar
        policy_in_force(policies, config.start)  # a period no policy judges is refused now, not midway
        self.book = CaseBook(policies, calendar, partial(common_parent, reference), units=reference.unit_tiers())
        self.handling: dict[str, _Handling] = {}
        self.start_ms = to_epoch_ms(config.start)
        self.heap: list[tuple[int, int, str, Any]] = []
        self.sequence = 0
        self.grids = list(reference.grids.values())
        self.grid_weights = _cumulative([g.households for g in self.grids])
        self.addresses = {g.grid_id: [] for g in self.grids}
        for entry in reference.gazetteer.entries():
            if entry.grid_id is not None and entry.kind != "road":
                self.addresses[entry.grid_id].append(entry)
        self.roads = [e.address for e in reference.gazetteer.entries() if e.kind == "road"]
        self.cameras = list(reference.cameras.values())
        self.cameras_in_grid: dict[str, list] = {}
        for camera in self.cameras:
            if camera.grid_id is not None:
                self.cameras_in_grid.setdefault(camera.grid_id, []).append(camera)
        self.across_boundary = _neighbours_in_other_streets(self.grids)
        self.callers = [f"1{self.rng.choice('3456789')}{self.rng.randrange(10**9):09d}" for _ in range(max(50, int(config.incidents_per_day // 3)))]
        self.residents = [f"resident-{i:06d}" for i in range(max(50, int(config.incidents_per_day // 3)))]
        self.counters = {"detection": 0, "ticket": 0, "app": 0, "action": 0}
        self.shapes = _record_shapes(default_catalog())
        self.drain_report_id: str | None = None

    # -- the main loop ---------------------------------------------------------------------------

    def run(self) -> Iterator[SimEvent]:
        end_ms = self.start_ms + int(self.config.days * 24 * _HOUR_MS)
        hour_start = self.start_ms
        if self.config.boundary_drain_at is not None:
            self._boundary_drain(to_epoch_ms(self.config.boundary_drain_at))
        while hour_start < end_ms:
            hour_end = min(hour_start + _HOUR_MS, end_ms)
            self._generate_arrivals(hour_start, hour_end)
            yield from self._release(until_ms=hour_end)
            hour_start = hour_end
        yield from self._release(until_ms=None)

    def _release(self, until_ms: int | None) -> Iterator[SimEvent]:
        """Pop pending events in time order; each goes through the case engine, which may plan further actions."""
        while self.heap and (until_ms is None or self.heap[0][0] < until_ms):
            at_ms, _, kind, payload = heapq.heappop(self.heap)
            if kind == "report":
                yield self._emit_report(at_ms, payload)
            else:
                event = self._emit_action(at_ms, payload)
                if event is not None:
                    yield event

    def _push(self, at_ms: int, kind: str, payload: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.heap, (at_ms, self.sequence, kind, payload))

    # -- arrivals --------------------------------------------------------------------------------

    def _boundary_drain(self, at_ms: int) -> None:
        """The seeds' story (SimConfig.boundary_drain_at): a resident reports a blocked drain in the first grid of
        street S01 that borders another street; no random draw, so the rest of the run is unchanged."""
        for grid_id in sorted(self.across_boundary):
            ring = self.ref.grids[grid_id].ring[:-1]
            lon, lat = sum(x for x, _ in ring) / len(ring), sum(y for _, y in ring) / len(ring)
            if self.ref.grids[grid_id].street_id == "S01" and getattr(self.ref.locate(lat, lon), "grid_id", None) == grid_id:
                break
        self.drain_report_id = "app-boundary-drain"
        record = {"report_id": self.drain_report_id, "reporter_id": "resident-boundary-drain", "reporter_role": "resident", "reported_at": None,
                  "lat": lat, "lon": lon, "category": "drainage_blockage", "description": "两条街交界处的下水道堵塞，污水漫到路面。",
                  "photo_refs": [], "address_text": None}
        self._push(at_ms, "report", ("app", record))

    def _generate_arrivals(self, hour_start: int, hour_end: int) -> None:
        local_hour = datetime.fromtimestamp(hour_start / 1000, BEIJING).hour
        for channel, profile in HOURLY_PROFILE.items():
            per_ms = self.config.incidents_per_day * CHANNEL_SHARE[channel] * profile[local_hour] / (24 * _HOUR_MS)
            t = hour_start + self.rng.expovariate(per_ms)
            while t < hour_end:
                self._incident(channel, int(t))
                t += self.rng.expovariate(per_ms)

    def _incident(self, channel: str, at_ms: int) -> None:
        rng = self.rng
        if channel == "camera":
            category = _weighted(rng, CAMERA_CATEGORIES)
            if rng.random() < self.config.unknown_camera_share:
                self._push(at_ms, "report", ("camera", self._detection(category, f"CAM-{rng.randrange(900, 1000)}", None, None)))
                return
            camera = rng.choice(self.cameras)
            lat, lon = _jitter(rng, camera.lat, camera.lon, 40.0)  # what the camera sees is near it
            place = self.ref.locate(lat, lon)
            incident = _Incident(category, lat, lon, place if type(place) is Grid else None)
            self._push(at_ms, "report", ("camera", self._camera_record(incident, camera)))
        else:
            grid = self.grids[_pick(rng, self.grid_weights)]
            lat, lon = self._point_in(grid)
            incident = _Incident(_weighted(rng, PEOPLE_CATEGORIES), lat, lon, grid)
            self._push(at_ms, "report", (channel, self._hotline_record(incident) if channel == "hotline" else self._app_record(incident)))
        if rng.random() < self.config.multi_channel_share:
            others = [c for c in ("camera", "hotline", "app") if c != channel]
            rng.shuffle(others)
            follow_ups = others[: rng.choice((1, 1, 2))]
            for other in follow_ups:
                delay = int(rng.uniform(2, 30) * _MINUTE_MS)
                cameras = self.cameras_in_grid.get(incident.grid.grid_id) if incident.grid is not None else None
                if other == "camera" and cameras and incident.category in CAMERA_CATEGORIES:
                    self._push(at_ms + delay, "report", ("camera", self._camera_record(incident, rng.choice(cameras))))
                elif other == "hotline":
                    self._push(at_ms + delay, "report", ("hotline", self._hotline_record(incident)))
                elif other == "app":
                    self._push(at_ms + delay, "report", ("app", self._app_record(incident)))
        if rng.random() < self.config.repeat_call_share:
            self._push(at_ms + int(rng.uniform(1, 8) * _HOUR_MS), "report", ("hotline", self._hotline_record(incident)))

    def _point_in(self, grid: Grid) -> tuple[float, float]:
        xs = [x for x, _ in grid.ring]
        ys = [y for _, y in grid.ring]
        while True:
            lat, lon = round(self.rng.uniform(min(ys), max(ys)), 6), round(self.rng.uniform(min(xs), max(xs)), 6)
            if self.ref.locate(lat, lon) is grid:
                return lat, lon

    # -- raw records -----------------------------------------------------------------------------

    def _camera_record(self, incident: _Incident, camera) -> dict[str, Any]:
        """PTZ cameras (every third in the registry) geolocate the object; fixed ones send no lat/lon."""
        if int(camera.camera_id[-3:]) % 3 == 0:
            return self._detection(incident.category, camera.camera_id, *_jitter(self.rng, incident.lat, incident.lon, 5.0))
        return self._detection(incident.category, camera.camera_id, None, None)

    def _detection(self, category: str, camera_id: str, lat: float | None, lon: float | None) -> dict[str, Any]:
        rng = self.rng
        self.counters["detection"] += 1
        detection_id = f"det-{self.counters['detection']:08d}-{rng.getrandbits(32):08x}"
        bbox = None
        if rng.random() < 0.5:
            x, y = round(rng.uniform(0, 0.7), 3), round(rng.uniform(0, 0.7), 3)
            bbox = {"x": x, "y": y, "width": round(rng.uniform(0.05, 0.3), 3), "height": round(rng.uniform(0.05, 0.3), 3)}
        return {"detection_id": detection_id, "camera_id": camera_id, "detected_at": None, "category": category,
                "confidence": round(rng.betavariate(8, 2), 3), "lat": lat, "lon": lon,
                "snapshot_ref": f"s3://whistle-evidence/camera/{camera_id}/{detection_id}.jpg", "model_version": "gridvision-3.2.1", "bbox": bbox}

    def _hotline_record(self, incident: _Incident) -> dict[str, Any]:
        rng = self.rng
        self.counters["ticket"] += 1
        phone = rng.choice(self.callers)
        style = rng.random()
        caller = None if style < 0.05 else (f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}" if style < 0.25 else phone)
        urgency = self.ref.categories[incident.category].default_urgency.value
        if urgency == "normal" and rng.random() < 0.1:
            urgency = "urgent"
        return {"ticket_id": f"12345-{self.counters['ticket']:08d}", "received_at": None, "caller_phone": caller,
                "address_text": self._spoken_address(incident), "description": rng.choice(DESCRIPTIONS[incident.category]),
                "operator_category": incident.category, "urgency": urgency}

    def _spoken_address(self, incident: _Incident) -> str:
        """The nearest known address, written the many ways operators write addresses."""
        rng = self.rng
        roll = rng.random()
        if roll < self.config.vague_address_share:
            return rng.choice(VAGUE_ADDRESSES)
        candidates = self.addresses[incident.grid.grid_id] if incident.grid is not None else []
        if not candidates or roll < self.config.vague_address_share * 1.5:  # a caller naming only the road
            return rng.choice(self.roads)
        entry = min(candidates, key=lambda e: (haversine_m(incident.lat, incident.lon, e.lat, e.lon), e.address))
        text = entry.address
        if entry.kind == "house":
            style = rng.random()
            if style < 0.10:
                text = text.translate(_FULL_WIDTH_DIGITS)
            elif style < 0.15:
                text = " ".join(_split_number(text))
            elif style < 0.18:
                text = text.replace("号", "號")
            elif style < 0.30:
                text += rng.choice(ADDRESS_DETAILS)
        roll = rng.random()
        prefixes = self.ref.address_prefixes
        if roll < 0.20:  # some add the district, a few the city too
            prefix = "".join(prefixes[-1:] if roll < 0.15 else prefixes[-2:])
            text = prefix + text.removeprefix(prefixes[-1])
        return text

    def _app_record(self, incident: _Incident) -> dict[str, Any]:
        rng = self.rng
        self.counters["app"] += 1
        report_id = f"app-{self.counters['app']:08d}-{rng.getrandbits(32):08x}"
        roll = rng.random()
        address = None
        if roll < self.config.outside_gps_share:
            lat, lon = _jitter(rng, incident.lat, incident.lon, 3000.0)  # a bad fix: often outside the district
        elif roll < self.config.outside_gps_share + self.config.no_gps_fix_share:
            lat, lon = 0.0, 0.0  # no fix: the app sends (0, 0) and the typed address
            entries = self.addresses[incident.grid.grid_id] if incident.grid is not None else []
            address = rng.choice(entries).address if entries else None
        else:
            lat, lon = _jitter(rng, incident.lat, incident.lon, 15.0)
        role = "grid_worker" if rng.random() < 0.3 else "resident"
        photos = [f"s3://whistle-evidence/app/{report_id}/{n}.jpg" for n in range(rng.choice((0, 1, 1, 2, 3)))]
        return {"report_id": report_id, "reporter_id": rng.choice(self.residents), "reporter_role": role, "reported_at": None,
                "lat": lat, "lon": lon, "category": incident.category, "description": rng.choice(DESCRIPTIONS[incident.category]) if rng.random() < 0.8 else "",
                "photo_refs": photos, "address_text": address}

    # -- the case engine, as the case processor drives it ------------------------------------------

    def _emit_report(self, at_ms: int, payload: tuple[str, dict[str, Any]]) -> SimEvent:
        """Route the report, then (as CaseProcessor does) let due deadlines fire, merge it into an open case or open one."""
        channel, record = payload
        time_field, record_type, key_field = self.shapes[channel]
        record[time_field] = from_epoch_ms(at_ms)
        integrator = CHANNEL_INTEGRATORS[channel]
        report = (normalize_camera(from_record(CameraDetection, record), self.ref, integrator) if channel == "camera"
                  else normalize_hotline(from_record(HotlineTicket, record), self.ref, _identity_not_needed, integrator) if channel == "hotline"
                  else normalize_app_report(from_record(ResidentReport, record), self.ref, _identity_not_needed, integrator))
        enriched = self.enricher.enrich(report)
        at = report.occurred_at
        self._advance(to_epoch_ms(at))
        joined = self.merge.find_case_to_join(enriched, at)
        if joined is not None:
            events, _ = self.book.merge(joined, enriched, at)
            self.merge.touch(joined, at)
        else:
            case_id = case_id_for(enriched)
            if report.report_id.endswith(f":{self.drain_report_id}"):
                self.handling[case_id] = _Handling(pace=1.0, silent=False, bounce_to=self.across_boundary[enriched.chain[0].unit_id][0],
                                                   extension=False, rating_due=False, arbiter_silent=True)
            else:
                self.handling[case_id] = self._draw_handling(enriched)
            events, _ = self.book.open(enriched, case_id, at)
            self.merge.add(self.merge.open_case(case_id, enriched))
        self._react(events, at_ms)
        return SimEvent(record[time_field], channel, record_type, record[key_field], integrator, record)

    def _emit_action(self, at_ms: int, step: _Step) -> SimEvent | None:
        """Carry out a planned step (None: the plan has moved on since), applying it to the engine as the pipeline will."""
        handling = self.handling[step.case_id]
        if step.token is not None and step.token != handling.token:
            return None  # dropped before the engine advances: the pipeline sees no event at this instant
        self._advance(at_ms)
        if handling.pending is step:
            handling.pending = None
        if handling.late is step:
            handling.late = None
        self.counters["action"] += 1
        at = from_epoch_ms(at_ms)
        action = HandlingAction(f"act-{self.counters['action']:08d}", step.case_id, step.kind, step.unit_id, at,
                                step.reason, step.note, step.rating, step.extension_hours, target_unit_id=step.target_unit_id)
        events, _ = self.book.act(action)  # refused (TransitionError) only if the plan broke the engine's rules: a bug here
        self._react(events, at_ms)
        record = {"action_id": action.action_id, "case_id": step.case_id, "kind": step.kind.value, "unit_id": step.unit_id, "at": at,
                  "reason": step.reason, "note": step.note, "rating": step.rating, "extension_hours": step.extension_hours,
                  "target_unit_id": step.target_unit_id}
        if step.kind in (ActionKind.RATE, ActionKind.REOPEN):
            integrator = RETURN_VISITS
        elif step.unit_id in (self.ref.supervision.unit_id, self.ref.discipline.unit_id):
            integrator = OVERSIGHT_SYSTEM
        else:
            integrator = HANDLING_SYSTEM
        return SimEvent(at, "app", "HandlingAction", step.case_id, integrator, record)

    def _advance(self, at_ms: int) -> None:
        events, _ = self.book.advance(from_epoch_ms(at_ms))
        self._react(events, at_ms)

    def _react(self, events: list[CaseEvent], now_ms: int) -> None:
        """Follow the engine's case events: drop resolved and closed cases from the merge index (as the
        pipeline does), plan the next step of every case whose holder or status changed, and keep a
        pending step in time when a merged report brought its deadline forward."""
        changed: dict[str, int | None] = {}  # case id -> earliest time of its next step, None: only merged reports or late actions
        for event in events:
            case_id, kind = event.case_id, event.kind
            handling = self.handling[case_id]
            if kind in (Kind.RESOLVED, Kind.CLOSED):
                self.merge.remove(case_id)
            if kind in _MOVED_BY_DEADLINES and event.reason in _DEADLINE_BREACHES:
                # the pipeline escalates between the earliest deadline and a tolerance after the latest
                handling.resolve_breached = handling.resolve_breached or event.reason == DeadlineKind.RESOLVE_OVERDUE
                earliest, latest = handling.window
                handling.lead_ms, handling.lag_ms = max(0, now_ms - earliest), max(0, latest + _TOLERANCE_MS - now_ms)
                changed[case_id] = now_ms + max(handling.lag_ms, _REACTION_MS)
            elif kind not in (Kind.REPORT_MERGED, Kind.LATE_ACTION):  # an input's own time: the same in the pipeline
                handling.lead_ms, handling.lag_ms = 0, _TOLERANCE_MS
                changed[case_id] = max(changed.get(case_id) or 0, now_ms + _REACTION_MS)
            else:
                changed.setdefault(case_id, None)
        for case_id, earliest_ms in changed.items():
            state, handling = self.book.states[case_id], self.handling[case_id]
            handling.window = self._window(state, handling)
            if earliest_ms is not None:
                self._plan(state, handling, earliest_ms)
            else:
                self._retime(handling, now_ms)

    def _window(self, state: CaseState, handling: _Handling) -> tuple[int, int] | None:
        """The earliest and the latest time the holder's deadline (to accept or to resolve) may fall in the
        pipeline, its clock having started up to `lead_ms` sooner or `lag_ms` later; None: no limit."""
        deadline = self._deadline(state, 0)
        if deadline is None:
            return None
        earliest = self._deadline(state, -handling.lead_ms) if handling.lead_ms else deadline
        return earliest, self._deadline(state, handling.lag_ms)

    def _deadline(self, state: CaseState, shift_ms: int) -> int | None:
        """When the holder's time to accept or resolve runs out (epoch ms) if its clock had started `shift_ms` later."""
        if shift_ms:
            state = replace(state, stage_start_ms=state.stage_start_ms + shift_ms, holder_since_ms=state.holder_since_ms + shift_ms,
                            status_since_ms=state.status_since_ms + shift_ms,
                            oversight_since_ms=state.oversight_since_ms + shift_ms if state.oversight else 0)
        for deadline in deadlines_for(state, self.policies[state.policy_version], self.calendar):
            if deadline.kind in _OVERDUE:
                return deadline.deadline_ms
        return None

    # -- handling --------------------------------------------------------------------------------

    def _draw_handling(self, enriched: EnrichedReport) -> _Handling:
        rng, config, report = self.rng, self.config, enriched.report
        category = self.ref.categories[report.category]
        across = self.across_boundary.get(enriched.chain[0].unit_id)
        emergency = Urgency.EMERGENCY in (category.default_urgency, report.urgency)
        return _Handling(
            pace=_PACE["emergency" if emergency else category.complexity],
            silent=rng.random() < config.silent_share,
            bounce_to=rng.choice(across) if across and category.territorial and rng.random() < config.boundary_bounce_share else None,
            extension=category.complexity == "complex" and rng.random() < config.extension_share,
            rating_due=report.source is not Source.CAMERA and rng.random() < config.rated_share,
        )

    def _plan(self, state: CaseState, handling: _Handling, earliest_ms: int) -> None:
        """Schedule the case's next step, by whoever must take it now, no sooner than `earliest_ms`;
        an in-time step planned before is dropped."""
        handling.token += 1
        handling.pending = None
        handling.earliest_ms = earliest_ms
        if handling.silent:
            return
        rng, config, holder = self.rng, self.config, state.assignee.unit_id
        if handling.late is not None and handling.late.unit_id == holder:
            return  # urged, the holder keeps the case: its late step is still to come and answers the urging

        def schedule(kind: ActionKind, unit_id: str, delay_ms: float, late: bool, **fields: Any) -> None:
            self._schedule(handling, state.case_id, kind, unit_id, earliest_ms + int(delay_ms), late, **fields)

        if state.status == Status.DISPATCHED:
            if handling.bounce_to is not None and state.escalations == 0:  # the 2nd return escalates (transfer limit)
                other = handling.bounce_to
                if not state.rejected_by:  # returns are quick; the accept clock keeps running through them
                    schedule(ActionKind.TRANSFER, holder, rng.uniform(5, 30) * _MINUTE_MS, False, reason="outside_jurisdiction",
                             note=f"位置属于{other}，非本网格辖区", target_unit_id=other if config.returns_name_the_unit else None)
                else:  # the grid named returns it in turn, naming the first
                    schedule(ActionKind.TRANSFER, holder, rng.uniform(10, 45) * _MINUTE_MS, False, reason="outside_jurisdiction",
                             note=f"争议位置在与{(state.rejected_by[0] if config.returns_name_the_unit else other)[2:5]}交界处，非本单位辖区",
                             target_unit_id=state.rejected_by[0] if config.returns_name_the_unit else None)
            elif state.arbitration and handling.arbiter_silent:
                return
            else:  # the common parent handed a boundary dispute takes it quickly
                minutes = rng.uniform(10, 40) if state.arbitration else min(rng.lognormvariate(math.log(20 * handling.pace), 0.6), 3 * 24 * 60)
                schedule(ActionKind.ACCEPT, holder, minutes * _MINUTE_MS, rng.random() < config.late_accept_share)
        elif state.status == Status.ACCEPTED:
            if handling.extension:
                handling.extension = False
                schedule(ActionKind.REQUEST_EXTENSION, holder, rng.uniform(4, 48) * _HOUR_MS, False, reason="需协调多个部门联合处置",
                         extension_hours=72)
            else:
                hours = min(rng.lognormvariate(math.log(6 * handling.pace), 0.8), 10 * 24)
                note = "上级督办后已重新处置。" if state.lost_by_breach or state.oversight else rng.choice(RESOLUTION_NOTES)
                schedule(ActionKind.RESOLVE, holder, hours * _HOUR_MS, rng.random() < config.late_resolve_share, note=note)
        elif state.status == Status.RESOLVED and handling.rating_due:
            handling.rating_due = False
            unsatisfied = rng.random() < (config.late_unsatisfied_share if handling.resolve_breached else config.unsatisfied_share)
            schedule(ActionKind.RATE, RETURN_VISIT, rng.uniform(2, 30) * _HOUR_MS, False, rating=rng.choice((1, 2)) if unsatisfied else rng.choice((4, 5, 5, 5)),
                     note="处理不及时，问题没解决" if unsatisfied else None)

    def _schedule(self, handling: _Handling, case_id: str, kind: ActionKind, unit_id: str, wanted_ms: int, late: bool, **fields: Any) -> None:
        """Put a step on the timeline, no sooner than the plan's earliest time: in time, that is
        CLOCK_TOLERANCE before the holder's earliest deadline (sooner than wished if need be), or late,
        from CLOCK_TOLERANCE to six hours after its latest deadline, when `late` or when there is no
        time left to be in time. A late step survives later plans: the engine records it as late."""
        at_ms = max(wanted_ms, handling.earliest_ms)
        if handling.window is None:
            late = False
        elif late or handling.window[0] - _TOLERANCE_MS < handling.earliest_ms:
            late = True
            at_ms = max(handling.window[1] + _TOLERANCE_MS + int(self.rng.uniform(0, 6) * _HOUR_MS), handling.earliest_ms)
        else:
            at_ms = min(at_ms, handling.window[0] - _TOLERANCE_MS)
        step = _Step(case_id, kind, unit_id, at_ms, None if late else handling.token, **fields)
        if late:
            handling.late = step
        else:
            handling.pending = step
        self._push(at_ms, "action", step)

    def _retime(self, handling: _Handling, now_ms: int) -> None:
        """A merged report can make the case more urgent, so its deadline sooner: keep the pending step in time if it can be."""
        step = handling.pending
        if step is None or handling.window is None or step.at_ms <= handling.window[0] - _TOLERANCE_MS:
            return
        handling.token += 1
        handling.pending = None
        handling.earliest_ms = max(handling.earliest_ms, now_ms + _REACTION_MS)
        self._schedule(handling, step.case_id, step.kind, step.unit_id, step.at_ms, False, reason=step.reason,
                       note=step.note, rating=step.rating, extension_hours=step.extension_hours, target_unit_id=step.target_unit_id)


_REPORT_TYPES = {"camera": "CameraDetection", "hotline": "HotlineTicket", "app": "ResidentReport"}  # channel -> Avro record type of its reports


def _record_shapes(catalog: Catalog) -> dict[str, tuple[str, str, str]]:
    """Channel -> (event-time field, Avro record type, Kafka key field) of its reports, as the schemas and topic specs say."""
    return {channel: (catalog.record_facts(record_type).event_time_field, record_type, catalog.topic_for_source(channel).key_fields[record_type])
            for channel, record_type in _REPORT_TYPES.items()}
_FULL_WIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")


def _identity_not_needed(value: str) -> str:
    """The simulator routes reports but never stores who made them: no identity hash is computed."""
    return ""


def _cumulative(weights: list[int]) -> list[int]:
    total, out = 0, []
    for weight in weights:
        total += weight
        out.append(total)
    return out


def _pick(rng: Random, cumulative: list[int]) -> int:
    return bisect_right(cumulative, rng.randrange(cumulative[-1]))


def _weighted(rng: Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _jitter(rng: Random, lat: float, lon: float, metres: float) -> tuple[float, float]:
    """A point about `metres` (Gaussian sigma) from (lat, lon), rounded to 1e-6 degrees."""
    north, east = rng.gauss(0, metres), rng.gauss(0, metres)
    return round(lat + north / 111_195.0, 6), round(lon + east / (111_195.0 * math.cos(math.radians(lat))), 6)


def _split_number(address: str) -> list[str]:
    """"建设路19号" -> ["建设路", "19", "号"]: how some operators type addresses."""
    digits = [i for i, ch in enumerate(address) if ch.isdigit()]
    if not digits:
        return [address]
    return [address[: digits[0]], address[digits[0]: digits[-1] + 1], address[digits[-1] + 1:]]


def _neighbours_in_other_streets(grids: list[Grid]) -> dict[str, list[str]]:
    """Grid id -> grids of other streets sharing an edge with it (the street-boundary grids)."""
    by_vertex: dict[tuple[float, float], list[Grid]] = {}
    for grid in grids:
        for vertex in grid.ring[:-1]:
            by_vertex.setdefault(vertex, []).append(grid)
    shared: dict[tuple[str, str], int] = {}
    for members in by_vertex.values():
        for a in members:
            for b in members:
                if a.street_id != b.street_id:
                    shared[(a.grid_id, b.grid_id)] = shared.get((a.grid_id, b.grid_id), 0) + 1
    neighbours: dict[str, list[str]] = {}
    for (a, b), count in sorted(shared.items()):
        if count >= 2:  # two shared vertices: a shared edge, not just a corner
            neighbours.setdefault(a, []).append(b)
    return neighbours
