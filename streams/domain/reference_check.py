"""Every problem of a reference directory at once (`whistle reference check DIR`), each named by file and line or feature.

The loaders (reference, sla, calendar) stop at the first problem, which is right for a worker starting; a city
preparing its data wants the whole list. So this module reads the raw files itself for the faults a map and a
matrix typically have, then runs the loaders too (their first error is listed unless a finding here already names
that place):
- polygons: an unclosed ring; two polygons whose interiors overlap (found on scanlines every SCAN_STEP_DEG, so an
  overlap thinner than that can slip through); a gap, i.e. a hole in the union of grids and ungridded areas: a point
  inside the district's outline in no polygon (traced exactly from the edges no two polygons share; that needs
  neighbours to share their vertices, as a snapped map does, else the check says so);
- organisation: a grid without a chain (its community or that community's street unknown), an owning department
  that is no department;
- categories: a category other than the contract's (schemas/categories.yaml), a hotline label or an SLA policy naming
  an unknown category;
- cameras: one whose file names a grid its position does not lie in (outside every grid, or in another one).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.domain.calendar import DEFAULT_CALENDAR_FILE, load_calendar
from streams.domain.reference import DISTRICT_FILE, HOTLINE_FILE, PolygonIndex, district_dir, load_reference
from streams.domain.rules import SLA_DIR
from streams.domain.sla import load_policies
from whistle.ground.datafiles import read_csv, read_json, read_yaml
from whistle.ground.errors import ConfigError

SCAN_STEP_DEG = 0.0001  # ~11 m between the scanlines that look for overlaps
_SLIVER_DEG = 1e-7  # ~1 cm: overlaps narrower than this along a scanline are float noise on a shared edge


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    file: str  # relative to the reference directory
    where: str  # field, feature or line
    problem: str


def check_reference(root: Path, category_codes: Iterable[str]) -> list[Problem]:
    """Every problem found in the reference directory `root`; [] when it is clean. `category_codes`: the contract's."""
    root = Path(root)
    problems: list[Problem] = []
    try:
        district = district_dir(root)
    except ConfigError as exc:
        return [Problem(".", "-", exc.message)]
    prefix = district.name

    def read(file: str, reader: Callable[[Path], Any]) -> Any:
        try:
            return reader(district / file)
        except ConfigError as exc:
            problems.append(Problem(f"{prefix}/{file}", str(exc.context.get("field", "-")), _bare(exc)))
            return None

    org = read(DISTRICT_FILE, read_json)
    grids = read("grids.geojson", read_json)
    matrix = read("categories.json", read_json)
    hotline = read(HOTLINE_FILE, read_yaml)
    cameras = read("cameras.csv", lambda p: read_csv(p, ("camera_id", "name", "lat", "lon", "grid_id")))
    found: list[Problem] = []
    polygons = _polygons(grids, f"{prefix}/grids.geojson", found) if isinstance(grids, dict) else []
    found += _organisation(org, grids, matrix, prefix)
    codes = _categories(matrix, hotline, set(category_codes), prefix, found)
    found += _cameras(cameras, polygons, f"{prefix}/cameras.csv")
    found += _policies(root / SLA_DIR, codes)
    problems += found
    named = {(p.file, p.where) for p in problems}
    for name, load in ((prefix, lambda: load_reference(district)), (SLA_DIR, lambda: load_policies(root / SLA_DIR)),
                       (SLA_DIR, lambda: load_calendar(root / SLA_DIR / DEFAULT_CALENDAR_FILE.name))):
        try:
            load()
        except ConfigError as exc:
            file = _relative(root, exc.context.get("file", name))
            where = str(exc.context.get("field", "-"))
            if (file, where) not in named and not any(p.file == file for p in found):
                problems.append(Problem(file, where, _bare(exc)))
    return sorted(set(problems))


def _bare(exc: ConfigError) -> str:
    """The message without the "<file>: <field>: " the data-file errors start with (the table has its own columns)."""
    message = exc.message
    for part in (exc.context.get("file"), exc.context.get("field")):
        if part is not None and message.startswith(f"{part}: "):
            message = message[len(str(part)) + 2:]
    return message


def _relative(root: Path, file: str) -> str:
    try:
        return str(Path(file).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(file)


Ring = tuple[tuple[float, float], ...]
Polygon = tuple[str, str, str, Ring]  # (where, grid or area id, kind, closed ring)


def _polygons(doc: dict, file: str, problems: list[Problem]) -> list[Polygon]:
    polygons: list[Polygon] = []
    for i, feature in enumerate(doc.get("features") or []):
        props = feature.get("properties") or {} if isinstance(feature, dict) else {}
        name = props.get("grid_id") or props.get("area_id") or "?"
        where = f"features[{i}] {name}"
        try:
            ring = [(float(x), float(y)) for x, y in feature["geometry"]["coordinates"][0]]
        except (KeyError, IndexError, TypeError, ValueError):
            problems.append(Problem(file, where, "geometry.coordinates must hold one ring of [lon, lat] positions"))
            continue
        if len(ring) < 4 or ring[0] != ring[-1]:
            problems.append(Problem(file, where, f"unclosed polygon: the ring's first vertex {list(ring[0]) if ring else None} "
                                                 f"is not repeated as its last ({list(ring[-1]) if ring else None})"))
            if len(ring) < 3:
                continue
            ring = ring + [ring[0]] if ring[0] != ring[-1] else ring
        polygons.append((where, name, str(props.get("kind")), tuple(ring)))
    problems += _overlaps(polygons, file) + _gaps(polygons, file)
    return polygons


def _overlaps(polygons: list[Polygon], file: str) -> list[Problem]:
    """Polygons whose interiors share ground, found on horizontal scanlines placed off every vertex."""
    if not polygons:
        return []
    ys = [y for *_, ring in polygons for _, y in ring]
    low, high = min(ys), max(ys)
    pairs: dict[tuple[str, str], float] = {}
    rows = int((high - low) / SCAN_STEP_DEG)
    for row in range(rows):
        y = low + (row + 0.5123) * SCAN_STEP_DEG  # an odd offset keeps scanlines off the vertices of a lattice
        spans = sorted((a, b, where) for where, _, _, ring in polygons for a, b in _row_spans(ring, y))
        reach_end, reach_where = float("-inf"), ""
        for a, b, where in spans:
            if a < reach_end - _SLIVER_DEG:
                pairs.setdefault((min(reach_where, where), max(reach_where, where)), y)
            if b > reach_end:
                reach_end, reach_where = b, where
    return [Problem(file, f"{a} / {b}", f"overlapping polygons (their interiors meet, e.g. along latitude {y:.6f})")
            for (a, b), y in sorted(pairs.items())]


def _row_spans(ring: Ring, y: float) -> list[tuple[float, float]]:
    xs = sorted(x1 + (y - y1) * (x2 - x1) / (y2 - y1) for (x1, y1), (x2, y2) in zip(ring, ring[1:]) if (y1 <= y < y2) or (y2 <= y < y1))
    return list(zip(xs[::2], xs[1::2]))


def _gaps(polygons: list[Polygon], file: str) -> list[Problem]:
    """Holes in the union: the simple cycles of edges no two polygons share with no polygon around a point inside them (the
    outline's cycles have polygons inside; a hole touching the outline at one vertex is a cycle of its own)."""
    edges: dict[frozenset, tuple[tuple[float, float], tuple[float, float]]] = {}
    for *_, ring in polygons:
        for a, b in zip(ring, ring[1:]):
            key = frozenset((a, b))
            if key in edges:
                del edges[key]  # shared by two polygons: inside the union
            elif a != b:
                edges[key] = (a, b)
    unused: dict[tuple[float, float], list[tuple[float, float]]] = {}
    for a, b in edges.values():
        unused.setdefault(a, []).append(b)
        unused.setdefault(b, []).append(a)
    if any(len(ends) % 2 for ends in unused.values()):
        return [Problem(file, "features", "neighbouring polygons do not share their vertices, so gaps between grids cannot be "
                                          "traced: snap the map's vertices")]
    cycles = []
    for start in list(unused):
        while unused[start]:  # walk the boundary; a vertex met again closes a simple cycle, cut off the walk
            path, here = [start], start
            while unused[here]:
                step = unused[here].pop()
                unused[step].remove(here)
                if step in path:
                    cut = path.index(step)
                    cycles.append(tuple(path[cut:]) + (step,))
                    del path[cut + 1:]
                else:
                    path.append(step)
                here = step
    index = PolygonIndex([(name, ring) for _, name, _, ring in polygons], bucket_deg=0.001)
    problems = []
    for cycle in cycles:
        inside = _point_inside(cycle)
        if inside is not None and index.locate(inside[1], inside[0]) is None:
            problems.append(Problem(file, "features", f"gap between grids: the ground around lon {inside[0]:.6f} lat {inside[1]:.6f} "
                                                      f"(~{abs(_area(cycle)) * 111_000 ** 2:,.0f} m²) is inside the district "
                                                      "but in no grid or ungridded area"))
    return problems


def _area(ring: Ring) -> float:
    return sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:])) / 2.0


def _point_inside(ring: Ring) -> tuple[float, float] | None:
    """A point (lon, lat) strictly inside the ring: the middle of its first span on a scanline between two vertex latitudes."""
    ys = sorted({y for _, y in ring})
    for low, high in zip(ys, ys[1:]):
        spans = _row_spans(ring, (low + high) / 2)
        if spans:
            return (spans[0][0] + spans[0][1]) / 2, (low + high) / 2
    return None


def _organisation(org: Any, grids: Any, matrix: Any, prefix: str) -> list[Problem]:
    if not isinstance(org, dict):
        return []
    problems = []
    streets = {s.get("id") for s in org.get("streets") or [] if isinstance(s, dict)}
    street_of = {c.get("id"): c.get("street_id") for c in org.get("communities") or [] if isinstance(c, dict)}
    departments = {d.get("id") for d in org.get("departments") or [] if isinstance(d, dict)}
    for i, feature in enumerate((grids or {}).get("features") or [] if isinstance(grids, dict) else []):
        props = (feature.get("properties") or {}) if isinstance(feature, dict) else {}
        if props.get("kind") != "grid":
            continue
        community = props.get("community_id")
        missing = (f"community {community!r} is unknown" if community not in street_of else
                   f"its community's street {street_of[community]!r} is unknown" if street_of[community] not in streets else None)
        if missing:
            problems.append(Problem(f"{prefix}/grids.geojson", f"features[{i}] {props.get('grid_id')}",
                                    f"grid without a chain: {missing}, so no unit above the grid team can take its cases"))
    for i, category in enumerate((matrix or {}).get("categories") or [] if isinstance(matrix, dict) else []):
        owner = category.get("owner_department") if isinstance(category, dict) else None
        if owner not in departments:
            problems.append(Problem(f"{prefix}/categories.json", f"categories[{i}].owner_department",
                                    f"unknown unit {owner!r} in the matrix: not a department of {DISTRICT_FILE}"))
    return problems


def _categories(matrix: Any, hotline: Any, contract: set[str], prefix: str, problems: list[Problem]) -> set[str]:
    """The matrix's category codes; problems for codes outside the contract and hotline labels of unknown categories."""
    codes: set[str] = set()
    for i, category in enumerate((matrix or {}).get("categories") or [] if isinstance(matrix, dict) else []):
        code = category.get("code") if isinstance(category, dict) else None
        if isinstance(code, str):
            codes.add(code)
        if code not in contract:
            problems.append(Problem(f"{prefix}/categories.json", f"categories[{i}].code",
                                    f"unknown category {code!r}: not in the contract's schemas/categories.yaml"))
    labels = (hotline or {}).get("labels") if isinstance(hotline, dict) else None
    for code in labels or {}:
        if code not in codes:
            problems.append(Problem(f"{prefix}/{HOTLINE_FILE}", f"labels.{code}", f"unknown category {code!r}: not in categories.json"))
    return codes


def _cameras(rows: Any, polygons: list[Polygon], file: str) -> list[Problem]:
    if not rows or not polygons:
        return []
    # The loader's priority on shared boundaries: grids by id, then ungridded areas.
    ordered = sorted(polygons, key=lambda p: (p[2] != "grid", p[1]))
    index = PolygonIndex([((name, kind), ring) for _, name, kind, ring in ordered], bucket_deg=0.001)
    grid_ids = {name for _, name, kind, _ in polygons if kind == "grid"}
    problems = []
    for line, row in rows:
        try:
            lat, lon = float(row["lat"]), float(row["lon"])
        except ValueError:
            problems.append(Problem(file, f"line {line}", f"camera {row['camera_id']}: lat/lon are not numbers"))
            continue
        place = index.locate(lat, lon)
        at = place[0] if place is not None and place[1] == "grid" else None
        declared = row["grid_id"] or None
        if declared is None and at is not None:
            problems.append(Problem(file, f"line {line}", f"camera {row['camera_id']} names no grid but lies in {at!r}"))
        elif declared is not None and at is None:
            problems.append(Problem(file, f"line {line}", f"camera {row['camera_id']} outside every grid: it says {declared!r}, "
                                                          f"its position ({lat}, {lon}) lies in none"))
        elif declared is not None and declared != at:
            problems.append(Problem(file, f"line {line}", f"camera {row['camera_id']} says grid {declared!r}"
                                                          f"{'' if declared in grid_ids else ' (no such grid)'} but lies in {at!r}"))
    return problems


def _policies(sla: Path, codes: set[str]) -> list[Problem]:
    problems = []
    for path in sorted(sla.glob("policy-*.yaml")):
        try:
            doc = read_yaml(path)
        except ConfigError:
            continue  # the policy loader names it
        for code in (doc.get("categories") or {}) if isinstance(doc, dict) else {}:
            if code not in codes:
                problems.append(Problem(f"{SLA_DIR}/{path.name}", f"categories.{code}", f"unknown category {code!r}: not in categories.json"))
    return problems
