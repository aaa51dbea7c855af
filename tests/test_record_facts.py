"""Per-record facts (id, event time, personal data) are read from the schema annotations, once, by the catalog."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from schemas.catalog import SCHEMAS_DIR, RecordFacts, default_catalog, load_catalog
from whistle.ground.errors import ConfigError

EXPECTED = {
    "CameraDetection": RecordFacts("detection_id", "detected_at", ()),
    "HotlineTicket": RecordFacts("ticket_id", "received_at", ("caller_phone",), phone_fields=("caller_phone",)),
    "ResidentReport": RecordFacts("report_id", "reported_at", ("reporter_id",)),
    "HandlingAction": RecordFacts("action_id", "at", ()),
}


@pytest.fixture
def schemas_copy(tmp_path: Path) -> Path:
    """A scratch copy of schemas/ whose files a test may break."""
    return Path(shutil.copytree(SCHEMAS_DIR, tmp_path / "schemas", ignore=shutil.ignore_patterns("__pycache__", "*.py")))


def _edit_fields(path: Path, change) -> None:
    definition = json.loads(path.read_text(encoding="utf-8"))
    for f in definition["fields"]:
        change(f)
    path.write_text(json.dumps(definition), encoding="utf-8")


def test_the_facts_of_every_source_record_type_come_from_the_schemas():
    catalog = default_catalog()
    assert dict(catalog.facts) == EXPECTED
    assert all(catalog.record_facts(name) == facts for name, facts in EXPECTED.items())  # nested (AppEvent branches) or not
    with pytest.raises(ConfigError, match="CaseEvent"):
        catalog.record_facts("CaseEvent")


def test_annotations_leave_the_wire_form_alone():
    """x-id / x-event-time are not part of the Parsing Canonical Form: every current source schema equals its newest release."""
    catalog = default_catalog()
    for name in ("CameraDetection", "HotlineTicket", "AppEvent", "CaseInboxEvent"):
        assert catalog.schema(name).fingerprint == catalog.releases[name][-1].fingerprint, name


@pytest.mark.parametrize("rule", ["x-id", "x-event-time"])
def test_a_source_record_without_its_annotation_is_refused_naming_the_file(schemas_copy, rule):
    _edit_fields(schemas_copy / "avro" / "ResidentReport.avsc", lambda f: f.pop(rule, None))
    with pytest.raises(ConfigError, match=rf"ResidentReport\.avsc: record ResidentReport must mark exactly one field {rule}") as caught:
        load_catalog(schemas_copy)
    assert caught.value.context["field"] == rule


def test_a_record_marking_two_ids_is_refused(schemas_copy):
    _edit_fields(schemas_copy / "avro" / "CameraDetection.avsc", lambda f: f.update({"x-id": True}) if f["name"] == "camera_id" else None)
    with pytest.raises(ConfigError, match=r"CameraDetection\.avsc: .*x-id.*'detection_id', 'camera_id'"):
        load_catalog(schemas_copy)
