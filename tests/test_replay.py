"""`whistle audit replay` on real Kafka and ClickHouse: a simulated day re-derived from the case stream alone is
identical to what the audit store holds, and an altered or invented row is named."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
from test_end_to_end import TRANSIENT, send_day, wait_for_sink

from infra.processes import wait_until
from sinks.clickhouse import ServerEngine
from sinks.replay import replay
from sinks.sink import BREACH_COLUMNS, CASE_EVENT_COLUMNS
from streams.domain.reference import load_reference
from whistle.devtools.harness import Pipeline, read_all
from whistle.devtools.simulate import SimConfig, simulate
from whistle.ground.names import Topics

START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


def _run_a_day(settings, logs) -> None:
    day = list(simulate(load_reference(), SimConfig(seed=3, start=START, days=1.0, incidents_per_day=60)))
    pipeline = Pipeline(settings, logs).wait_ready()
    topics = Topics.with_prefix(settings.topic_prefix)
    try:
        send_day(settings, day, START + timedelta(days=3))
        wait_until(lambda: len(read_all(settings, [topics.breaches])) > 0, 60, "the day's breaches", 1.0, TRANSIENT)
        wait_for_sink(settings, pipeline)
    finally:
        pipeline.stop()


def _cli_replay(settings) -> tuple[int, dict]:
    env = {**os.environ, **settings.to_env()}
    done = subprocess.run([sys.executable, "-m", "whistle", "audit", "replay", "--format", "json"], env=env, capture_output=True,
                          text=True, timeout=300)
    first = done.stdout.splitlines()[0] if done.stdout else "{}"
    return done.returncode, orjson.loads(first)


def test_a_day_replayed_from_the_case_stream_is_identical_and_an_altered_row_is_named(isolated, tmp_path):
    _run_a_day(isolated, tmp_path / "logs")
    ch = isolated.clickhouse
    auditor = ServerEngine.from_settings(dataclasses.replace(ch, user=ch.auditor_user, password=ch.auditor_password))
    try:
        clean = replay(isolated, auditor, ch.database, 0, 2**63 - 1)
    finally:
        auditor.close()
    assert clean.identical and clean.derived["case_events"] == clean.stored["case_events"] > 100 and clean.derived["breaches"] > 0
    assert _cli_replay(isolated)[0] == 0  # the command, as the auditor: identical

    admin = ServerEngine.from_settings(ch)
    try:
        db = ch.database
        row = admin.execute(f"SELECT {', '.join(CASE_EVENT_COLUMNS)} FROM {db}.case_events ORDER BY case_id, seq LIMIT 1")[0]
        note = CASE_EVENT_COLUMNS.index("note")
        admin.insert(f"{db}.case_events", CASE_EVENT_COLUMNS, [row[:note] + ("rewritten by hand",) + row[note + 1:]])
        breach = admin.execute(f"SELECT {', '.join(BREACH_COLUMNS)} FROM {db}.breaches LIMIT 1")[0]
        admin.insert(f"{db}.breaches", BREACH_COLUMNS, [("invented-breach",) + breach[1:]])
    finally:
        admin.close()
    code, _ = _cli_replay(isolated)
    assert code == 1
    auditor = ServerEngine.from_settings(dataclasses.replace(ch, user=ch.auditor_user, password=ch.auditor_password))
    try:
        altered = replay(isolated, auditor, ch.database, 0, 2**63 - 1)
    finally:
        auditor.close()
    assert not altered.identical
    assert altered.counts["case_events"] == {"missing": 0, "extra": 0, "differs": 1}
    assert altered.counts["breaches"] == {"missing": 0, "extra": 1, "differs": 0}
    differs = next(d for d in altered.listed if d.kind == "differs")
    assert (differs.case_id, differs.key) == (row[1], row[0]) and "note: stored 'rewritten by hand'" in differs.detail
