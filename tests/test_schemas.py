"""Schema files, topic specs and evolution: what integrators and old readers rely on."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import fastavro
import pytest
import yaml

from infra.topics import load_topics
from schemas.catalog import SCHEMAS_DIR, default_catalog, load_catalog
from schemas.compat import check_catalog, release_changed, resolution_problems
from schemas.serde import Serde
from whistle.ground.errors import ConfigError

ISSUE_CATEGORIES = {
    "garbage", "drainage_blockage", "illegal_construction", "illegal_parking", "illegal_lpg_refilling",
    "ebike_charging_hazard", "fire_smoke", "road_damage", "noise", "neighbour_dispute", "elderly_assistance", "gas_leak",
}
EXAMPLES = [(spec.name, index) for spec in default_catalog().topics.values() for index in range(len(spec.examples))]


@pytest.fixture
def schemas_copy(tmp_path: Path) -> Path:
    """A scratch copy of schemas/ whose files a test may break."""
    return Path(shutil.copytree(SCHEMAS_DIR, tmp_path / "schemas", ignore=shutil.ignore_patterns("__pycache__", "*.py")))


def _edit_json(path: Path, change) -> None:
    definition = json.loads(path.read_text(encoding="utf-8"))
    change(definition)
    path.write_text(json.dumps(definition), encoding="utf-8")


def _all_fields(node):
    if isinstance(node, list):
        for branch in node:
            yield from _all_fields(branch)
    elif isinstance(node, dict):
        for f in node.get("fields", ()):
            yield f
            yield from _all_fields(f["type"])
        for key in ("items", "values"):
            yield from _all_fields(node.get(key))


def test_every_infra_topic_has_a_spec_and_every_spec_an_infra_topic():
    infra = {t.name: t for t in load_topics()}
    specs = default_catalog().topics
    assert set(specs) == set(infra)
    for name, spec in specs.items():
        for key_field in spec.key_fields.values():
            assert key_field.replace("_", " ") in infra[name].key.replace("_", " "), f"{name}: key {key_field} differs from infra/topics.yaml"


def test_specs_leave_partitions_and_retention_to_infra():
    for path in (SCHEMAS_DIR / "topics").glob("*.yaml"):
        assert not {"partitions", "retention_ms", "cleanup"} & set(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(("topic", "index"), EXAMPLES)
def test_every_example_message_validates(topic, index):
    spec = default_catalog().topic(topic)
    Serde().validate(spec.schema, spec.examples[index])


def test_schemas_are_namespaced_and_every_field_documented():
    catalog = default_catalog()
    for version in [*catalog.schemas.values(), *(v for vs in catalog.releases.values() for v in vs)]:
        assert version.full_name == f"org.whistle.v1.{version.name}"
        assert version.definition["doc"].strip()
        assert all(f["doc"].strip() for f in _all_fields(version.definition)), version.path


def test_a_field_without_doc_is_refused_naming_file_and_field(schemas_copy):
    _edit_json(schemas_copy / "avro" / "HotlineTicket.avsc", lambda d: d["fields"][2].pop("doc"))
    with pytest.raises(ConfigError, match=r"HotlineTicket\.avsc: field caller_phone has no doc"):
        load_catalog(schemas_copy)


def test_a_topic_spec_naming_an_unknown_schema_is_refused(schemas_copy):
    path = schemas_copy / "topics" / "whistle.raw.camera.yaml"
    path.write_text(path.read_text().replace("schema: CameraDetection", "schema: CameraDetections"))
    with pytest.raises(ConfigError, match=r"whistle\.raw\.camera\.yaml: schema 'CameraDetections'") as caught:
        load_catalog(schemas_copy)
    assert caught.value.context["field"] == "schema"


def test_categories_are_the_grid_governance_list_and_category_fields_are_checked_strings():
    """Channels sending codes are checked at the schema; the hotline's operator labels are the reference data's to map."""
    catalog = default_catalog()
    assert set(catalog.categories) == ISSUE_CATEGORIES
    fields = {
        (v.name, f["name"]): f for v in catalog.schemas.values() if v.definition["type"] == "record"
        for f in v.definition["fields"] if f["name"] in ("category", "operator_category")
    }
    assert fields and all(f["type"] == "string" for f in fields.values())
    assert all(f["x-vocabulary"] == "categories" for (_, name), f in fields.items() if name == "category")
    assert "x-vocabulary" not in fields[("HotlineTicket", "operator_category")]


def test_personal_data_is_declared_and_only_on_input_topics():
    catalog = default_catalog()
    personal = {
        spec.name: [f["name"] for f in _all_fields(catalog.schemas[spec.schema].definition) if f.get("x-personal")]
        for spec in catalog.topics.values()
    }
    assert personal["whistle.raw.hotline"] == ["caller_phone"]
    assert personal["whistle.raw.app"] == ["reporter_id"]
    assert not any(fields for topic, fields in personal.items() if not topic.startswith("whistle.raw."))


def test_current_schemas_read_every_release_and_every_release_reads_current():
    assert [str(problem) for problem in check_catalog(default_catalog())] == []


def test_camera_v1_and_the_current_release_exchange_data_both_ways():
    catalog = default_catalog()
    v1, current = catalog.release("CameraDetection", 1), catalog.schema("CameraDetection")
    serde = Serde(catalog)
    example = serde.validate("CameraDetection", catalog.topic("whistle.raw.camera").examples[0])

    old_data = serde.decode(serde.encode("CameraDetection", example, release=1))
    assert old_data.writer.release == 1 and old_data.record == {**example, "bbox": None, "coord_system": "wgs84"}

    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, current.parsed, example)
    buffer.seek(0)
    read_by_v1 = fastavro.schemaless_reader(buffer, current.parsed, v1.parsed)
    assert read_by_v1 == {k: v for k, v in example.items() if k not in ("bbox", "coord_system")}


BREAKING_CHANGES = {
    "new field without default": ("zone", lambda d: d["fields"].append({"name": "zone", "type": "string", "doc": "Zone."})),
    "removed field without default": ("model_version", lambda d: d["fields"].remove(next(f for f in d["fields"] if f["name"] == "model_version"))),
    "changed field type": ("confidence", lambda d: next(f for f in d["fields"] if f["name"] == "confidence").update(type="string")),
}


@pytest.mark.parametrize("change", BREAKING_CHANGES, ids=list(BREAKING_CHANGES))
def test_a_breaking_change_is_detected_and_cannot_be_released(schemas_copy, change):
    field, edit = BREAKING_CHANGES[change]
    _edit_json(schemas_copy / "avro" / "CameraDetection.avsc", edit)
    catalog = load_catalog(schemas_copy)
    breaks = [p for p in check_catalog(catalog) if p.writer is not None]
    assert breaks and all(p.schema == "CameraDetection" and p.field == field for p in breaks)
    with pytest.raises(SystemExit, match="incompatible"):
        release_changed(catalog, schemas_copy / "avro" / "history")


def test_the_detected_break_is_real_for_fastavro():
    catalog = default_catalog()
    v2 = catalog.release("CameraDetection", 2).definition
    reader = json.loads(json.dumps(v2))
    reader["fields"].append({"name": "zone", "type": "string", "doc": "Zone."})
    assert resolution_problems(v2, reader) == [("zone", "the reader needs this field, the writer does not write it and it has no default")]
    serde = Serde(catalog)
    data = serde.encode("CameraDetection", serde.validate("CameraDetection", catalog.topic("whistle.raw.camera").examples[0]))
    with pytest.raises(fastavro.read.SchemaResolutionError):
        fastavro.schemaless_reader(io.BytesIO(data[10:]), catalog.schema("CameraDetection").parsed, fastavro.parse_schema(reader))


def test_an_enum_symbol_removed_from_a_shared_type_breaks_every_topic_using_it(schemas_copy):
    _edit_json(schemas_copy / "avro" / "Urgency.avsc", lambda d: d["symbols"].remove("emergency"))
    broken = {p.schema for p in check_catalog(load_catalog(schemas_copy)) if p.writer is not None}
    assert broken == {"HotlineTicket", "CaseInboxEvent", "CaseEvent", "Breach"}


def test_a_compatible_change_must_be_released_and_then_passes(schemas_copy):
    optional = {"name": "zone", "type": ["null", "string"], "default": None, "doc": "Zone, if known."}
    _edit_json(schemas_copy / "avro" / "HotlineTicket.avsc", lambda d: d["fields"].append(optional))
    assert [p.reason for p in check_catalog(load_catalog(schemas_copy))] == ["changed since v1 but not released: run python -m schemas.compat --release"]
    written = release_changed(load_catalog(schemas_copy), schemas_copy / "avro" / "history")
    assert [p.name for p in written] == ["HotlineTicket.v2.avsc"]
    assert check_catalog(load_catalog(schemas_copy)) == []
