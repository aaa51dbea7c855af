"""Hostile input, property-based: generated case streams through the pure pipeline keep six invariants.

What is generated and checked is described in `whistle.devtools.hostile` (its `python -m` form runs the
large budget). Here CI runs a bounded, derandomized budget, then one negative control per invariant (a
broken pipeline step or comparison that the check must catch), then the reproducers of the bugs found.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings

import streams.domain.sla as sla
import streams.pipeline as pipeline
from whistle.devtools import hostile
from whistle.devtools.hostile import Mutation, Scenario, build, check, scenarios

CI = settings(max_examples=14, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck), print_blob=True)
@CI
@given(scenarios(max_mutations=25, sizes=(50, 120)))
def test_generated_hostile_case_streams_keep_every_invariant(scenario):
    assert check(scenario) == {}


# -- a fixed scenario with every kind of hostile input, for the negative controls ----------------------------

EVERY_KIND = Scenario(2, 50, 9, (0, 30, 5, 12), tuple(
    Mutation(kind, 1000 + 37 * n, param) for n, (kind, param) in enumerate([
        ("duplicate", 3), ("duplicate", 0), ("skew", -3 * 365 * 86_400), ("skew", 100), ("skew", 86_401), ("calendar", 9999),
        ("calendar", 1990), ("spoof", 7), ("invalid", 0), ("invalid", 1), ("invalid", 3), ("garbage", b"\x00\x01garbage"),
        ("garbage", b""), ("truncated", 17), ("wrong_schema", 0), ("wrong_schema", 1)])))


def test_the_fixed_scenario_holds_every_invariant_and_exercises_every_kind():
    items = build(EVERY_KIND)
    kinds = {item.hostile for item in items if item.hostile}
    assert kinds >= {"duplicate", "skew", "calendar", "spoof", "invalid", "garbage", "truncated", "wrong_schema"}
    assert check(EVERY_KIND, items=items) == {}


def _violations(**kwargs) -> dict[str, str]:
    return check(EVERY_KIND, **kwargs)


def test_negative_control_1_an_exception_escaping_the_case_processor_is_caught(monkeypatch):
    def explode(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline.CaseProcessor, "_emit", explode)
    assert "no_exception" in _violations()


def test_negative_control_2_a_valid_record_refused_after_a_bad_one_is_seen(monkeypatch):
    """The ingest stage, broken: after a record it cannot decode, it refuses the next one too."""
    route = pipeline.Ingestor._route

    def route_after_bad(self, where, key, value, arrived, headers):
        if getattr(self, "poisoned", False):
            self.poisoned = False
            raise pipeline.DecodeError("refused: came after a bad record")
        try:
            return route(self, where, key, value, arrived, headers)
        except Exception:
            self.poisoned = True
            raise

    monkeypatch.setattr(pipeline.Ingestor, "_route", route_after_bad)
    assert "valid_unchanged" in _violations()


def test_negative_control_2b_a_comparison_that_sees_every_difference_fails_on_hashes():
    """The comparison itself matters: compared with its hashes, a skewed record's flag changes its case's
    chain, so a naive byte comparison would call a legitimate skew flag a change of the valid records."""
    skewed = Scenario(2, 50, 9, (), (Mutation("skew", 1000, -3 * 365 * 86_400),))
    original = hostile.comparable
    assert check(skewed) == {}
    try:
        hostile.comparable = lambda event: tuple(event.items())
        assert "valid_unchanged" in check(skewed)
    finally:
        hostile.comparable = original


def test_negative_control_3_a_breach_fired_before_its_deadline_is_seen(monkeypatch):
    make = sla._breach

    def early(state, kind, breach_type, tier, deadline_ms, now_ms, target, policy, calendar, summary):
        breach = make(state, kind, breach_type, tier, deadline_ms, now_ms, target, policy, calendar, summary)
        return breach if kind == sla.BreachKind.WARNING else replace(breach, fired_at=sla.from_epoch_ms(deadline_ms - 60_000))

    monkeypatch.setattr(sla, "_breach", early)
    assert "breach_not_early" in _violations()


def test_negative_control_4_output_that_depends_on_more_than_the_input_is_seen(monkeypatch):
    letter = pipeline.dead_letter
    calls = {"n": 0}

    def counting(serde, topics, where, key, value, error, failed_at):
        calls["n"] += 1
        return letter(serde, topics, where, key, value, RuntimeError(f"{error} #{calls['n']}"), failed_at)

    monkeypatch.setattr(pipeline, "dead_letter", counting)
    assert "deterministic" in _violations()


@pytest.mark.parametrize("broken", ["value", "reason", "position", "drop"])
def test_negative_control_5_a_dead_letter_without_its_bytes_reason_or_position_is_seen(monkeypatch, broken):
    letter = pipeline.dead_letter
    Position = pipeline.Position

    def bad_letter(serde, topics, where, key, value, error, failed_at):
        if broken == "value":
            value = b"" if value else b"x"
        elif broken == "reason":
            error = RuntimeError("")
            return pipeline.Output(topics.deadletter, key, serde.encode("DeadLetter", {
                "original_topic": where.topic, "original_partition": where.partition, "original_offset": where.offset,
                "original_key": key, "original_value": value, "stage": "x", "error_class": "X", "error_message": "",
                "field": None, "failed_at": failed_at}, validate=False))
        elif broken == "position":
            where = Position(where.topic, where.partition, where.offset + 10_000)
        output = letter(serde, topics, where, key, value, error, failed_at)
        if broken == "drop" and where.topic == topics.inbox:
            return pipeline.Output("elsewhere", key, b"")
        return output

    monkeypatch.setattr(pipeline, "dead_letter", bad_letter)
    assert "dead_lettered" in _violations()


def test_negative_control_6_a_tampered_case_event_breaks_its_chain(monkeypatch):
    to_record = pipeline.to_record

    def tamper(obj):
        record = to_record(obj)
        if isinstance(obj, pipeline.CaseEvent) and obj.seq == 2:
            record["note"] = "tampered"
        return record

    monkeypatch.setattr(pipeline, "to_record", tamper)
    assert "chains_verify" in _violations()


# -- bugs found (not fixed here: streams/domain/case.py and schemas/ belong to other engineers now) ----------


def test_bug_a_rating_by_a_handling_unit_is_refused():
    """Seed 3, 50 incidents: a case resolved by DEP-TRAFFIC after escalations; before the resident's rating,
    DEP-TRAFFIC (a unit that handled the case, no longer its assignee: the case went up to SUP) sends a
    rating of 5. Expected: refused (dead-lettered, not_reporter/self_rating), the resident's rating applies.
    Actual: `rated` (actor DEP-TRAFFIC) and `closed` are recorded; the resident's rating is refused."""
    scenario = Scenario(seed=3, incidents=50, order_seed=11237, delays=(), mutations=(Mutation(kind="rating_by_handler", target=197, param=8),))
    assert "valid_unchanged" not in check(scenario)


def test_bug_a_skew_flag_before_a_backdated_flag_is_compared_without_its_separator():
    """Seed 3, 50 incidents: an accept whose device clock ran 301 s ahead is decided at its arrival and flagged,
    then backdated to the case's last event: its note reads '[clock_skew:…] [backdated:…]'. Without the skew flag it
    must equal the clean run's '[backdated:…]'. Found by the 100,000-input run: the comparison kept the space
    that joined the two flags, and reported the valid record as changed (the checker's bug, not the pipeline's)."""
    scenario = Scenario(seed=3, incidents=50, order_seed=11237, delays=(20, 25, 40, 12, 28, 17, 39, 10, 0, 33, 20),
                        mutations=(Mutation(kind="skew", target=27956, param=301),))
    assert check(scenario) == {}


def test_bug_a_record_skewed_twice_is_compared_with_what_its_device_should_have_sent():
    """Seed 2, 120 incidents: the first record skewed twice, by 59 s (believed) and then by an hour (not): the second
    edit replaces the first, so the clean run must send the base record. Found by the 100,000-input run: the clean run
    sent the 59-second version, decided 59 s later than the hostile run's arrival time (the checker's bug)."""
    scenario = Scenario(seed=2, incidents=120, order_seed=760, delays=(),
                        mutations=(Mutation(kind="skew", target=0, param=59), Mutation(kind="skew", target=0, param=3600)))
    assert check(scenario) == {}


def test_bug_a_skew_flag_joined_to_an_extensions_note_is_compared_without_its_separator():
    """Seed 1, 50 incidents: an extension request from a device 30 days ahead: the granted event's note reads
    'requested 72 h; [clock_skew:…]', which without the flag is the clean run's 'requested 72 h' (the checker's bug)."""
    scenario = Scenario(seed=1, incidents=50, order_seed=267178607, delays=(), mutations=(Mutation(kind="skew", target=508056, param=2592000),))
    assert check(scenario) == {}


def test_bug_a_truncated_record_is_dead_lettered_deterministically():
    """Seed 1, 120 incidents: a camera detection cut to 64 bytes. Expected: the same dead letter bytes on
    every run. Actual: error_message 'CameraDetection body does not decode: EOFError: cannot read double from
    <_io.BytesIO object at 0x7f…>' differs from run to run (and so the dead-letter record and headers)."""
    scenario = Scenario(seed=1, incidents=120, order_seed=82, delays=(), mutations=(Mutation(kind="truncated", target=66827, param=142955),))
    assert "deterministic" not in check(scenario)
