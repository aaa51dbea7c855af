"""Generate the sample district's reference data (streams/reference/district-v1/) deterministically.

    python -m whistle.devtools.build_district [OUT_DIR]

The district is invented but shaped like a real one: a jittered lattice of ~300 m cells around
28.19 N 113.10 E, trimmed to an irregular outline; 232 grids of ~400 households; 10 streets and
their communities grown as contiguous irregular regions (so streets share boundaries); three
ungridded areas (parks); roads along lattice lines with numbered addresses on both sides;
cameras at road intersections. Same code, same bytes: the test suite rebuilds and compares.
"""
from __future__ import annotations

import csv
import io
import json
import math
import random
import sys
from pathlib import Path

import yaml

from streams.domain.reference import REFERENCE_ROOT, PolygonIndex

VERSION = "district-v1"
SEED = 20240601
COLS, ROWS = 17, 16
LON0, LAT0 = 113.0720, 28.1690  # south-west corner of the lattice
DLON, DLAT = 0.0031, 0.0027  # ~303 m x ~300 m cells
JITTER = 0.18  # of a cell, per vertex; small enough to keep every cell convex
KEPT_CELLS = 235  # 232 grids + 3 parks
METRES_PER_DEG_LAT = 111_195.0
METRES_PER_DEG_LON = METRES_PER_DEG_LAT * math.cos(math.radians(LAT0 + ROWS * DLAT / 2))
ADDRESS_SPACING_M = 70.0
ADDRESS_SETBACK_M = 25.0

STREET_NAMES = ["清源街道", "河西街道", "文昌街道", "建设街道", "桂花街道", "枫林街道", "白沙街道", "新桥街道", "东湖街道", "南岭街道"]
COMMUNITY_NAMES = [
    "和平", "幸福", "新村", "光明", "长青", "金桥", "翠竹", "玉泉", "枫桥", "荷花", "银杏", "朝晖", "东风", "红星", "向阳", "富民",
    "春晖", "锦绣", "丰泽", "桃源", "梅园", "兰亭", "清风", "明月", "松林", "柳岸", "星沙", "湘园", "滨江", "学府", "书香", "紫荆",
    "海棠", "丹桂", "樟树", "碧湖", "安居", "乐业", "康宁", "瑞丰", "永兴", "建新", "龙泉", "凤凰", "石门", "青山", "金盆", "天鹅",
]
EAST_WEST_ROADS = ["建设路", "人民路", "解放路", "中山路", "新华路", "长江路", "黄河路"]  # on lattice rows 2, 4, ... 14
NORTH_SOUTH_ROADS = ["芙蓉中路", "湘江大道", "红旗路", "文化街", "光明街", "胜利路", "车站路", "滨江大道"]  # on columns 2, 4, ... 16
ROAD_ALIASES = {"东风路": "红旗路"}  # 红旗路 was 东风路 until renamed; callers still use the old name
PARK_NAMES = ["清河公园", "白鹭湖湿地公园", "清河体育中心"]
LANDMARKS = ["清河区人民政府", "清河区人民医院", "湘江市第三中学", "清河万达广场", "清河区图书馆", "湘江市中医院", "清河汽车站", "清河区妇幼保健院"]

DISTRICT = {"id": "D01", "name": "清河区", "name_en": "Qinghe District", "city": "湘江市", "province": "湖南省",
            "desk": {"id": "DESK-D01", "name": "清河区网格化服务管理指挥中心"}}
DEPARTMENTS = [
    {"id": "DEP-URBAN", "name": "清河区城市管理和综合执法局", "name_en": "Urban management"},
    {"id": "DEP-WATER", "name": "清河区水务局", "name_en": "Water affairs"},
    {"id": "DEP-HOUSING", "name": "清河区住房和城乡建设局", "name_en": "Housing and construction"},
    {"id": "DEP-TRAFFIC", "name": "湘江市公安局交通警察支队清河大队", "name_en": "Traffic police"},
    {"id": "DEP-FIRE", "name": "清河区消防救援大队", "name_en": "Fire and rescue"},
    {"id": "DEP-EMERGENCY", "name": "清河区应急管理局", "name_en": "Emergency management"},
    {"id": "DEP-CIVIL", "name": "清河区民政局", "name_en": "Civil affairs"},
    {"id": "DEP-MARKET", "name": "清河区市场监督管理局", "name_en": "Market supervision"},
    {"id": "DEP-ECOLOGY", "name": "湘江市生态环境局清河分局", "name_en": "Ecology and environment"},
]
SUPERVISION = {"id": "SUP", "name": "清河区委区政府督查室", "name_en": "Supervision office"}
DISCIPLINE = {"id": "DIS", "name": "清河区纪委监委", "name_en": "Discipline inspection and supervision commission"}

# code, name (as in schemas/categories.yaml), default urgency, complexity, owner, responsibility, camera threshold, hotline operator labels
CATEGORIES = [
    ("garbage", "垃圾乱堆乱放", "normal", "ordinary", "DEP-URBAN", "territorial", 0.6, ["垃圾清运", "垃圾堆放", "生活垃圾"]),
    ("drainage_blockage", "排水管道堵塞", "urgent", "ordinary", "DEP-WATER", "territorial", 0.6, ["下水道堵塞", "排水不畅", "污水外溢"]),
    ("illegal_construction", "违法建设", "normal", "complex", "DEP-URBAN", "territorial", 0.75, ["违章建筑", "私搭乱建", "违建"]),
    ("illegal_parking", "违章停车", "normal", "ordinary", "DEP-TRAFFIC", "departmental", 0.7, ["违停", "乱停车", "占道停车"]),
    ("illegal_lpg_refilling", "非法充装液化气", "emergency", "emergency", "DEP-MARKET", "departmental", 0.7, ["液化气非法充装", "黑气站", "私充液化气"]),
    ("ebike_charging_hazard", "电动车违规充电", "urgent", "ordinary", "DEP-FIRE", "territorial", 0.6, ["飞线充电", "电动车充电隐患", "楼道充电"]),
    ("fire_smoke", "火情烟雾", "emergency", "emergency", "DEP-FIRE", "departmental", 0.4, ["火情", "冒烟", "着火"]),
    ("road_damage", "道路破损", "normal", "ordinary", "DEP-HOUSING", "departmental", 0.65, ["道路破损", "路面塌陷", "坑洼"]),
    ("noise", "噪音扰民", "normal", "ordinary", "DEP-ECOLOGY", "territorial", 0.8, ["噪音扰民", "施工噪音", "广场舞噪音"]),
    ("neighbour_dispute", "邻里纠纷", "normal", "complex", "DEP-CIVIL", "territorial", 0.9, ["邻里纠纷", "邻居矛盾"]),
    ("elderly_assistance", "老人帮扶", "urgent", "ordinary", "DEP-CIVIL", "territorial", 0.9, ["老人求助", "独居老人", "高龄老人帮扶"]),
    ("gas_leak", "燃气泄漏", "emergency", "emergency", "DEP-EMERGENCY", "departmental", 0.5, ["燃气泄漏", "煤气泄漏", "闻到煤气味"]),
]


# The 12345 call centre's side (hotline.yaml): labels its operators type beyond the matrix's own (variants, common typos),
# and the return visit's (回访) results as it records them, as the reporter's rating 1..5 (ratings up to the policy's
# unsatisfied_rating_max, 2, are unsatisfied; 基本满意 counts towards the satisfaction rate).
HOTLINE = {
    "version": "hotline-v1",
    "labels": {
        "garbage": ["垃圾乱堆", "垃圾乱放", "垃圾堆积", "拉圾堆放", "垃圾未清运"],
        "drainage_blockage": ["下水道堵了", "管道堵塞", "污水冒溢", "下水到堵塞"],
        "illegal_construction": ["违章搭建", "乱搭乱建"],
        "illegal_parking": ["乱停乱放", "违章停放"],
        "illegal_lpg_refilling": ["非法充气", "液化气私充"],
        "ebike_charging_hazard": ["电瓶车充电", "电动车飞线充电"],
        "fire_smoke": ["起火", "失火"],
        "road_damage": ["井盖缺失", "井盖丢失", "井盖破损", "井盖被盗", "路面破损"],
        "noise": ["噪声扰民", "噪音"],
        "neighbour_dispute": ["邻里矛盾"],
        "elderly_assistance": ["空巢老人"],
        "gas_leak": ["燃气泄露", "天然气泄漏"],
    },
    "return_visit": {"满意": 5, "基本满意": 4, "不满意": 1, "satisfied": 5, "basically_satisfied": 4, "unsatisfied": 1},
}


def build(out_dir: Path) -> None:
    """Write district.json, grids.geojson, cameras.csv, gazetteer.csv, categories.json, hotline.yaml and exceptions.geojson into out_dir."""
    rng = random.Random(SEED)
    vertices = _jittered_lattice(rng)
    kept = _district_outline(rng)
    parks = _choose_parks(rng, kept)
    gridded = kept - parks
    street_of = _grow_regions(rng, gridded, 10)
    street_order = _order_regions(street_of)
    street_of = {cell: street_order[r] for cell, r in street_of.items()}
    for park in sorted(parks):
        neighbour_streets = sorted(street_of[n] for n in _neighbours(park) if n in street_of)
        street_of[park] = max(set(neighbour_streets), key=lambda s: (neighbour_streets.count(s), -s))

    streets, communities, features, lanes = [], [], [], []
    community_names = iter(COMMUNITY_NAMES)
    for s in range(10):
        street_id = f"S{s + 1:02d}"
        streets.append({"id": street_id, "name": STREET_NAMES[s], "desk_id": f"DESK-{street_id}"})
        cells = {c for c in gridded if street_of[c] == s}
        community_of = _grow_regions(rng, cells, rng.randint(3, 5))
        order = _order_regions(community_of)
        for k in range(len(order)):
            community_id = f"C-{street_id}-{k + 1:02d}"
            name = f"{next(community_names)}社区"
            communities.append({"id": community_id, "street_id": street_id, "name": name})
            members = sorted((c for c, r in community_of.items() if order[r] == k), key=lambda c: (-c[0], c[1]))
            if k == 0:
                lanes.append((f"{name[:-2]}巷", members[0]))
            for n, cell in enumerate(members, start=1):
                features.append(_feature(vertices, cell, {"kind": "grid", "grid_id": f"G-{street_id}-C{k + 1:02d}-{n:03d}",
                                                           "name": f"{name}第{n}网格", "community_id": community_id,
                                                           "households": rng.randint(330, 470)}))
    for n, park in enumerate(sorted(parks, key=lambda c: (-c[0], c[1])), start=1):
        street_id = f"S{street_of[park] + 1:02d}"
        features.append(_feature(vertices, park, {"kind": "ungridded", "area_id": f"A-{street_id}-{n:02d}", "name": PARK_NAMES[n - 1], "street_id": street_id}))

    place = _Placer(features, communities)
    district = {
        "version": VERSION,
        "district": DISTRICT,
        "address_prefixes": [DISTRICT["province"], DISTRICT["city"], DISTRICT["name"]],
        "road_aliases": ROAD_ALIASES,
        "streets": streets,
        "communities": communities,
        "departments": DEPARTMENTS,
        "supervision": SUPERVISION,
        "discipline": DISCIPLINE,
    }
    gazetteer = _gazetteer(rng, vertices, kept, parks, lanes, place)
    cameras = _cameras(rng, vertices, kept, place)
    categories = {"version": VERSION, "categories": [
        {"code": code, "name": name, "default_urgency": urgency, "complexity": complexity, "owner_department": owner,
         "responsibility": mode, "camera_min_confidence": threshold, "hotline_labels": labels}
        for code, name, urgency, complexity, owner, mode, threshold, labels in CATEGORIES]}

    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / "district.json", json.dumps(district, ensure_ascii=False, indent=1) + "\n")
    _write(out_dir / "categories.json", json.dumps(categories, ensure_ascii=False, indent=1) + "\n")
    _write(out_dir / "hotline.yaml", "# The 12345 hotline's labels and return-visit results (streams/reference/README.md)\n"
           + yaml.safe_dump(HOTLINE, allow_unicode=True, sort_keys=False, width=200))
    _write(out_dir / "grids.geojson", _geojson(features))
    _write(out_dir / "cameras.csv", _csv(["camera_id", "name", "lat", "lon", "grid_id"], cameras))
    _write(out_dir / "gazetteer.csv", _csv(["address", "kind", "lat", "lon", "grid_id", "street_id"], gazetteer))
    _write(out_dir / "exceptions.geojson", json.dumps(_exceptions(features, gazetteer), ensure_ascii=False, indent=1) + "\n")


def _exceptions(features: list[dict], gazetteer: list[list[str]]) -> dict:
    """The responsibility matrix's per-area exceptions: a property-managed compound in the north-east of G-S01-C01-001, and
    the stretch of 红旗路 (a trunk road the urban management bureau maintains) along the house numbers of G-S07-C03-002."""
    ring = next(_ring(f) for f in features if f["properties"].get("grid_id") == "G-S01-C01-001")[:-1]
    lon, lat = sum(x for x, _ in ring) / len(ring), sum(y for _, y in ring) / len(ring)
    lat, lon = lat + 0.0007, lon + 0.0009  # off the grid's centre, towards its north-east corner
    compound = _rectangle(lat - 0.0003, lat + 0.0003, lon - 0.0003, lon + 0.0003)
    houses = [(float(row[2]), float(row[3])) for row in gazetteer if row[0].startswith("红旗路") and row[4] == "G-S07-C03-002"]
    road = _rectangle(min(y for y, _ in houses) - 0.00015, max(y for y, _ in houses) + 0.00015,
                      min(x for _, x in houses) - 0.00015, max(x for _, x in houses) + 0.00015)
    return {"type": "FeatureCollection", "version": VERSION, "features": [
        {"type": "Feature", "properties": {"area_id": "PM-S01-001", "kind": "property_managed", "name": "湘江花园（物业管理小区）",
                                           "manager": {"id": "PM-XJHY", "name": "湘江花园物业服务中心"},
                                           "categories": ["garbage", "noise", "ebike_charging_hazard", "drainage_blockage"]},
         "geometry": {"type": "Polygon", "coordinates": [compound]}},
        {"type": "Feature", "properties": {"area_id": "TR-HONGQI-S07", "kind": "trunk_road", "name": "红旗路（城市主干道，S07段）",
                                           "department": "DEP-URBAN", "categories": ["garbage", "illegal_construction"]},
         "geometry": {"type": "Polygon", "coordinates": [road]}}]}


def _rectangle(lat0: float, lat1: float, lon0: float, lon1: float) -> list[list[float]]:
    corners = [[round(lon0, 6), round(lat0, 6)], [round(lon1, 6), round(lat0, 6)], [round(lon1, 6), round(lat1, 6)], [round(lon0, 6), round(lat1, 6)]]
    return corners + [corners[0]]


class _Placer:
    """(grid id or "", street id) of a point, by the same index the loader validates with; None outside."""

    def __init__(self, features: list[dict], communities: list[dict]) -> None:
        self.index = PolygonIndex([(f["properties"], _ring(f)) for f in features], bucket_deg=0.0006)
        self.street_of_community = {c["id"]: c["street_id"] for c in communities}

    def __call__(self, lat: float, lon: float) -> tuple[str, str] | None:
        props = self.index.locate(lat, lon)
        if props is None:
            return None
        if props["kind"] == "grid":
            return props["grid_id"], self.street_of_community[props["community_id"]]
        return "", props["street_id"]


def _jittered_lattice(rng: random.Random) -> list[list[tuple[float, float]]]:
    return [[(round(LON0 + (c + rng.uniform(-JITTER, JITTER)) * DLON, 6), round(LAT0 + (r + rng.uniform(-JITTER, JITTER)) * DLAT, 6))
             for c in range(COLS + 1)] for r in range(ROWS + 1)]


def _district_outline(rng: random.Random) -> set[tuple[int, int]]:
    """The KEPT_CELLS cells nearest the centre under a noisy elliptic distance: an irregular, connected blob."""
    score = {(r, c): ((c + 0.5 - COLS / 2) / (COLS / 2)) ** 2 + ((r + 0.5 - ROWS / 2) / (ROWS / 2)) ** 2 + rng.uniform(0.0, 0.45)
             for r in range(ROWS) for c in range(COLS)}
    kept = set(sorted(score, key=lambda cell: (score[cell], cell))[:KEPT_CELLS])
    if not _connected(kept):
        raise RuntimeError("district outline is not connected: change SEED")
    return kept


def _choose_parks(rng: random.Random, kept: set[tuple[int, int]]) -> set[tuple[int, int]]:
    interior = sorted(c for c in kept if all(n in kept for n in _neighbours(c)))
    parks: set[tuple[int, int]] = set()
    while len(parks) < len(PARK_NAMES):
        cell = rng.choice(interior)
        if all(abs(cell[0] - p[0]) + abs(cell[1] - p[1]) > 3 for p in parks) and _connected(kept - parks - {cell}):
            parks.add(cell)
    return parks


def _grow_regions(rng: random.Random, cells: set[tuple[int, int]], count: int) -> dict[tuple[int, int], int]:
    """Split connected `cells` into `count` contiguous regions grown from spread-out seeds, smallest region first."""
    ordered = sorted(cells)
    seeds = [rng.choice(ordered)]
    while len(seeds) < count:
        seeds.append(max(ordered, key=lambda c: (min(abs(c[0] - s[0]) + abs(c[1] - s[1]) for s in seeds), rng.random())))
    region = {seed: i for i, seed in enumerate(seeds)}
    sizes = [1] * count
    while len(region) < len(cells):
        growable = []
        for i in range(count):
            frontier = sorted({n for c, r in region.items() if r == i for n in _neighbours(c) if n in cells and n not in region})
            if frontier:
                growable.append((sizes[i], i, frontier))
        _, i, frontier = min(growable, key=lambda g: (g[0], g[1]))
        region[rng.choice(frontier)] = i
        sizes[i] += 1
    return region


def _order_regions(region: dict[tuple[int, int], int]) -> dict[int, int]:
    """Renumber regions north-west first (by centroid), so ids read like a map."""
    centroids = {}
    for r in set(region.values()):
        members = [c for c, x in region.items() if x == r]
        centroids[r] = (-sum(m[0] for m in members) / len(members), sum(m[1] for m in members) / len(members))
    return {r: k for k, r in enumerate(sorted(centroids, key=lambda r: (round(centroids[r][0] / 3), centroids[r][1])))}


def _neighbours(cell: tuple[int, int]) -> list[tuple[int, int]]:
    r, c = cell
    return [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]


def _connected(cells: set[tuple[int, int]]) -> bool:
    start = min(cells)
    seen, todo = {start}, [start]
    while todo:
        for n in _neighbours(todo.pop()):
            if n in cells and n not in seen:
                seen.add(n)
                todo.append(n)
    return len(seen) == len(cells)


def _feature(vertices, cell: tuple[int, int], properties: dict) -> dict:
    r, c = cell
    ring = [vertices[r][c], vertices[r][c + 1], vertices[r + 1][c + 1], vertices[r + 1][c], vertices[r][c]]
    return {"type": "Feature", "properties": properties, "geometry": {"type": "Polygon", "coordinates": [[list(v) for v in ring]]}}


def _ring(feature: dict) -> tuple[tuple[float, float], ...]:
    return tuple((x, y) for x, y in feature["geometry"]["coordinates"][0])


def _offset(lon: float, lat: float, east_m: float, north_m: float) -> tuple[float, float]:
    return round(lon + east_m / METRES_PER_DEG_LON, 6), round(lat + north_m / METRES_PER_DEG_LAT, 6)


def _road_lines(vertices) -> list[tuple[str, list[tuple[float, float]], bool]]:
    """(name, polyline, runs_east_west) for every road: lattice lines every second row and column."""
    lines = [(name, vertices[2 * (i + 1)], True) for i, name in enumerate(EAST_WEST_ROADS)]
    lines += [(name, [vertices[r][2 * (i + 1)] for r in range(ROWS + 1)], False) for i, name in enumerate(NORTH_SOUTH_ROADS)]
    return lines


def _gazetteer(rng: random.Random, vertices, kept, parks, lanes, place: _Placer) -> list[list[str]]:
    """House numbers along every road, road-name entries, a short lane per street, landmarks and parks."""
    rows = []
    for name, line, _east_west in _road_lines(vertices):
        streets_on_road = set()
        travelled, number = 0.0, 0
        for (x1, y1), (x2, y2) in zip(line, line[1:]):
            dx, dy = (x2 - x1) * METRES_PER_DEG_LON, (y2 - y1) * METRES_PER_DEG_LAT
            length = math.hypot(dx, dy)
            # left of travel (north side of an east-west road, west side of a north-south one): odd numbers
            left = (-dy / length, dx / length)
            while travelled + ADDRESS_SPACING_M <= length:
                travelled += ADDRESS_SPACING_M
                number += 1
                t = travelled / length
                lon, lat = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t
                for house, side in ((2 * number - 1, 1.0), (2 * number, -1.0)):
                    plon, plat = _offset(lon, lat, side * left[0] * ADDRESS_SETBACK_M, side * left[1] * ADDRESS_SETBACK_M)
                    where = place(plat, plon)
                    if where is None:
                        continue
                    streets_on_road.add(where[1])
                    rows.append([f"{name}{house}号", "house", f"{plat:.6f}", f"{plon:.6f}", where[0], where[1]])
            travelled -= length
        if streets_on_road:
            rows.append([name, "road", "", "", "", next(iter(streets_on_road)) if len(streets_on_road) == 1 else ""])
    for lane, (r, c) in lanes:
        centre = _cell_centre(vertices, r, c)
        lane_streets = set()
        for house in range(1, 7):
            lon, lat = _offset(*centre, rng.uniform(-70, 70), rng.uniform(-70, 70))
            grid_id, street_id = place(lat, lon)
            lane_streets.add(street_id)
            rows.append([f"{lane}{house}号", "house", f"{lat:.6f}", f"{lon:.6f}", grid_id, street_id])
        rows.append([lane, "road", "", "", "", lane_streets.pop() if len(lane_streets) == 1 else ""])
    ordinary = sorted(kept - parks)
    for landmark in LANDMARKS:
        r, c = rng.choice(ordinary)
        lon, lat = _offset(*_cell_centre(vertices, r, c), rng.uniform(-60, 60), rng.uniform(-60, 60))
        grid_id, street_id = place(lat, lon)
        rows.append([landmark, "landmark", f"{lat:.6f}", f"{lon:.6f}", grid_id, street_id])
    for park_name, (r, c) in zip(PARK_NAMES, sorted(parks, key=lambda c: (-c[0], c[1]))):
        lon, lat = _cell_centre(vertices, r, c)
        grid_id, street_id = place(lat, lon)
        rows.append([park_name, "landmark", f"{lat:.6f}", f"{lon:.6f}", grid_id, street_id])
    return rows


def _cell_centre(vertices, r: int, c: int) -> tuple[float, float]:
    corners = [vertices[r][c], vertices[r][c + 1], vertices[r + 1][c + 1], vertices[r + 1][c]]
    return round(sum(x for x, _ in corners) / 4, 6), round(sum(y for _, y in corners) / 4, 6)


def _cameras(rng: random.Random, vertices, kept, place: _Placer) -> list[list[str]]:
    """Cameras at road intersections inside the district, mid-block ones to make 58, and 2 just outside the boundary."""
    rows = []
    for i, east_west in enumerate(EAST_WEST_ROADS):
        for j, north_south in enumerate(NORTH_SOUTH_ROADS):
            r, c = 2 * (i + 1), 2 * (j + 1)
            if not all(cell in kept for cell in ((r - 1, c - 1), (r - 1, c), (r, c - 1), (r, c))):
                continue
            lon, lat = _offset(*vertices[r][c], rng.choice((-12.0, 12.0)), rng.choice((-12.0, 12.0)))
            rows.append((f"{east_west}与{north_south}交叉口", lat, lon))
    roads = _road_lines(vertices)
    while len(rows) < 58:
        name, line, _ = rng.choice(roads)
        k = rng.randrange(len(line) - 1)
        (x1, y1), (x2, y2) = line[k], line[k + 1]
        lon, lat = _offset((x1 + x2) / 2, (y1 + y2) / 2, rng.uniform(-15, 15), rng.uniform(-15, 15))
        if place(lat, lon) is not None and all(abs(lat - y) + abs(lon - x) > 0.0005 for _, y, x in rows):
            rows.append((f"{name}{k + 1}号路段", lat, lon))
    outside = sorted((r, c) for r in range(1, ROWS) for c in range(1, COLS)
                     if not any(cell in kept for cell in ((r - 1, c - 1), (r - 1, c), (r, c - 1), (r, c)))
                     and any((r + dr, c + dc) in kept for dr in range(-2, 2) for dc in range(-2, 2)))
    for r, c in rng.sample(outside, 2):
        lon, lat = vertices[r][c]
        rows.append((f"区界外{r}-{c}号卡口", lat, lon))
    out = []
    for n, (name, lat, lon) in enumerate(rows, start=1):
        where = place(lat, lon)
        out.append([f"CAM-{n:03d}", name, f"{lat:.6f}", f"{lon:.6f}", where[0] if where else ""])
    return out


def _geojson(features: list[dict]) -> str:
    lines = ",\n".join(json.dumps(f, ensure_ascii=False, separators=(",", ":")) for f in features)
    return '{"type":"FeatureCollection","name":"' + VERSION + '-grids","features":[\n' + lines + "\n]}\n"


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else REFERENCE_ROOT / VERSION)
