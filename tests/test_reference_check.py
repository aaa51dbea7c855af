"""`whistle reference check DIR`: every fault of a broken copy of the sample data is found by name, all at once; the clean
sample passes (the negative control); WHISTLE_REFERENCE_DIR takes a city's own directory."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas.catalog import default_catalog
from streams.domain.reference import DEFAULT_VERSION, REFERENCE_ROOT
from streams.domain.reference_check import check_reference
from streams.domain.rules import Rules
from whistle.cli import app
from whistle.ground.settings import Settings

GRIDS = f"{DEFAULT_VERSION}/grids.geojson"


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "city"
    shutil.copytree(REFERENCE_ROOT / DEFAULT_VERSION, root / DEFAULT_VERSION)
    shutil.copytree(REFERENCE_ROOT / "sla", root / "sla")
    return root


def _json(root: Path, name: str, change) -> None:
    path = root / DEFAULT_VERSION / name
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def _ring(doc: dict, i: int) -> list:
    return doc["features"][i]["geometry"]["coordinates"][0]


def _interior_feature(doc: dict) -> int:
    """A grid none of whose edges is on the district's outline: removing it leaves a hole."""
    count: dict[frozenset, int] = {}
    for feature in doc["features"]:
        ring = [tuple(p) for p in feature["geometry"]["coordinates"][0]]
        for a, b in zip(ring, ring[1:]):
            count[frozenset((a, b))] = count.get(frozenset((a, b)), 0) + 1
    return next(i for i, f in enumerate(doc["features"]) if f["properties"]["kind"] == "grid" and all(
        count[frozenset((tuple(a), tuple(b)))] == 2 for a, b in zip(_ring(doc, i), _ring(doc, i)[1:])))


def _drop_interior_grid(doc: dict) -> None:
    del doc["features"][_interior_feature(doc)]


def _shift(doc: dict) -> None:
    """Move features[5] (G-S01-C01-006) ~100 m east, over its neighbours."""
    doc["features"][5]["geometry"]["coordinates"][0] = [[x + 0.001, y] for x, y in _ring(doc, 5)]


def _camera_far_away(root: Path) -> None:
    path = root / DEFAULT_VERSION / "cameras.csv"
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    line = next(n for n, row in enumerate(rows) if n and row[4])
    rows[line][2:4] = ["27.5", "112.5"]
    path.write_text("\n".join(",".join(row) for row in rows) + "\n", encoding="utf-8")


FAULTS = {
    "unclosed polygon": (lambda root: _json(root, "grids.geojson", lambda d: _ring(d, 0).pop()), GRIDS, "features[0] ", "unclosed polygon"),
    "overlapping polygons": (lambda root: _json(root, "grids.geojson", _shift), GRIDS, "G-S01-C01-006", "overlapping polygons"),
    "gap between grids": (lambda root: _json(root, "grids.geojson", _drop_interior_grid), GRIDS, "features", "gap between grids"),
    "grid without a chain": (lambda root: _json(root, "district.json", lambda d: d["communities"][0].update(street_id="S99")),
                             GRIDS, "features[0] G-S01-C01-001", "grid without a chain: its community's street 'S99' is unknown"),
    "unknown category": (lambda root: _json(root, "categories.json", lambda d: d["categories"][3].update(code="potholes")),
                         f"{DEFAULT_VERSION}/categories.json", "categories[3].code", "unknown category 'potholes'"),
    "camera outside every grid": (_camera_far_away, f"{DEFAULT_VERSION}/cameras.csv", "line 2", "outside every grid"),
    "unknown unit in the matrix": (lambda root: _json(root, "categories.json", lambda d: d["categories"][2].update(owner_department="DEP-NOPE")),
                                   f"{DEFAULT_VERSION}/categories.json", "categories[2].owner_department", "unknown unit 'DEP-NOPE'"),
}


def _found(problems, file: str, where: str, what: str) -> bool:
    return any(p.file == file and where in p.where and what in p.problem for p in problems)


def test_the_clean_sample_has_no_problems(tmp_path):
    assert check_reference(REFERENCE_ROOT, default_catalog().categories) == []
    assert check_reference(_copy(tmp_path), default_catalog().categories) == []


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_found_by_name(tmp_path, fault):
    breaks, file, where, what = FAULTS[fault]
    root = _copy(tmp_path)
    breaks(root)
    problems = check_reference(root, default_catalog().categories)
    assert _found(problems, file, where, what), problems


def test_every_fault_is_reported_at_once_as_a_table_and_exit_1(tmp_path):
    root = _copy(tmp_path)
    for breaks, *_ in FAULTS.values():
        breaks(root)
    problems = check_reference(root, default_catalog().categories)
    assert all(_found(problems, file, where, what) for _, file, where, what in FAULTS.values()), problems
    result = CliRunner().invoke(app, ["reference", "check", str(root)], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert "problem" in result.output and "unclosed polygon" in result.output and "DEP-NOPE" in result.output
    clean = CliRunner().invoke(app, ["reference", "check", str(_copy(tmp_path / "clean"))])
    assert (clean.exit_code, "no problems" in clean.output) == (0, True)


def test_a_city_directory_is_what_the_rules_come_from(tmp_path):
    root = _copy(tmp_path)
    settings = Settings.from_env({"WHISTLE_REFERENCE_DIR": str(root)})
    rules = Rules.load(settings.reference_dir)
    assert rules.reference.directory == root / DEFAULT_VERSION
    assert {f.path.parent for f in rules.files()} == {root / DEFAULT_VERSION, root / "sla"}
    assert Settings().reference_dir == REFERENCE_ROOT
