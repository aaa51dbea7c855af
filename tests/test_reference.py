"""The district reference data: generated reproducibly, a map without holes (every point of its closure in exactly one
polygon, shared edges and vertices included), and loud about any broken file."""
from __future__ import annotations

import json
import math
import random
import shutil
from fractions import Fraction
from pathlib import Path

import numpy
import pytest
import shapely
import yaml

from streams.domain.model import Tier
from streams.domain.reference import DEFAULT_VERSION, REFERENCE_ROOT, Grid, PolygonIndex, UngriddedArea, load_reference
from whistle.devtools.build_district import build
from whistle.ground.errors import ConfigError

DATA = REFERENCE_ROOT / DEFAULT_VERSION


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def test_build_script_regenerates_the_committed_files_byte_for_byte(tmp_path):
    build(tmp_path)
    committed = sorted(p.name for p in DATA.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_district_has_the_shape_of_a_real_one(ref):
    assert len(ref.grids) == 232 and len(ref.streets) == 10
    for street_id in ref.streets:
        assert 3 <= sum(c.street_id == street_id for c in ref.communities.values()) <= 5
    assert all(330 <= g.households <= 470 for g in ref.grids.values())
    assert 55 <= len(ref.cameras) <= 65
    assert all(ref.units[s.desk_id].tier is Tier.STREET for s in ref.streets.values())
    assert ref.district_desk.unit_id == "DESK-D01" and ref.district_desk.tier is Tier.DEPARTMENT
    assert {"DEP-URBAN", "DEP-WATER", "DEP-HOUSING", "DEP-TRAFFIC", "DEP-FIRE", "DEP-EMERGENCY", "DEP-CIVIL", "DEP-MARKET",
            "DEP-ECOLOGY"} == set(ref.departments)
    assert ref.supervision.tier is Tier.SUPERVISION and ref.discipline.tier is Tier.DISCIPLINE


def test_category_codes_and_names_match_the_schema_vocabulary(ref):
    vocabulary = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas" / "categories.yaml").read_text(encoding="utf-8"))
    assert {c["code"]: c["name_zh"] for c in vocabulary["categories"]} == {c.code: c.name for c in ref.categories.values()}


def _edge_neighbours(ref) -> dict[str, set[str]]:
    by_edge: dict[frozenset, list[str]] = {}
    for grid in ref.grids.values():
        for a, b in zip(grid.ring, grid.ring[1:]):
            by_edge.setdefault(frozenset((a, b)), []).append(grid.grid_id)
    neighbours: dict[str, set[str]] = {g: set() for g in ref.grids}
    for members in by_edge.values():
        for a in members:
            neighbours[a].update(m for m in members if m != a)
    return neighbours


def _connected(members: set[str], neighbours: dict[str, set[str]]) -> bool:
    start = next(iter(members))
    seen, todo = {start}, [start]
    while todo:
        for n in neighbours[todo.pop()] & members:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen == members


def test_streets_and_communities_are_contiguous_and_streets_share_boundaries(ref):
    neighbours = _edge_neighbours(ref)
    for street_id in ref.streets:
        members = {g.grid_id for g in ref.grids.values() if g.street_id == street_id}
        assert _connected(members, neighbours), street_id
        assert any(ref.grids[n].street_id != street_id for g in members for n in neighbours[g]), street_id
    for community_id in ref.communities:
        assert _connected({g.grid_id for g in ref.grids.values() if g.community_id == community_id}, neighbours), community_id


def _by_priority(ref) -> list:
    """The tie order of the loader's index: grids by ascending id, then ungridded areas by ascending id."""
    return [g for _, g in sorted(ref.grids.items())] + [a for _, a in sorted(ref.ungridded_areas.items())]


def _boundary_points(polygons) -> dict[str, list[tuple[float, float]]]:
    """(lon, lat) points on and right next to every edge and vertex of the map.

    vertices: exact. midpoints: the float midpoint of each edge (on a sloped edge usually a hair off
    it, on either side, which is as much a test as a point on it). straddling: at each edge's middle
    latitude the two adjacent floats on either side of the exact crossing (or the crossing itself
    when it is a float), and for a horizontal edge the point on it and the floats just above and below.
    """
    vertices: set[tuple[float, float]] = set()
    midpoints: set[tuple[float, float]] = set()
    straddling: set[tuple[float, float]] = set()
    for p in polygons:
        for (x1, y1), (x2, y2) in zip(p.ring, p.ring[1:]):
            vertices.add((x1, y1))
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            midpoints.add((mx, my))
            if y1 == y2:
                straddling.update({(mx, y1), (mx, math.nextafter(y1, math.inf)), (mx, math.nextafter(y1, -math.inf))})
                continue
            exact = Fraction(x1) + (Fraction(my) - Fraction(y1)) * (Fraction(x2) - Fraction(x1)) / (Fraction(y2) - Fraction(y1))
            below = float(exact)
            if Fraction(below) > exact:
                below = math.nextafter(below, -math.inf)
            straddling.update({(below, my), (math.nextafter(below, math.inf), my)})
    return {"vertices": sorted(vertices), "midpoints": sorted(midpoints), "straddling": sorted(straddling)}


def _covering(point, polygons, shapes) -> list:
    """The polygons whose closure holds the point, in priority order (shapely's exact `covers`)."""
    return [polygons[i] for i in numpy.flatnonzero(shapely.covers(shapes, shapely.Point(*point)))]


def _misplaced(points, polygons, shapes, locate) -> list:
    """Points `locate` gets wrong: the owner must be the first polygon (in priority order) whose closure covers the point."""
    wrong = []
    for lon, lat in points:
        covering = _covering((lon, lat), polygons, shapes)
        if locate(lat, lon) is not (covering[0] if covering else None):
            wrong.append((lon, lat, [getattr(p, "grid_id", getattr(p, "area_id", None)) for p in covering]))
    return wrong


def _old_half_open_rule(polygons):
    """The rule before "geometry without holes": float half-open ray casting, the polygon to the east / north owns an edge."""
    edges = []
    for p in polygons:
        mine = []
        for (x1, y1), (x2, y2) in zip(p.ring, p.ring[1:]):
            if y1 != y2:
                if y1 > y2:
                    x1, y1, x2, y2 = x2, y2, x1, y1
                mine.append((y1, y2, x1, (x2 - x1) / (y2 - y1)))
        edges.append((p, mine))

    def locate(lat, lon):
        for p, mine in edges:
            if sum(1 for y_lo, y_hi, x_lo, slope in mine if y_lo <= lat < y_hi and lon < x_lo + (lat - y_lo) * slope) % 2:
                return p
        return None
    return locate


def _open_rule(polygons, shapes):
    """A deliberately open-edge rule: only a polygon's interior counts."""
    def locate(lat, lon):
        inside = numpy.flatnonzero(shapely.contains(shapes, shapely.Point(lon, lat)))
        return polygons[inside[0]] if len(inside) else None
    return locate


@pytest.fixture(scope="module")
def boundary(ref):
    polygons = _by_priority(ref)
    return polygons, numpy.array([shapely.Polygon(p.ring) for p in polygons]), _boundary_points(polygons)


@pytest.mark.parametrize("kind", ["vertices", "midpoints", "straddling"])
def test_every_boundary_point_of_the_district_has_exactly_one_owner_by_the_lowest_id_rule(ref, boundary, kind):
    """Shared edges and vertices and the district's outer boundary included: no holes, no double owners (shapely covers
    as the reference; the owner is the lowest grid id, grids before parks, among the polygons whose closure holds the point)."""
    polygons, shapes, points = boundary
    boundaries = shapely.boundary(shapes)
    assert _misplaced(points[kind], polygons, shapes, ref.locate) == []
    owners = {point: len(_covering(point, polygons, shapes)) for point in points[kind]}
    on_map = [point for point, count in owners.items() if count]
    assert all(ref.locate(lat, lon) is not None for lon, lat in on_map)
    shared = [point for point in on_map if owners[point] >= 2]
    outer = [point for point in on_map if owners[point] == 1 and shapely.covers(boundaries, shapely.Point(*point)).any()]
    minimum = {"vertices": (250, 15), "midpoints": (100, 15), "straddling": (100, 15)}[kind]
    assert len(shared) >= minimum[0] and len(outer) >= minimum[1], (len(shared), len(outer))
    if kind == "vertices":
        assert len(on_map) == len(points[kind])  # a vertex is always on the map, exactly


def test_negative_control_the_old_and_an_open_edge_rule_leave_boundary_points_in_no_polygon(ref, boundary):
    polygons, shapes, points = boundary
    boundaries = shapely.boundary(shapes)
    exact_points = points["vertices"] + [pt for pt in points["straddling"] if shapely.covers(boundaries, shapely.Point(*pt)).any()]
    old, open_edges = _old_half_open_rule(polygons), _open_rule(polygons, shapes)
    lost_by_old = [(lon, lat) for lon, lat in exact_points if old(lat, lon) is None]
    lost_by_open = [(lon, lat) for lon, lat in exact_points if open_edges(lat, lon) is None]
    assert len(lost_by_old) >= 40 and len(lost_by_open) == len(exact_points)  # every exact boundary point
    assert _misplaced(exact_points, polygons, shapes, old) and _misplaced(exact_points, polygons, shapes, open_edges)
    assert not [(lon, lat) for lon, lat in lost_by_old if ref.locate(lat, lon) is None]


def test_ties_on_a_small_tiling_go_to_the_first_polygon_and_the_outer_boundary_counts():
    """Four unit squares A B / C D (priority A, B, C, D); the old rule lost the east and north sides and corners."""
    def square(x, y):
        return ((x, y), (x + 1, y), (x + 1, y + 1), (x, y + 1), (x, y))
    index = PolygonIndex([("A", square(0, 1)), ("B", square(1, 1)), ("C", square(0, 0)), ("D", square(1, 0))], bucket_deg=0.3)
    cases = {(1.0, 1.0): "A", (1.0, 0.5): "C", (1.0, 1.5): "A", (0.5, 1.0): "A", (1.5, 1.0): "B",  # shared vertex and edges
             (2.0, 2.0): "B", (2.0, 0.0): "D", (0.0, 0.0): "C", (0.0, 2.0): "A", (2.0, 0.5): "D", (1.5, 2.0): "B",  # outer boundary
             (0.5, 0.5): "C", (1.5, 0.5): "D", (1.5, 1.5): "B", (0.5, 1.5): "A"}  # interiors
    for (x, y), owner in cases.items():
        assert index.locate(y, x) == owner, (x, y)
    for x, y in ((2.0 + 1e-12, 1.0), (1.0, 2.0 + 1e-12), (-1e-12, 0.5), (0.5, -1e-12), (math.inf, 1.0), (math.nan, 1.0)):
        assert index.locate(y, x) is None, (x, y)
    reversed_index = PolygonIndex([("D", square(1, 0)), ("C", square(0, 0)), ("B", square(1, 1)), ("A", square(0, 1))], bucket_deg=0.3)
    assert (reversed_index.locate(1.0, 1.0), reversed_index.locate(0.5, 1.0)) == ("D", "D")


def test_a_single_polygon_index_claims_its_whole_closure(ref):
    grid = ref.grids["G-S03-C02-003"]
    index = PolygonIndex([(grid, grid.ring)], bucket_deg=0.0006)
    shape = shapely.Polygon(grid.ring)
    points = _boundary_points([grid])
    for lon, lat in points["vertices"] + points["midpoints"] + points["straddling"]:
        assert (index.locate(lat, lon) is grid) is shape.covers(shapely.Point(lon, lat)), (lon, lat)
    assert all(index.locate(lat, lon) is grid for lon, lat in points["vertices"])


def test_index_agrees_with_shapely_on_random_points(ref):
    polygons = list(ref.grids.values()) + list(ref.ungridded_areas.values())
    shapes = [shapely.Polygon(p.ring) for p in polygons]
    rng = random.Random(5)
    inside = outside = 0
    for _ in range(5000):
        lat, lon = rng.uniform(28.16, 28.22), rng.uniform(113.06, 113.13)
        point = shapely.Point(lon, lat)
        strictly_in = [p for p, s in zip(polygons, shapes) if s.contains(point)]
        found = ref.locate(lat, lon)
        if strictly_in:
            inside += 1
            assert found is strictly_in[0]
        elif not any(s.intersects(point) for s in shapes):
            outside += 1
            assert found is None
    assert inside > 2000 and outside > 500


def test_points_outside_the_district_have_no_grid(ref):
    assert ref.locate(28.0, 113.0) is None
    assert ref.locate(0.0, 0.0) is None
    west_edge = min(x for g in ref.grids.values() for x, _ in g.ring)
    assert ref.locate(28.19, west_edge - 1e-9) is None


def test_parks_belong_to_a_street_but_to_no_grid(ref):
    for area in ref.ungridded_areas.values():
        lon = sum(x for x, _ in area.ring[:-1]) / 4
        lat = sum(y for _, y in area.ring[:-1]) / 4
        found = ref.locate(lat, lon)
        assert isinstance(found, UngriddedArea) and found.street_id in ref.streets


def test_every_grid_contains_its_own_centre(ref):
    for grid in ref.grids.values():
        lon = sum(x for x, _ in grid.ring[:-1]) / 4
        lat = sum(y for _, y in grid.ring[:-1]) / 4
        assert ref.locate(lat, lon) is grid


@pytest.mark.parametrize("text", [
    "建设路19号", "清河区建设路19号", "湘江市清河区建设路19号", "湖南省湘江市清河区建设路19号", "建设路１９号", "建设路19號",
    " 建设路 19 号 ", "清河区 建设路１９號", "建设路19号附近", "建设路19号3栋2单元", "建设路19号门口",
])
def test_gazetteer_matches_the_ways_people_write_an_address(ref, text):
    entry = ref.gazetteer.lookup(text)
    assert entry is not None and entry.address == "建设路19号" and entry.grid_id is not None


def test_gazetteer_maps_a_retired_road_name_to_the_current_one(ref):
    current = next(e for e in ref.gazetteer.entries() if e.address.startswith("红旗路") and e.kind == "house")
    assert ref.gazetteer.lookup(current.address.replace("红旗路", "东风路")) is current


@pytest.mark.parametrize("text", ["菜市场旁边", "建设路99999号", "号", "", "清河区"])
def test_gazetteer_does_not_guess(ref, text):
    assert ref.gazetteer.lookup(text) is None


def test_road_entries_give_a_street_only_when_the_road_stays_in_one(ref):
    lane = ref.gazetteer.lookup("和平巷")
    assert lane.kind == "road" and lane.street_id in ref.streets and lane.grid_id is None and lane.lat is None
    long_road = ref.gazetteer.lookup("清河区建设路")
    assert long_road.kind == "road" and long_road.street_id is None


def test_hotline_labels_and_codes_name_categories(ref):
    assert ref.category_for_label("垃圾清运") == "garbage"
    assert ref.category_for_label(" 飞线 充电 ") == "ebike_charging_hazard"
    assert ref.category_for_label("GARBAGE") == "garbage"
    assert ref.category_for_label("gas_leak") == "gas_leak"
    assert ref.category_for_label("外星人入侵") is None


def test_camera_and_gazetteer_grids_agree_with_the_map(ref):
    for camera in ref.cameras.values():
        found = ref.locate(camera.lat, camera.lon)
        assert (found.grid_id if isinstance(found, Grid) else None) == camera.grid_id
    assert sum(c.grid_id is None for c in ref.cameras.values()) >= 2


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / DEFAULT_VERSION
    shutil.copytree(DATA, target)
    return target


def _edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def _edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize("file, corrupt, field", [
    ("district.json", lambda p: _edit_json(p, lambda d: d.update(version="district-v9")), "version"),
    ("district.json", lambda p: _edit_json(p, lambda d: d["communities"][3].update(street_id="S99")), "communities[3].street_id"),
    ("district.json", lambda p: _edit_json(p, lambda d: d["departments"].append(d["departments"][0])), "departments[9].id"),
    ("district.json", lambda p: p.write_text("{not json", encoding="utf-8"), "-"),
    ("grids.geojson", lambda p: _edit_text(p, '"community_id":"C-S01-01"', '"community_id":"C-S01-77"'), "features[0].properties.community_id"),
    ("grids.geojson", lambda p: _edit_text(p, '"households":', '"households":-'), "features[0].properties.households"),
    ("grids.geojson", lambda p: _edit_text(p, "[[[113.", "[[[513."), "features[0].geometry.coordinates[0][0]"),
    ("categories.json", lambda p: _edit_json(p, lambda d: d["categories"][2].update(owner_department="DEP-NOPE")), "categories[2].owner_department"),
    ("categories.json", lambda p: _edit_json(p, lambda d: d["categories"][0].update(complexity="hard")), "categories[0].complexity"),
    ("categories.json", lambda p: _edit_json(p, lambda d: d["categories"][1].update(camera_min_confidence=1.5)), "categories[1].camera_min_confidence"),
    ("categories.json", lambda p: _edit_json(p, lambda d: d["categories"][1]["hotline_labels"].append("垃圾清运")), "categories[1].hotline_labels[3]"),
    ("cameras.csv", lambda p: _edit_text(p, "CAM-001,", "CAM-002,"), "line 3.camera_id"),
    ("cameras.csv", lambda p: _edit_text(p, "camera_id,name", "camera,name"), "header"),
    ("gazetteer.csv", lambda p: _edit_text(p, ",house,", ",mansion,"), "line 2.kind"),
    ("gazetteer.csv", lambda p: p.unlink(), "-"),
])
def test_broken_reference_files_fail_naming_file_and_field(tmp_path, file, corrupt, field):
    root = _copy(tmp_path)
    corrupt(root / file)
    with pytest.raises(ConfigError) as caught:
        load_reference(root)
    assert caught.value.context["file"].endswith(file)
    assert caught.value.context["field"] == field
    assert file in str(caught.value)


def test_a_camera_whose_grid_disagrees_with_the_map_is_refused(tmp_path):
    root = _copy(tmp_path)
    lines = (root / "cameras.csv").read_text(encoding="utf-8").splitlines()
    first = lines[1].split(",")
    other = next(row.split(",")[4] for row in lines[2:] if row.split(",")[4] not in ("", first[4]))
    lines[1] = ",".join(first[:4] + [other])
    (root / "cameras.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="its position lies in"):
        load_reference(root)


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_reference(tmp_path / "district-v0")


@pytest.mark.parametrize("change, field", [
    (lambda f: f[0]["properties"].update(categories=["illegal_parking"]), "features[0].properties.categories[0]"),  # departmental
    (lambda f: f[0]["properties"].update(categories=["no_such_thing"]), "features[0].properties.categories[0]"),
    (lambda f: f[0]["properties"]["manager"].update(id="G-S01-C01-001"), "features[0].properties.manager.id"),
    (lambda f: f[1]["properties"].update(department="DEP-NOWHERE"), "features[1].properties.department"),
    (lambda f: f[1]["properties"].update(kind="park"), "features[1].properties.kind"),
    (lambda f: f[1]["properties"].update(area_id="PM-S01-001"), "features[1].properties.area_id"),
])
def test_an_exception_area_the_matrix_cannot_honour_is_refused_naming_the_file_and_field(tmp_path, change, field):
    target = tmp_path / DATA.name
    shutil.copytree(DATA, target)
    doc = json.loads((target / "exceptions.geojson").read_text(encoding="utf-8"))
    change(doc["features"])
    (target / "exceptions.geojson").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_reference(target)
    assert "exceptions.geojson" in str(caught.value) and caught.value.context.get("field") == field


def test_a_district_without_exceptions_routes_by_the_matrix_alone(tmp_path):
    target = tmp_path / DATA.name
    shutil.copytree(DATA, target)
    (target / "exceptions.geojson").unlink()
    assert load_reference(target).exception_index is None and load_reference().exception_index is not None
