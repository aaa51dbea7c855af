"""`verify` on the hand-built audit store (tests/test_audit_queries.py), on ClickHouse 18.16 and chdb:
clean data passes; a lost row, a redelivered row, an altered row, a lost tail and a conflicting copy are each caught."""
from __future__ import annotations

from test_audit_queries import load

from sinks.audit import Problem, verify


def at(rows, partition, offset):
    return next(r for r in rows if r["kafka_partition"] == partition and r["kafka_offset"] == offset)


def test_clean_store_passes(engine, database):
    load(engine, database)

    assert verify(engine, database) == []
    assert verify(engine, database, events_per_pass=7) == []  # 60 events checked in 9 hash buckets


def test_a_lost_row_is_an_offset_gap_and_a_chain_gap(engine, database):
    def lose_c4_acceptance(tables):  # events p1 offset 12 = C4:3
        tables["case_events"].remove(at(tables["case_events"], 1, 12))

    load(engine, database, lose_c4_acceptance)

    assert verify(engine, database) == [
        Problem("offsets", "case_events whistle.cases.events[1]", "1 offset(s) missing between 0 and 27: 12"),
        Problem("chain", "case C4", "C4:4: seq 4 follows seq 2 (missing or reordered events)"),
    ]


def test_a_redelivered_row_is_a_duplicate(engine, database):
    def redeliver(tables):  # the sink inserts events p0 offset 9 (C3:2) again in a later batch, and breaches p1 offset 4 (B6)
        for table, partition, offset in (("case_events", 0, 9), ("breaches", 1, 4)):
            tables[table].append({**at(tables[table], partition, offset), "later_batch": True})

    load(engine, database, redeliver)

    assert verify(engine, database) == [
        Problem("offsets", "case_events whistle.cases.events[0]", "1 duplicate row(s): 9 x2"),
        Problem("offsets", "breaches whistle.sla.breaches[1]", "1 duplicate row(s): 4 x2"),
    ]


def test_an_altered_row_breaks_its_hash(engine, database):
    def improve_rating(tables):  # C3:9 rated 4 -> 5, hash left as it was
        at(tables["case_events"], 0, 16)["rating"] = 5

    load(engine, database, improve_rating)

    assert verify(engine, database) == [Problem("chain", "case C3", "C3:9: hash does not match the event's content (altered)")]
    assert verify(engine, database, events_per_pass=7) == [Problem("chain", "case C3", "C3:9: hash does not match the event's content (altered)")]


def test_a_lost_tail_is_caught_by_the_sink_batches(engine, database):
    def lose_tail(tables):  # events p1 offsets 26-27 (C10:3, C10:4): no gap inside the table, and C10's chain looks whole
        for offset in (26, 27):
            tables["case_events"].remove(at(tables["case_events"], 1, offset))

    load(engine, database, lose_tail)

    assert verify(engine, database) == [
        Problem("batches", "case_events whistle.cases.events[1]", "offsets 26-27 recorded by the sink are missing"),
    ]


def test_a_conflicting_copy_of_an_event_is_caught(engine, database):
    def forge_copy(tables):  # a second C2:8 (events p1 offset 7) at offset 28 with another note and the original hash
        original = at(tables["case_events"], 1, 7)
        tables["case_events"].append({**original, "note": "resolved on time", "kafka_offset": 28})

    load(engine, database, forge_copy)

    assert verify(engine, database) == [
        Problem("chain", "case C2", "C2:8: copy at whistle.cases.events[1]@28 differs from the first copy; "
                                    "its hash does not match its content (altered)"),
    ]


def test_a_reemitted_copy_merged_into_its_twin_is_accounted_by_the_ledger(engine, database):
    def reemit(tables):  # after a crash the worker published C3:2 (events p0 offset 9) again, at the partition's next offset
        rows = tables["case_events"]
        next_offset = max(r["kafka_offset"] for r in rows if r["kafka_partition"] == 0) + 1
        rows.append({**at(rows, 0, 9), "kafka_offset": next_offset, "later_batch": True})

    load(engine, database, reemit)
    engine.execute(f"SYSTEM START MERGES {database}.case_events")
    engine.execute(f"OPTIMIZE TABLE {database}.case_events FINAL")

    assert engine.execute(f"SELECT count() FROM {database}.case_events WHERE event_id = 'C3:2'") == [(1,)]
    assert verify(engine, database) == []


def test_a_stored_row_that_is_gone_is_caught_by_the_ledger(engine, database):
    load(engine, database)
    engine.insert(f"{database}.offset_ledger", ("table_name", "kafka_topic", "kafka_partition", "kafka_offset", "record_key", "ingest_ms"),
                  [("breaches", "whistle.sla.breaches", 1, 5, "B-vanished", 0)])

    assert Problem("rows", "breaches whistle.sla.breaches[1]", "offset 5 (B-vanished) was stored, its row is gone") in verify(engine, database)
