"""The auditors' queries on a small hand-built audit store, on ClickHouse 18.16 and chdb, with hand-computed figures.

The data set (times are Beijing time, March 2025; ranking month '2025-03'):

case  part street dept  story                                                                        policy
C1    p0   S1     D1    open 03-03 09:00, accept +600 s, resolve +4 h, rated 5 (event copied at a     sla-v1
                        second offset by a producer retry), closed
C2    p1   S1     D1    open 03-05 10:00, returned by grid 1 to grid 2, accept_overdue -> community,  sla-v1
                        accepted 12:30 (+9000 s), resolve_overdue -> street, accepted, resolved
                        03-06 10:00 (+24 h), rated 3, closed
C3    p0   S1     D2    open 03-10 08:00, accept +1200 s, resolve 12:00, rated 1, unsatisfied_rating  sla-v1
                        -> community, accepted, resolved 03-11 15:00 (+31 h), rated 4, closed
C4    p1   S1     D1    open 03-20 14:00, accept +300 s, resolve_overdue -> community (breach copied  sla-v1
                        at a second offset), accepted by community, open
C5    p0   S2     D1    open 03-12 09:00, accept warning, accept_overdue -> community, then -> street sla-v1
C6    p1   S2     D2    open 03-15 09:00, accept +1800 s, resolve 11:00, reopened, reopened -> community  sla-v1
C7    p0   -      D2    dispatch desk case: open 03-18 10:00, accept +900 s, resolve +2 h             sla-v1
C8    p1   S3     D1    open 03-31 23:30 (still March in Beijing), accept +2400 s                     sla-v2
C9    p0   S3     D1    open 04-01 00:30 Beijing (March in UTC): not in the March ranking             sla-v1
C10   p1   S4     -     open 03-25 09:00, accept +600 s, resolve +1 h                                 sla-v1
C11   p0   S5     -     same figures as C10: ties with it                                             sla-v1
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from datetime import datetime
from decimal import Decimal as D
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from sinks import audit
from sinks.anchor import GENESIS as DIGEST_START
from sinks.anchor import Anchor, advance, anchor_findings
from sinks.clickhouse import render_identifiers, strip_comment_lines
from sinks.migrator import migrate
from streams.domain.sla import load_policies
from whistle.ground.errors import ConfigError, ValidationError

BEIJING = ZoneInfo("Asia/Shanghai")
EVENTS_TOPIC = "whistle.cases.events"
BREACHES_TOPIC = "whistle.sla.breaches"
INGEST_MS = 1_743_552_000_000
GENESIS = "0" * 64


def ms(local: str) -> int:
    """Epoch ms of a Beijing wall-clock time 'YYYY-MM-DD hh:mm'."""
    return int(datetime.fromisoformat(local).replace(tzinfo=BEIJING).timestamp()) * 1000


def beijing(local: str) -> datetime:
    return datetime.fromisoformat(local).replace(tzinfo=BEIJING)


def place(street, department, grid, community, district="DIS1", category="drain_blocked", urgency="normal"):
    return {"district_id": district, "street_id": street, "community_id": community, "grid_id": grid,
            "department_id": department, "category": category, "urgency": urgency}


def step(kind, at, **fields):
    return kind, at, fields


def case(case_id, where, first_unit, steps, policy="sla-v1"):
    """The case's event records, hash-chained by the contract (independently of streams.domain.case):
    hash = sha256(bytes.fromhex(prev_hash) + orjson.dumps(record without hash, OPT_SORT_KEYS)), `at` in epoch ms."""
    prev_hash, assignee, events = GENESIS, first_unit, []
    for seq, (kind, at, fields) in enumerate(steps, start=1):
        assignee = fields.pop("assignee", assignee)
        record = {"event_id": f"{case_id}:{seq}", "case_id": case_id, "seq": seq, "kind": kind, "at": ms(at),
                  "cause_id": fields.pop("cause", f"act-{case_id}-{seq}"), "actor_unit_id": None,
                  "assignee_unit_id": assignee[0], "assignee_tier": assignee[1], **where, "source": None, "report_id": None,
                  "reason": None, "note": None, "rating": None, "policy_version": policy, "prev_hash": prev_hash}
        record.update({"actor_unit_id" if key == "actor" else key: value for key, value in fields.items()})
        prev_hash = hashlib.sha256(bytes.fromhex(prev_hash) + orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()
        events.append({**record, "hash": prev_hash})
    return events


S1 = place("S1", "D1", "G-S1-1", "C-S1-1")
GRID_S1_1, GRID_S1_2, COMMUNITY_S1, STREET_S1 = ("G-S1-1", "grid"), ("G-S1-2", "grid"), ("C-S1-1", "community"), ("ST-S1", "street")

C1 = case("C1", S1, GRID_S1_1, [
    step("opened", "2025-03-03 09:00", cause="hotline:T1", source="hotline", report_id="hotline:T1"),
    step("dispatched", "2025-03-03 09:00", cause="hotline:T1"),
    step("report_merged", "2025-03-03 09:05", cause="camera:K1", source="camera", report_id="camera:K1"),
    step("accepted", "2025-03-03 09:10", actor="G-S1-1"),
    step("resolved", "2025-03-03 13:00", actor="G-S1-1", note="drain cleared"),
    step("rated", "2025-03-04 09:00", actor="reporter", rating=5),
    step("closed", "2025-03-04 09:00", reason="rated"),
])
C2 = case("C2", S1, GRID_S1_1, [
    step("opened", "2025-03-05 10:00", cause="hotline:T2", source="hotline", report_id="hotline:T2"),
    step("dispatched", "2025-03-05 10:00", cause="hotline:T2"),
    step("transferred", "2025-03-05 10:20", actor="G-S1-1", assignee=GRID_S1_2, reason="outside our grid"),
    step("escalated", "2025-03-05 12:00", cause="B2a", assignee=COMMUNITY_S1, reason="accept_overdue"),
    step("accepted", "2025-03-05 12:30", actor="C-S1-1"),
    step("escalated", "2025-03-06 08:30", cause="B2b", assignee=STREET_S1, reason="resolve_overdue"),
    step("accepted", "2025-03-06 09:00", actor="ST-S1"),
    step("resolved", "2025-03-06 10:00", actor="ST-S1"),
    step("rated", "2025-03-06 10:30", actor="reporter", rating=3),
    step("closed", "2025-03-06 10:30", reason="rated"),
])
C3 = case("C3", place("S1", "D2", "G-S1-2", "C-S1-1"), GRID_S1_2, [
    step("opened", "2025-03-10 08:00", cause="app:R3", source="app", report_id="app:R3"),
    step("dispatched", "2025-03-10 08:00", cause="app:R3"),
    step("accepted", "2025-03-10 08:20", actor="G-S1-2"),
    step("resolved", "2025-03-10 12:00", actor="G-S1-2"),
    step("rated", "2025-03-10 13:00", actor="reporter", rating=1),
    step("escalated", "2025-03-10 13:00", cause="B3", assignee=COMMUNITY_S1, reason="unsatisfied_rating"),
    step("accepted", "2025-03-11 09:00", actor="C-S1-1"),
    step("resolved", "2025-03-11 15:00", actor="C-S1-1"),
    step("rated", "2025-03-11 16:00", actor="reporter", rating=4),
    step("closed", "2025-03-11 16:00", reason="rated"),
])
C4 = case("C4", S1, GRID_S1_1, [
    step("opened", "2025-03-20 14:00", cause="app:R4", source="app", report_id="app:R4"),
    step("dispatched", "2025-03-20 14:00", cause="app:R4"),
    step("accepted", "2025-03-20 14:05", actor="G-S1-1"),
    step("escalated", "2025-03-25 14:05", cause="B4", assignee=COMMUNITY_S1, reason="resolve_overdue"),
    step("accepted", "2025-03-25 15:00", actor="C-S1-1"),
])
S2 = place("S2", "D1", "G-S2-1", "C-S2-1")
C5 = case("C5", S2, ("G-S2-1", "grid"), [
    step("opened", "2025-03-12 09:00", cause="hotline:T5", source="hotline", report_id="hotline:T5"),
    step("dispatched", "2025-03-12 09:00", cause="hotline:T5"),
    step("escalated", "2025-03-12 11:00", cause="B5a", assignee=("C-S2-1", "community"), reason="accept_overdue"),
    step("escalated", "2025-03-12 13:00", cause="B5b", assignee=("ST-S2", "street"), reason="accept_overdue"),
])
C6 = case("C6", place("S2", "D2", "G-S2-2", "C-S2-1"), ("G-S2-2", "grid"), [
    step("opened", "2025-03-15 09:00", cause="app:R6", source="app", report_id="app:R6"),
    step("dispatched", "2025-03-15 09:00", cause="app:R6"),
    step("accepted", "2025-03-15 09:30", actor="G-S2-2"),
    step("resolved", "2025-03-15 11:00", actor="G-S2-2"),
    step("reopened", "2025-03-16 09:00", actor="reporter", reason="still blocked"),
    step("escalated", "2025-03-16 09:00", cause="B6", assignee=("C-S2-1", "community"), reason="reopened"),
])
C7 = case("C7", place(None, "D2", None, None), ("D2", "department"), [
    step("opened", "2025-03-18 10:00", cause="hotline:T7", source="hotline", report_id="hotline:T7", reason="address_unresolved"),
    step("dispatched", "2025-03-18 10:00", cause="hotline:T7"),
    step("accepted", "2025-03-18 10:15", actor="D2"),
    step("resolved", "2025-03-18 12:00", actor="D2"),
])
C8 = case("C8", place("S3", "D1", "G-S3-1", "C-S3-1"), ("G-S3-1", "grid"), [
    step("opened", "2025-03-31 23:30", cause="app:R8", source="app", report_id="app:R8"),
    step("dispatched", "2025-03-31 23:30", cause="app:R8"),
    step("accepted", "2025-04-01 00:10", actor="G-S3-1"),
], policy="sla-v2")
C9 = case("C9", place("S3", "D1", "G-S3-1", "C-S3-1"), ("G-S3-1", "grid"), [
    step("opened", "2025-04-01 00:30", cause="app:R9", source="app", report_id="app:R9"),
    step("dispatched", "2025-04-01 00:30", cause="app:R9"),
])
C10 = case("C10", place("S4", None, "G-S4-1", "C-S4-1"), ("G-S4-1", "grid"), [
    step("opened", "2025-03-25 09:00", cause="camera:K10", source="camera", report_id="camera:K10"),
    step("dispatched", "2025-03-25 09:00", cause="camera:K10"),
    step("accepted", "2025-03-25 09:10", actor="G-S4-1"),
    step("resolved", "2025-03-25 10:00", actor="G-S4-1"),
])
C11 = case("C11", place("S5", None, "G-S5-1", "C-S5-1"), ("G-S5-1", "grid"), [
    step("opened", "2025-03-25 09:00", cause="camera:K11", source="camera", report_id="camera:K11"),
    step("dispatched", "2025-03-25 09:00", cause="camera:K11"),
    step("accepted", "2025-03-25 09:10", actor="G-S5-1"),
    step("resolved", "2025-03-25 10:00", actor="G-S5-1"),
])


def breach(breach_id, case_events, kind, breach_type, tier, deadline, fired, responsible, target):
    first = case_events[0]
    return {"breach_id": breach_id, "case_id": first["case_id"], "kind": kind, "breach_type": breach_type, "tier": tier,
            "deadline_ms": ms(deadline), "fired_at_ms": ms(fired), "overdue_ms": ms(fired) - ms(deadline),
            "responsible_unit_id": responsible, "escalation_target_unit_id": target, "policy_version": first["policy_version"],
            "category": first["category"], "urgency": first["urgency"], "street_id": first["street_id"],
            "department_id": first["department_id"], "summary": f"{first['case_id']} {breach_type} by {responsible}"}


B2a = breach("B2a", C2, "breach", "accept_overdue", "community", "2025-03-05 12:00", "2025-03-05 12:00", "G-S1-2", "C-S1-1")
B2b = breach("B2b", C2, "breach", "resolve_overdue", "street", "2025-03-06 08:30", "2025-03-06 08:30", "C-S1-1", "ST-S1")
B3 = breach("B3", C3, "breach", "unsatisfied_rating", "community", "2025-03-10 13:00", "2025-03-10 13:00", "G-S1-2", "C-S1-1")
B4 = breach("B4", C4, "breach", "resolve_overdue", "community", "2025-03-25 14:05", "2025-03-25 14:05", "G-S1-1", "C-S1-1")
W5 = breach("W5", C5, "warning", "accept_overdue", "grid", "2025-03-12 11:00", "2025-03-12 10:30", "G-S2-1", None)
B5a = breach("B5a", C5, "breach", "accept_overdue", "community", "2025-03-12 11:00", "2025-03-12 11:00", "G-S2-1", "C-S2-1")
B5b = breach("B5b", C5, "breach", "accept_overdue", "street", "2025-03-12 13:00", "2025-03-12 13:00", "C-S2-1", "ST-S2")
B6 = breach("B6", C6, "breach", "reopened", "community", "2025-03-16 09:00", "2025-03-16 09:00", "G-S2-2", "C-S2-1")

RETRIED = "retried"  # a producer retry: the same record again at the next offset, inserted by a later sink batch


def kafka_log(topic, partitions):
    """Rows with their Kafka position, offsets counted per partition in log order."""
    rows = []
    for partition, records in enumerate(partitions):
        for offset, record in enumerate(records):
            retried = record is RETRIED
            record = records[offset - 1] if retried else record
            rows.append({**record, "kafka_topic": topic, "kafka_partition": partition, "kafka_offset": offset,
                         "ingest_ms": INGEST_MS, "later_batch": retried})
    return rows


def dataset():
    """table -> rows. Offsets: events p0 C1 0-7 (C1:6 copied at 6), C3 8-17, C5 18-21, C7 22-25, C9 26-27, C11 28-31;
    p1 C2 0-9, C4 10-14, C6 15-20, C8 21-23, C10 24-27. Breaches p0 B3 0, W5 1, B5a 2, B5b 3; p1 B2a 0, B2b 1, B4 2-3, B6 4."""
    p0 = [*C1[:6], RETRIED, C1[6], *C3, *C5, *C7, *C9, *C11]
    p1 = [*C2, *C4, *C6, *C8, *C10]
    raw = [{"source": "hotline", "record_type": "HotlineTicket", "event_id": ticket, "event_ms": ms(at), "kafka_key": ticket,
            "payload": orjson.dumps({"ticket_id": ticket, "caller_hash": "hmac:ab12"}).decode(), "raw_sha256": "00" * 32,
            "raw_size": 120, "decode_error": "", "kafka_timestamp_ms": ms(at)}
           for ticket, at in (("T1", "2025-03-03 08:59"), ("T2", "2025-03-05 09:59"), ("T5", "2025-03-12 08:59"))]
    dead = [{"original_topic": "whistle.raw.app", "original_partition": 2, "original_offset": 41, "original_key": "R-bad",
             "original_value_sha256": "ff" * 32, "original_value_size": 7, "stage": "decode", "error_class": "DecodeError",
             "error_message": "not an Avro single-object record", "field": None, "failed_ms": ms("2025-03-07 10:00")}]
    return {
        "case_events": kafka_log(EVENTS_TOPIC, [p0, p1]),
        "breaches": kafka_log(BREACHES_TOPIC, [[B3, W5, B5a, B5b], [B2a, B2b, B4, RETRIED, B6]]),
        "raw_events": kafka_log("whistle.raw.hotline", [raw]),
        "dead_letters": kafka_log("whistle.deadletter", [dead]),
    }


def event_row(record):
    """A case event record as its case_events row (the contract's `at` is the column at_ms)."""
    return {("at_ms" if key == "at" else key): value for key, value in record.items()}


def load(engine, database, tamper=None):
    """Migrate `database` and insert the data set the way the sink does: batches, a later batch for retried
    records, sink_batches recording each batch's offsets. `tamper(tables)` edits the rows after the sink
    recorded its batches (a fault between the log and the store). Merges are stopped so copies stay visible."""
    migrate(engine, database)
    tables = dataset()
    tables["case_events"] = [event_row(r) for r in tables["case_events"]]
    batches = []
    for table, rows in tables.items():
        engine.execute(f"SYSTEM STOP MERGES {database}.{table}")
        for later in (False, True):
            for partition in sorted({r["kafka_partition"] for r in rows if r["later_batch"] is later}):
                offsets = [r["kafka_offset"] for r in rows if r["later_batch"] is later and r["kafka_partition"] == partition]
                batches.append((table, rows[0]["kafka_topic"], partition, min(offsets), max(offsets), len(offsets), "sink-test", INGEST_MS))
    if tamper:
        tamper(tables)
    for table, rows in tables.items():
        for later in (False, True):
            batch = [r for r in rows if r["later_batch"] is later]
            if batch:
                columns = [c for c in batch[0] if c != "later_batch"]
                engine.insert(f"{database}.{table}", columns, [tuple(r[c] for c in columns) for r in batch])
    for table, key in (("case_events", "event_id"), ("breaches", "breach_id")):  # the sink's offset ledger (migration 004)
        engine.insert(f"{database}.offset_ledger", ("table_name", "kafka_topic", "kafka_partition", "kafka_offset", "record_key", "ingest_ms"),
                      [(table, r["kafka_topic"], r["kafka_partition"], r["kafka_offset"], r[key], INGEST_MS) for r in tables[table]])
    engine.insert(f"{database}.sink_batches", ("table_name", "kafka_topic", "kafka_partition", "min_offset", "max_offset", "rows",
                                               "sink_id", "inserted_ms"), batches)


@pytest.fixture
def store(engine, database):
    load(engine, database)
    return engine, database


RANKING_COLUMNS = ("unit_id", "rank", "received", "responded", "resolved", "resolved_on_time", "rated", "satisfied",
                   "response_rate_pct", "resolution_rate_pct", "on_time_rate_pct", "satisfaction_rate_pct", "score",
                   "avg_accept_s", "p90_accept_s", "avg_resolve_h", "p90_resolve_h", "unsatisfied", "urgings", "criticisms", "referrals",
                   "breaches_community", "breaches_street", "breaches_department", "breaches_supervision",
                   "breaches_discipline", "breaches_total")
V1 = load_policies()["policy-v1"]  # unsatisfied_rating_max 2, no ranking section
RANKED = load_policies(Path(__file__).parent / "data" / "ranking")["policy-ranked"]  # v1 with weights 0.2 / 0.3 / 0.35 / 0.15, min_cases 2
UNSCORED = {"sla-v1": V1, "sla-v2": V1}  # the data set's policy versions, judged by these rules
SCORED = {"sla-v1": RANKED, "sla-v2": RANKED}


def rank(store, by, min_cases=1, policies=UNSCORED, **scope):
    return audit.ranking(*store, "2025-03", by, min_cases, policies=policies, **scope)


# March 2025 (Beijing), everything stored. Each unit on the cases it HELD (a case event names it as the holder after it),
# charged with the breaches that name it responsible (the holder when they fired) and the ratings given while it held.
# Grids: G-S1-1 held C1 (accepted +600 s, resolved +4 h, rated 5), C2 (returned to G-S1-2 at 10:20 unaccepted), C4 (accepted
#    +300 s, then B4 resolve_overdue -> community): responded C1 C4 = 2/3 = 66.67; resolved C1 = 33.33, on time too; rated
#    C1 5 -> 100.00; accept (600 + 300)/2 = 450, p90 2nd of 2 = 600; resolve 4 h; breaches B4 -> 1 community.
#  G-S1-2 held C2 from 10:20 (B2a accept_overdue -> community) and C3 (accepted +1200 s, resolved, rated 1, B3
#    unsatisfied_rating -> community; the community resolved it last): responded C3 = 50.00; resolved none; rated C3 1,
#    unsatisfied; accept 1200 s; breaches B2a, B3 -> 2 community.
#  G-S2-1 held C5 (B5a accept_overdue): nothing in time; G-S2-2 held C6 (accepted +1800 s, resolved, reopened -> community:
#    its resolution undone; B6); G-S3-1 held C8 (accepted +2400 s); G-S4-1, G-S5-1 held C10, C11 (600 s, 1 h): tie.
# Rank keys (resolution, satisfaction, response, on time, breaches): G-S4-1 = G-S5-1 1; G-S1-1 (33.33) 3; then resolution 0:
#    G-S1-2 has a rating (0.00) so ranks above the unrated; G-S3-1 and G-S2-2 (response 100, breaches 0 before 1); G-S2-1.
# Communities: C-S1-1 held C2 from 12:00 (accepted 12:30 = 1800 s; B2b resolve_overdue -> street), C3 from 03-10 13:00
#    (accepted 03-11 09:00 = 72000 s, resolved 15:00 = 26 h, rated 4) and C4 from 03-25 14:05 (accepted 15:00 = 3300 s):
#    responded 3/3, resolved C3 = 33.33, on time too, satisfied 1/1; accept 77100/3 = 25700, p90 3rd = 72000; 1 street.
#  C-S2-1 held C5 (B5b accept_overdue -> street) and C6: nothing; 1 street.
# Streets: ST-S1 held C2 from 03-06 08:30 (accepted 09:00 = 1800 s, resolved 10:00 = 1.5 h, rated 3 > v1's
#    unsatisfied_rating_max 2: satisfied); ST-S2 held C5 (escalated to it, never accepted).
# Departments: D2 held C7 only (the district desk's case; accepted 900 s, resolved 2 h). C1-C6 and C8 are owned by D1 or
#    D2 (department_id) but grids, communities and streets handled them: not the departments' cases.
BY_TIER = {
    "grid": [
        ("G-S4-1", 1, 1, 1, 1, 1, 0, 0, D("100.00"), D("100.00"), D("100.00"), None, None, 600, 600, D("1.00"), D("1.00"), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        ("G-S5-1", 1, 1, 1, 1, 1, 0, 0, D("100.00"), D("100.00"), D("100.00"), None, None, 600, 600, D("1.00"), D("1.00"), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        ("G-S1-1", 3, 3, 2, 1, 1, 1, 1, D("66.67"), D("33.33"), D("33.33"), D("100.00"), None, 450, 600, D("4.00"), D("4.00"), 0, 0, 0, 0, 1, 0, 0, 0, 0, 1),
        ("G-S1-2", 4, 2, 1, 0, 0, 1, 0, D("50.00"), D("0.00"), D("0.00"), D("0.00"), None, 1200, 1200, None, None, 1, 0, 0, 0, 2, 0, 0, 0, 0, 2),
        ("G-S3-1", 5, 1, 1, 0, 0, 0, 0, D("100.00"), D("0.00"), D("0.00"), None, None, 2400, 2400, None, None, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        ("G-S2-2", 6, 1, 1, 0, 0, 0, 0, D("100.00"), D("0.00"), D("0.00"), None, None, 1800, 1800, None, None, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1),
        ("G-S2-1", 7, 1, 0, 0, 0, 0, 0, D("0.00"), D("0.00"), D("0.00"), None, None, None, None, None, None, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1),
    ],
    "community": [
        ("C-S1-1", 1, 3, 3, 1, 1, 1, 1, D("100.00"), D("33.33"), D("33.33"), D("100.00"), None, 25700, 72000, D("26.00"), D("26.00"), 0, 0, 0, 0, 0, 1, 0, 0, 0, 1),
        ("C-S2-1", 2, 2, 0, 0, 0, 0, 0, D("0.00"), D("0.00"), D("0.00"), None, None, None, None, None, None, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1),
    ],
    "street": [
        ("ST-S1", 1, 1, 1, 1, 1, 1, 1, D("100.00"), D("100.00"), D("100.00"), D("100.00"), None, 1800, 1800, D("1.50"), D("1.50"), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        ("ST-S2", 2, 1, 0, 0, 0, 0, 0, D("0.00"), D("0.00"), D("0.00"), None, None, None, None, None, None, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    ],
    "department": [
        ("D2", 1, 1, 1, 1, 1, 0, 0, D("100.00"), D("100.00"), D("100.00"), None, None, 900, 900, D("2.00"), D("2.00"), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    ],
}


@pytest.mark.parametrize("by", list(BY_TIER))
def test_each_unit_is_ranked_on_the_cases_it_held_and_charged_with_its_own_failures(store, by):
    result = rank(store, by)

    assert result.columns == RANKING_COLUMNS
    assert list(result.rows) == BY_TIER[by]


def test_a_unit_is_charged_with_what_happened_while_it_held_the_case(store):
    """C2 went grid G-S1-1 -> (returned) grid G-S1-2 -> (B2a) community -> (B2b) street: each holder is charged with its
    own breach only, and the case counts once for each. C3's unsatisfied rating is the grid's, its good rating the
    community's. The department-owned C1-C6 count for no department."""
    rows = {by: {r["unit_id"]: r for r in rank(store, by).as_dicts()} for by in BY_TIER}
    held_c2 = [rows["grid"]["G-S1-1"], rows["grid"]["G-S1-2"], rows["community"]["C-S1-1"], rows["street"]["ST-S1"]]
    assert [r["received"] > 0 for r in held_c2] == [True] * 4
    assert rows["grid"]["G-S1-2"]["breaches_community"] == 2 and rows["community"]["C-S1-1"]["breaches_street"] == 1
    assert (rows["grid"]["G-S1-2"]["unsatisfied"], rows["community"]["C-S1-1"]["satisfied"]) == (1, 1)
    assert set(rows["department"]) == {"D2"} and rows["department"]["D2"]["received"] == 1


def test_units_below_min_cases_are_listed_unranked(store):
    # Only G-S1-1 (3 cases) and G-S1-2 (2) reach 2 cases; the other grids follow unranked, by unit id.
    result = rank(store, "grid", min_cases=2)

    assert [(row[0], row[1]) for row in result.rows] == [("G-S1-1", 1), ("G-S1-2", 2), ("G-S2-1", None), ("G-S2-2", None),
                                                         ("G-S3-1", None), ("G-S4-1", None), ("G-S5-1", None)]
    by_unit = {row[0]: row[2:] for row in BY_TIER["grid"]}
    assert all(row[2:] == by_unit[row[0]] for row in result.rows)


def test_ranking_as_of_ignores_what_happened_later(store):
    # As of 03-06 09:30 only C1 and C2 were open. Grids: G-S1-1 held C1 (accepted +600 s, resolved +4 h, rated 5) and C2
    # (returned); G-S1-2 held C2 (B2a). Community C-S1-1: C2 accepted +1800 s, B2b fired 08:30. Street ST-S1: accepted
    # at 09:00 (+1800 s), not resolved yet.
    as_of = beijing("2025-03-06 09:30")
    assert list(rank(store, "grid", as_of=as_of).rows) == [
        ("G-S1-1", 1, 2, 1, 1, 1, 1, 1, D("50.00"), D("50.00"), D("50.00"), D("100.00"), None, 600, 600, D("4.00"), D("4.00"), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        ("G-S1-2", 2, 1, 0, 0, 0, 0, 0, D("0.00"), D("0.00"), D("0.00"), None, None, None, None, None, None, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1),
    ]
    assert list(rank(store, "street", as_of=as_of).rows) == [
        ("ST-S1", 1, 1, 1, 0, 0, 0, 0, D("100.00"), D("0.00"), D("0.00"), None, None, 1800, 1800, None, None, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    ]


# Oversight records (督办 urging, 通报批评 criticism, 问责 referral) and a rating at the top of a chain, inserted as the
# stream code will store them: C12 (S1, opened 03-26 09:00, G-S1-1) accepted 09:10, resolved 10:00, rated 2 at 11:00
# with no breach (nobody above to escalate to); urged and criticized while G-S1-1 held C4 and C12, a referral charged
# to C-S1-1 for C4 on 03-31. Its case events urged / criticized / referred keep the holder.
C12 = case("C12", S1, GRID_S1_1, [
    step("opened", "2025-03-26 09:00", cause="app:R12", source="app", report_id="app:R12"),
    step("dispatched", "2025-03-26 09:00", cause="app:R12"),
    step("accepted", "2025-03-26 09:10", actor="G-S1-1"),
    step("resolved", "2025-03-26 10:00", actor="G-S1-1"),
    step("rated", "2025-03-26 11:00", actor="reporter", rating=2),
    step("urged", "2025-03-27 09:00", cause="U12"),
])
U4 = breach("U4", C4, "urging", "resolve_overdue", "community", "2025-03-25 14:05", "2025-03-25 09:00", "G-S1-1", None)
K4 = breach("K4", C4, "criticism", "resolve_overdue", "community", "2025-03-25 14:05", "2025-03-25 10:00", "G-S1-1", None)
U12 = breach("U12", C12, "urging", "resolve_overdue", "grid", "2025-03-27 09:00", "2025-03-27 09:00", "G-S1-1", None)
R4 = breach("R4", C4, "referral", "final_overdue", "discipline", "2025-03-31 15:00", "2025-03-31 15:00", "C-S1-1", "DIS")
LATER_EVENTS = C12
LATER_BREACHES = [U4, K4, U12, R4]


def insert_later(engine, database, events=LATER_EVENTS, breaches=LATER_BREACHES):
    """Rows that reach the store after the first ranking (on partition 2, after everything else)."""
    rows = {"case_events": [event_row(r) for r in kafka_log(EVENTS_TOPIC, [[], [], events])],
            "breaches": kafka_log(BREACHES_TOPIC, [[], [], breaches])}
    for table, records in rows.items():
        columns = [c for c in records[0] if c != "later_batch"]
        engine.insert(f"{database}.{table}", columns, [tuple(r[c] for c in columns) for r in records])


def test_urgings_criticisms_and_referrals_are_counted_for_the_unit_they_name(store):
    insert_later(*store)
    grids = {r["unit_id"]: r for r in rank(store, "grid").as_dicts()}
    communities = {r["unit_id"]: r for r in rank(store, "community").as_dicts()}

    # G-S1-1: U4 and U12 urgings, K4 criticism; C-S1-1: R4 referral (also a breach escalating to discipline).
    assert (grids["G-S1-1"]["urgings"], grids["G-S1-1"]["criticisms"], grids["G-S1-1"]["referrals"]) == (2, 1, 0)
    assert (communities["C-S1-1"]["urgings"], communities["C-S1-1"]["criticisms"], communities["C-S1-1"]["referrals"]) == (0, 0, 1)
    assert (communities["C-S1-1"]["breaches_discipline"], communities["C-S1-1"]["breaches_total"]) == (1, 2)
    assert all(r["urgings"] == r["criticisms"] == r["referrals"] == 0 for u, r in grids.items() if u != "G-S1-1")
    # C12's rating 2 has no breach: unsatisfied by v1's unsatisfied_rating_max 2, so G-S1-1 has 1 satisfied (C1) of 2 rated;
    # C12: urged after its resolution, so sent back to G-S1-1 to handle again (_case_is_resolved): not resolved, and the
    # urging is a resolve_overdue charged to it. 4 cases, 1 resolved (C1), 1 on time.
    g = grids["G-S1-1"]
    assert (g["received"], g["resolved"], g["resolved_on_time"], g["rated"], g["satisfied"], g["unsatisfied"]) == (4, 1, 1, 2, 1, 1)
    lenient = {v: dataclasses.replace(V1, rules=dataclasses.replace(V1.rules, unsatisfied_rating_max=1)) for v in UNSCORED}
    assert {r["unit_id"]: r["satisfied"] for r in rank(store, "grid", policies=lenient).as_dicts()}["G-S1-1"] == 2


def test_a_ranking_as_of_a_time_is_the_same_after_later_events_arrive(store):
    before, after = beijing("2025-03-25 00:00"), beijing("2025-04-01 00:00")  # the later rows all fall between the two
    first = {by: rank(store, by, as_of=before) for by in BY_TIER}
    first_provenance = audit.ranking_provenance(*store, "2025-03", "grid", as_of=before, policies=UNSCORED)
    control = {by: rank(store, by, as_of=after) for by in BY_TIER}
    insert_later(*store)

    assert {by: rank(store, by, as_of=before) for by in BY_TIER} == first
    assert audit.ranking_provenance(*store, "2025-03", "grid", as_of=before, policies=UNSCORED) == first_provenance
    assert first_provenance.rows[0][-2:] == ("2025-03-25T00:00:00.000+08:00", "")
    # Negative control: as of a later time the same rows are seen (urgings, criticism, referral, C12).
    later = {by: rank(store, by, as_of=after) for by in BY_TIER}
    assert later["grid"] != control["grid"] and later["community"] != control["community"]
    assert later["street"] == control["street"] and later["department"] == control["department"]  # nothing reached them


def score_bp(row, weights):
    """The composite score, computed here from the rates the ranking shows (basis points) and the policy's weights."""
    rates = {"response": row["response_rate_pct"], "resolution": row["resolution_rate_pct"],
             "satisfaction": row["satisfaction_rate_pct"], "on_time": row["on_time_rate_pct"]}
    present = {rate: int(value * 100) for rate, value in rates.items() if value is not None}
    weight = sum(weights[rate] for rate in present)
    if weight == 0:
        return None
    total = sum(weights[rate] * present[rate] for rate in present)
    return (2 * total + weight) // (2 * weight)  # half up


def test_the_composite_score_weighs_the_rates_as_the_policy_says(store):
    result = rank(store, "grid", min_cases=None, policies=SCORED)  # min_cases from the policy: 2
    rows = result.as_dicts()
    weights = dict(RANKED.ranking.weights_bp)

    assert all(row["score"] == (None if score_bp(row, weights) is None else D(score_bp(row, weights)) / 100) for row in rows)
    # By hand, G-S1-1: response 6667, resolution 3333, on time 3333, satisfaction 10000 bp:
    # (2000*6667 + 3000*3333 + 1500*3333 + 3500*10000) / 10000 = 6333.25 -> 63.33.
    # G-S1-2: 5000, 0, 0, 0 -> 1000 -> 10.00. G-S4-1 (nothing rated): (2000+3000+1500)*10000 / 6500 -> 100.00.
    scores = {row["unit_id"]: row["score"] for row in rows}
    assert (scores["G-S1-1"], scores["G-S1-2"], scores["G-S4-1"], scores["G-S2-1"]) == (D("63.33"), D("10.00"), D("100.00"), D("0.00"))
    # Ranked by score among units with at least 2 cases (the policy's rule), the rest listed unranked.
    assert [(row["unit_id"], row["rank"]) for row in rows] == [("G-S1-1", 1), ("G-S1-2", 2), ("G-S2-1", None), ("G-S2-2", None),
                                                              ("G-S3-1", None), ("G-S4-1", None), ("G-S5-1", None)]
    # Rank follows the score: with every unit ranked, G-S2-2 (response 100.00 alone, 20000000 / 6500 -> 30.77) comes above
    # G-S1-2 (10.00),
    # which the unscored order puts above it (a rating); the unscored ranking has no score.
    order = [row["unit_id"] for row in rank(store, "grid", policies=SCORED).as_dicts()]
    assert order.index("G-S2-2") < order.index("G-S1-2")
    assert [row[:2] for row in rank(store, "grid").rows] == [row[:2] for row in BY_TIER["grid"]]
    provenance = audit.ranking_provenance(*store, "2025-03", "grid", policies=SCORED)
    assert {row[-2:] for row in provenance.rows} == {(None, "policy-ranked")}


def test_ranking_rules_name_the_registered_content_of_each_policy_and_calendar_edition(engine, database):
    """The month's cases were judged by sla-v1 (registered) and sla-v2 (not: listed with no hash); one breach names the
    calendar edition that counted it. Breaches outside the selection or warnings add nothing."""
    def tamper(tables):
        for row in tables["breaches"]:
            row["calendar_sha256"] = {"B2a": "c" * 64, "W5": "d" * 64}.get(row["breach_id"])
    load(engine, database, tamper)
    engine.insert(f"{database}.rule_files", ("rule_id", "kind", "name", "file", "sha256", "content", "in_force_from_ms", "registered_at_ms",
                                             "registered_by", "kafka_topic", "kafka_partition", "kafka_offset", "ingest_ms"),
                  [("policy:sla-v1", "policy", "sla-v1", "policy-sla-v1.yaml", "a" * 64, "version: sla-v1", None, INGEST_MS, "worker-1",
                    "whistle.audit.rules", 0, 0, INGEST_MS)])
    result = audit.ranking_rules(engine, database, "2025-03", "grid")

    assert result.columns == ("kind", "name", "sha256")
    assert list(result.rows) == [("calendar_edition", "", "c" * 64), ("policy", "sla-v1", "a" * 64), ("policy", "sla-v2", "")]


def test_the_anchor_entries_are_every_ledgered_offsets_event_hash_in_offset_order_and_a_tamper_is_seen(engine, database):
    """What verify folds into the anchored digest (sinks/queries/verify_anchor_entries.sql), against the data set itself;
    then the same after the stored events of one case are re-hashed (the digest's input changes: control)."""
    load(engine, database)
    expected = sorted((r["kafka_offset"], r["hash"]) for r in dataset()["case_events"] if r["kafka_partition"] == 0)
    entries = audit.run_query(engine, database, "verify_anchor_entries", {"topic": EVENTS_TOPIC, "partition": 0}).rows
    assert [(int(o), e) for o, e in entries] == expected and len(expected) > 10
    anchors = [Anchor(EVENTS_TOPIC, 0, 0, expected[-1][0], len(expected), _digest(expected), False, 0)]
    assert anchor_findings(anchors, lambda p: [(int(o), e) for o, e in entries], {0: 10**6}, None) == []

    def resealed(tables):
        for row in tables["case_events"]:
            if row["case_id"] == tables["case_events"][0]["case_id"]:
                row["hash"] = hashlib.sha256(row["hash"].encode()).hexdigest()
    tampered = f"{database}_t"
    try:
        load(engine, tampered, resealed)
        changed = audit.run_query(engine, tampered, "verify_anchor_entries", {"topic": EVENTS_TOPIC, "partition": 0}).rows
        (finding,) = anchor_findings(anchors, lambda p: [(int(o), e) for o, e in changed], {0: 10**6}, None)
        assert finding.status == audit.BROKEN
    finally:
        engine.execute(f"DROP DATABASE IF EXISTS {tampered}")


def _digest(entries):
    digest = DIGEST_START
    for offset, entry in entries:
        digest = advance(digest, offset, bytes.fromhex(entry))
    return digest.hex()


def test_ranking_provenance_names_offset_ranges_and_policies(store):
    # Cases grids held in March: C1 C2 C3 C4 C5 C6 C8 C10 C11 (C7 was the district desk's, C9 opened in April).
    # events p0: C1 0-7 (8 rows with the retried copy), C3 8-17 (10), C5 18-21 (4), C11 28-31 (4) -> 0..31, 26 rows;
    # events p1: C2 0-9 (10), C4 10-14 (5), C6 15-20 (6), C8 21-23 (3, sla-v2), C10 24-27 (4) -> 0..27, 28 rows;
    # breaches and referrals p0: B3 0, B5a 2, B5b 3 (W5 is a warning) -> 0..3, 3 rows;
    # p1: B2a 0, B2b 1, B4 2 and its copy 3, B6 4 -> 0..4, 5 rows.
    result = audit.ranking_provenance(*store, "2025-03", "grid", as_of=beijing("2025-04-02 00:00"), policies=UNSCORED)

    assert result.columns == ("source_table", "kafka_topic", "kafka_partition", "min_offset", "max_offset", "row_count", "policy_versions",
                              "as_of", "score_policy")
    as_of = "2025-04-02T00:00:00.000+08:00"
    assert list(result.rows) == [
        ("breaches", BREACHES_TOPIC, 0, 0, 3, 3, "sla-v1", as_of, ""),
        ("breaches", BREACHES_TOPIC, 1, 0, 4, 5, "sla-v1", as_of, ""),
        ("case_events", EVENTS_TOPIC, 0, 0, 31, 26, "sla-v1", as_of, ""),
        ("case_events", EVENTS_TOPIC, 1, 0, 27, 28, "sla-v1,sla-v2", as_of, ""),
    ]


# (month, by, as_of, tz): the ranking's scopes on the data set, including an empty month and one that only UTC puts C9 in.
SCOPES = [("2025-03", "grid", None, audit.LOCAL_TIMEZONE), ("2025-03", "department", None, audit.LOCAL_TIMEZONE),
          ("2025-03", "grid", beijing("2025-03-06 09:30"), audit.LOCAL_TIMEZONE),
          ("2025-03", "community", beijing("2025-03-12 12:00"), audit.LOCAL_TIMEZONE),
          ("2025-03", "grid", None, "UTC"), ("2025-04", "grid", None, audit.LOCAL_TIMEZONE),
          ("2025-02", "street", None, audit.LOCAL_TIMEZONE), ("2025-03", "street", None, audit.LOCAL_TIMEZONE)]


def test_ranking_and_provenance_select_the_same_holdings(store, tmp_path):
    # The shared holdings (sinks/queries/_month_holdings.sql) run on their own give the (case, unit) pairs H of a scope;
    # the ranking must count exactly H (cases held per unit) and the provenance must read exactly H's cases' rows
    # (offset ranges, row counts and policies recomputed here from the data set's Kafka log).
    engine, database = store
    for fragment in audit.QUERIES_DIR.glob("_*.sql"):  # the holdings and the fragments they use
        (tmp_path / fragment.name).write_text(fragment.read_text())
    (tmp_path / "month_holdings.sql").write_text("SELECT case_id, unit_id FROM ({_month_holdings}) ORDER BY case_id, unit_id")
    log = dataset()
    seen = {}
    for month, by, as_of, tz in SCOPES:
        scope = audit._ranking_scope(month, by, as_of, tz)
        sql = render_identifiers(audit.query_text("month_holdings", tmp_path), db=database)
        holdings = engine.execute(sql, scope, name="month_holdings.sql")
        cases = {case_id for case_id, _ in holdings}
        seen[(month, by, as_of, tz)] = cases

        ranking = audit.ranking(engine, database, month, by, 1, as_of=as_of, tz=tz, policies=UNSCORED)
        assert {row[0]: row[2] for row in ranking.rows} == dict(Counter(unit for _, unit in holdings))

        expected = []
        for table in ("breaches", "case_events"):
            read = [r for r in log[table] if r["case_id"] in cases and (
                r["at"] < scope["as_of_ms"] if table == "case_events"
                else r["kind"] in ("breach", "referral", "urging", "criticism") and r["fired_at_ms"] < scope["as_of_ms"])]
            for topic, partition in sorted({(r["kafka_topic"], r["kafka_partition"]) for r in read}):
                offsets = [r["kafka_offset"] for r in read if (r["kafka_topic"], r["kafka_partition"]) == (topic, partition)]
                policies = {r["policy_version"] for r in read if (r["kafka_topic"], r["kafka_partition"]) == (topic, partition)}
                expected.append((table, topic, partition, min(offsets), max(offsets), len(offsets), ",".join(sorted(policies))))
        provenance = audit.ranking_provenance(engine, database, month, by, as_of=as_of, tz=tz, policies=UNSCORED)
        assert [row[:-2] for row in provenance.rows] == expected
    # The scopes do differ (the comparison above is not vacuous): grids held all but C7 (the district desk's) and C9
    # (April); the department tier only C7; by 03-12 12:00 communities held C2, C3, C5; C9 is March only in UTC;
    # February is empty; streets held C2 and C5.
    assert seen[SCOPES[0]] == {"C1", "C2", "C3", "C4", "C5", "C6", "C8", "C10", "C11"}
    assert seen[SCOPES[1]] == {"C7"}
    assert seen[SCOPES[2]] == {"C1", "C2"}
    assert seen[SCOPES[3]] == {"C2", "C3", "C5"}
    assert seen[SCOPES[4]] == seen[SCOPES[0]] | {"C9"}
    assert seen[SCOPES[5]] == {"C9"}
    assert seen[SCOPES[6]] == set()
    assert seen[SCOPES[7]] == {"C2", "C5"}


def test_query_text_splices_fragments_once_written(tmp_path):
    (tmp_path / "_open_cases.sql").write_text("-- a fragment's header goes too\nSELECT case_id\nFROM {db}.cases\nWHERE open\n")
    (tmp_path / "count.sql").write_text("-- count: a query\nSELECT count() FROM {db}.events WHERE case_id IN ({_open_cases})\n")

    assert audit.query_text("count", tmp_path) == (
        "SELECT count() FROM {db}.events WHERE case_id IN (SELECT case_id\nFROM {db}.cases\nWHERE open)\n")

    # Negative controls: an unknown fragment is an error naming the query file; a fragment may use another but never
    # itself (directly or through another); fragments do not run as queries.
    (tmp_path / "typo.sql").write_text("SELECT 1 FROM t WHERE case_id IN ({_open_case})\n")
    with pytest.raises(ConfigError, match=r"typo\.sql references unknown SQL fragment \{_open_case\}") as raised:
        audit.query_text("typo", tmp_path)
    assert raised.value.context["file"] == str(tmp_path / "typo.sql")
    (tmp_path / "_nested.sql").write_text("SELECT 1 FROM ({_open_cases})\n")
    (tmp_path / "nests.sql").write_text("SELECT 1 FROM ({_nested})\n")
    assert audit.query_text("nests", tmp_path) == "SELECT 1 FROM (SELECT 1 FROM (SELECT case_id\nFROM {db}.cases\nWHERE open))\n"
    (tmp_path / "_loop_a.sql").write_text("SELECT 1 FROM ({_loop_b})\n")
    (tmp_path / "_loop_b.sql").write_text("SELECT 1 FROM ({_loop_a})\n")
    (tmp_path / "loops.sql").write_text("SELECT 1 FROM ({_loop_a})\n")
    with pytest.raises(ConfigError, match=r"_loop_a\.sql \(used by loops\.sql\) references itself \(_loop_a -> _loop_b -> _loop_a\)"):
        audit.query_text("loops", tmp_path)
    with pytest.raises(ConfigError, match="_open_cases is a SQL fragment, not an audit query"):
        audit.query_text("_open_cases", tmp_path)


def test_ranking_provenance_rules_and_trends_share_one_holdings_rule():
    # Who held what is written once, in the fragment; every query that needs it references it and none spells it out.
    names = ("ranking", "ranking_provenance", "ranking_rules", "dashboard_trend_on_time")
    raw = {name: (audit.QUERIES_DIR / f"{name}.sql").read_text() for name in names}
    assert raw["ranking"].count("FROM ({_month_holdings}) AS holding_events") == 1  # the holdings and their own figures
    assert raw["ranking_provenance"].count("case_id IN (SELECT case_id FROM ({_month_holdings}))") == 2  # case events and breaches
    assert raw["dashboard_trend_on_time"].count("FROM ({_month_holdings}) AS holdings") == 1
    def fragment(name: str) -> str:
        return strip_comment_lines((audit.QUERIES_DIR / f"{name}.sql").read_text()).strip()

    holdings = fragment("_month_holdings")
    for used in ("_case_figures", "_case_is_resolved", "_case_resolver"):
        holdings = holdings.replace(f"{{{used}}}", fragment(used))
    for name, text in raw.items():
        assert "%(start_ms)s" not in strip_comment_lines(text), name  # the month bound is only in the fragment
        assert "assignee_tier" not in strip_comment_lines(text), name  # and so is the tier held at
        assert f"({holdings})" in audit.query_text(name), name


def test_case_timeline_tells_the_whole_story_in_order(store):
    result = audit.case_timeline(*store, "C2")
    view = [(r["at_utc"], r["record"], r["seq"], r["kind"], r["unit_id"], r["assignee"], r["tier"], r["reason"] if r["record"] == "case_event" else None,
             r["source"], r["rating"], r["kafka_offset"]) for r in result.as_dicts()]

    # Beijing is UTC+8; at 12:00 and 08:30 the breach comes before the escalation it caused.
    assert view == [
        ("2025-03-05 02:00:00", "case_event", 1, "opened", None, "G-S1-1", "grid", None, "hotline", None, 0),
        ("2025-03-05 02:00:00", "case_event", 2, "dispatched", None, "G-S1-1", "grid", None, None, None, 1),
        ("2025-03-05 02:20:00", "case_event", 3, "transferred", "G-S1-1", "G-S1-2", "grid", "outside our grid", None, None, 2),
        ("2025-03-05 04:00:00", "sla", None, "breach:accept_overdue", "G-S1-2", "C-S1-1", "community", None, None, None, 0),
        ("2025-03-05 04:00:00", "case_event", 4, "escalated", None, "C-S1-1", "community", "accept_overdue", None, None, 3),
        ("2025-03-05 04:30:00", "case_event", 5, "accepted", "C-S1-1", "C-S1-1", "community", None, None, None, 4),
        ("2025-03-06 00:30:00", "sla", None, "breach:resolve_overdue", "C-S1-1", "ST-S1", "street", None, None, None, 1),
        ("2025-03-06 00:30:00", "case_event", 6, "escalated", None, "ST-S1", "street", "resolve_overdue", None, None, 5),
        ("2025-03-06 01:00:00", "case_event", 7, "accepted", "ST-S1", "ST-S1", "street", None, None, None, 6),
        ("2025-03-06 02:00:00", "case_event", 8, "resolved", "ST-S1", "ST-S1", "street", None, None, None, 7),
        ("2025-03-06 02:30:00", "case_event", 9, "rated", "reporter", "ST-S1", "street", None, None, 3, 8),
        ("2025-03-06 02:30:00", "case_event", 10, "closed", None, "ST-S1", "street", "rated", None, None, 9),
    ]
    assert result.rows[3][result.columns.index("reason")] == "C2 accept_overdue by G-S1-2"
    # C3 at 03-10 13:00: the rating 1, the unsatisfied_rating breach it triggered, the escalation the breach caused.
    assert [r["kind"] for r in audit.case_timeline(*store, "C3").as_dicts()][4:7] == ["rated", "breach:unsatisfied_rating", "escalated"]
    assert audit.case_timeline(*store, "C404").rows == ()


def test_breaches_are_listed_once_and_filtered(store):
    def ids(**filters):
        return [row[0] for row in audit.breaches(*store, **filters).rows]

    assert ids() == ["B2a", "B2b", "B3", "B5a", "B5b", "B6", "B4"]  # by fired_at; B4 once though stored twice; no warning
    assert ids(tier="street") == ["B2b", "B5b"]
    assert ids(unit="C-S1-1") == ["B2b"]
    assert ids(since=beijing("2025-03-12 00:00"), until=beijing("2025-03-13 00:00")) == ["B5a", "B5b"]
    assert ids(since=beijing("2025-03-12 00:00"), until=beijing("2025-03-13 00:00"), include_warnings=True) == ["W5", "B5a", "B5b"]


def test_ranking_renders_to_csv_and_json_with_exact_decimals(store):
    result = rank(store, "community")

    assert audit.to_csv(result).splitlines()[1:] == [
        "C-S1-1,1,3,3,1,1,1,1,100.00,33.33,33.33,100.00,,25700,72000,26.00,26.00,0,0,0,0,0,1,0,0,0,1",
        "C-S2-1,2,2,0,0,0,0,0,0.00,0.00,0.00,,,,,,,0,0,0,0,0,1,0,0,0,1",
    ]
    assert orjson.loads(audit.to_json(result))[0]["resolution_rate_pct"] == "33.33"
    assert audit.render_table(result).row_count == 2


@pytest.mark.parametrize("month, by, error", [("2025-3", "street", "month must be YYYY-MM"), ("2025-13", "street", "month must be YYYY-MM"),
                                               ("2025-03", "district", "by must be one of grid, community, street, department"),
                                               ("2025-03", "supervision", "by must be one of grid, community, street, department")])
def test_ranking_refuses_bad_input(month, by, error):
    with pytest.raises(ValidationError, match=error):
        audit.ranking(None, "whistle", month, by)


def test_month_bounds_are_local_midnights():
    # 2025-03-01 00:00 Beijing = 2025-02-28 16:00 UTC = 1740758400000; 2025-04-01 00:00 Beijing = 1743436800000.
    assert audit.month_bounds("2025-03") == (1_740_758_400_000, 1_743_436_800_000)
    # December rolls over into the next year: 2025-12-01 00:00 UTC = 1764547200000, 2026-01-01 00:00 UTC = 1767225600000.
    assert audit.month_bounds("2025-12", "UTC") == (1_764_547_200_000, 1_767_225_600_000)


def test_a_rankings_as_of_is_iso_8601_with_a_zone_and_its_printed_text_reproduces_it():
    moment = audit.as_of_from_text("2025-03-25T00:00:00+08:00")
    assert moment == beijing("2025-03-25 00:00")
    assert audit.as_of_from_text("2025-03-24T16:00:00Z") == moment
    printed = audit.as_of_text(audit.pinned(datetime(2025, 3, 25, 1, 2, 3, 456789, tzinfo=BEIJING)))
    assert printed == "2025-03-25T01:02:03.456+08:00" and audit.as_of_text(audit.as_of_from_text(printed)) == printed
    with pytest.raises(ValidationError, match="has no time zone"):
        audit.as_of_from_text("2025-03-25T00:00:00")
    with pytest.raises(ValidationError, match="as_of must be an ISO 8601 time with a zone"):
        audit.as_of_from_text("yesterday")
