"""The 12345 hotline channel: operator labels as the call centre types them are mapped by the reference data (hotline.yaml),
an unknown label is dead-lettered naming it, and the return visit's result becomes the reporter's rating."""
from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from schemas.serde import Serde
from streams.domain.credentials import derived_signer, load_credentials
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import DEFAULT_VERSION, REFERENCE_ROOT, load_reference
from streams.pipeline import Ingestor, Senders
from whistle.ground.deadletter import Position
from whistle.ground.errors import ConfigError
from whistle.ground.names import Topics

REFERENCE = load_reference()
MASTER = "test-master-key"
AT = datetime(2026, 3, 9, 2, 0, tzinfo=UTC)
TICKET = {"ticket_id": "T-1", "received_at": AT, "caller_phone": None, "address_text": "建设路19号", "description": "有垃圾",
          "operator_category": "garbage", "urgency": "normal"}


@pytest.mark.parametrize("result, rating", [("满意", 5), ("基本满意", 4), ("不满意", 1), (" 基本满意 ", 4), ("Unsatisfied", 1)])
def test_the_return_visits_results_are_ratings(result, rating):
    assert REFERENCE.rating_for_return_visit(result) == rating


def test_an_unknown_return_visit_result_has_no_rating():
    assert REFERENCE.rating_for_return_visit("非常满意") is None


def _hotline_copy(tmp_path: Path, change) -> Path:
    root = tmp_path / DEFAULT_VERSION
    shutil.copytree(REFERENCE_ROOT / DEFAULT_VERSION, root)
    doc = yaml.safe_load((root / "hotline.yaml").read_text(encoding="utf-8"))
    change(doc)
    (root / "hotline.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return root


@pytest.mark.parametrize("change, field", [
    (lambda d: d["labels"].update(potholes=["坑"]), "labels.potholes"),
    (lambda d: d["labels"]["noise"].append("垃圾堆放"), "labels.noise[2]"),  # categories.json says garbage
    (lambda d: d["labels"]["noise"].append(""), "labels.noise[2]"),
    (lambda d: d["return_visit"].update({"满意": 6}), "return_visit.满意"),
    (lambda d: d.pop("version"), "version"),
])
def test_a_broken_hotline_file_is_refused_naming_the_field(tmp_path, change, field):
    with pytest.raises(ConfigError) as refused:
        load_reference(_hotline_copy(tmp_path, change))
    assert refused.value.context["file"].endswith("hotline.yaml") and refused.value.context["field"] == field


@pytest.fixture
def ingestor(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"integrator": "hotline", "sha256": hashlib.sha256(b"hotline").hexdigest(),
                                              "sources": ["hotline"], "rate_per_second": 10, "burst": 10, "return_visit": True}]}),
                    encoding="utf-8")
    credentials = load_credentials(keys, REFERENCE)
    signer = derived_signer(MASTER, credentials.by_integrator["hotline"])
    serde, topics = Serde(), Topics()
    ingest = Ingestor(serde, REFERENCE, PersonalDataHasher("k"), topics, Senders(lambda: credentials, MASTER))

    def send(**changes):
        value = serde.encode("HotlineTicket", {**TICKET, **changes})
        headers = signer.headers(topics.hotline, b"T-1", value)
        out = ingest.process(Position(topics.hotline, 0, 7), b"T-1", value, AT, arrived=AT, headers=headers)
        return out.topic, serde.decode(out.value).record, dict(out.headers)

    return send, topics


def test_an_operator_label_as_typed_routes_the_ticket_and_an_unknown_one_is_dead_lettered_naming_it(ingestor):
    send, topics = ingestor
    topic, record, _ = send(operator_category="井盖缺失")
    assert topic == topics.inbox and record["event"][1]["category"] == "road_damage"
    topic, record, _ = send(operator_category="拉圾堆放")  # a common typo, listed
    assert topic == topics.inbox and record["event"][1]["category"] == "garbage"
    topic, letter, headers = send(operator_category="下水道冒泡")
    assert topic == topics.deadletter
    assert "'下水道冒泡'" in headers["whistle.error.message"].decode() and "hotline-v1" in headers["whistle.error.message"].decode()
    assert headers["whistle.error.field"] == b"operator_category"
