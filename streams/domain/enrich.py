"""Place a report on the map and route it: grid, community, street, and the chain of units above it.

Location, in order of trust:
  1. a registered camera: the object's position when the camera geolocated it (PTZ cameras send
     lat/lon) and it lies within CAMERA_RANGE_M of the camera, else the camera's surveyed position;
  2. coordinates (app GPS, or an unregistered camera's own lat/lon) -> point in grid polygon;
  3. address text (hotline, or an app report without a GPS fix) -> the gazetteer (normalised
     matching, see reference.Gazetteer).
Whatever cannot be placed in a grid is never dropped: it goes to the street's dispatch desk when
the street is known, else to the district's, with a flag saying why:

  outside_grid        coordinates outside every grid (outside the district, or in a park/lake)
  camera_unknown      camera id not in the registry (its own lat/lon is used if it sent any)
  address_unresolved  address text not in the gazetteer
  address_road_only   the address names a road but no number: the street at best
  no_location         no camera, no coordinates, no address at all
  low_confidence      camera detection below the category's confidence threshold: the desk
                      reviews the snapshot before anyone is sent (location is still resolved)
  geolocation_implausible  a camera's object position farther than CAMERA_RANGE_M from the
                      camera: the camera's own position is used

Escalation chain (EnrichedReport.chain), lowest rung first, tiers strictly rising, always ending
at the discipline commission:
  territorial category, grid known:   grid team -> community -> street -> owning department -> supervision -> discipline
  departmental category, grid known:  owning department -> supervision -> discipline
  desk-routed, street known:          street desk -> owning department -> supervision -> discipline
  desk-routed, no street:             district desk (department tier) -> supervision -> discipline
Per-area exceptions (reference exceptions.geojson), for the categories an area lists, at a point inside it:
  property-managed compound:          property manager (grid rung) -> community -> street -> owning department -> ...
  trunk road:                         the road's department -> supervision -> discipline
and the report is flagged `<kind>:<area id>` (property_managed:..., trunk_road:...), so the auditors see why.
"""
from __future__ import annotations

import math

from streams.domain.model import EnrichedReport, Location, Report, Source, Unit
from streams.domain.reference import PROPERTY_MANAGED, DistrictReference, ExceptionArea, Grid
from whistle.ground.errors import DomainError, ValidationError

OUTSIDE_GRID = "outside_grid"
CAMERA_UNKNOWN = "camera_unknown"
ADDRESS_UNRESOLVED = "address_unresolved"
ADDRESS_ROAD_ONLY = "address_road_only"
NO_LOCATION = "no_location"
LOW_CONFIDENCE = "low_confidence"
GEOLOCATION_IMPLAUSIBLE = "geolocation_implausible"

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
CAMERA_RANGE_M = 300.0  # farthest a PTZ camera can plausibly geolocate an object


class Enricher:
    """Built once per reference version: every chain is precomputed, so enrich() is lookups only."""

    __slots__ = ("reference", "_grid_chains", "_desk_chains", "_camera_places", "_address_places", "_nowhere", "_area_chains")

    def __init__(self, reference: DistrictReference) -> None:
        self.reference = reference
        if reference.district_desk.unit_id != district_desk_id(reference.district_id):
            raise DomainError(f"district desk must be named {district_desk_id(reference.district_id)!r}, "
                              f"got {reference.district_desk.unit_id!r}", field="district.desk.id")
        tail = (reference.supervision, reference.discipline)
        units = reference.units
        self._grid_chains: dict[tuple[str, str], tuple[Unit, ...]] = {}
        self._desk_chains: dict[tuple[str | None, str], tuple[Unit, ...]] = {}
        for code, category in reference.categories.items():
            department = units[category.owner_department_id]
            for grid in reference.grids.values():
                chain: tuple[Unit, ...]
                if category.territorial:
                    chain = (units[grid.grid_id], units[grid.community_id], units[grid.street_id], department) + tail
                else:
                    chain = (department,) + tail
                self._grid_chains[(grid.grid_id, code)] = chain
            for street in reference.streets.values():
                self._desk_chains[(street.street_id, code)] = (units[street.desk_id], department) + tail
            self._desk_chains[(None, code)] = (reference.district_desk,) + tail
        # Places that never move are located once: registered cameras and gazetteer entries.
        self._camera_places = {c.camera_id: self._place(c.lat, c.lon, c.grid_id, c.street_id, "camera") for c in reference.cameras.values()}
        self._address_places = {e.address: self._place(e.lat, e.lon, e.grid_id, e.street_id, "gazetteer") for e in reference.gazetteer.entries()}
        self._nowhere = self._place(None, None, None, None, "dispatch_desk")
        self._area_chains: dict[tuple[str, str, str], tuple[Unit, ...]] = {}

    def enrich(self, report: Report) -> EnrichedReport:
        """Locate and route one report. Pure: the same report and reference give the same result."""
        category = self.reference.categories.get(report.category)
        if category is None:
            raise ValidationError(f"unknown category {report.category!r}", field="category", report_id=report.report_id)
        flags: list[str] = []
        location = self._locate(report, flags)
        at_desk = location.grid_id is None
        if (report.source is Source.CAMERA and report.confidence is not None
                and report.confidence < category.camera_min_confidence):
            flags.append(LOW_CONFIDENCE)
            at_desk = True
        grid_id = None if at_desk else location.grid_id  # not at the desk: the report is on a grid
        if grid_id is None:
            chain = self._desk_chains[(location.street_id, report.category)]
        else:
            chain = self._grid_chains[(grid_id, report.category)]
            area = None if location.lat is None or location.lon is None else self.reference.exception_at(location.lat, location.lon, report.category)
            if area is not None:
                chain = self._area_chain(area, grid_id, report.category, chain)
                flags.append(f"{area.kind}:{area.area_id}")
        return EnrichedReport(report=report, location=location, chain=chain, flags=tuple(flags))

    def _area_chain(self, area: ExceptionArea, grid_id: str, category: str, grid_chain: tuple[Unit, ...]) -> tuple[Unit, ...]:
        key = (area.area_id, grid_id, category)
        chain = self._area_chains.get(key)
        if chain is None:
            tail = (self.reference.supervision, self.reference.discipline)
            chain = self._area_chains[key] = (area.first_unit,) + (grid_chain[1:] if area.kind == PROPERTY_MANAGED else tail)
        return chain

    def _place(self, lat: float | None, lon: float | None, grid_id: str | None, street_id: str | None, resolved_by: str) -> Location:
        ref = self.reference
        return Location(district_id=ref.district_id, street_id=street_id,
                        community_id=ref.grids[grid_id].community_id if grid_id is not None else None,
                        grid_id=grid_id, lat=lat, lon=lon, resolved_by=resolved_by if grid_id is not None else "dispatch_desk")

    def _locate(self, report: Report, flags: list[str]) -> Location:
        ref = self.reference
        lat, lon = report.lat, report.lon
        resolved_by = "point"
        if report.camera_id is not None:
            camera = ref.cameras.get(report.camera_id)
            if camera is None:
                flags.append(CAMERA_UNKNOWN)
            else:
                resolved_by = "camera"
                if lat is not None and lon is not None and haversine_m(lat, lon, camera.lat, camera.lon) > CAMERA_RANGE_M:
                    flags.append(GEOLOCATION_IMPLAUSIBLE)
                    lat = lon = None
                if lat is None or lon is None:
                    if camera.grid_id is None:
                        flags.append(OUTSIDE_GRID)
                    return self._camera_places[camera.camera_id]
        if lat is not None and lon is not None:
            place = ref.spatial.locate(lat, lon)
            if type(place) is Grid:
                return self._place(lat, lon, place.grid_id, place.street_id, resolved_by)
            flags.append(OUTSIDE_GRID)
            return self._place(lat, lon, None, place.street_id if place is not None else None, resolved_by)
        if report.address_text:
            entry = ref.gazetteer.lookup(report.address_text)
            if entry is None:
                flags.append(ADDRESS_UNRESOLVED)
                return self._nowhere
            if entry.kind == "road":
                flags.append(ADDRESS_ROAD_ONLY)
            elif entry.grid_id is None:
                flags.append(OUTSIDE_GRID)
            return self._address_places[entry.address]
        if report.camera_id is None:
            flags.append(NO_LOCATION)
        return self._nowhere


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def district_desk_id(district_id: str) -> str:
    """The district dispatch desk's unit id: it is also the case-stream key of cases with no street."""
    return f"DESK-{district_id}"


def case_partition_key(enriched: EnrichedReport) -> str:
    """Key of the case stream (whistle.cases.inbox): the street, or the district desk when no street is known.

    Every report and action of one case must land on one partition; a case never changes street
    (transfers change the assignee, not the key), so the street of its first report is the key.
    """
    location = enriched.location
    return location.street_id or district_desk_id(location.district_id)


def common_parent(reference: DistrictReference, unit_a: str, unit_b: str, category: str | None = None) -> Unit:
    """The unit that settles a responsibility dispute between two units: the lowest unit both ladders share.

    Each unit's ladder is itself, its territorial parents, then the district rung, then supervision
    and discipline. The district rung is the department owning `category` (duties by the "三定"
    lists) or, with no category, the district dispatch desk. A street desk speaks for its street.
    So: two grids of one community -> the community; of one street -> the street; of two streets
    -> the owning department (the blocked drain between two streets goes to water affairs); two
    departments -> supervision; the same unit -> itself.
    """
    if unit_a == unit_b:
        return _unit(reference, unit_a)
    ladder_b = set(_ladder(reference, unit_b, category))
    for unit_id in _ladder(reference, unit_a, category):
        if unit_id in ladder_b:
            return reference.units[unit_id]
    raise DomainError(f"{unit_a} and {unit_b} share no unit above them", field="unit_id")


def _ladder(reference: DistrictReference, unit_id: str, category: str | None) -> list[str]:
    _unit(reference, unit_id)
    top = [reference.supervision.unit_id, reference.discipline.unit_id]
    if unit_id in top:
        return top[top.index(unit_id):]
    if category is None:
        district_rung = reference.district_desk.unit_id
    elif category in reference.categories:
        district_rung = reference.categories[category].owner_department_id
    else:
        raise DomainError(f"unknown category {category!r}", field="category")
    street_of_desk = {s.desk_id: s.street_id for s in reference.streets.values()}
    if unit_id in reference.grids:
        grid = reference.grids[unit_id]
        territorial = [unit_id, grid.community_id, grid.street_id]
    elif unit_id in reference.communities:
        territorial = [unit_id, reference.communities[unit_id].street_id]
    elif unit_id in reference.streets:
        territorial = [unit_id]
    elif unit_id in street_of_desk:
        territorial = [street_of_desk[unit_id]]
    else:
        return [unit_id] + top  # a department or the district desk
    return territorial + [district_rung] + top


def _unit(reference: DistrictReference, unit_id: str) -> Unit:
    unit = reference.units.get(unit_id)
    if unit is None:
        raise DomainError(f"unknown unit {unit_id!r}", field="unit_id")
    return unit

