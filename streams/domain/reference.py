"""The district's reference data: organisation, map, cameras, gazetteer, categories and who owns them.

Loaded once at start from a versioned directory (streams/reference/district-v1/), validated field by
field, and turned into frozen, indexed structures that the hot path only reads: a bucket-grid
spatial index for point-in-polygon, dictionaries for cameras and normalised addresses. Any problem
is a ConfigError naming the file and the field, because a wrong map silently sends cases to the
wrong grid worker.
"""
from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any

from streams.domain.model import Tier, Unit, Urgency
from whistle.ground.datafiles import config_error, read_csv, read_json, read_yaml
from whistle.ground.errors import ConfigError

REFERENCE_ROOT = Path(__file__).resolve().parents[1] / "reference"  # the sample city's reference directory (WHISTLE_REFERENCE_DIR's default)
DEFAULT_VERSION = "district-v1"
DISTRICT_FILE = "district.json"  # marks a reference directory's district version directory
HOTLINE_FILE = "hotline.yaml"  # the 12345 call centre's labels and return-visit results
EXCEPTIONS_FILE = "exceptions.geojson"  # per-area exceptions to the responsibility matrix
PROPERTY_MANAGED, TRUNK_ROAD = "property_managed", "trunk_road"

COMPLEXITY_CLASSES = ("emergency", "ordinary", "complex")
RESPONSIBILITY_MODES = ("territorial", "departmental")
GAZETTEER_KINDS = ("house", "road", "landmark")

Ring = tuple[tuple[float, float], ...]  # (lon, lat) vertices, closed: first == last
_HAIR = 1e-9  # degrees (~0.1 mm): margin that keeps bucket assignment safe from float rounding
_NEAR = 1e-9  # degrees: nearer than this to an edge (along the latitude), a point's side of it is decided exactly


@dataclass(frozen=True, slots=True)
class Street:
    street_id: str
    name: str
    desk_id: str


@dataclass(frozen=True, slots=True)
class Community:
    community_id: str
    street_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Grid:
    """One grid: about 400 households, one grid worker team, a polygon on the map."""

    grid_id: str
    name: str
    community_id: str
    street_id: str
    households: int
    ring: Ring


@dataclass(frozen=True, slots=True)
class ExceptionArea:
    """A place where the responsibility matrix does not hold for some categories (exceptions.geojson).

    property_managed (物业管理小区): inside a compound, the property manager takes the grid team's rung for the
    listed categories; the community, street and department above it stay. trunk_road (城市主干道): on a
    road the city maintains, the listed categories go straight to `first_unit`, a department, as departmental
    categories do.
    """

    area_id: str
    kind: str
    name: str
    categories: frozenset[str]
    first_unit: Unit
    ring: Ring


@dataclass(frozen=True, slots=True)
class UngriddedArea:
    """Land inside a street that no grid covers (a park, a lake): the street's dispatch desk handles it."""

    area_id: str
    name: str
    street_id: str
    ring: Ring


@dataclass(frozen=True, slots=True)
class Camera:
    camera_id: str
    name: str
    lat: float
    lon: float
    grid_id: str | None
    street_id: str | None


@dataclass(frozen=True, slots=True)
class GazetteerEntry:
    """A known address. `kind` is house (road + number), road (the road name only) or landmark.

    Road entries have no coordinates; their street is set only when the whole road lies in one street.
    """

    address: str
    kind: str
    lat: float | None
    lon: float | None
    grid_id: str | None
    street_id: str | None


@dataclass(frozen=True, slots=True)
class Category:
    """An incident category and its line in the responsibility matrix.

    `territorial` categories go to the grid worker team first and climb the territorial ladder;
    departmental ones are dispatched straight to the owning department. `complexity` is a coarse
    class (emergency / ordinary / complex); time limits come from the SLA policy, which classes
    categories itself per policy version. Camera detections below `camera_min_confidence` go to a
    dispatch desk for human review instead of straight to a handler.
    """

    code: str
    name: str
    default_urgency: Urgency
    complexity: str
    owner_department_id: str
    territorial: bool
    camera_min_confidence: float
    hotline_labels: tuple[str, ...]


def fold_text(text: str) -> str:
    """The canonical form under which free text from people is compared: NFKC, no whitespace, 號 -> 号, casefolded.

    NFKC turns full-width digits and letters (８８号, ＡＢ) into ASCII; whitespace inside Chinese
    addresses carries no meaning; 號 is the traditional form of 号.
    """
    return "".join(unicodedata.normalize("NFKC", text).split()).replace("號", "号").casefold()


class Gazetteer:
    """Address text -> known address, tolerant of the ways callers and operators write one.

    Matching: fold_text(), then drop the leading province / city / district prefixes (each optional,
    in that order), then rewrite a retired road name to its current one, then an exact match; failing
    that, the text up to and including the first 号 ("建设路88号3栋2单元" -> "建设路88号").
    """

    __slots__ = ("_entries", "_prefixes", "_road_aliases")

    def __init__(self, entries: Iterable[GazetteerEntry], prefixes: Sequence[str], road_aliases: Mapping[str, str]) -> None:
        self._prefixes = tuple(fold_text(p) for p in prefixes)
        self._road_aliases = tuple((fold_text(old), fold_text(new)) for old, new in road_aliases.items())
        self._entries: dict[str, GazetteerEntry] = {}
        for entry in entries:
            self._entries[self.normalize(entry.address)] = entry

    def normalize(self, text: str) -> str:
        """The key under which `text` is looked up (also the merge key of an address without coordinates)."""
        folded = fold_text(text)
        for prefix in self._prefixes:
            if folded.startswith(prefix):
                folded = folded[len(prefix):]
        for old, new in self._road_aliases:
            if folded.startswith(old):
                return new + folded[len(old):]
        return folded

    def lookup(self, text: str) -> GazetteerEntry | None:
        key = self.normalize(text)
        entry = self._entries.get(key)
        if entry is None:
            number_end = key.find("号")
            if number_end > 0:
                entry = self._entries.get(key[: number_end + 1])
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> tuple[GazetteerEntry, ...]:
        return tuple(self._entries.values())


class PolygonIndex:
    """Point -> polygon over a tiling, by a bucket grid and ray casting (cost per point: README, measured figures).

    The bounding box is cut into square-ish buckets. A bucket lying wholly inside one polygon answers
    at once (most do); the others keep the few polygons whose boxes touch them, in priority order, and
    test those.

    Boundary rule (no holes): a point belongs to the *first polygon in the given order whose closed
    polygon contains it* (interior or boundary). Polygons of a tiling have disjoint interiors, so an
    interior point has exactly one such polygon and the order matters only on boundaries: a point on
    an edge shared by A and B goes to whichever of A, B comes first, a vertex shared by several
    polygons to the first of them, and a point on the outer boundary of the tiling to the polygon it
    lies on. Every point of the closure of the tiling therefore has exactly one owner, and every
    point outside it none. The loader lists grids by ascending grid id, then ungridded areas by area
    id, so the rule reads "lowest grid id among the polygons whose closure contains the point; a
    grid before a park".

    Exactness: the side of an edge a point lies on is decided in floating point when the point is
    farther than _NEAR (1e-9 degrees, ~0.1 mm; float error here is below 1e-13) from the edge along
    its latitude, and otherwise exactly, in rational arithmetic (rare: only points within 0.1 mm of
    an edge take that path). So "on the edge" means exactly on it, as shapely's `covers` decides.
    """

    __slots__ = ("_lon0", "_lat0", "_lon1", "_lat1", "_inv_w", "_inv_h", "_cols", "_rows", "_full", "_candidates")

    def __init__(self, polygons: Sequence[tuple[Any, Ring]], bucket_deg: float) -> None:
        if not polygons:
            raise ConfigError("a polygon index needs at least one polygon")
        xs = [x for _, ring in polygons for x, _ in ring]
        ys = [y for _, ring in polygons for _, y in ring]
        self._lon0, self._lat0 = min(xs), min(ys)
        self._lon1, self._lat1 = max(xs), max(ys)
        self._cols = max(1, math.ceil((max(xs) - self._lon0) / bucket_deg))
        self._rows = max(1, math.ceil((max(ys) - self._lat0) / bucket_deg))
        self._inv_w = self._cols / (max(xs) - self._lon0)
        self._inv_h = self._rows / (max(ys) - self._lat0)
        cells = self._cols * self._rows
        touching: list[list] = [[] for _ in range(cells)]
        for key, ring in polygons:  # in priority order, so every bucket's list is in priority order too
            sloped, flat = _canonical_edges(ring)
            prepared = (key, _bbox(ring), sloped, flat, ring)
            box = prepared[1]
            first_col, last_col = self._col_span(box[0], box[2])
            first_row, last_row = self._row_span(box[1], box[3])
            for row in range(first_row, last_row + 1):
                for col in range(first_col, last_col + 1):
                    touching[row * self._cols + col].append(prepared)
        full: list[Any] = [None] * cells
        candidates: list[tuple] = [()] * cells
        for bucket, near in enumerate(touching):
            row, col = divmod(bucket, self._cols)
            # The bucket's box, widened by a hair so float rounding at its edges cannot matter.
            box = (self._lon0 + col / self._inv_w - _HAIR, self._lat0 + row / self._inv_h - _HAIR,
                   self._lon0 + (col + 1) / self._inv_w + _HAIR, self._lat0 + (row + 1) / self._inv_h + _HAIR)
            near = [p for p in near if _boxes_touch(p[1], box)]
            holder = next((p for p in near if _ring_contains_box(p[4], p[2], box)), None)
            if holder is not None:
                full[bucket] = holder[0]
            else:
                candidates[bucket] = tuple((key, poly_box[0], poly_box[2], sloped, flat)
                                           for key, poly_box, sloped, flat, _ in near)
        self._full = tuple(full)
        self._candidates = tuple(candidates)

    def _col_span(self, low: float, high: float) -> tuple[int, int]:
        return (max(0, int((low - self._lon0) * self._inv_w) - 1), min(self._cols - 1, int((high - self._lon0) * self._inv_w) + 1))

    def _row_span(self, low: float, high: float) -> tuple[int, int]:
        return (max(0, int((low - self._lat0) * self._inv_h) - 1), min(self._rows - 1, int((high - self._lat0) * self._inv_h) + 1))

    def locate(self, lat: float, lon: float) -> Any:
        """The key of the first polygon whose closure contains (lat, lon), or None outside every polygon."""
        fx = (lon - self._lon0) * self._inv_w
        fy = (lat - self._lat0) * self._inv_h
        if not (0.0 <= fx < self._cols and 0.0 <= fy < self._rows):
            # The east and north sides of the bounding box belong to the last column / row of buckets.
            if not (self._lon0 <= lon <= self._lon1 and self._lat0 <= lat <= self._lat1):
                return None
            fx, fy = min(max(fx, 0.0), self._cols - 1.0), min(max(fy, 0.0), self._rows - 1.0)
        bucket = int(fy) * self._cols + int(fx)
        key = self._full[bucket]
        if key is not None:
            return key
        for key, min_x, max_x, sloped, flat in self._candidates[bucket]:
            if lon < min_x or lon > max_x:
                continue
            if _closed_contains(sloped, flat, lon, lat):
                return key
        return None


def _closed_contains(sloped: tuple, flat: tuple, x: float, y: float, near: float = _NEAR) -> bool:
    """True when (x, y) lies in the polygon's interior or on its boundary, decided exactly.

    Ray casting eastwards with half-open crossings (an edge counts when y_lo <= y < y_hi and the point
    is strictly west of it) gives the right parity for every point not on the boundary; a point on an
    edge is caught first and answers True.
    """
    inside = False
    for y_lo, y_hi, x_lo, slope, x_hi in sloped:
        if y_lo <= y <= y_hi:
            gap = x - x_lo - (y - y_lo) * slope  # < 0: west of the edge
            if gap < -near:
                if y < y_hi:
                    inside = not inside
            elif gap <= near:
                side = _exact_side(x_lo, y_lo, x_hi, y_hi, x, y)
                if side == 0:
                    return True
                if side > 0 and y < y_hi:
                    inside = not inside
    if flat:  # horizontal edges never cross the ray; they matter only for points on them
        for fy, fx_lo, fx_hi in flat:
            if y == fy and fx_lo <= x <= fx_hi:
                return True
    return inside


_CCW_ERROR = (3.0 + 16.0 * 2.0 ** -53) * 2.0 ** -53  # Shewchuk's ccwerrboundA: the float orientation's sign is exact above it


def _exact_side(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> int:
    """Sign of orient2d(a, b, c), exactly: > 0 when c is west of the upward edge a -> b (left of it), 0 on its line.

    Shewchuk's error-bounded float test first; only when it cannot decide, rational arithmetic.
    """
    if (cx == ax and cy == ay) or (cx == bx and cy == by):
        return 0
    left, right = (ax - cx) * (by - cy), (ay - cy) * (bx - cx)
    det = left - right
    if (left > 0 and right > 0) or (left < 0 and right < 0):
        if abs(det) >= _CCW_ERROR * abs(left + right):
            return (det > 0) - (det < 0)
    elif left != 0 or right != 0:  # opposite signs or one zero: the float difference has the exact sign
        return (det > 0) - (det < 0)
    fcx, fcy = Fraction(cx), Fraction(cy)
    cross = (Fraction(ax) - fcx) * (Fraction(by) - fcy) - (Fraction(ay) - fcy) * (Fraction(bx) - fcx)
    return (cross > 0) - (cross < 0)


def _crossings_odd(edges: tuple, x: float, y: float) -> bool:
    """Half-open ray-casting parity in floating point: used only to classify bucket corners kept _HAIR away from edges."""
    inside = False
    for y_lo, y_hi, x_lo, slope, _ in edges:
        if y_lo <= y < y_hi and x < x_lo + (y - y_lo) * slope:
            inside = not inside
    return inside


def _canonical_edges(ring: Ring) -> tuple[tuple[tuple[float, float, float, float, float], ...], tuple[tuple[float, float, float], ...]]:
    """(sloped, flat): non-horizontal edges as (y_lo, y_hi, x_lo, slope, x_hi), lower vertex first, so two polygons
    sharing an edge compute bit-identical crossings; horizontal edges as (y, x_min, x_max), used only for boundary hits."""
    sloped = []
    flat = []
    for (x1, y1), (x2, y2) in zip(ring, ring[1:]):
        if y1 == y2:
            flat.append((y1, min(x1, x2), max(x1, x2)))
            continue
        if y1 > y2:
            x1, y1, x2, y2 = x2, y2, x1, y1
        sloped.append((y1, y2, x1, (x2 - x1) / (y2 - y1), x2))
    return tuple(sloped), tuple(flat)


def _bbox(ring: Ring) -> tuple[float, float, float, float]:
    xs = [x for x, _ in ring]
    ys = [y for _, y in ring]
    return min(xs), min(ys), max(xs), max(ys)


def _boxes_touch(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _ring_contains_box(ring: Ring, edges: tuple, box: tuple[float, float, float, float]) -> bool:
    """True when the closed box lies strictly inside the polygon: corners inside, no vertex in it, no edge touching it."""
    x0, y0, x1, y1 = box
    corners = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
    if not all(_crossings_odd(edges, x, y) for x, y in corners):
        return False
    if any(x0 <= x <= x1 and y0 <= y <= y1 for x, y in ring):
        return False
    sides = tuple(zip(corners, corners[1:] + corners[:1]))
    return not any(_segments_touch(a, b, c, d) for a, b in zip(ring, ring[1:]) for c, d in sides)


def _segments_touch(p1, p2, p3, p4) -> bool:
    def orient(a, b, c) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    def on_segment(a, b, c) -> bool:
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    d1, d2, d3, d4 = orient(p3, p4, p1), orient(p3, p4, p2), orient(p1, p2, p3), orient(p1, p2, p4)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return ((d1 == 0 and on_segment(p3, p4, p1)) or (d2 == 0 and on_segment(p3, p4, p2))
            or (d3 == 0 and on_segment(p1, p2, p3)) or (d4 == 0 and on_segment(p1, p2, p4)))


@dataclass(frozen=True, slots=True, eq=False)
class DistrictReference:
    """Everything Whistle knows about one district, read-only. Build it with load_reference()."""

    version: str
    district_id: str
    district_name: str
    district_desk: Unit
    supervision: Unit
    discipline: Unit
    units: Mapping[str, Unit]
    streets: Mapping[str, Street]
    communities: Mapping[str, Community]
    grids: Mapping[str, Grid]
    ungridded_areas: Mapping[str, UngriddedArea]
    departments: Mapping[str, Unit]
    categories: Mapping[str, Category]
    hotline_labels: Mapping[str, str]  # fold_text(label or code) -> category code: categories.json's labels and hotline.yaml's
    return_visit_ratings: Mapping[str, int]  # fold_text(return-visit result) -> the reporter's rating 1..5 (hotline.yaml)
    hotline_version: str
    cameras: Mapping[str, Camera]
    gazetteer: Gazetteer
    spatial: PolygonIndex
    address_prefixes: tuple[str, ...]  # province, city, district: what callers may put before an address
    directory: Path  # the district version directory it was read from (its files are rule files: streams.domain.rules)
    exception_areas: Mapping[str, ExceptionArea]  # exceptions.geojson, by area id
    exception_index: PolygonIndex | None  # the areas (None: none): a point's area is the lowest area id holding it

    def exception_at(self, lat: float, lon: float, category: str) -> ExceptionArea | None:
        """The exception area at the point that changes who handles `category` there; None where the matrix holds."""
        if self.exception_index is None:
            return None
        area = self.exception_index.locate(lat, lon)
        return area if area is not None and category in area.categories else None

    def unit_tiers(self) -> dict[str, str]:
        """Every unit's tier by unit id: where a return or an arbiter's assignment may send a case."""
        return {unit_id: Tier(unit.tier).value for unit_id, unit in self.units.items()}

    def locate(self, lat: float, lon: float) -> Grid | UngriddedArea | None:
        """The grid (or ungridded area of a street) containing the point, None outside the district.

        Every point of the closed district has exactly one answer: on a shared edge or vertex (or the
        district's outer boundary) the lowest grid id among the polygons whose closure holds it, a
        grid before an ungridded area (PolygonIndex, boundary rule).
        """
        return self.spatial.locate(lat, lon)

    def category_for_label(self, label: str) -> str | None:
        """Category code for a hotline operator's label or a category code, compared after fold_text()."""
        return self.hotline_labels.get(fold_text(label))

    def rating_for_return_visit(self, result: str) -> int | None:
        """The reporter's rating 1..5 for the hotline's return-visit result as 12345 records it (满意 / 基本满意 / 不满意)."""
        return self.return_visit_ratings.get(fold_text(result))


def district_dir(reference_dir: Path | str) -> Path:
    """The district version directory of a reference directory (WHISTLE_REFERENCE_DIR): its one subdirectory holding district.json.

    A new district version is a new reference directory (the old one stays as it was: case events name its units)."""
    root = Path(reference_dir)
    if not root.is_dir():
        raise ConfigError(f"reference directory {root} does not exist", file=str(root))
    found = sorted(p for p in root.iterdir() if (p / DISTRICT_FILE).is_file())
    if len(found) != 1:
        raise config_error(root, "-", f"must hold exactly one district version directory (with {DISTRICT_FILE}), found "
                                      f"{[p.name for p in found] or 'none'}")
    return found[0]


def load_district(reference_dir: Path | str) -> DistrictReference:
    """The district of a reference directory (WHISTLE_REFERENCE_DIR), loaded and validated."""
    return load_reference(district_dir(reference_dir))


def load_reference(directory: Path | str | None = None) -> DistrictReference:
    """Load and validate the district version directory `directory` (default: the sample district's)."""
    root = Path(directory) if directory is not None else REFERENCE_ROOT / DEFAULT_VERSION
    if not root.is_dir():
        raise ConfigError(f"reference data directory {root} does not exist", file=str(root))
    return _Loader(root).load()


class _Loader:
    """Reads the five files of a reference version; every error names the file and field at fault."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fail(self, file: str, field: str, message: str) -> ConfigError:
        return config_error(self.root / file, field, message)

    def load(self) -> DistrictReference:
        org = self._read_json("district.json")
        version = self._text(org, "version", "district.json", "version")
        if version != self.root.name:
            raise self.fail("district.json", "version", f"says {version!r} but lives in directory {self.root.name!r}")
        district = self._mapping(org, "district", "district.json", "district")
        district_id = self._text(district, "id", "district.json", "district.id")
        units: dict[str, Unit] = {}

        def add_unit(unit_id: str, tier: Tier, name: str, field: str) -> Unit:
            if unit_id in units:
                raise self.fail("district.json", field, f"unit id {unit_id!r} is used twice")
            units[unit_id] = Unit(unit_id, tier, name)
            return units[unit_id]

        # The district desk sits at district level: the department rung of the ladder.
        desk = self._mapping(district, "desk", "district.json", "district.desk")
        district_desk = add_unit(self._text(desk, "id", "district.json", "district.desk.id"), Tier.DEPARTMENT,
                                 self._text(desk, "name", "district.json", "district.desk.name"), "district.desk.id")
        streets: dict[str, Street] = {}
        for i, raw in enumerate(self._list(org, "streets", "district.json", "streets")):
            where = f"streets[{i}]"
            street = Street(self._text(raw, "id", "district.json", f"{where}.id"), self._text(raw, "name", "district.json", f"{where}.name"),
                            self._text(raw, "desk_id", "district.json", f"{where}.desk_id"))
            add_unit(street.street_id, Tier.STREET, street.name, f"{where}.id")
            add_unit(street.desk_id, Tier.STREET, f"{street.name}调度台", f"{where}.desk_id")
            streets[street.street_id] = street
        communities: dict[str, Community] = {}
        for i, raw in enumerate(self._list(org, "communities", "district.json", "communities")):
            where = f"communities[{i}]"
            community = Community(self._text(raw, "id", "district.json", f"{where}.id"), self._text(raw, "street_id", "district.json", f"{where}.street_id"),
                                  self._text(raw, "name", "district.json", f"{where}.name"))
            if community.street_id not in streets:
                raise self.fail("district.json", f"{where}.street_id", f"unknown street {community.street_id!r}")
            add_unit(community.community_id, Tier.COMMUNITY, community.name, f"{where}.id")
            communities[community.community_id] = community
        departments: dict[str, Unit] = {}
        for i, raw in enumerate(self._list(org, "departments", "district.json", "departments")):
            where = f"departments[{i}]"
            unit = add_unit(self._text(raw, "id", "district.json", f"{where}.id"), Tier.DEPARTMENT, self._text(raw, "name", "district.json", f"{where}.name"), f"{where}.id")
            departments[unit.unit_id] = unit
        sup = self._mapping(org, "supervision", "district.json", "supervision")
        supervision = add_unit(self._text(sup, "id", "district.json", "supervision.id"), Tier.SUPERVISION, self._text(sup, "name", "district.json", "supervision.name"), "supervision.id")
        dis = self._mapping(org, "discipline", "district.json", "discipline")
        discipline = add_unit(self._text(dis, "id", "district.json", "discipline.id"), Tier.DISCIPLINE, self._text(dis, "name", "district.json", "discipline.name"), "discipline.id")
        prefixes = [self._as_text(p, "district.json", f"address_prefixes[{i}]") for i, p in enumerate(self._list(org, "address_prefixes", "district.json", "address_prefixes"))]
        road_aliases = {self._as_text(old, "district.json", "road_aliases"): self._as_text(new, "district.json", f"road_aliases.{old}")
                        for old, new in self._mapping(org, "road_aliases", "district.json", "road_aliases").items()}

        grids, areas = self._load_map(communities, streets, units)
        # Priority on shared boundaries (PolygonIndex): grids by ascending id, then ungridded areas by ascending id.
        spatial = PolygonIndex([(g, g.ring) for _, g in sorted(grids.items())] + [(a, a.ring) for _, a in sorted(areas.items())],
                               bucket_deg=0.0006)
        for street_id in streets:
            if not any(c.street_id == street_id for c in communities.values()):
                raise self.fail("district.json", "communities", f"street {street_id!r} has no community")
        for community_id in communities:
            if not any(g.community_id == community_id for g in grids.values()):
                raise self.fail("grids.geojson", "features", f"community {community_id!r} has no grid")
        categories, labels = self._load_categories(departments)
        hotline_version, ratings = self._load_hotline(categories, labels)
        cameras = self._load_cameras(spatial)
        gazetteer = self._load_gazetteer(spatial, streets, prefixes, road_aliases)
        exception_areas = self._load_exceptions(units, categories, departments)
        return DistrictReference(
            version=version, district_id=district_id, district_name=self._text(district, "name", "district.json", "district.name"),
            district_desk=district_desk, supervision=supervision, discipline=discipline,
            units=MappingProxyType(units), streets=MappingProxyType(streets), communities=MappingProxyType(communities),
            grids=MappingProxyType(grids), ungridded_areas=MappingProxyType(areas), departments=MappingProxyType(departments),
            categories=MappingProxyType(categories), hotline_labels=MappingProxyType(labels),
            return_visit_ratings=MappingProxyType(ratings), hotline_version=hotline_version, cameras=MappingProxyType(cameras),
            gazetteer=gazetteer, spatial=spatial, address_prefixes=tuple(prefixes), directory=self.root,
            exception_areas=MappingProxyType(exception_areas),
            exception_index=PolygonIndex([(a, a.ring) for _, a in sorted(exception_areas.items())], bucket_deg=0.0006) if exception_areas else None,
        )

    def _load_map(self, communities: dict[str, Community], streets: dict[str, Street], units: dict[str, Unit]):
        doc = self._read_json("grids.geojson")
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
            raise self.fail("grids.geojson", "type", "must be FeatureCollection")
        grids: dict[str, Grid] = {}
        areas: dict[str, UngriddedArea] = {}
        for i, feature in enumerate(self._list(doc, "features", "grids.geojson", "features")):
            where = f"features[{i}]"
            props = self._mapping(feature, "properties", "grids.geojson", f"{where}.properties")
            ring = self._ring(feature, where)
            kind = props.get("kind")
            if kind == "grid":
                grid_id = self._text(props, "grid_id", "grids.geojson", f"{where}.properties.grid_id")
                community_id = self._text(props, "community_id", "grids.geojson", f"{where}.properties.community_id")
                if community_id not in communities:
                    raise self.fail("grids.geojson", f"{where}.properties.community_id", f"unknown community {community_id!r}")
                households = props.get("households")
                if not isinstance(households, int) or households <= 0:
                    raise self.fail("grids.geojson", f"{where}.properties.households", f"must be a positive integer, got {households!r}")
                if grid_id in units:
                    raise self.fail("grids.geojson", f"{where}.properties.grid_id", f"unit id {grid_id!r} is used twice")
                name = self._text(props, "name", "grids.geojson", f"{where}.properties.name")
                grids[grid_id] = Grid(grid_id, name, community_id, communities[community_id].street_id, households, ring)
                units[grid_id] = Unit(grid_id, Tier.GRID, name)
            elif kind == "ungridded":
                area_id = self._text(props, "area_id", "grids.geojson", f"{where}.properties.area_id")
                street_id = self._text(props, "street_id", "grids.geojson", f"{where}.properties.street_id")
                if street_id not in streets:
                    raise self.fail("grids.geojson", f"{where}.properties.street_id", f"unknown street {street_id!r}")
                if area_id in areas:
                    raise self.fail("grids.geojson", f"{where}.properties.area_id", f"area id {area_id!r} is used twice")
                areas[area_id] = UngriddedArea(area_id, self._text(props, "name", "grids.geojson", f"{where}.properties.name"), street_id, ring)
            else:
                raise self.fail("grids.geojson", f"{where}.properties.kind", f"must be 'grid' or 'ungridded', got {kind!r}")
        return grids, areas

    def _ring(self, feature: Any, where: str, file: str = "grids.geojson") -> Ring:
        geometry = self._mapping(feature, "geometry", file, f"{where}.geometry")
        if geometry.get("type") != "Polygon":
            raise self.fail(file, f"{where}.geometry.type", "must be Polygon")
        rings = geometry.get("coordinates")
        if not isinstance(rings, list) or len(rings) != 1:
            raise self.fail(file, f"{where}.geometry.coordinates", "must hold exactly one ring (no holes)")
        ring = []
        for j, position in enumerate(rings[0]):
            field = f"{where}.geometry.coordinates[0][{j}]"
            if not (isinstance(position, list) and len(position) == 2):
                raise self.fail(file, field, "must be [lon, lat]")
            ring.append((self._coordinate(position[0], -180.0, 180.0, file, field), self._coordinate(position[1], -90.0, 90.0, file, field)))
        if len(ring) < 4 or ring[0] != ring[-1]:
            raise self.fail(file, f"{where}.geometry.coordinates[0]", "must be a closed ring of at least 3 distinct vertices")
        return tuple(ring)

    def _load_exceptions(self, units: dict[str, Unit], categories: dict[str, Category], departments: dict[str, Unit]) -> dict[str, ExceptionArea]:
        """exceptions.geojson (optional): property-managed compounds and trunk roads, each with the categories it changes.

        A compound's manager is a new unit at the grid rung (its key can be bound to it); only territorial
        categories can be a manager's. A trunk road names the department that takes its categories first.
        """
        file = EXCEPTIONS_FILE
        if not (self.root / file).is_file():
            return {}
        doc = self._read_json(file)
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
            raise self.fail(file, "type", "must be FeatureCollection")
        areas: dict[str, ExceptionArea] = {}
        for i, feature in enumerate(self._list(doc, "features", file, "features")):
            where = f"features[{i}].properties"
            props = self._mapping(feature, "properties", file, where)
            area_id = self._text(props, "area_id", file, f"{where}.area_id")
            if area_id in areas:
                raise self.fail(file, f"{where}.area_id", f"area id {area_id!r} is used twice")
            kind = self._text(props, "kind", file, f"{where}.kind")
            listed = [self._as_text(c, file, f"{where}.categories[{j}]") for j, c in enumerate(self._list(props, "categories", file, f"{where}.categories"))]
            for j, code in enumerate(listed):
                if code not in categories:
                    raise self.fail(file, f"{where}.categories[{j}]", f"unknown category {code!r}")
            if kind == PROPERTY_MANAGED:
                for j, code in enumerate(listed):
                    if not categories[code].territorial:
                        raise self.fail(file, f"{where}.categories[{j}]", f"{code!r} is departmental: only a territorial category can be a property manager's")
                manager = self._mapping(props, "manager", file, f"{where}.manager")
                manager_id = self._text(manager, "id", file, f"{where}.manager.id")
                if manager_id in units:
                    raise self.fail(file, f"{where}.manager.id", f"unit id {manager_id!r} is used twice")
                first = units[manager_id] = Unit(manager_id, Tier.GRID, self._text(manager, "name", file, f"{where}.manager.name"))
            elif kind == TRUNK_ROAD:
                department_id = self._text(props, "department", file, f"{where}.department")
                if department_id not in departments:
                    raise self.fail(file, f"{where}.department", f"unknown department {department_id!r}")
                first = departments[department_id]
            else:
                raise self.fail(file, f"{where}.kind", f"must be {PROPERTY_MANAGED!r} or {TRUNK_ROAD!r}, got {kind!r}")
            areas[area_id] = ExceptionArea(area_id, kind, self._text(props, "name", file, f"{where}.name"), frozenset(listed), first,
                                           self._ring(feature, f"features[{i}]", file))
        return areas

    def _load_categories(self, departments: dict[str, Unit]):
        doc = self._read_json("categories.json")
        categories: dict[str, Category] = {}
        labels: dict[str, str] = {}
        for i, raw in enumerate(self._list(doc, "categories", "categories.json", "categories")):
            where = f"categories[{i}]"
            code = self._text(raw, "code", "categories.json", f"{where}.code")
            urgency = self._text(raw, "default_urgency", "categories.json", f"{where}.default_urgency")
            if urgency not in {u.value for u in Urgency}:
                raise self.fail("categories.json", f"{where}.default_urgency", f"must be one of {[u.value for u in Urgency]}, got {urgency!r}")
            complexity = self._text(raw, "complexity", "categories.json", f"{where}.complexity")
            if complexity not in COMPLEXITY_CLASSES:
                raise self.fail("categories.json", f"{where}.complexity", f"must be one of {list(COMPLEXITY_CLASSES)}, got {complexity!r}")
            owner = self._text(raw, "owner_department", "categories.json", f"{where}.owner_department")
            if owner not in departments:
                raise self.fail("categories.json", f"{where}.owner_department", f"unknown department {owner!r}")
            mode = self._text(raw, "responsibility", "categories.json", f"{where}.responsibility")
            if mode not in RESPONSIBILITY_MODES:
                raise self.fail("categories.json", f"{where}.responsibility", f"must be one of {list(RESPONSIBILITY_MODES)}, got {mode!r}")
            threshold = raw.get("camera_min_confidence")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
                raise self.fail("categories.json", f"{where}.camera_min_confidence", f"must be a number in [0, 1], got {threshold!r}")
            hotline = tuple(self._as_text(x, "categories.json", f"{where}.hotline_labels[{j}]") for j, x in enumerate(self._list(raw, "hotline_labels", "categories.json", f"{where}.hotline_labels")))
            if code in categories:
                raise self.fail("categories.json", f"{where}.code", f"category {code!r} is defined twice")
            categories[code] = Category(code, self._text(raw, "name", "categories.json", f"{where}.name"), Urgency(urgency), complexity, owner, mode == "territorial", float(threshold), hotline)
            for j, label in enumerate((code,) + hotline):
                key = fold_text(label)
                if labels.setdefault(key, code) != code:
                    field = f"{where}.hotline_labels[{j - 1}]" if j else f"{where}.code"
                    raise self.fail("categories.json", field, f"label {label!r} already names category {labels[key]!r}")
        return categories, labels

    def _load_hotline(self, categories: dict[str, Category], labels: dict[str, str]) -> tuple[str, dict[str, int]]:
        """hotline.yaml: more operator labels per category (added to `labels`), and the return visit's results as ratings."""
        file = HOTLINE_FILE
        doc = read_yaml(self.root / file)
        version = self._text(doc, "version", file, "version")
        for code, listed in self._mapping(doc, "labels", file, "labels").items():
            if code not in categories:
                raise self.fail(file, f"labels.{code}", f"unknown category {code!r}")
            for j, raw in enumerate(listed if isinstance(listed, list) else [None]):
                label = self._as_text(raw, file, f"labels.{code}[{j}]")
                if labels.setdefault(fold_text(label), code) != code:
                    raise self.fail(file, f"labels.{code}[{j}]", f"label {label!r} already names category {labels[fold_text(label)]!r}")
        ratings: dict[str, int] = {}
        for result, rating in self._mapping(doc, "return_visit", file, "return_visit").items():
            if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
                raise self.fail(file, f"return_visit.{result}", f"must be a rating 1..5, got {rating!r}")
            ratings[fold_text(self._as_text(result, file, "return_visit"))] = rating
        return version, ratings

    def _load_cameras(self, spatial: PolygonIndex) -> dict[str, Camera]:
        cameras: dict[str, Camera] = {}
        for line, row in self._read_csv("cameras.csv", ("camera_id", "name", "lat", "lon", "grid_id")):
            where = f"line {line}"
            camera_id = self._as_text(row["camera_id"], "cameras.csv", f"{where}.camera_id")
            lat = self._coordinate(row["lat"], -90.0, 90.0, "cameras.csv", f"{where}.lat")
            lon = self._coordinate(row["lon"], -180.0, 180.0, "cameras.csv", f"{where}.lon")
            place = spatial.locate(lat, lon)
            grid_id = place.grid_id if isinstance(place, Grid) else None
            if (row["grid_id"] or None) != grid_id:
                raise self.fail("cameras.csv", f"{where}.grid_id", f"camera {camera_id} says {row['grid_id']!r} but its position lies in {grid_id!r}")
            if camera_id in cameras:
                raise self.fail("cameras.csv", f"{where}.camera_id", f"camera {camera_id!r} is listed twice")
            cameras[camera_id] = Camera(camera_id, row["name"], lat, lon, grid_id, place.street_id if place is not None else None)
        return cameras

    def _load_gazetteer(self, spatial: PolygonIndex, streets: dict[str, Street], prefixes: list[str], road_aliases: dict[str, str]) -> Gazetteer:
        entries = []
        for line, row in self._read_csv("gazetteer.csv", ("address", "kind", "lat", "lon", "grid_id", "street_id")):
            where = f"line {line}"
            address = self._as_text(row["address"], "gazetteer.csv", f"{where}.address")
            kind = row["kind"]
            if kind not in GAZETTEER_KINDS:
                raise self.fail("gazetteer.csv", f"{where}.kind", f"must be one of {list(GAZETTEER_KINDS)}, got {kind!r}")
            street_id = row["street_id"] or None
            if street_id is not None and street_id not in streets:
                raise self.fail("gazetteer.csv", f"{where}.street_id", f"unknown street {street_id!r}")
            if kind == "road":
                if row["lat"] or row["lon"] or row["grid_id"]:
                    raise self.fail("gazetteer.csv", where, f"road entry {address!r} must have no lat, lon or grid_id")
                entries.append(GazetteerEntry(address, kind, None, None, None, street_id))
                continue
            lat = self._coordinate(row["lat"], -90.0, 90.0, "gazetteer.csv", f"{where}.lat")
            lon = self._coordinate(row["lon"], -180.0, 180.0, "gazetteer.csv", f"{where}.lon")
            place = spatial.locate(lat, lon)
            grid_id = place.grid_id if isinstance(place, Grid) else None
            located_street = place.street_id if place is not None else None
            if (row["grid_id"] or None) != grid_id or street_id != located_street:
                raise self.fail("gazetteer.csv", f"{where}.grid_id", f"{address} says grid {row['grid_id']!r} street {street_id!r} but its position lies in grid {grid_id!r} street {located_street!r}")
            entries.append(GazetteerEntry(address, kind, lat, lon, grid_id, street_id))
        gazetteer = Gazetteer(entries, prefixes, road_aliases)
        if len(gazetteer) != len(entries):
            raise self.fail("gazetteer.csv", "address", "two addresses normalise to the same key")
        return gazetteer

    # -- small typed readers ------------------------------------------------------------------

    def _read_json(self, file: str) -> Any:
        return read_json(self.root / file)

    def _read_csv(self, file: str, columns: tuple[str, ...]) -> Iterable[tuple[int, dict[str, str]]]:
        return read_csv(self.root / file, columns)

    def _mapping(self, parent: Any, key: str, file: str, field: str) -> dict:
        value = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(value, dict):
            raise self.fail(file, field, "must be an object")
        return value

    def _list(self, parent: Any, key: str, file: str, field: str) -> list:
        value = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(value, list):
            raise self.fail(file, field, "must be a list")
        return value

    def _text(self, parent: Any, key: str, file: str, field: str) -> str:
        return self._as_text(parent.get(key) if isinstance(parent, dict) else None, file, field)

    def _as_text(self, value: Any, file: str, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(file, field, f"must be a non-empty string, got {value!r}")
        return value

    def _coordinate(self, value: Any, low: float, high: float, file: str, field: str) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise self.fail(file, field, f"must be a number, got {value!r}") from exc
        if not (math.isfinite(number) and low <= number <= high):
            raise self.fail(file, field, f"must lie in [{low}, {high}], got {value!r}")
        return number

