"""Who sent a record and what it may do (streams.domain.credentials), and the ingest stage that applies it: pure, no Kafka."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from test_case import RULES, action, case_at

from schemas.serde import Serde
from streams.domain.case import Status, handle_action
from streams.domain.credentials import (
    INTEGRATOR_HEADER,
    REPORTER,
    RETURN_VISIT,
    CredentialsFile,
    RecordSigner,
    action_refusal,
    derived_signer,
    load_credentials,
    units_under,
    verify_sender,
)
from streams.domain.model import ActionKind, HandlingAction
from streams.domain.pii import PersonalDataHasher
from streams.domain.reference import load_reference
from streams.pipeline import Ingestor, Senders
from whistle.ground.deadletter import Position
from whistle.ground.errors import AuthError, ConfigError, TransitionError
from whistle.ground.names import Topics

REFERENCE = load_reference()
MASTER = "test-master-key"
AT = datetime(2026, 3, 9, 2, 0, tzinfo=UTC)
CAMERA = {"camera_id": "CAM-046", "detected_at": AT, "category": "garbage", "confidence": 0.9, "lat": None, "lon": None,
          "snapshot_ref": "s3://cam/1.jpg", "model_version": "v7"}


def entry(integrator: str, **more) -> dict:
    return {"integrator": integrator, "sha256": hashlib.sha256(integrator.encode()).hexdigest(), "sources": [], "rate_per_second": 10,
            "burst": 10, **more}


def key_file(path: Path, *entries: dict) -> Path:
    path.write_text(yaml.safe_dump({"keys": list(entries)}), encoding="utf-8")
    return path


@pytest.fixture
def credentials(tmp_path):
    return load_credentials(key_file(tmp_path / "keys.yaml", entry("cams-a", sources=["camera"]), entry("cams-b", sources=["camera"]),
                                     entry("office-s01", units=["S01"], below=True), entry("grid-team", units=["G-S01-C02-007"]),
                                     entry("hotline", sources=["hotline"], return_visit=True), entry("app", sources=["app"]),
                                     entry("rotated", sources=["camera"], generation=3)), REFERENCE)


# -- the key file --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, field", [
    ({"integrator": "Has Spaces"}, "keys[0].integrator"),
    ({"units": ["NOT-A-UNIT"]}, "keys[0].units"),
    ({"below": True}, "keys[0].below"),
    ({"units": ["S01"], "return_visit": True}, "keys[0].return_visit"),
    ({"generation": 0}, "keys[0].generation"),
    ({"sources": ["fax"]}, "keys[0].sources"),
    ({"role": "admin"}, "keys[0]"),
])
def test_a_bad_key_file_entry_is_refused_naming_the_field(tmp_path, bad, field):
    with pytest.raises(ConfigError) as refused:
        load_credentials(key_file(tmp_path / "keys.yaml", {**entry("x", sources=["camera"]), **bad}), REFERENCE)
    assert refused.value.context["field"] == field


def test_an_integrator_listed_twice_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="listed twice"):
        load_credentials(key_file(tmp_path / "keys.yaml", entry("x", sources=["camera"]), {**entry("x", sources=["app"]), "sha256": "0" * 64}),
                         REFERENCE)


def test_units_under_follow_the_districts_hierarchy():
    s01 = units_under(REFERENCE, "S01")
    assert REFERENCE.streets["S01"].desk_id in s01 and "C-S01-01" in s01 and "G-S01-C01-001" in s01
    assert not any(unit.startswith(("G-S02", "C-S02")) for unit in s01) and "S01" not in s01
    assert units_under(REFERENCE, "C-S01-01") == {g for g, grid in REFERENCE.grids.items() if grid.community_id == "C-S01-01"}
    everything = units_under(REFERENCE, REFERENCE.district_desk.unit_id)
    assert {"S02", "DEP-WATER", "G-S02-C01-001"} <= everything and not {"SUP", "DIS"} & everything
    assert units_under(REFERENCE, "DEP-WATER") == frozenset()


# -- record signatures ----------------------------------------------------------------------------------


def test_a_signature_binds_the_integrator_to_these_bytes_of_this_topic(credentials):
    signer = derived_signer(MASTER, credentials.by_integrator["cams-a"])
    headers = signer.headers("whistle.raw.camera", b"k", b"value")
    assert verify_sender(credentials, MASTER, "whistle.raw.camera", b"k", b"value", headers).integrator == "cams-a"
    for topic, key, value in (("whistle.raw.app", b"k", b"value"), ("whistle.raw.camera", b"k2", b"value"), ("whistle.raw.camera", b"k", b"valuE")):
        with pytest.raises(AuthError) as refused:
            verify_sender(credentials, MASTER, topic, key, value, headers)
        assert refused.value.context["reason"] == "bad_signature"
    claimed = [(INTEGRATOR_HEADER, b"cams-b"), headers[1]]  # cams-a's signature presented as cams-b's
    with pytest.raises(AuthError, match="does not match"):
        verify_sender(credentials, MASTER, "whistle.raw.camera", b"k", b"value", claimed)
    with pytest.raises(AuthError) as refused:
        verify_sender(credentials, "another-master", "whistle.raw.camera", b"k", b"value", headers)
    assert refused.value.context["reason"] == "bad_signature"


@pytest.mark.parametrize("headers, reason", [
    ((), "unsigned"),
    (((INTEGRATOR_HEADER, b"cams-a"),), "unsigned"),
    (RecordSigner("nobody", 1, b"s").headers("whistle.raw.camera", b"k", b"v"), "unknown_integrator"),
])
def test_unsigned_and_unknown_senders_are_refused(credentials, headers, reason):
    with pytest.raises(AuthError) as refused:
        verify_sender(credentials, MASTER, "whistle.raw.camera", b"k", b"v", headers)
    assert refused.value.context["reason"] == reason


def test_a_rotation_keeps_the_previous_generation_valid_and_refuses_older_ones(credentials):
    """`rotated` is at generation 3: records signed at 2 (in flight during the rotation) pass, at 1 they do not."""
    def signed_at(generation: int):
        earlier = dataclasses.replace(credentials.by_integrator["rotated"], generation=generation)
        return derived_signer(MASTER, earlier).headers("whistle.raw.camera", b"k", b"v")

    assert verify_sender(credentials, MASTER, "whistle.raw.camera", b"k", b"v", signed_at(3)).integrator == "rotated"
    assert verify_sender(credentials, MASTER, "whistle.raw.camera", b"k", b"v", signed_at(2)).integrator == "rotated"
    with pytest.raises(AuthError) as refused:
        verify_sender(credentials, MASTER, "whistle.raw.camera", b"k", b"v", signed_at(1))
    assert refused.value.context["reason"] == "stale_secret"


def test_the_key_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_last_good(tmp_path):
    path = key_file(tmp_path / "keys.yaml", entry("first", sources=["camera"]))
    now = [0.0]
    watched = CredentialsFile(path, REFERENCE, interval_s=1.0, monotonic=lambda: now[0])
    assert set(watched.current().by_integrator) == {"first"}
    key_file(path, entry("first", sources=["camera"]), entry("second", sources=["app"]))
    os.utime(path, ns=(1, 10**18))
    assert set(watched.current().by_integrator) == {"first"}  # not checked again before interval_s
    now[0] = 1.5
    assert set(watched.current().by_integrator) == {"first", "second"}
    path.write_text("keys: [{integrator: broken", encoding="utf-8")
    now[0] = 3.0
    assert set(watched.current().by_integrator) == {"first", "second"}


# -- what a sender may do -------------------------------------------------------------------------------


def act(kind: ActionKind, unit_id: str, **fields) -> HandlingAction:
    return HandlingAction("a-1", "S01-20260309-0123456789", kind, unit_id, AT, **fields)


@pytest.mark.parametrize("sender, the_action, reason", [
    ("office-s01", act(ActionKind.ACCEPT, "G-S01-C02-007"), None),  # a grid under its street
    ("office-s01", act(ActionKind.ACCEPT, "S01"), None),
    ("office-s01", act(ActionKind.ACCEPT, "G-S02-C01-001"), "unit_not_in_credential"),  # another street's grid
    ("grid-team", act(ActionKind.RESOLVE, "C-S01-02", note="x"), "unit_not_in_credential"),  # its community: above it, not under
    ("grid-team", act(ActionKind.RATE, REPORTER, rating=5), "unit_cannot_rate"),  # a unit never rates what it handled
    ("office-s01", act(ActionKind.REOPEN, REPORTER), "unit_cannot_rate"),
    ("cams-a", act(ActionKind.ACCEPT, "S01"), "not_a_unit"),
    ("hotline", act(ActionKind.RATE, RETURN_VISIT, rating=2), None),  # the return visit
    ("app", act(ActionKind.RATE, REPORTER, rating=2), "report_missing"),
    ("app", act(ActionKind.RATE, REPORTER, rating=2, report_id="app:other-app:r1"), "not_reporter"),  # someone else's report
    ("app", act(ActionKind.RATE, REPORTER, rating=2, report_id="app:app:r1"), None),  # through its own report
])
def test_what_each_credential_may_send(credentials, sender, the_action, reason):
    refusal = action_refusal(credentials, credentials.by_integrator[sender], the_action)
    assert (refusal.context["reason"] if refusal else None) == reason


def test_a_reporter_rates_only_through_a_report_of_that_case():
    state, _ = case_at(Status.RESOLVED)  # opened by report app:r1
    other = action(ActionKind.RATE, REPORTER, 90, rating=5, report_id="app:app:r-other")
    with pytest.raises(TransitionError) as refused:
        handle_action(state, other, RULES)
    assert refused.value.context["reason"] == "not_this_case_reporter"
    own = action(ActionKind.RATE, REPORTER, 90, rating=5, report_id="app:r1")  # the negative control: the case's own report
    assert handle_action(state, own, RULES)


# -- the ingest stage -------------------------------------------------------------------------------------


def ingest(credentials, topic: str, key: bytes, value: bytes, headers) -> tuple[str, dict]:
    serde, topics = Serde(), Topics()
    ingestor = Ingestor(serde, REFERENCE, PersonalDataHasher("k"), topics, Senders(lambda: credentials, MASTER))
    out = ingestor.process(Position(topic, 0, 0), key, value, AT, arrived=AT, headers=headers)
    record = serde.decode(out.value).record
    return out.topic, record["event"][1] if out.topic == topics.inbox else record


def test_the_same_id_from_two_integrators_is_two_reports(credentials):
    """Ids live in their sender's namespace: another camera platform reusing an id cannot shadow a report."""
    serde = Serde()
    value = serde.encode("CameraDetection", {**CAMERA, "detection_id": "det-1"})
    ids = set()
    for sender in ("cams-a", "cams-b"):
        topic, record = ingest(credentials, "whistle.raw.camera", b"CAM-046", value,
                               derived_signer(MASTER, credentials.by_integrator[sender]).headers("whistle.raw.camera", b"CAM-046", value))
        assert topic == "whistle.cases.inbox"
        ids.add(record["report_id"])
    assert ids == {"camera:cams-a:det-1", "camera:cams-b:det-1"}


def test_ingest_refuses_what_the_credential_does_not_allow_and_stamps_the_actor_it_does(credentials):
    serde = Serde()
    record = {"action_id": "a-1", "case_id": "S01-20260309-0123456789", "kind": "accept", "unit_id": "G-S01-C02-007", "at": AT,
              "actor": "district-command"}  # a claim, replaced by who signed it
    value = serde.encode("AppEvent", {"event": ("org.whistle.v1.HandlingAction", record)})
    office = derived_signer(MASTER, credentials.by_integrator["office-s01"]).headers("whistle.raw.app", b"k", value)
    topic, inbox = ingest(credentials, "whistle.raw.app", b"k", value, office)
    assert topic == "whistle.cases.inbox" and inbox["actor"] == "office-s01"
    cams = derived_signer(MASTER, credentials.by_integrator["cams-a"]).headers("whistle.raw.app", b"k", value)
    topic, letter = ingest(credentials, "whistle.raw.app", b"k", value, cams)
    assert topic == "whistle.deadletter" and letter["stage"] == "authenticate" and letter["original_value"] == value
    camera = serde.encode("CameraDetection", {**CAMERA, "detection_id": "det-2"})
    app_key = derived_signer(MASTER, credentials.by_integrator["app"]).headers("whistle.raw.camera", b"k", camera)
    topic, letter = ingest(credentials, "whistle.raw.camera", b"k", camera, app_key)  # the app may not publish camera reports
    assert topic == "whistle.deadletter" and "may not publish camera reports" in letter["error_message"]


def test_a_stale_record_is_refused_at_ingest_and_decided_nothing(credentials):
    serde = Serde()
    value = serde.encode("CameraDetection", {**CAMERA, "detection_id": "det-3"})
    old = RecordSigner("rotated", 1, b"\x00" * 32).headers("whistle.raw.camera", b"k", value)
    topic, letter = ingest(credentials, "whistle.raw.camera", b"k", value, old)
    assert (topic, letter["stage"], letter["error_class"]) == ("whistle.deadletter", "authenticate", "AuthError")
    assert "generation is not current (current 3)" in letter["error_message"]
