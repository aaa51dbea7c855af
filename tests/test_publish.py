"""`whistle publish` (run_publish) against the real local Kafka broker."""
from __future__ import annotations

import dataclasses
import io
import json
import re

import pytest
from rich.console import Console
from test_sdk import kafka_settings, message_count, read_back  # noqa: F401 (kafka_settings is a fixture)

from schemas.catalog import default_catalog
from schemas.serde import Serde
from whistle.edges.publish import run_publish
from whistle.ground.settings import Secret

pytestmark = pytest.mark.kafka

CATALOG = default_catalog()
SERDE = Serde(CATALOG)
CAMERA = CATALOG.topic("whistle.raw.camera").examples[0]


def console() -> Console:
    return Console(file=io.StringIO(), width=240, color_system=None)


def rejected_rows(output: str) -> dict[int, str]:
    """Rows of the 'Rejected lines' table: line number -> reason."""
    rows = re.findall(r"^\W+(\d+) \W (.+?)\s+\W$", output.split("Rejected lines", 1)[1], flags=re.MULTILINE)
    return {int(line): reason for line, reason in rows}


def test_valid_lines_are_sent_and_each_rejected_line_is_listed_with_its_reason(kafka_settings, kafka_bootstrap, tmp_path):
    lines = [
        json.dumps({**CAMERA, "detection_id": "pub-1"}),
        "",
        '{"detection_id": ',
        "[1, 2]",
        json.dumps({k: v for k, v in CAMERA.items() if k != "snapshot_ref"}),
        json.dumps({**CAMERA, "confidence": 1.7}),
        json.dumps({**CAMERA, "confidence": "high"}),
        json.dumps({**CAMERA, "detected_at": "2025-06-12T08:15:02"}),
        json.dumps({**CAMERA, "detection_id": "pub-2", "camera_id": "cam-0107"}),
    ]
    path = tmp_path / "camera.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = console()

    assert run_publish(kafka_settings, "camera", path, out) == 1

    output = out.file.getvalue()
    rows = rejected_rows(output)
    assert sorted(rows) == [3, 4, 5, 6, 7, 8]
    assert rows[3].startswith("invalid JSON")
    assert rows[4] == "expected a JSON object, got list"
    assert rows[5] == "snapshot_ref: is required"
    assert rows[6] == "confidence: 1.7 is above 1.0"
    assert rows[7] == "confidence: expected a number, got a string"
    assert rows[8].startswith("detected_at: 2025-06-12T08:15:02 has no time zone")
    assert re.search(r"whistle\.raw\.camera \W+ 8 \W+ 2 \W+ 6 ", output)
    topic = kafka_settings.topic_prefix + "whistle.raw.camera"
    records = [SERDE.decode(m.value()).record for m in read_back(kafka_bootstrap, topic, message_count(kafka_bootstrap, topic))]
    assert sorted(r["detection_id"] for r in records if r["detection_id"].startswith("pub-")) == ["pub-1", "pub-2"]


def test_a_clean_file_of_every_app_event_type_exits_zero(kafka_settings, kafka_bootstrap, tmp_path):
    examples = CATALOG.topic("whistle.raw.app").examples
    path = tmp_path / "app.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    topic = kafka_settings.topic_prefix + "whistle.raw.app"
    before = message_count(kafka_bootstrap, topic)
    out = console()

    assert run_publish(kafka_settings, "app", path, out) == 0

    assert "Rejected lines" not in out.file.getvalue()
    records = [SERDE.decode(m.value()).record for m in read_back(kafka_bootstrap, topic, before + len(examples))]
    expected = [SERDE.validate("AppEvent", e) for e in examples]
    assert all(record in records for record in expected)


def test_an_unreadable_file_or_unknown_source_exits_two_without_sending(kafka_settings, tmp_path):
    out = console()
    assert run_publish(kafka_settings, "camera", tmp_path / "missing.jsonl", out) == 2
    (tmp_path / "x.jsonl").write_text("{}\n")
    assert run_publish(kafka_settings, "fax", tmp_path / "x.jsonl", out) == 2
    assert "unknown source 'fax'; expected one of app, camera, hotline" in out.file.getvalue()


def test_without_an_integrator_identity_nothing_is_sent_and_the_exit_is_two(kafka_settings, kafka_bootstrap, tmp_path):
    path = tmp_path / "camera.jsonl"
    path.write_text(json.dumps({**CAMERA, "detection_id": "pub-anonymous"}) + "\n", encoding="utf-8")
    topic = kafka_settings.topic_prefix + "whistle.raw.camera"
    before = message_count(kafka_bootstrap, topic)
    out = console()
    anonymous = dataclasses.replace(kafka_settings, integrator="", integrator_secret=Secret(""))
    assert run_publish(anonymous, "camera", path, out) == 2
    assert "WHISTLE_INTEGRATOR" in out.file.getvalue() and message_count(kafka_bootstrap, topic) == before
