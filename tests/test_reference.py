"""The district reference data: generated reproducibly, a gapless map, and loud about any broken file."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

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


def test_every_lattice_vertex_and_edge_point_belongs_to_exactly_one_polygon(ref):
    """Points on shared boundaries: one owner, never two, never none (the half-open rule)."""
    polygons = list(ref.grids.values()) + list(ref.ungridded_areas.values())
    single = [(p, PolygonIndex([(p, p.ring)], bucket_deg=0.0006)) for p in polygons]
    by_vertex: dict[tuple[float, float], int] = {}
    for p in polygons:
        for v in p.ring[:-1]:
            by_vertex[v] = by_vertex.get(v, 0) + 1
    edges: dict[frozenset, int] = {}
    for p in polygons:
        for a, b in zip(p.ring, p.ring[1:]):
            edges[frozenset((a, b))] = edges.get(frozenset((a, b)), 0) + 1
    interior_vertices = [v for v, count in by_vertex.items() if count == 4]
    shared_edge_midpoints = [tuple(sum(c) / 2 for c in zip(*edge)) for edge, count in edges.items() if count == 2]
    outer_edge_midpoints = [tuple(sum(c) / 2 for c in zip(*edge)) for edge, count in edges.items() if count == 1]
    assert len(interior_vertices) > 150 and len(shared_edge_midpoints) > 400
    for points, must_have_owner in ((interior_vertices, True), (shared_edge_midpoints, True), (outer_edge_midpoints, False)):
        for lon, lat in points:
            owners = [p for p, index in single if index.locate(lat, lon) is p]
            assert len(owners) == 1 if must_have_owner else len(owners) <= 1, (lat, lon, owners)
            assert ref.locate(lat, lon) is (owners[0] if owners else None), (lat, lon)


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
